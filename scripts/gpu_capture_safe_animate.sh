#!/usr/bin/env bash
# EXPERIMENT (GPU machine): what the viewer path reaches once Avatar.animate is CUDA-graph safe.
# Avatar.animate currently synchronises with the host every frame (check_finite's bool() on CUDA
# tensors, lbs.rigid_transforms' parents.tolist() and list indexing), so FramePipeline can only
# capture rasterise+refine. Here both are patched *in this process only* (finite checks skipped,
# parents cached as a device index) to measure the full-frame graph. Not used by the library.
# Needs what gpu_parity_bench.sh needs (carry .whl and .device); run it after that script or alone.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ! python3 -c "import gsplat" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export HEADSPLAT_CACHE_DIR=$PWD/.device/cache
timeout ${EXP_TIMEOUT:-300} python3 - "$OUT" "${COMPILE:-on}" <<'PY'
import json, os, sys
import torch
import avatar_core.head.lbs as lbs
import avatar_core.head.model as model

model.check_finite = lambda name, t: None  # experiment: no per-frame NaN check (it syncs)
_index = {}


def rigid_transforms(rot_mats, joints, parents):  # same maths as lbs.rigid_transforms, no host reads
    key = (int(parents.shape[0]), str(parents.device))
    if key not in _index:
        par = parents.tolist()
        _index[key] = (par, torch.tensor([p if p >= 0 else 0 for p in par[1:]], device=joints.device))
    par, pidx = _index[key]
    B, J = joints.shape[:2]
    rel = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, pidx]], 1)
    local = torch.zeros(B, J, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[par[j]] @ local[:, j])
    world = torch.stack(chain, 1)
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]
    rel_t = world.clone()
    rel_t[..., :3, 3] = world[..., :3, 3] - offset
    return world[..., :3, 3], rel_t


lbs.rigid_transforms = rigid_transforms

from avatar_core.gaussians.avatar import Avatar
from avatar_core.head import load_head
# fill the parents cache before any capture
head = load_head("open")
a = Avatar.synthetic(head, channels=32).to("cuda")
with torch.no_grad():
    a.animate(lod=2)
from avatar_core.eval.bench_render import format_table, run_bench
lods = [int(x) for x in os.environ.get("EXP_LODS", "2").split(",")]
res = run_bench("cuda", lods, 512, [False, True], frames=2000, warmup=100, head_spec="open",
                compile=sys.argv[2] == "on")
print(format_table(res))
for r in res["rows"]:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
json.dump(res, open(sys.argv[1] + f"/bench_cuda_capture_safe_compile_{sys.argv[2]}.json", "w"), indent=1)
PY
