# Sourced (not run) by the scripts that run on the GPU machine (the device tool), from the
# repository root, with .whl (wheels for CPython 3.12: gsplat, and mediapipe + protobuf where the
# photo pipeline runs) and .device/cache (~/.cache/headsplat's open-head and landmark caches)
# carried: installs the wheels into /tmp/site and points Python and HeadSplat at them.
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
export HEADSPLAT_CACHE_DIR=$PWD/.device/cache
