#!/bin/sh
# Installs the Debian packages libattn needs, if any is missing. Usage:
#   scripts/install-deps.sh [build|test|ci]   (default: test)
# build: compiler, CMake, OpenBLAS. test: + cmocka, Python's headers and numpy (the Python
# module, its tests, the attn tool's tests, the check of the guide's numpy dropout code).
# ci: + valgrind, dpkg-dev (for CPack's dependency list), BLIS and the OpenMP build of OpenBLAS
# (the other BLASes CI tests against), clang with its libFuzzer runtime (the fuzz runs),
# librsvg2-bin (rsvg-convert renders the heat maps), PyTorch (the Python module's tests and the
# backward benchmark compare with it).
set -eu
level=${1:-test}
pkgs="gcc libc6-dev make cmake pkg-config libopenblas-dev"
case "$level" in
  build) ;;
  test) pkgs="$pkgs libcmocka-dev python3-dev python3-numpy" ;;
  ci) pkgs="$pkgs libcmocka-dev python3-dev python3-numpy valgrind binutils dpkg-dev libblis-dev libopenblas0-openmp clang libclang-rt-14-dev librsvg2-bin python3-torch" ;;
  *) echo "usage: $0 [build|test|ci]" >&2; exit 2 ;;
esac
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "need root to install:$missing" >&2; exit 1
  fi
else
  SUDO=""
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
