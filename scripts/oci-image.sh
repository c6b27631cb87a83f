#!/usr/bin/env bash
# Builds an OCI image archive from files, with Debian's umoci and tar only (no Docker, no
# registry): an otherwise empty image holding FILE at PATH (its own path when no =PATH is
# given), with the entrypoint and command given, for linux on this machine's architecture.
# The archive names the image REF (annotation io.containerd.image.name, and the tag as
# org.opencontainers.image.ref.name), so `ctr images import` registers it under REF.
#
#   scripts/oci-image.sh -o OUT.tar -n REF [-e ENTRYPOINT-ARG]... [-c CMD-ARG]... [-l] FILE[=PATH]...
#
# -l also copies each file's shared libraries and the dynamic loader (as ldd lists them),
# for programs that are not static. Used by scripts/build-image.sh (the DaemonSet's image)
# and by the tests' node harness (the DDS judges' images).
set -euo pipefail

out='' ref='' libs=0 entrypoint=() cmd=()
while getopts 'o:n:e:c:l' opt; do
  case $opt in
    o) out=$OPTARG ;;
    n) ref=$OPTARG ;;
    e) entrypoint+=("$OPTARG") ;;
    c) cmd+=("$OPTARG") ;;
    l) libs=1 ;;
    *) echo "usage: $0 -o OUT.tar -n REF [-e ARG]... [-c ARG]... [-l] FILE[=PATH]..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ -z $out || -z $ref || $# -eq 0 ]]; then
  echo "usage: $0 -o OUT.tar -n REF [-e ARG]... [-c ARG]... [-l] FILE[=PATH]..." >&2
  exit 2
fi
command -v umoci >/dev/null || { echo "umoci is missing: apt-get install umoci" >&2; exit 1; }

tag=${ref##*:}
[[ $tag == "$ref" || $tag == */* ]] && tag=latest
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootless=()
[[ $(id -u) -ne 0 ]] && rootless=(--rootless)

umoci init --layout "$work/oci"
umoci new --image "$work/oci:$tag"
umoci unpack "${rootless[@]}" --image "$work/oci:$tag" "$work/bundle"
rootfs=$work/bundle/rootfs

place() { # source, path in the image
  install -D -m 0755 "$1" "$rootfs$2"
}
for spec in "$@"; do
  src=${spec%%=*}
  dest=${spec#*=}
  [[ $dest == "$spec" ]] && dest=$(realpath "$src")
  place "$src" "$dest"
  if ((libs)); then
    # "libx.so => /path (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)": the paths.
    ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      [[ -e $rootfs$lib ]] || { mkdir -p "$rootfs$(dirname "$lib")"; cp -L "$lib" "$rootfs$lib"; }
    done
  fi
done

umoci repack --image "$work/oci:$tag" "$work/bundle"
config=(--os linux --architecture "$arch" --no-history)
((${#entrypoint[@]})) && for a in "${entrypoint[@]}"; do config+=(--config.entrypoint "$a"); done
((${#cmd[@]})) && for a in "${cmd[@]}"; do config+=(--config.cmd "$a"); done
umoci config --image "$work/oci:$tag" "${config[@]}"
# The full reference, for importers that read it (containerd's ctr and CRI).
python3 - "$work/oci/index.json" "$ref" <<'EOF'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
with open(path) as f:
    index = json.load(f)
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = ref
with open(path, "w") as f:
    json.dump(index, f)
EOF
umoci gc --layout "$work/oci"
mkdir -p "$(dirname "$out")"
tar -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out: $ref"
