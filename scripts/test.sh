#!/bin/sh
# Builds libattn with warnings as errors and runs every test suite (installs dependencies first).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh test
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Release -DATTN_WERROR=ON >/dev/null
cmake --build build-test -j "$(nproc)"
cd build-test && ctest --output-on-failure -j "$(nproc)"
