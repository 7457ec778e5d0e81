#!/usr/bin/env bash
# Builds kiln with CUDA (sm_89 + sm_90a) in build-gpu/ and copies what the GPU machine needs
# into .devcarry/ (git-ignored), the folder the device runs carry; bench/gpu-run.sh runs there.
#   bench/gpu-prepare.sh [ada] [http]
# ada: also the Ada variant (PTX for compute_89 only, KILN_CUDA_ARCHS=89-virtual) in build-ada/,
# copied into .devcarry/ada/ (bench/gpu-run.sh ada runs it on a Hopper GPU, sm_89 paths).
# KILN_PREV_BUILD=DIR copies DIR/kiln as .devcarry/kiln_prev (an older build for the A/B steps).
# Binaries are stripped (the device call carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(test_cuda_ops test_cuda_sample test_cuda_model)
cmake -S . -B build-gpu -G Ninja -DKILN_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_WERROR=OFF >/dev/null
cmake --build build-gpu -j"$(nproc)" --target kiln "${tests[@]}" test_cuda_model_faults kiln_faults \
  probe_gemm probe_overlap test_engine_model kiln_loadgen
rm -rf .devcarry && mkdir -p .devcarry
cp build-gpu/kiln build-gpu/tests/cuda/kiln_faults .devcarry/
for t in "${tests[@]}" test_cuda_model_faults probe_gemm probe_overlap; do cp build-gpu/tests/cuda/$t .devcarry/; done
cp build-gpu/tests/runtime/test_engine_model build-gpu/tests/server/kiln_loadgen .devcarry/
if [ "${1:-}" = ada ] || [ "${2:-}" = ada ]; then
  cmake -S . -B build-ada -G Ninja -DKILN_CUDA=ON -DKILN_CUDA_ARCHS=89-virtual \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_WERROR=OFF >/dev/null
  cmake --build build-ada -j"$(nproc)" --target kiln "${tests[@]}"
  mkdir -p .devcarry/ada
  cp build-ada/kiln .devcarry/ada/
  for t in "${tests[@]}"; do cp build-ada/tests/cuda/$t .devcarry/ada/; done
fi
[ -n "${KILN_PREV_BUILD:-}" ] && cp "$KILN_PREV_BUILD/kiln" .devcarry/kiln_prev
# http: CPU-only Release builds for the httpbench step: this tree's (build-release/) and an old
# one's (KILN_HTTP_OLD=DIR with DIR/kiln, default /tmp/old-http/b), and bench_http
if [ "${1:-}" = http ] || [ "${2:-}" = http ]; then
  cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF >/dev/null
  cmake --build build-release --target kiln bench_http
  mkdir -p .devcarry/http
  cp build-release/kiln .devcarry/http/kiln_new
  cp "${KILN_HTTP_OLD:-/tmp/old-http/b}/kiln" .devcarry/http/kiln_old
  cp build-release/bench/bench_http .devcarry/http/
fi
find .devcarry -type f -exec strip --strip-debug {} +
cp -L /usr/lib/x86_64-linux-gnu/libcmocka.so.0 .devcarry/ # the GPU machine has no cmocka
scripts/fetch-tokenizers build >/dev/null
mkdir -p .devcarry/tokenizers && cp -r build/tokenizers/llama3_1 .devcarry/tokenizers/
du -sh .devcarry
