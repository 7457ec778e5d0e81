#!/usr/bin/env bash
# kiln generate --help lists every option its parser takes (--prompt was missing once).
set -euo pipefail
bin=$1
help=$("$bin" generate --help 2>&1)
for opt in --prompt --prompt-ids --max-tokens --temperature --top-p --top-k --seed --ignore-eos \
  --dump-logits; do
  printf '%s\n' "$help" | grep -qe "^  $opt " || { echo "generate --help lacks $opt"; exit 1; }
done
echo "generate --help: ok"
