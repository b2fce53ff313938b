#!/usr/bin/env bash
# Installs the Debian packages zsq builds and runs with. Idempotent: packages already present are
# left alone and apt is not touched at all when nothing is missing. Needs root (or sudo).
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers   # oneDNN 2.6 (its CMake config needs the OpenCL bits)
  libcli11-dev nlohmann-json3-dev libfmt-dev zlib1g-dev libpng-dev
  doctest-dev libbenchmark-dev
  dataset-fashion-mnist                               # the only real data: /usr/share/datasets/fashion-mnist
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
