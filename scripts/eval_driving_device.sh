#!/usr/bin/env bash
# Self-reenactment on the expressive driving videos on the GPU machine (the `device` tool),
# one worker per video. Runs in the repository root there; needs the ignored folder
# .evalcarry/ (named in `carry`), prepared here with:
#   mkdir -p .evalcarry/cache .evalcarry/driving
#   cp ~/.cache/headsplat/*.safetensors ~/.cache/headsplat/*.npz .evalcarry/cache/   # open head
#   cp -r ~/.cache/headsplat/face_models_v1 .evalcarry/cache/                         # face models
#   cp ../shared/data/driving/*.mp4 .evalcarry/driving/
#   cp ../shared/data/metrics/lpips_alexnet_flax_layout.npz .evalcarry/
#   git archive REV avatar_core cuda_backend pyproject.toml | tar -x -C .evalcarry/old   # optional
# Usage: CODE=. NAME=new [DRIVING=folder] scripts/eval_driving_device.sh [SECONDS] [-- extra selfreenact options]
#   CODE: the tree whose avatar_core runs (default: this checkout; .evalcarry/old for a baseline)
# Writes $OUT/$NAME.tgz (per-video result.json, plots, strips, logs) for
#   python -m avatar_core eval selfreenact ... --out DIR --reuse   (merges them into one report)
set -u
LIMIT=${1:-540}
shift 2>/dev/null || true
[ "${1:-}" = "--" ] && shift
OUT=${OUT:-/tmp/out}
NAME=${NAME:-new}
CODE=$(cd "${CODE:-.}" && pwd)
CARRY=$PWD/.evalcarry
RUN=/tmp/drv_$NAME
mkdir -p "$RUN" "$OUT"
export PYTHONPATH=$CODE
export HEADSPLAT_CACHE_DIR=$CARRY/cache
export HEADSPLAT_LPIPS_WEIGHTS=$CARRY/lpips_alexnet_flax_layout.npz
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
pids=()
for v in "$CARRY"/${DRIVING:-driving}/*.mp4; do   # DRIVING: another folder under .evalcarry
  n=$(basename "$v" .mp4)
  (cd "$CODE" && timeout "$LIMIT" python3 -m avatar_core eval selfreenact "$v" --out "$RUN/$n" --quality fast \
      --device cuda --reuse "$@") > "$RUN/$n.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for f in "$RUN"/*.log; do echo "== $f"; grep -v "^\[\|UserWarning\|W_SSIM" "$f" | tail -n 6; done
cd "$RUN" && find . -name '*.safetensors' -delete
tar czf "$OUT/$NAME.tgz" .
ls -la "$OUT"
