#!/bin/sh
# The benchmark (README: Performance), as root: builds the plugin static, as the image
# ships it (the image links musl; this machine's toolchain has glibc, linked statically
# here), builds the benchmark, and runs it against Debian's reference plugins.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$host" --bin ros-macvlan
cargo build --release --locked --example bench
exec target/release/examples/bench --plugin "target/$host/release/ros-macvlan" "$@"
