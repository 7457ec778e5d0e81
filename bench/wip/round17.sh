#!/usr/bin/env bash
# Session 17's experiment call (issue 16): the prefill attention on f16 tensor cores for FP8
# caches (8 or 4 warps a block, KILN_FA_WARPS) and the bf16-outputs patch, each beside main's
# binary on the same machine. Run from .gpuwork/ after `tar xJf devcarry.tar.xz`:
#   .devcarry/          this tree's build (f16 prefill attention), kiln_prev = main (c18159b)
#   .devcarry/bf16/     the same plus bench/wip/bf16-outputs.patch (kiln and the CUDA tests)
#   tools-bf16/         tools/reference of the patched tree (make_fixtures.py rounds as it does)
set -uo pipefail
B=$PWD/.devcarry
export LD_LIBRARY_PATH=$B
OUT=${OUT:-/tmp/kiln-out}
M=/tmp/kiln-models
export KILN_MODELS=$M
mkdir -p "$M" "$OUT"
t() { echo "== $* ($(date +%T))"; }

t "1. GPU tests of this tree (8 warps)"
KILN_FA_WARPS=8 timeout 200 bash bench/gpu-run.sh tests >"$OUT/tests.log" 2>&1
grep -E "^(PASS|FAIL)  " "$OUT/tests.log"
t "1b. kernel + model tests with 4 warps a block"
for spec in "test_cuda_ops" "test_cuda_model $M/tiny-fp8kv fp8 strict" "test_cuda_model $M/small fp8" \
  "test_cuda_model $M/tiny bf16 strict"; do
  set -- $spec
  KILN_FA_WARPS=4 timeout 120 "$B/$1" "${@:2}" >"$OUT/w4-$1-$#.log" 2>&1
  echo "w4 $spec: exit $? $(tail -n 1 "$OUT/w4-$1-$#.log")"
done

t "2. prefill: TTFT and the attention op, main vs f16 (8 / 4 warps) vs f16 + bf16 outputs"
[ -f "$M/llama8b/config.json" ] || "$B/kiln" mkmodel "$M/llama8b" --preset llama-3.1-8b --seed 1 --fp8-kv-cache | tail -n 1
pf() { # label bin warps
  # --profile (no graphs: prefill has none anyway) gives TTFT and each op's time
  KILN_FA_WARPS=$3 timeout 100 "$2" bench "$M/llama8b" --profile --contexts none \
    --prompts 512,2048,8192 --batches none >"$OUT/pf-$1.log" 2>&1
  echo "$1: $(grep -E '^prefill' "$OUT/pf-$1.log" | awk '{print $3"="$6"ms"}' | tr '\n' ' ') attention/swiglu/gate_up(each prompt): $(grep -E '^  (attention|swiglu|gate_up)' "$OUT/pf-$1.log" | awk '{print $2}' | tr '\n' ' ')"
}
pf main "$B/kiln_prev" 8
pf f16w8 "$B/kiln" 8
pf f16w4 "$B/kiln" 4
pf bf16w8 "$B/bf16/kiln" 8
pf bf16w4 "$B/bf16/kiln" 4

t "3. bf16-outputs: GPU tests and the new reference fixtures"
for spec in "test_cuda_ops" "test_cuda_sample" "test_cuda_model $M/tiny fp8 strict" \
  "test_cuda_model $M/tiny bf16 strict" "test_cuda_model $M/tiny-fp8kv fp8 strict" "test_cuda_model $M/small fp8"; do
  set -- $spec
  timeout 120 "$B/bf16/$1" "${@:2}" >"$OUT/bf16-$1-$(basename "${2:-x}")-${3:-x}.log" 2>&1
  echo "bf16 $spec: exit $? $(tail -n 1 "$OUT/bf16-$1-$(basename "${2:-x}")-${3:-x}.log")"
done
PYTHONUNBUFFERED=1 timeout 200 python3 tools-bf16/reference/make_fixtures.py "$OUT/reference_tiny.json" \
  tiny="$M/tiny" tiny-fp8kv="$M/tiny-fp8kv" >"$OUT/fixtures.log" 2>&1
echo "fixtures: exit $? $(wc -c <"$OUT/reference_tiny.json" 2>/dev/null) bytes"

t "4. throughput, main vs candidates"
tp() { # label bin warps I O N B
  KILN_FA_WARPS=$3 timeout 150 "$2" bench "$M/llama8b" --throughput --num-requests "$6" --input-len "$4" \
    --output-len "$5" --max-batch-size "$7" --json >"$OUT/tp-$1-$4-$5.log" 2>&1
  echo "$1 $4/$5 x$6 b$7: $(grep -E '^output throughput|^engine thread|^elapsed' "$OUT/tp-$1-$4-$5.log" | tr -s ' ' | tr '\n' ';')"
}
for p in "2048 128 512 256" "128 128 4096 1024"; do
  tp main "$B/kiln_prev" 8 $p
  tp f16w8 "$B/kiln" 8 $p
  tp bf16w8 "$B/bf16/kiln" 8 $p
done

t "5. decode per-op at batch 1024, context 192 (the 128/128 regime)"
timeout 100 "$B/kiln" bench "$M/llama8b" --profile --contexts none --prompts none --batches 1024 \
  --batch-context 192 --steps 8 >"$OUT/dec1024.log" 2>&1
tail -n 14 "$OUT/dec1024.log"
t done
