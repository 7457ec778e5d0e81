#!/usr/bin/env bash
# kiln chat on the tiny model: two user turns in, two replies out (one line each), exit 0; a
# model folder without a chat template is refused with a clear message.
set -euo pipefail
bin=$1 model=$2
out=$(printf 'Hello there\nAnd again\n' | "$bin" chat "$model" --device cpu --max-tokens 4 \
  --temperature 0 --system "Be brief." 2>/dev/null)
lines=$(printf '%s\n' "$out" | wc -l)
[ "$lines" -ge 2 ] || { echo "expected two replies, got: $out"; exit 1; }
# greedy replies are reproducible
again=$(printf 'Hello there\nAnd again\n' | "$bin" chat "$model" --device cpu --max-tokens 4 \
  --temperature 0 --system "Be brief." 2>/dev/null)
[ "$out" = "$again" ] || { echo "greedy chat differs between runs"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$model"/config.json "$model"/*.safetensors "$model"/tokenizer.json "$tmp"/
[ -f "$model/hf_quant_config.json" ] && cp "$model/hf_quant_config.json" "$tmp"/
if msg=$(echo hi | "$bin" chat "$tmp" --device cpu 2>&1); then
  echo "chat without a template should fail"; exit 1
fi
printf '%s\n' "$msg" | grep -q "no chat template" || { echo "unclear error: $msg"; exit 1; }
echo "chat: ok"
