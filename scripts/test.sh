#!/usr/bin/env bash
# Runs every check and test of ros-macvlan. On a fresh Debian machine it first installs
# what the tests need (as root): iproute2, the reference CNI plugins, CycloneDDS' ddsperf,
# tshark and tcpdump. Tests that need root fail instead of skipping when
# ROS_MACVLAN_REQUIRE_PRIVILEGED=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

# command or file that must exist -> Debian package that provides it
declare -A needs=(
  [ip]=iproute2
  [bridge]=iproute2
  [sysctl]=procps
  [/usr/lib/cni/macvlan]=containernetworking-plugins
  [ddsperf]=cyclonedds-tools
  [tshark]=tshark
  [tcpdump]=tcpdump
)
missing=()
for what in "${!needs[@]}"; do
  if [[ $what == /* ]]; then [[ -e $what ]] || missing+=("${needs[$what]}")
  else command -v "$what" >/dev/null || missing+=("${needs[$what]}"); fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
