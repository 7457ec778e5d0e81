#!/usr/bin/env bash
# Builds kiln with CUDA (sm_89 + sm_90a) in build-gpu/ and copies what the GPU machine needs
# into .devcarry/ (git-ignored), the folder the device runs carry.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DKILN_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_WERROR=OFF >/dev/null
cmake --build build-gpu -j"$(nproc)" --target kiln test_cuda_ops test_cuda_sample test_cuda_model probe_gemm test_engine_model kiln_loadgen
rm -rf .devcarry && mkdir -p .devcarry
cp build-gpu/kiln build-gpu/tests/cuda/test_cuda_ops build-gpu/tests/cuda/test_cuda_model build-gpu/tests/cuda/probe_gemm .devcarry/
cp build-gpu/tests/cuda/test_cuda_sample .devcarry/
cp build-gpu/tests/runtime/test_engine_model build-gpu/tests/server/kiln_loadgen .devcarry/
cp -L /usr/lib/x86_64-linux-gnu/libcmocka.so.0 .devcarry/ # the GPU machine has no cmocka
scripts/fetch-tokenizers build >/dev/null
mkdir -p .devcarry/tokenizers && cp -r build/tokenizers/llama3_1 .devcarry/tokenizers/
du -sh .devcarry
