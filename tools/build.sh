#!/usr/bin/env bash
# Configures and builds zsq in Release into ./build. ZSQ_WITH_CUDA (AUTO by default) adds the CUDA
# backend when a toolkit is found. Extra arguments go to CMake; ZSQ_BUILD_TARGET builds one target only.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DZSQ_WITH_CUDA="${ZSQ_WITH_CUDA:-AUTO}" "$@" >/dev/null
cmake --build build --parallel "$(nproc)" ${ZSQ_BUILD_TARGET:+--target "$ZSQ_BUILD_TARGET"}
