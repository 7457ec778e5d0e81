#!/usr/bin/env bash
# The GPU session: run on the GPU machine from the repository root, with the binaries of
# bench/gpu-prepare.sh in .devcarry/. Builds nothing; checks correctness, then times; the last
# lines printed are a short summary table. Logs go to $OUT (returned by the device tool).
#   bench/gpu-run.sh [all|quick|tests|correct|bench|profile|tprof|compare|sanitize|probe|engine|
#                     throughput|pipeline|serving|ab]...
set -uo pipefail
B=$PWD/.devcarry
export LD_LIBRARY_PATH="$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" # carried libcmocka
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

quick() {
  step "kernel tests + tiny model"
  model tiny tiny
  timeout 90 "$B/test_cuda_ops" 2>&1 | tee "$OUT/test_cuda_ops.log" | grep -E "FAIL|passed"
  note "test_cuda_ops: $(tail -n 1 "$OUT/test_cuda_ops.log")"
  timeout 90 "$B/test_cuda_sample" 2>&1 | tee "$OUT/test_cuda_sample.log" | grep -E "FAIL|exempt rows|passed"
  note "test_cuda_sample: $(tail -n 1 "$OUT/test_cuda_sample.log")"
  grep "^sample time" "$OUT/test_cuda_sample.log" | while read -r l; do note "$l"; done
  timeout 90 "$B/test_cuda_model" "$M/tiny" fp8 strict 2>&1 | tee "$OUT/test_cuda_model-tiny.log" | grep -E "FAIL|passed"
  note "test_cuda_model tiny: $(tail -n 1 "$OUT/test_cuda_model-tiny.log")"
}

correct() {
  step "models"
  model tiny tiny; model tiny-fp8kv tiny --fp8-kv-cache; model small small --fp8-kv-cache
  step "kernel tests vs CPU twins"
  timeout 90 "$B/test_cuda_ops" 2>&1 | tee "$OUT/test_cuda_ops.log"
  note "test_cuda_ops: $(tail -n 1 "$OUT/test_cuda_ops.log")"
  timeout 90 "$B/test_cuda_sample" 2>&1 | tee "$OUT/test_cuda_sample.log"
  note "test_cuda_sample: $(tail -n 1 "$OUT/test_cuda_sample.log")"
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

# correct() without regenerating the PyTorch fixtures
tests() {
  step "models"
  model tiny tiny; model tiny-fp8kv tiny --fp8-kv-cache; model small small --fp8-kv-cache
  step "kernel tests vs CPU twins"
  timeout 90 "$B/test_cuda_ops" 2>&1 | tee "$OUT/test_cuda_ops.log" | grep -E "FAIL|passed"
  note "test_cuda_ops: $(tail -n 1 "$OUT/test_cuda_ops.log")"
  timeout 90 "$B/test_cuda_sample" 2>&1 | tee "$OUT/test_cuda_sample.log" | grep -E "FAIL|exempt rows|passed"
  note "test_cuda_sample: $(tail -n 1 "$OUT/test_cuda_sample.log")"
  for spec in "tiny fp8 strict" "tiny bf16 strict" "tiny-fp8kv fp8 strict" "small fp8"; do
    set -- $spec
    timeout 90 "$B/test_cuda_model" "$M/$1" "$2" ${3:-} ${4:-} >"$OUT/test_cuda_model-$1-$2.log" 2>&1
    note "test_cuda_model $1 $2: $(tail -n 1 "$OUT/test_cuda_model-$1-$2.log")"
  done
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

# Batched decode at a long context (the regime of the 128/2048 and 2048/2048 throughput points):
# step time with and without the per-op profile. KILN_TPROF="BATCHES CONTEXT", e.g. "64,256 1024".
tprof() {
  model llama8b llama-3.1-8b --fp8-kv-cache
  set -- ${KILN_TPROF:-64,256 1024}
  step "batched decode at context $2 (batches $1)"
  timeout 200 "$B/kiln" bench "$M/llama8b" --contexts none --prompts none --batches "$1" \
    --batch-context "$2" --steps 16 2>&1 | tee "$OUT/bench-8b-batchctx.log"
  grep -E "^decode" "$OUT/bench-8b-batchctx.log" | while read -r l; do note "$l"; done
  timeout 200 "$B/kiln" bench "$M/llama8b" --profile --contexts none --prompts none --batches "$1" \
    --batch-context "$2" --steps 8 2>&1 | tee "$OUT/bench-8b-batchctx-profile.log"
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

engine() {
  step "runtime engine on the GPU (tiny model, real tokenizer)"
  model tiny-tok tiny --tokenizer "$B/tokenizers/llama3_1"
  timeout 120 "$B/test_engine_model" "$M/tiny-tok" cuda 2>&1 | tee "$OUT/test_engine_model.log" | tail -n 5
  note "test_engine_model cuda: $(tail -n 1 "$OUT/test_engine_model.log")"
}

throughput() {
  step "throughput (kiln bench --throughput), 8B-shaped model, FP8 KV"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local cfgs=("128 128 2048 256" "128 2048 1024 512" "2048 128 1024 256" "2048 2048 512 512")
  [ -n "${KILN_THROUGHPUT:-}" ] && cfgs=("$KILN_THROUGHPUT") # one "ISL OSL N BATCH" point
  for cfg in "${cfgs[@]}"; do
    set -- $cfg
    timeout 240 "$B/kiln" bench "$M/llama8b" --throughput --num-requests "$3" --input-len "$1" \
      --output-len "$2" --max-batch-size "$4" --json 2>&1 | tee -a "$OUT/throughput.log" | grep -vE "^\{" | tail -n 4
    note "throughput $1/$2 x$3 batch $4: $(grep -E '^\{' "$OUT/throughput.log" | tail -n 1)"
  done
}

# kiln convert, kiln build and kiln serve start-to-ready (/health 200) on the 8B-shaped FP8
# checkpoint with the seed's limits, from a warm page cache; then HF vs engine greedy ids.
pipeline() {
  step "pipeline: convert, build, serve start-to-ready (8B-shaped FP8, FP8 KV)"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local ck="$M/llama8b-ckpt" eng="$M/llama8b-engine" t0 t1 t2
  rm -rf "$ck" "$eng"
  cat "$M/llama8b"/*.safetensors >/dev/null
  t0=$(date +%s.%N)
  "$B/kiln" convert "$M/llama8b" -o "$ck" --fp8-kv-cache 2>&1 | tee "$OUT/convert-8b.log" | tail -n 2
  t1=$(date +%s.%N)
  "$B/kiln" build "$ck" -o "$eng" --max-batch-size 1 --max-input-len 2048 --max-seq-len 2560 \
    2>&1 | tee "$OUT/build-8b.log" | tail -n 14
  t2=$(date +%s.%N)
  cat "$eng"/* >/dev/null
  local start
  start=$(date +%s.%N)
  "$B/kiln" serve "$eng" --port 8377 --tokenizer "$B/tokenizers/llama3_1" >"$OUT/serve-8b.log" 2>&1 &
  local pid=$!
  local ready
  ready=$(python3 - "$pid" "$start" <<'PY'
import json, os, sys, time, urllib.request
pid, t0 = int(sys.argv[1]), float(sys.argv[2])
while time.time() - t0 < 120:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8377/health", timeout=1).status == 200:
            ready = time.time() - t0
            req = urllib.request.Request("http://127.0.0.1:8377/v1/completions", data=json.dumps(
                {"model": "llama8b-engine", "prompt": "The capital of France is", "max_tokens": 8,
                 "temperature": 0}).encode(), headers={"Content-Type": "application/json"})
            out = json.load(urllib.request.urlopen(req, timeout=60))
            print("%.2f s (completion: %d tokens)" % (ready, out["usage"]["completion_tokens"]))
            sys.exit(0)
    except Exception:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        break
    time.sleep(0.02)
print("not ready")
PY
)
  kill "$pid"; wait "$pid" 2>/dev/null
  grep -E "engine verified|loaded" "$OUT/serve-8b.log" | tail -n 2
  note "pipeline 8B: convert $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s, build $(awk "BEGIN{printf \"%.1f\", $t2-$t1}") s, serve start-to-ready $ready"
  local ids
  ids=$(python3 -c "import random; r=random.Random(5); print(','.join(['128000']+[str(r.randrange(128000)) for _ in range(63)]))")
  local a b
  a=$(timeout 200 "$B/kiln" generate "$M/llama8b" --prompt-ids "$ids" --max-tokens 16 2>/dev/null)
  b=$(timeout 200 "$B/kiln" generate "$eng" --prompt-ids "$ids" --max-tokens 16 2>/dev/null)
  note "pipeline 8B greedy ids, HF vs engine (64-token prompt: tuned cuBLASLt prefill): $([ -n "$a" ] && [ "$a" = "$b" ] && echo identical || echo "DIFFERENT: $a / $b")"
}

serving() {
  step "serving over HTTP: kiln serve + kiln_loadgen (8B-shaped FP8, FP8 KV)"
  model llama8b llama-3.1-8b --fp8-kv-cache
  "$B/kiln" serve "$M/llama8b" --port 8378 --tokenizer "$B/tokenizers/llama3_1" \
    --served-model-name llama_3.1_8b_engine_fp8 --max-batch-size 256 >"$OUT/serve-bench.log" 2>&1 &
  local pid=$! i
  for i in $(seq 600); do curl -sf localhost:8378/health >/dev/null && break; sleep 0.1; done
  curl -s localhost:8378/v1/completions -H "Content-Type: application/json" -d '{"model": "llama_3.1_8b_engine_fp8", "prompt": "The capital of France is", "max_tokens": 50, "temperature": 0.5}' |
    python3 -c "import json,sys; r=json.load(sys.stdin); print('seed curl:', r['object'], r['choices'][0]['finish_reason'], r['usage'])"
  local ios=("128 128" "2048 128") cs=(1 8 64 256)
  [ -n "${KILN_SERVING:-}" ] && ios=("128 128") && cs=($KILN_SERVING) # e.g. "1 64"
  for io in "${ios[@]}"; do
    set -- $io
    for c in "${cs[@]}"; do
      local n=$((c * 4)); [ $n -lt 16 ] && n=16
      timeout 150 "$B/kiln_loadgen" --url http://127.0.0.1:8378 --model llama_3.1_8b_engine_fp8 \
        --concurrency $c --requests $n --input-len $1 --output-len $2 --json 2>/dev/null |
        tail -n 1 | tee -a "$OUT/serving.log"
      note "serving $1/$2 c=$c: $(tail -n 1 "$OUT/serving.log")"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null
}

probe() {
  step "cuBLASLt FP8 GEMM probe (prefill shapes)"
  timeout 120 "$B/probe_gemm" 2048 2>&1 | tee "$OUT/probe_gemm.log" | grep -E "^M=|best"
  step "SASS of the skinny GEMM main loop (load batching)"
  cuobjdump -sass "$B/kiln" 2>/dev/null | awk '/Function : .*k_gemvILb0/{f=1} f&&/EXIT/{exit} f' |
    grep -oE "(LDG\S*|HMMA\S*|QMMA\S*|IMMA\S*|LDS\S*)" | uniq -c | head -20
}

# Batch-1 decode at context 128 under several environments, interleaved, each twice:
# KILN_AB="label=ENV=1 ENV2=2;label2=..." (an empty environment is the default build; KILN_BIN=
# NAME in an environment runs $B/NAME instead of $B/kiln, e.g. an older build carried beside).
ab() {
  model llama8b llama-3.1-8b --fp8-kv-cache
  step "A/B: batch-1 decode, context ${KILN_AB_CTX:-128}"
  local IFS_=$IFS cfgs rep cfg label envs
  IFS=';' read -ra cfgs <<<"${KILN_AB:-base=}"
  IFS=$IFS_
  for rep in 1 2; do
    for cfg in "${cfgs[@]}"; do
      label=${cfg%%=*}; envs=${cfg#*=}
      local bin=kiln kv
      for kv in $envs; do [[ $kv == KILN_BIN=* ]] && bin=${kv#KILN_BIN=}; done
      env $envs "$B/$bin" bench "$M/llama8b" --contexts "${KILN_AB_CTX:-128}" --prompts none \
        --batches "${KILN_AB_BATCHES:-none}" --steps 128 2>&1 | tee -a "$OUT/ab.log" |
        grep -E "^decode" | while read -r l; do note "ab $label #$rep: $l"; done
    done
  done
}

sanitize() {
  step "compute-sanitizer memcheck on the kernel tests"
  local t
  for t in test_cuda_ops test_cuda_sample; do
    timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/$t" >"$OUT/memcheck-$t.log" 2>&1
    note "memcheck $t: exit $? ($(grep -c 'Invalid' "$OUT/memcheck-$t.log") invalid accesses)"
  done
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "${@:-all}"; do
  case $what in
    all) correct; bench; compare; sanitize ;;
    quick|tests|correct|bench|profile|tprof|compare|sanitize|probe|engine|throughput|pipeline|serving|ab) $what ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done
echo; echo "==== summary ($(date -u +%F) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
printf '%s\n' "${summary[@]}"
