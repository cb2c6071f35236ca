#!/usr/bin/env bash
# Self-reenactment report on every GRID clip (30 of speaker s1 + 4 other speakers), CPU.
# Resumable: each finished clip keeps <out>/<clip>/result.json and --reuse skips it.
# --track-steps 400: the tracker's default 150 steps leaves the first frames of many GRID clips
# unconverged (landmark errors of 30-160 px), see docs/RESULTS.md.
# Usage: scripts/eval_selfreenact.sh [OUT_DIR] [extra options, e.g. --device cuda]
set -eu
OUT=${1:-out/eval_selfreenact}
shift || true
DATA=${HEADSPLAT_DATA:-../shared/data}
mkdir -p "$(dirname "$OUT")"
exec python -m avatar_core eval selfreenact "$DATA"/grid/speakers/*.mpg "$DATA"/grid/s1/*.mpg \
    --out "$OUT" --quality fast --size 256 --track-steps 400 --reuse "$@"
