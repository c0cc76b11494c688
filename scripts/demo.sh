#!/bin/sh
# Builds libattn, the attn tool and the cross-attention demo (installs build dependencies
# first), and runs the demo, which also draws its weights into build-demo/attention.svg.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh build
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DATTN_BUILD_TESTS=OFF >/dev/null
cmake --build build-demo --target cross_attention_demo attn_tool -j "$(nproc)" >/dev/null
./build-demo/examples/cross_attention_demo build-demo/attention.svg
