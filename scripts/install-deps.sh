#!/bin/sh
# Installs the Debian packages libattn needs, if any is missing. Usage:
#   scripts/install-deps.sh [build|test|ci]   (default: test)
# build: compiler, CMake, OpenBLAS. test: + cmocka, numpy (the check of the guide's numpy code
# for the dropout mask). ci: + valgrind, dpkg-dev (for CPack's dependency list), BLIS and the
# OpenMP build of OpenBLAS (the other BLASes CI tests against), numpy (also the benchmark
# comparison), clang with its libFuzzer runtime (the fuzz run).
set -eu
level=${1:-test}
pkgs="gcc libc6-dev make cmake pkg-config libopenblas-dev"
case "$level" in
  build) ;;
  test) pkgs="$pkgs libcmocka-dev python3-numpy" ;;
  ci) pkgs="$pkgs libcmocka-dev valgrind binutils dpkg-dev libblis-dev libopenblas0-openmp python3-numpy clang libclang-rt-14-dev" ;;
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
