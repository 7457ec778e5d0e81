#!/usr/bin/env bash
# The GPU session: run on the GPU machine from the repository root, with the binaries of
# bench/gpu-prepare.sh in .devcarry/. Builds nothing; checks correctness, then times; the last
# lines printed are a short summary table. Logs go to $OUT (returned by the device tool).
#   bench/gpu-run.sh [all|correct|bench|compare|sanitize]...
set -uo pipefail
B=$PWD/.devcarry
OUT=${OUT:-/tmp/kiln-out}
M=${KILN_MODELS:-/tmp/kiln-models}
mkdir -p "$OUT" "$M"
summary=()
note() { summary+=("$*"); echo "## $*"; }
step() { echo; echo "== $* ($(date +%T))"; }

model() { # name preset extra-args
  [ -f "$M/$1/config.json" ] && return 0
  "$B/kiln" mkmodel "$M/$1" --preset "$2" --seed 1 "${@:3}" 2>&1 | tail -n 2
}

correct() {
  step "models"
  model tiny tiny; model tiny-fp8kv tiny --fp8-kv-cache; model small small --fp8-kv-cache
  step "kernel tests vs CPU twins"
  timeout 90 "$B/test_cuda_ops" 2>&1 | tee "$OUT/test_cuda_ops.log"
  note "test_cuda_ops: $(tail -n 1 "$OUT/test_cuda_ops.log")"
  for spec in "tiny fp8 strict" "tiny bf16 strict" "tiny-fp8kv fp8 strict" "small fp8"; do
    set -- $spec
    step "whole model $1 (KV $2) vs CPU"
    timeout 90 "$B/test_cuda_model" "$M/$1" "$2" ${3:-} ${4:-} 2>&1 | tee "$OUT/test_cuda_model-$1-$2.log"
    note "test_cuda_model $1 $2: $(tail -n 1 "$OUT/test_cuda_model-$1-$2.log")"
  done
  step "reference fixtures (PyTorch FP8 simulation + transformers)"
  PYTHONUNBUFFERED=1 timeout 300 python3 tools/reference/make_fixtures.py "$OUT/reference_tiny.json" \
    tiny="$M/tiny" tiny-fp8kv="$M/tiny-fp8kv" 2>&1 | tail -n 8
  note "fixtures: $(ls -la "$OUT/reference_tiny.json" 2>&1 | awk '{print $5}') bytes"
}

bench() {
  step "8B-shaped model"
  local t0=$(date +%s)
  model llama8b llama-3.1-8b --fp8-kv-cache
  note "mkmodel llama-3.1-8b: $(( $(date +%s) - t0 )) s"
  step "kiln bench (latency)"
  timeout 400 "$B/kiln" bench "$M/llama8b" --json 2>&1 | tee "$OUT/bench-8b.log"
  grep -E "^(decode|prefill|device|measured)" "$OUT/bench-8b.log" | while read -r l; do note "$l"; done
  step "memory at max_seq_len 2560, batch 1"
  timeout 200 "$B/kiln" bench "$M/llama8b" --max-seq-len 2560 --max-batch-size 1 --contexts 2048 \
    --prompts 2048 --batches none --max-num-tokens 2048 2>&1 | tee "$OUT/bench-8b-mem.log"
  note "$(grep '^device memory' "$OUT/bench-8b-mem.log")"
}

profile() {
  step "per-op profile (no graphs)"
  timeout 200 "$B/kiln" bench "$M/llama8b" --profile --contexts 128,8192 --prompts 2048 --batches 32 \
    --steps 16 2>&1 | tee "$OUT/bench-8b-profile.log"
}

compare() {
  step "8B logits vs PyTorch FP8 simulation, 256 positions"
  local ids
  ids=$(python3 -c "import random; r=random.Random(7); print(','.join(['128000']+[str(r.randrange(128000)) for _ in range(255)]))")
  timeout 200 "$B/kiln" generate "$M/llama8b" --prompt-ids "$ids" --max-tokens 1 \
    --dump-logits /tmp/kiln-8b-logits.bin 2>&1 | tail -n 1
  PYTHONUNBUFFERED=1 timeout 300 python3 tools/reference/compare_logits.py "$M/llama8b" "$ids" \
    /tmp/kiln-8b-logits.bin "$OUT/compare-8b.json" 2>&1 | tail -n 3
  note "8B vs PyTorch sim: $(cat "$OUT/compare-8b.json" 2>/dev/null)"
}

probe() {
  step "cuBLASLt FP8 GEMM probe (prefill shapes)"
  timeout 120 "$B/probe_gemm" 2048 2>&1 | tee "$OUT/probe_gemm.log" | grep -E "^M=|best"
  step "SASS of the skinny GEMM main loop (load batching)"
  cuobjdump -sass "$B/kiln" 2>/dev/null | awk '/Function : .*k_gemvILb0/{f=1} f&&/EXIT/{exit} f' |
    grep -oE "(LDG\S*|HMMA\S*|QMMA\S*|IMMA\S*|LDS\S*)" | uniq -c | head -20
}

sanitize() {
  step "compute-sanitizer memcheck on the kernel tests"
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/test_cuda_ops" \
    >"$OUT/memcheck.log" 2>&1
  note "memcheck: exit $? ($(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "${@:-all}"; do
  case $what in
    all) correct; bench; compare; sanitize ;;
    correct|bench|profile|compare|sanitize|probe) $what ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done
echo; echo "==== summary ($(date -u +%F) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
printf '%s\n' "${summary[@]}"
