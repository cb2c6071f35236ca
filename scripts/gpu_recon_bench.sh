#!/usr/bin/env bash
# On the GPU machine (the device tool), from the repository root:
#   carry .whl (gsplat-1.5.3, mediapipe-0.10.21 and protobuf-4.25.9 wheels for CPython 3.12),
#   .device/cache (the open-head and landmark-embedding caches from ~/.cache/headsplat) and
#   .device/portraits (a copy of ../shared/data/portraits), then run this script.
# Times the reconstruct CLI as a user runs it (a fresh process per photo, after one run that
# builds gsplat's kernels) and the pipeline per stage (bench recon). Results go to $OUT.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
# the image sets PYTHONDONTWRITEBYTECODE, so every start would recompile torch's modules (~3.5 s);
# a user's install has bytecode caches, so measure with them
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
PHOTOS=${PHOTOS:-.device/portraits/*}
quiet() { tr '\r' '\n' | grep -v '^reconstruct \|^W0000\|^I0000\|^INFO\|^WARNING'; }
echo "== first run (builds gsplat's kernels once)"
/usr/bin/time -f "wall %e s" python3 -m avatar_core reconstruct .device/portraits/astronaut.png -o /tmp/first.avatar \
    --device cuda 2>&1 | quiet | tee "$OUT/cli_first.log"
for p in $PHOTOS; do
    echo "== $p"
    /usr/bin/time -f "wall %e s" python3 -m avatar_core reconstruct "$p" -o /tmp/cli.avatar --device cuda 2>&1 | quiet
done | tee "$OUT/cli.log"
python3 -m avatar_core bench recon --device cuda --quality ${QUALITIES:-default,fast} $PHOTOS \
    --json "$OUT/bench_recon.json" 2>&1 | quiet | tee "$OUT/bench_recon.log"
