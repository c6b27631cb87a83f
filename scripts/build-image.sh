#!/usr/bin/env bash
# Builds the DaemonSet's image without Docker, with Debian's umoci and tar only: the static
# ros-macvlan binary (`cargo build --release`, glibc linked statically: .cargo/config.toml)
# as /ros-macvlan in an otherwise empty image, entrypoint /ros-macvlan and command
# `agent --cni-bin-dir /host/cni-bin` as in install/Dockerfile (the DaemonSet's command
# replaces both), as an OCI archive named localhost/ros-macvlan:<version>, the reference
# install/base/daemonset.yaml names.
#
#   scripts/build-image.sh [--binary FILE] [--output FILE] [--name REF] [--print]
#
# The version is Cargo.toml's, the one source of it: install/base/kustomization.yaml's
# `newTag` must say the same (tests/manifests.rs checks it).
# --binary packs that build of the binary instead of building one (the tests pack theirs).
# --print only prints the image reference and the archive's path it would make, one a line.
# Default output: target/image/ros-macvlan-<version>.oci.tar. Load it on a node with
# `microk8s ctr image import FILE` or `ctr -n k8s.io images import FILE` (README: Install).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
ref=localhost/ros-macvlan:$version
out=target/image/ros-macvlan-$version.oci.tar
binary='' print=0
usage() { echo "usage: $0 [--binary FILE] [--output FILE] [--name REF] [--print]" >&2; exit 2; }
while (($#)); do
  case $1 in
    --binary) binary=${2:-}; shift 2 || usage ;;
    --output) out=${2:-}; shift 2 || usage ;;
    --name) ref=${2:-}; shift 2 || usage ;;
    --print) print=1; shift ;;
    *) usage ;;
  esac
done
if ((print)); then
  printf '%s\n%s\n' "$ref" "$out"
  exit 0
fi

if [[ -z $binary ]]; then
  cargo build --release --locked
  binary=target/$(rustc -vV | sed -n 's/^host: //p')/release/ros-macvlan
fi
# An empty image has no libraries: only a static binary runs there.
if ldd "$binary" 2>/dev/null | grep -q '=>'; then
  echo "$binary is not static (see .cargo/config.toml)" >&2
  exit 1
fi
exec scripts/oci-image.sh -o "$out" -n "$ref" \
  -e /ros-macvlan -c agent -c --cni-bin-dir -c /host/cni-bin "$binary=/ros-macvlan"
