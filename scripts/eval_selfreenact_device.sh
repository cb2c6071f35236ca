#!/usr/bin/env bash
# Self-reenactment evaluation on the GPU machine (the `device` tool), clips spread over
# parallel workers. Runs in the repository root there; needs the ignored folder .evalcarry/
# (prepared here by scripts/eval_prepare_carry.sh and named in `carry`):
#   .evalcarry/mediapipe_min.zip   mediapipe 0.10.21 cp312 wheel without the pose/hand models
#   .evalcarry/whl/protobuf-*.whl  protobuf 4.25 (mediapipe's generated code)
#   .evalcarry/cache/              HEADSPLAT_CACHE_DIR: the open head and its landmark embedding
#   .evalcarry/grid/{s1,speakers}  the GRID clips;  .evalcarry/lpips_alexnet_flax_layout.npz
# Usage: scripts/eval_selfreenact_device.sh [WORKERS] [SECONDS] [-- extra selfreenact options]
# Writes $OUT/results.tgz (per-clip folders with result.json, plots, strips; logs) for
#   python -m avatar_core eval selfreenact ... --out DIR --reuse   (merges them into one report)
set -u
WORKERS=${1:-6}
LIMIT=${2:-520}
shift 2 2>/dev/null || shift $#
[ "${1:-}" = "--" ] && shift
OUT=${OUT:-/tmp/out}
RUN=/tmp/sr_runs
mkdir -p /tmp/site "$RUN" "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .evalcarry/whl/*.whl || exit 1
python3 -c "import zipfile; zipfile.ZipFile('.evalcarry/mediapipe_min.zip').extractall('/tmp/site')" || exit 1
export PYTHONPATH=/tmp/site:$PWD
export HEADSPLAT_CACHE_DIR=$PWD/.evalcarry/cache
export HEADSPLAT_LPIPS_WEIGHTS=$PWD/.evalcarry/lpips_alexnet_flax_layout.npz
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
python3 -c "import mediapipe, numpy, torch; print('mediapipe', mediapipe.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
mapfile -t VIDEOS < <(ls .evalcarry/grid/speakers/*.mpg .evalcarry/grid/s1/*.mpg)
[ -n "${CLIPS:-}" ] && VIDEOS=("${VIDEOS[@]:0:$CLIPS}")
pids=()
if [ -n "${NOVELVIEW:-}" ]; then   # novel-view runs beside the workers (scripts/eval_novelview_device.sh)
  (OUT="$OUT" bash scripts/eval_novelview_device.sh nv_fast --quality fast
   OUT="$OUT" bash scripts/eval_novelview_device.sh nv_default --quality default) > "$RUN/novelview.log" 2>&1 &
  pids+=($!)
fi
for ((w = 0; w < WORKERS; w++)); do
  # clips finished by an earlier call (their folders returned and put in .evalcarry/sr_prev) are reused
  mkdir -p "$RUN/w$w"
  [ -d .evalcarry/sr_prev ] && cp -r .evalcarry/sr_prev/*/ "$RUN/w$w/" 2>/dev/null
  subset=()
  for ((i = w; i < ${#VIDEOS[@]}; i += WORKERS)); do subset+=("${VIDEOS[$i]}"); done
  [ ${#subset[@]} -eq 0 ] && continue
  timeout "$LIMIT" python3 -m avatar_core eval selfreenact "${subset[@]}" --out "$RUN/w$w" --quality fast \
      --device cuda --reuse "$@" > "$RUN/w$w.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for f in "$RUN"/*.log; do echo "== $f"; grep -v "^W0000\|^I0000\|INFO: Created\|absl::\|UserWarning\|Consider using\|W_SSIM\|earlier run" "$f" | grep -v "^\[" | tail -n 12; done
# one folder of clips (each worker's clip folders side by side), no avatar files; returned as
# sr_json.tgz (result.json + logs) and sr_png_N.tgz (plots and strips, < 16 MB each)
mkdir -p "$RUN/all"
for d in "$RUN"/w*/; do cp -r "$d"/*/ "$RUN/all/" 2>/dev/null; done
cp "$RUN"/*.log "$RUN/all/" 2>/dev/null
cd "$RUN/all" && find . -name '*.safetensors' -delete
tar czf "$OUT/sr_json.tgz" ./*/result.json ./*.log
mapfile -t DIRS < <(ls -d */)
for ((i = 0; i < ${#DIRS[@]}; i += 12)); do tar czf "$OUT/sr_png_$((i / 12)).tgz" "${DIRS[@]:$i:12}"; done
ls -la "$OUT"
