#!/usr/bin/env bash
# Packs what a device call needs into .gpuwork/ (git-ignored; the device tool carries it when
# named in `carry`): bench/gpu-run.sh, bench/gpu-tolerances.py, tools/reference/ and .devcarry/
# (from bench/gpu-prepare.sh) as one xz archive, to stay under the call's 64 MiB.
#   bench/gpu-pack.sh [DEST]      DEST: the checkout the device tool sends (default: this one)
# Then, on the device: cd .gpuwork && tar xJf devcarry.tar.xz && bash bench/gpu-run.sh tests
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.}/.gpuwork
[ -x .devcarry/kiln ] || { echo "gpu-pack: no .devcarry/kiln: run bench/gpu-prepare.sh first" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$dest/bench" "$dest/tools"
cp bench/gpu-run.sh bench/gpu-tolerances.py "$dest/bench/"
cp -r tools/reference "$dest/tools/" && rm -rf "$dest/tools/reference/__pycache__"
tar cf - .devcarry | xz -T0 -6 >"$dest/devcarry.tar.xz"
du -sh "$dest"
