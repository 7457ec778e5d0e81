#!/usr/bin/env bash
# Extracts MaskBench's data (guidance-ai/jsonschemabench, maskbench/data/*.json: one schema with
# valid and invalid instances per file) from a bare git mirror into OUT (default
# build/maskbench), for bench_maskbench. The data stays out of this repository.
#   bench/maskbench-extract.sh /path/to/jsonschemabench.git [OUT]
# Files whose blobs the mirror lacks are listed in OUT/.missing (bench_maskbench counts them).
set -euo pipefail
git_dir=${1:?usage: $0 MIRROR_GIT_DIR [OUT]}
out=${2:-build/maskbench}
mkdir -p "$out"
: >"$out/.missing"
rev=$(git --git-dir="$git_dir" rev-parse HEAD)
git --git-dir="$git_dir" ls-tree -r HEAD maskbench/data | while read -r _ _ sha path; do
  name=$(basename "$path")
  if ! git --git-dir="$git_dir" cat-file blob "$sha" >"$out/$name" 2>/dev/null; then
    rm -f "$out/$name"
    echo "$name" >>"$out/.missing"
  fi
done
echo "$rev" >"$out/.rev"
echo "maskbench: $(ls "$out" | wc -l) files in $out, $(wc -l <"$out/.missing") missing from the mirror (commit $rev)"
