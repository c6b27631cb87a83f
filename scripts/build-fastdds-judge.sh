#!/usr/bin/env bash
# Builds the Fast DDS judge of the tests: tests/fastdds/{talker,listener}.cpp, a ROS 2
# talker and listener on Fast DDS' default settings, into target/tools/fastdds-talker and
# target/tools/fastdds-listener. Installs Debian's Fast DDS (libfastrtps-dev, 2.9 in
# Debian 12), Fast CDR and g++ first when they are missing (as root). Skips a program whose
# binary is newer than its sources.
set -euo pipefail
cd "$(dirname "$0")/.."

src=tests/fastdds
out=target/tools
packages=(libfastrtps-dev libfastcdr-dev g++)

if [[ ! -e /usr/include/fastdds/dds/domain/DomainParticipant.hpp \
   || ! -e /usr/include/fastcdr/Cdr.h ]] || ! command -v g++ >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages for the Fast DDS judge: ${packages[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "installing: ${packages[*]}"
  # Another process may hold the dpkg lock: wait for it rather than fail.
  apt_get=(apt-get -o DPkg::Lock::Timeout=900)
  if ! apt-cache show libfastrtps-dev >/dev/null 2>&1; then "${apt_get[@]}" update -qq; fi
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
fi

mkdir -p "$out"
for program in talker listener; do
  binary=$out/fastdds-$program
  if [[ -x $binary && $binary -nt $src/$program.cpp && $binary -nt $src/ros_string.hpp ]]; then
    continue
  fi
  echo "building $binary"
  g++ -std=c++17 -O2 -Wall -Wextra -Werror -o "$binary" "$src/$program.cpp" -lfastrtps -lfastcdr
done
