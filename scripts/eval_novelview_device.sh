#!/usr/bin/env bash
# Novel-view evaluation's reconstruction and rendering on the GPU machine (the `device` tool).
# Blender (bpy) is not there: render the scan here first, into .evalcarry/nv/renders, with
#   python -m avatar_core eval novelview --out .evalcarry/nv ...   (or render_scan), then carry
# .evalcarry (see scripts/eval_selfreenact_device.sh) and run this; --reuse takes the renders.
# Usage: scripts/eval_novelview_device.sh [NAME] [extra novelview options, e.g. --quality default]
# Writes $OUT/NAME.tgz (report.md, summary.json, per_view.csv, metrics.png, strip.png).
set -u
NAME=${1:-novelview}
shift || true
OUT=${OUT:-/tmp/out}
DIR=/tmp/nv_$NAME
mkdir -p /tmp/site "$OUT" "$DIR"
if ! python3 -c "import mediapipe" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .evalcarry/whl/*.whl || exit 1
  python3 -c "import zipfile; zipfile.ZipFile('.evalcarry/mediapipe_min.zip').extractall('/tmp/site')" || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
export HEADSPLAT_CACHE_DIR=$PWD/.evalcarry/cache
export HEADSPLAT_LPIPS_WEIGHTS=$PWD/.evalcarry/lpips_alexnet_flax_layout.npz
export PYTHONUNBUFFERED=1
cp -r .evalcarry/nv/renders "$DIR/"
python3 -m avatar_core eval novelview --out "$DIR" --scan .evalcarry/headscan --reuse --quality fast \
    --device cuda "$@" 2>&1 | grep -v "^W0000\|^I0000\|INFO: Created\|absl::\|UserWarning\|Consider using\|W_SSIM"
tar czf "$OUT/$NAME.tgz" -C "$DIR" --exclude='*.safetensors' --exclude='renders' .
