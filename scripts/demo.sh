#!/bin/sh
# Builds libattn and runs the cross-attention demo (installs build dependencies first).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh build
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DATTN_BUILD_TESTS=OFF >/dev/null
cmake --build build-demo --target cross_attention_demo -j "$(nproc)" >/dev/null
./build-demo/examples/cross_attention_demo
