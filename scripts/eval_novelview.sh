#!/usr/bin/env bash
# Novel-view report on the head scan (../shared/data/headscan), yaw -60..60, CPU + Blender (bpy).
# Usage: scripts/eval_novelview.sh [OUT_DIR] [extra options, e.g. --device cuda]
set -eu
OUT=${1:-out/eval_novelview}
shift || true
DATA=${HEADSPLAT_DATA:-../shared/data}
mkdir -p "$(dirname "$OUT")"
exec python -m avatar_core eval novelview --out "$OUT" --scan "$DATA"/headscan --quality fast --size 256 \
    --render-size 384 --samples 32 --reuse "$@"
