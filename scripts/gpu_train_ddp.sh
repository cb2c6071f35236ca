#!/usr/bin/env bash
# DDP check on a multi-GPU machine: torchrun, one process per GPU, default config at 512 x 512
# (bf16, synthetic data), a few steps; prints throughput and whether every rank ended with
# identical weights. Run from the repository root:  bash scripts/gpu_train_ddp.sh [NPROC] [STEPS] [LOG_DIR]
#
# Measured 2026-11-21 on nvidia-h200-x2: 2 ranks x batch 8, 43.9 samples/s at LOD 2 (0.36 s/step),
# weight fingerprints identical on both ranks after 16 steps, checkpoint written by rank 0 only.
set -uo pipefail
NPROC=${1:-2}
STEPS=${2:-16}
LOG_DIR=${3:-${OUT:-/tmp}}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HEADSPLAT_CACHE_DIR=$PWD/.gpucarry
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# the checkpoint at the last step exercises rank-0-only writing and the barrier
python3 -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m avatar_core -v train \
    --config configs/default.json --data synthetic --out /tmp/ffddp --steps "$STEPS" --no-resume \
    > "$LOG_DIR/ddp.log" 2>&1
echo "torchrun exit code $?"
grep -v -E "DEBUG|Warning|warn\(|^\s*$" "$LOG_DIR/ddp.log" | tr '\r' '\n' | grep -v "^train \[" | tail -n 45 | cut -c1-300
ls /tmp/ffddp /tmp/ffddp/checkpoints 2>&1
python3 - <<'PY'
import csv
rows = list(csv.DictReader(open("/tmp/ffddp/log.csv")))
for r in rows[-6:]:
    print({k: r[k] for k in ("step", "lod", "loss", "step_time", "samples_per_s")})
PY
