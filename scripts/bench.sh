#!/bin/sh
# The benchmark (docs/performance.md), as root: builds the plugin as `cargo build
# --release` does (static, as the image ships it: .cargo/config.toml), builds the benchmark,
# and runs it against Debian's reference plugins.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bin ros-macvlan --example bench
exec "target/$host/release/examples/bench" --plugin "target/$host/release/ros-macvlan" "$@"
