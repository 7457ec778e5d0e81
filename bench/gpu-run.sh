#!/usr/bin/env bash
# The GPU session: run on the GPU machine from the repository root (or from the .gpuwork/ folder
# bench/gpu-pack.sh fills: bench/, tools/ and .devcarry/), with the binaries of
# bench/gpu-prepare.sh in .devcarry/.
# Builds nothing; checks correctness, then times. Every test's exit status is kept (no pipe
# between a test and its status): a test that fails, times out, or exits 77 ("no GPU: skipped",
# right for ctest on a machine without one, a failure here) is a FAIL. The last lines printed
# are the PASS/FAIL table and the figures; the script exits 1 if any row failed. Logs go to $OUT
# (returned by the device tool).
#   bench/gpu-run.sh [all|quick|tests|faults|tolerances|correct|bench|profile|tprof|compare|
#                     sanitize|probe|engine|ada|throughput|regress|pipeline|serving|http|
#                     structured|httpbench|ab|overlap]...
# tests: every GPU correctness test, fast (kernel tests, whole-model tests, the engine on the
# GPU, and the planted faults each caught): what a final run after a merge needs.
set -uo pipefail
B=$PWD/.devcarry
export LD_LIBRARY_PATH="$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" # carried libcmocka
OUT=${OUT:-/tmp/kiln-out}
M=${KILN_MODELS:-/tmp/kiln-models}
mkdir -p "$OUT" "$M"
summary=() table=() failed=0
note() { summary+=("$*"); echo "## $*"; }
step() { echo; echo "== $* ($(date +%T))"; }

# record NAME STATUS DETAIL: one row of the PASS/FAIL table (STATUS PASS or FAIL)
record() {
  table+=("$(printf '%-4s  %-44s %s' "$2" "$1" "$3")")
  [ "$2" = PASS ] || failed=1
  echo "## $2 $1: $3"
}

# run_logged LOG TIMEOUT CMD...: CMD under timeout, its output in LOG, its exit status in the
# caller's rc (no pipe between them, and safe under set -e)
run_logged() {
  local log=$1 limit=$2
  shift 2
  rc=0
  timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
}

# check NAME LOG TIMEOUT CMD...: runs CMD with its output in LOG and records it: PASS only on
# exit 0; 77 (skipped), 124 (timed out) and every other status fail.
check() {
  local name=$1 log=$2 limit=$3 rc
  shift
  run_logged "$@"
  case $rc in
    0) record "$name" PASS "$(tail -n 1 "$log")" ;;
    77) record "$name" FAIL "exit 77: skipped (no GPU visible?) -- $(tail -n 1 "$log")" ;;
    124) record "$name" FAIL "timed out after $limit s" ;;
    *) record "$name" FAIL "exit $rc -- $(grep -m 3 -E 'FAIL|rror' "$log" | tr '\n' ' ')" ;;
  esac
  return $rc
}

# expect_fail NAME LOG TIMEOUT CMD...: a planted fault must make CMD fail (exit 1, its checks);
# PASS when it does, FAIL when it passes or cannot run (any other status).
expect_fail() {
  local name=$1 log=$2 rc
  shift
  run_logged "$@"
  case $rc in
    1) record "$name" PASS "caught: $(grep -c FAIL "$log") failed check(s): $(grep -m 2 FAIL "$log" |
      sed 's/  */ /g' | tr '\n' ';')" ;;
    0) record "$name" FAIL "NOT caught: every check passed" ;;
    *) record "$name" FAIL "exit $rc (expected 1) -- $(tail -n 1 "$log")" ;;
  esac
}

model() { # name preset extra-args
  [ -f "$M/$1/config.json" ] && return 0
  "$B/kiln" mkmodel "$M/$1" --preset "$2" --seed 1 "${@:3}" 2>&1 | tail -n 2
}
models() { model tiny tiny; model tiny-fp8kv tiny --fp8-kv-cache; model small small --fp8-kv-cache; }

# the whole-model configurations: model KV-dtype [strict]
model_specs=("tiny fp8 strict" "tiny bf16 strict" "tiny-fp8kv fp8 strict" "small fp8")

quick() {
  step "kernel tests + tiny model"
  model tiny tiny
  check test_cuda_ops "$OUT/test_cuda_ops.log" 120 "$B/test_cuda_ops"
  check test_cuda_sample "$OUT/test_cuda_sample.log" 120 "$B/test_cuda_sample"
  check "test_cuda_model tiny fp8" "$OUT/test_cuda_model-tiny-fp8.log" 120 \
    "$B/test_cuda_model" "$M/tiny" fp8 strict
}

tests() {
  step "models"
  models
  step "kernel tests vs CPU twins"
  check test_cuda_ops "$OUT/test_cuda_ops.log" 120 "$B/test_cuda_ops"
  check test_cuda_sample "$OUT/test_cuda_sample.log" 120 "$B/test_cuda_sample"
  grep -E "exempt rows" "$OUT/test_cuda_sample.log" | tail -n 1
  step "whole model vs CPU"
  local spec
  for spec in "${model_specs[@]}"; do
    set -- $spec
    check "test_cuda_model $1 $2" "$OUT/test_cuda_model-$1-$2.log" 120 \
      "$B/test_cuda_model" "$M/$1" "$2" ${3:-}
  done
  engine
  faults
}

# The planted bugs of cuda.c (KILN_CUDA_FAULT, built into test_cuda_model_faults): each must make
# the whole-model test fail -- on the strict tiny model and on the deeper small one, whose
# bounds are the FP8-noise ones. KILN_FAULTS="fault ..." overrides the list.
faults() {
  step "planted faults: test_cuda_model must fail"
  models
  local f spec
  for f in ${KILN_FAULTS:-scale:1.01 rope:37 blocktable}; do
    for spec in "tiny fp8 strict" "small fp8"; do
      set -- $spec
      KILN_CUDA_FAULT=$f expect_fail "fault $f: test_cuda_model $1 $2" \
        "$OUT/fault-$f-$1.log" 120 "$B/test_cuda_model_faults" "$M/$1" "$2" ${3:-}
    done
  done
}

# The spread of test_cuda_model's figures over KILN_TOL_SEEDS prompts (default 8) for every
# configuration, and the same figures under planted faults: the measurements the bounds in
# tests/cuda/test_cuda_model.c are set from (bench/gpu-tolerances.py prints the table).
tolerances() {
  step "tolerances: test_cuda_model over seeds, and under faults"
  models
  mkdir -p "$OUT/tol"
  local spec seed f n=${KILN_TOL_SEEDS:-8}
  for spec in "${model_specs[@]}"; do
    (
      set -- $spec
      for seed in $(seq 0 $((n - 1))); do
        KILN_TEST_SEED=$seed timeout 120 "$B/test_cuda_model" "$M/$1" "$2" ${3:-} \
          >"$OUT/tol/ok-$1-$2-s$seed.log" 2>&1
        echo "exit $?" >>"$OUT/tol/ok-$1-$2-s$seed.log"
      done
    ) &
  done
  wait
  for f in ${KILN_TOL_FAULTS:-scale:1.01 scale:1.03 scale:1.1 rope:37 rope:90 blocktable}; do
    for spec in "tiny fp8 strict" "small fp8"; do
      (
        set -- $spec
        KILN_CUDA_FAULT=$f timeout 120 "$B/test_cuda_model_faults" "$M/$1" "$2" ${3:-} \
          >"$OUT/tol/fault-$f-$1-$2.log" 2>&1
        echo "exit $?" >>"$OUT/tol/fault-$f-$1-$2.log"
      ) &
    done
    wait
  done
  python3 bench/gpu-tolerances.py "$OUT/tol" | tee "$OUT/tolerances.txt"
  note "tolerances: $(grep -c . "$OUT/tolerances.txt") lines in tolerances.txt"
}

correct() {
  tests
  step "reference fixtures (PyTorch FP8 simulation + transformers)"
  PYTHONUNBUFFERED=1 timeout 300 python3 tools/reference/make_fixtures.py "$OUT/reference_tiny.json" \
    tiny="$M/tiny" tiny-fp8kv="$M/tiny-fp8kv" 2>&1 | tail -n 8
  [ -s "$OUT/reference_tiny.json" ] && record fixtures PASS "$(wc -c <"$OUT/reference_tiny.json") bytes" ||
    record fixtures FAIL "no reference_tiny.json"
}

bench() {
  step "8B-shaped model"
  local t0=$(date +%s)
  model llama8b llama-3.1-8b --fp8-kv-cache
  note "mkmodel llama-3.1-8b: $(( $(date +%s) - t0 )) s"
  step "kiln bench (latency)"
  check "kiln bench 8B" "$OUT/bench-8b.log" 400 "$B/kiln" bench "$M/llama8b" --json
  grep -E "^(decode|prefill|device|measured)" "$OUT/bench-8b.log" | while read -r l; do note "$l"; done
  step "memory at max_seq_len 2560, batch 1"
  check "kiln bench 8B memory" "$OUT/bench-8b-mem.log" 200 "$B/kiln" bench "$M/llama8b" \
    --max-seq-len 2560 --max-batch-size 1 --contexts 2048 --prompts 2048 --batches none \
    --max-num-tokens 2048
  note "$(grep '^device memory' "$OUT/bench-8b-mem.log")"
}

profile() {
  step "per-op profile (no graphs)"
  model llama8b llama-3.1-8b --fp8-kv-cache
  timeout 200 "$B/kiln" bench "$M/llama8b" --profile --contexts 128,8192 --prompts 2048 --batches "${KILN_PROF_BATCHES:-32}" \
    --steps 16 >"$OUT/bench-8b-profile.log" 2>&1
  tail -n 40 "$OUT/bench-8b-profile.log"
}

# Batched decode at a long context (the regime of the 128/2048 and 2048/2048 throughput points):
# step time with and without the per-op profile. KILN_TPROF="BATCHES CONTEXT", e.g. "64,256 1024".
tprof() {
  model llama8b llama-3.1-8b --fp8-kv-cache
  set -- ${KILN_TPROF:-64,256 1024}
  step "batched decode at context $2 (batches $1)"
  timeout 200 "$B/kiln" bench "$M/llama8b" --contexts none --prompts none --batches "$1" \
    --batch-context "$2" --steps 16 >"$OUT/bench-8b-batchctx.log" 2>&1
  grep -E "^decode" "$OUT/bench-8b-batchctx.log" | while read -r l; do note "$l"; done
  timeout 200 "$B/kiln" bench "$M/llama8b" --profile --contexts none --prompts none --batches "$1" \
    --batch-context "$2" --steps 8 >"$OUT/bench-8b-batchctx-profile.log" 2>&1
  tail -n 30 "$OUT/bench-8b-batchctx-profile.log"
}

# kiln's 8B logits (one prefill of 256 positions) against the PyTorch simulation of its FP8
# math; the bound comes from the simulation's own noise (compare_logits.py). The planted faults
# of kiln_faults (KILN_COMPARE_FAULTS) must fail the same bound.
compare() {
  step "8B logits vs PyTorch FP8 simulation, 256 positions"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local ids f args=()
  ids=$(python3 -c "import random; r=random.Random(7); print(','.join(['128000']+[str(r.randrange(128000)) for _ in range(255)]))")
  check "kiln generate 8B (logits)" "$OUT/compare-gen.log" 200 "$B/kiln" generate "$M/llama8b" \
    --prompt-ids "$ids" --max-tokens 1 --dump-logits /tmp/kiln-8b-logits.bin && args+=(kiln=/tmp/kiln-8b-logits.bin)
  for f in ${KILN_COMPARE_FAULTS:-rope:100}; do
    KILN_CUDA_FAULT=$f timeout 200 "$B/kiln_faults" generate "$M/llama8b" --prompt-ids "$ids" \
      --max-tokens 1 --dump-logits "/tmp/kiln-8b-$f.bin" >>"$OUT/compare-gen.log" 2>&1 &&
      args+=("fault-$f=/tmp/kiln-8b-$f.bin")
  done
  PYTHONUNBUFFERED=1 timeout 400 python3 tools/reference/compare_logits.py "$M/llama8b" "$ids" \
    "$OUT/compare-8b.json" "${args[@]}" >"$OUT/compare-8b.log" 2>&1
  echo "exit $?" >>"$OUT/compare-8b.log"
  tail -n 12 "$OUT/compare-8b.log"
  local label verdict detail
  while read -r _ label verdict detail; do
    if [ "$label" = kiln ]; then
      record "8B vs PyTorch sim: kiln" "$verdict" "$detail"
    else
      [ "$verdict" = FAIL ] && record "8B vs PyTorch sim: $label" PASS "caught: $detail" ||
        record "8B vs PyTorch sim: $label" FAIL "NOT caught: $detail"
    fi
  done < <(grep '^verdict ' "$OUT/compare-8b.log")
  grep -q '^verdict kiln ' "$OUT/compare-8b.log" || record "8B vs PyTorch sim: kiln" FAIL \
    "no verdict: $(tail -n 2 "$OUT/compare-8b.log" | tr '\n' ' ')"
}

engine() {
  step "runtime engine on the GPU (tiny model, real tokenizer)"
  model tiny-tok tiny --tokenizer "$B/tokenizers/llama3_1"
  check "test_engine_model cuda" "$OUT/test_engine_model.log" 180 "$B/test_engine_model" \
    "$M/tiny-tok" cuda
  grep -E "near-tie|noise" "$OUT/test_engine_model.log" | head -n 8
}

# The Ada variant (bench/gpu-prepare.sh ada: PTX for compute_89 only) on this Hopper GPU: the
# driver compiles it, and the backend takes the sm_89 paths (register GEMV, no programmatic
# launch, no TMA: kiln_cuda_hopper_code). Kernel and model tests, then batch-1 decode beside the
# Hopper build.
ada() {
  local A=$B/ada spec
  step "Ada variant (compute_89 PTX, JIT-compiled here): tests"
  models
  check "ada test_cuda_ops" "$OUT/ada-test_cuda_ops.log" 300 "$A/test_cuda_ops"
  check "ada test_cuda_sample" "$OUT/ada-test_cuda_sample.log" 300 "$A/test_cuda_sample"
  for spec in "${model_specs[@]}"; do
    set -- $spec
    check "ada test_cuda_model $1 $2" "$OUT/ada-test_cuda_model-$1-$2.log" 300 \
      "$A/test_cuda_model" "$M/$1" "$2" ${3:-}
  done
  step "Ada variant: batch-1 decode (8B-shaped FP8), Hopper build beside"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local bin
  for bin in "$A/kiln" "$B/kiln"; do
    check "decode bench $(basename "$(dirname "$bin")")/kiln" "$OUT/ada-bench-$(basename "$(dirname "$bin")").log" 200 \
      "$bin" bench "$M/llama8b" --contexts 128,2048 --prompts 2048 --batches 8 --steps 128
    grep -E "^(decode|prefill)" "$OUT/ada-bench-$(basename "$(dirname "$bin")").log" |
      while read -r l; do note "$(basename "$(dirname "$bin")"): $l"; done
  done
}

# kiln bench --throughput (8B-shaped FP8, FP8 KV, all requests submitted at once, eos ignored)
# at the nine ISL/OSL points of TensorRT-LLM's published H100 table. Each point as
# "ISL OSL REQUESTS BATCH": session 17's choices (bench/RESULTS.md): the batch is what the KV
# pool (~1.0M tokens on an H100 80GB) holds with every sequence at full length, so nothing is
# preempted (128/2048 stays at 384: 448 measured 1% slower), and one wave of requests at the
# long-output points (a point cannot go below OSL steps); all nine take ~8 minutes on an H100,
# so a call runs them in two groups (KILN_THROUGHPUT).
# KILN_THROUGHPUT="I O N B;I O N B" runs other points; KILN_BIN=NAME runs $B/NAME; KILN_TP_ARGS
# adds options (e.g. "--max-num-tokens 16384").
tp_points="128 128 4096 1024;128 2048 384 384;128 4096 232 232;500 2000 384 384;1000 1000 480 480"
tp_points+=";2048 128 512 256;2048 2048 240 240;5000 500 176 176;20000 2000 44 44"
tp_run() { # label bin ISL OSL N BATCH
  local log="$OUT/throughput.log"
  echo "-- $1: $3/$4 x$5 batch $6 ${KILN_TP_ARGS:-}" >>"$log"
  local rc=0
  timeout 180 "$B/$2" bench "$M/llama8b" --throughput --num-requests "$5" --input-len "$3" \
    --output-len "$4" --max-batch-size "$6" ${KILN_TP_ARGS:-} --json >"$OUT/tp.tmp" 2>&1 || rc=$?
  cat "$OUT/tp.tmp" >>"$log"
  if [ $rc -ne 0 ]; then
    record "throughput $1 $3/$4" FAIL "exit $rc: $(tail -n 1 "$OUT/tp.tmp")"
    return
  fi
  note "throughput $1 $3/$4 x$5 batch $6 ${KILN_TP_ARGS:-}: $(grep -E '^output throughput|^elapsed|^TTFT|^inter|^engine thread' "$OUT/tp.tmp" |
    tr -s ' ' | tr '\n' ';')"
}
throughput() {
  step "throughput (kiln bench --throughput), 8B-shaped model, FP8 KV"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local IFS_=$IFS pts p
  IFS=';' read -ra pts <<<"${KILN_THROUGHPUT:-$tp_points}"
  IFS=$IFS_
  for p in "${pts[@]}"; do tp_run "${KILN_BIN:-kiln}" "${KILN_BIN:-kiln}" $p; done
}
# 2048/2048 with an older build (.devcarry/kiln_prev, bench/gpu-prepare.sh KILN_PREV_BUILD) and
# this one, one after the other on the same machine. KILN_REGRESS="I O N B" picks the point.
regress() {
  step "regression check: kiln_prev against kiln"
  model llama8b llama-3.1-8b --fp8-kv-cache
  tp_run kiln_prev kiln_prev ${KILN_REGRESS:-2048 2048 256 256}
  tp_run kiln kiln ${KILN_REGRESS:-2048 2048 256 256}
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
  check "kiln convert 8B" "$OUT/convert-8b.log" 300 "$B/kiln" convert "$M/llama8b" -o "$ck" --fp8-kv-cache
  t1=$(date +%s.%N)
  check "kiln build 8B" "$OUT/build-8b.log" 300 "$B/kiln" build "$ck" -o "$eng" --max-batch-size 1 \
    --max-input-len 2048 --max-seq-len 2560
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
  [ "$ready" = "not ready" ] && record "kiln serve engine: ready + completion" FAIL "$ready" ||
    record "kiln serve engine: ready + completion" PASS "$ready"
  note "pipeline 8B: convert $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s, build $(awk "BEGIN{printf \"%.1f\", $t2-$t1}") s, serve start-to-ready $ready"
  local ids a b
  ids=$(python3 -c "import random; r=random.Random(5); print(','.join(['128000']+[str(r.randrange(128000)) for _ in range(63)]))")
  a=$(timeout 200 "$B/kiln" generate "$M/llama8b" --prompt-ids "$ids" --max-tokens 16 2>/dev/null)
  b=$(timeout 200 "$B/kiln" generate "$eng" --prompt-ids "$ids" --max-tokens 16 2>/dev/null)
  if [ -n "$a" ] && [ "$a" = "$b" ]; then
    record "pipeline 8B greedy ids, HF vs engine" PASS "identical (16 tokens)"
  else
    record "pipeline 8B greedy ids, HF vs engine" FAIL "DIFFERENT: $a / $b"
  fi
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
      local rc=0
      timeout 150 "$B/kiln_loadgen" --url http://127.0.0.1:8378 --model llama_3.1_8b_engine_fp8 \
        --concurrency $c --requests $n --input-len $1 --output-len $2 --json >"$OUT/lg.tmp" 2>/dev/null ||
        rc=$?
      tail -n 1 "$OUT/lg.tmp" | tee -a "$OUT/serving.log"
      [ $rc -eq 0 ] || record "kiln_loadgen $1/$2 c=$c" FAIL "exit $rc"
      note "serving $1/$2 c=$c: $(tail -n 1 "$OUT/serving.log")"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null
}

# Issue 16 item 3: the offline figure (kiln bench --throughput) and the same point over HTTP
# (kiln serve + kiln_loadgen, concurrency = the batch limit, the same request count), one after
# the other; a row passes when HTTP reaches 95% of offline. KILN_HTTP_POINTS="I O N B;...".
http() {
  step "throughput over HTTP vs offline (8B-shaped FP8, FP8 KV)"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local IFS_=$IFS pts p off on rc i pid
  IFS=';' read -ra pts <<<"${KILN_HTTP_POINTS:-128 128 1024 256;2048 128 512 256;500 2000 256 256}"
  IFS=$IFS_
  for p in "${pts[@]}"; do
    set -- $p
    tp_run kiln kiln "$@"
    off=$(awk '/^output throughput/{print $3; exit}' "$OUT/tp.tmp")
    "$B/kiln" serve "$M/llama8b" --port 8379 --tokenizer "$B/tokenizers/llama3_1" \
      --served-model-name m --max-batch-size "$4" >"$OUT/serve-http-$1-$2.log" 2>&1 &
    pid=$!
    for i in $(seq 600); do curl -sf localhost:8379/health >/dev/null && break; sleep 0.1; done
    rc=0
    timeout 240 "$B/kiln_loadgen" --url http://127.0.0.1:8379 --model m --concurrency "$4" \
      --requests "$3" --input-len "$1" --output-len "$2" >"$OUT/lg-$1-$2.log" 2>&1 || rc=$?
    kill "$pid"; wait "$pid" 2>/dev/null
    on=$(awk '$1 == "output" && $3 == "tok/s," {print $2; exit}' "$OUT/lg-$1-$2.log")
    note "http $1/$2 x$3 c=$4: offline ${off:-?} tok/s, HTTP ${on:-?} tok/s; $(grep -E 'TTFT|ITL' "$OUT/lg-$1-$2.log" | tr -s ' ' | tr '\n' ';')"
    if [ $rc -ne 0 ] || [ -z "$on" ] || [ -z "$off" ]; then
      record "http $1/$2 >= 95% of offline" FAIL "loadgen exit $rc: $(tail -n 2 "$OUT/lg-$1-$2.log" | tr '\n' ' ')"
    else
      awk -v a="$on" -v b="$off" 'BEGIN{exit !(a >= 0.95*b)}' && local v=PASS || local v=FAIL
      record "http $1/$2 >= 95% of offline" $v "$(awk -v a="$on" -v b="$off" 'BEGIN{printf "%.1f%% (%s / %s tok/s)", 100*a/b, a, b}')"
    fi
  done
}

# Issue 14: decode under a JSON Schema beside the same decode unconstrained (batch 1 at context
# 128, batch 64): targets >= 95% (batch 1) and >= 90% (batch 64) of unconstrained. Two schemas:
# "builtin" (unbounded values: on the random model the first string never closes, so its masks
# are the string-interior ones) and "bounded" (every value ends: keys, numbers, string ends).
structured() {
  step "constrained decode (kiln bench --json-schema), 8B-shaped FP8"
  model llama8b llama-3.1-8b --fp8-kv-cache
  local js r1 r64 log
  for js in ${KILN_SCHEMAS:-builtin bounded}; do
    log="$OUT/bench-8b-json-$js.log"
    check "kiln bench --json-schema $js 8B" "$log" 300 "$B/kiln" bench "$M/llama8b" \
      --contexts 128 --prompts none --batches 64 --json-schema "$js" --tokenizer "$B/tokenizers/llama3_1"
    grep -E "^decode|^json schema" "$log" | while read -r l; do note "$js: $l"; done
    r1=$(grep -E "^decode  batch 1, .*json schema" "$log" | sed -E 's/.*\(([0-9.]+)% of.*/\1/')
    r64=$(grep -E "^decode  batch  64, .*json schema" "$log" | sed -E 's/.*\(([0-9.]+)% of.*/\1/')
    awk -v r="${r1:-0}" 'BEGIN{exit !(r >= 95)}' && record "json schema $js b1 >= 95% of free" PASS "$r1%" ||
      record "json schema $js b1 >= 95% of free" FAIL "${r1:-none}%"
    awk -v r="${r64:-0}" 'BEGIN{exit !(r >= 90)}' && record "json schema $js b64 >= 90% of free" PASS "$r64%" ||
      record "json schema $js b64 >= 90% of free" FAIL "${r64:-none}%"
  done
}

# Issue 18: the HTTP layer's cost per request on a quiet host: the old server (evhttp, commit
# 76bd589) and the new one (own transport), both CPU-only Release builds serving the tiny model,
# pinned to cores 0-7, bench_http pinned to 8-15, alternated old/new twice per row. Needs
# $B/http/{kiln_old,kiln_new,bench_http} (bench/gpu-prepare.sh http).
httpbench() {
  step "HTTP request overhead: old (evhttp) vs new transport, tiny model, CPU builds"
  model tiny-tok tiny --tokenizer "$B/tokenizers/llama3_1"
  local row rep bin pid i
  for row in "health 1" "tokenize 1" "health 4" "tokenize 4" "chunked 4"; do
    set -- $row
    for rep in 1 2; do
      for bin in old new; do
        taskset -c 0-7 "$B/http/kiln_$bin" serve "$M/tiny-tok" --port 8390 >"$OUT/httpbench-serve.log" 2>&1 &
        pid=$!
        for i in $(seq 300); do curl -sf localhost:8390/health >/dev/null && break; sleep 0.1; done
        note "httpbench $bin #$rep: $(taskset -c 8-15 "$B/http/bench_http" 8390 3 "$2" "$1" 2>&1 | tail -n 1)"
        kill "$pid"; wait "$pid" 2>/dev/null
      done
    done
  done
}

# Issue 16: can a decode step's GEMMs (one micro-batch) and attention (the other) run at once?
# tests/cuda/probe_overlap at three regimes (SEQS CONTEXT): 128/4096's batch at its mean context,
# 128/2048's, 128/128's; KILN_OVERLAP="SEQS CTX;..." runs others. Each line ends in the overlap:
# 0 = none, 1 = the shorter of the two hidden entirely.
overlap() {
  step "GEMMs beside attention (probe_overlap)"
  local IFS_=$IFS pts p
  IFS=';' read -ra pts <<<"${KILN_OVERLAP:-232 2200;448 1100;1024 192}"
  IFS=$IFS_
  for p in "${pts[@]}"; do
    set -- $p
    check "probe_overlap $1 $2" "$OUT/probe_overlap-$1-$2.log" 200 "$B/probe_overlap" "$1" "$2" green
    grep -E "alone|both|green" "$OUT/probe_overlap-$1-$2.log" | while read -r l; do note "overlap $1/$2: $l"; done
  done
}

probe() {
  step "cuBLASLt FP8 GEMM probe (prefill shapes)"
  timeout 120 "$B/probe_gemm" 2048 >"$OUT/probe_gemm.log" 2>&1
  grep -E "^M=|best" "$OUT/probe_gemm.log"
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
        --batches "${KILN_AB_BATCHES:-none}" --steps 128 >"$OUT/ab.tmp" 2>&1 ||
        record "ab $label #$rep" FAIL "$(tail -n 1 "$OUT/ab.tmp")"
      cat "$OUT/ab.tmp" >>"$OUT/ab.log"
      grep -E "^decode" "$OUT/ab.tmp" | while read -r l; do note "ab $label #$rep: $l"; done
    done
  done
}

sanitize() {
  step "compute-sanitizer memcheck on the kernel tests"
  local t
  for t in test_cuda_ops test_cuda_sample; do
    check "memcheck $t" "$OUT/memcheck-$t.log" 300 compute-sanitizer --tool memcheck \
      --error-exitcode 9 "$B/$t"
  done
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
  record "nvidia-smi" FAIL "no GPU visible"
for what in "${@:-all}"; do
  case $what in
    all) correct; bench; compare; sanitize ;;
    quick|tests|faults|tolerances|correct|bench|profile|tprof|compare|sanitize|probe|engine|ada|\
    throughput|regress|pipeline|serving|http|structured|httpbench|ab|overlap) $what ;;
    *) echo "unknown step $what"; exit 2 ;;
  esac
done
echo; echo "==== figures ($(date -u +%F) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
printf '%s\n' "${summary[@]}"
echo; echo "==== PASS/FAIL ($(printf '%s\n' "${table[@]}" | grep -c '^PASS') passed, $(printf '%s\n' "${table[@]}" | grep -c '^FAIL') failed)"
printf '%s\n' "${table[@]}"
[ ${#table[@]} -gt 0 ] || echo "(no test ran)"
exit $failed
