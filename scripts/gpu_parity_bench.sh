#!/usr/bin/env bash
# On the GPU machine (the device tool), from the repository root:
#   carry .whl (gsplat-1.5.3 wheel) and .device/cache (open-head cache), then run this script.
# Installs gsplat, compiles its kernels, runs the CUDA parity tests and the GPU bench.
# Results go to $OUT (parity.json, parity.log, bench_cuda.json, bench.log).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 - <<'PY'
import time, torch
t = time.time()
from gsplat.cuda._backend import _C  # JIT-compiles gsplat's kernels on first import
print(f"gsplat kernels ready in {time.time() - t:.1f} s, torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY
HEADSPLAT_PARITY_JSON=$OUT/parity.json python3 -m pytest -q -s -rs tests/test_parity_cuda.py 2>&1 | tee "$OUT/parity.log"
timeout ${BENCH_TIMEOUT:-300} python3 -m avatar_core bench render --device cuda --lod ${LODS:-0,1,2} --res ${RES:-512} --refiner both \
    --json "$OUT/bench_cuda.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
