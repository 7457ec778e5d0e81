#!/usr/bin/env bash
# Builds kiln with CUDA (sm_89 + sm_90a) in build-gpu/ and copies what the GPU machine needs
# into .devcarry/ (git-ignored), the folder the device runs carry.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu -G Ninja -DKILN_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_WERROR=OFF >/dev/null
cmake --build build-gpu -j"$(nproc)" --target kiln test_cuda_ops test_cuda_model probe_gemm
rm -rf .devcarry && mkdir -p .devcarry
cp build-gpu/kiln build-gpu/tests/cuda/test_cuda_ops build-gpu/tests/cuda/test_cuda_model build-gpu/tests/cuda/probe_gemm .devcarry/
du -sh .devcarry
