#!/usr/bin/env bash
# Feed-forward network on one GPU: training throughput (samples/s, 512 x 512, default config,
# bf16) per LOD and for the LOD schedule, and photo -> avatar (LOD 2) inference time with the
# ViT-B/14 encoder (random weights). Run from the repository root on the GPU machine:
#
#   bash scripts/gpu_train_bench.sh [OUT_DIR]
#
# Needs: .whl/gsplat-1.5.3-py3-none-any.whl (carried), .gpucarry/open_head_v2.safetensors (the
# built-in head's cache, carried) and optionally .gpucarry/lpips_alexnet_flax_layout.npz.
#
# Measured 2026-11-21 on one H200 (torch 2.11 + CUDA 13, gsplat 1.5.3, open head 4,706 vertices,
# batch 8, 512 x 512, bf16, random ViT-B/14 weights): LOD 2 21.1 samples/s (0.38 s/step, 101k
# Gaussians, 15.9 GiB peak), LOD 1 24.3, LOD 0 25.7, the late LOD mix ~22.1 samples/s;
# photo -> avatar (all LODs, 111k Gaussians, to CPU) 25 ms median, encoder 9 ms.
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp/ffbench}}
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HEADSPLAT_CACHE_DIR=$PWD/.gpucarry
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - "$OUT_DIR" <<'PY'
import json, sys, time, traceback
import torch
out_dir = sys.argv[1]
results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
from avatar_core.train.config import load_config
from avatar_core.train.loop import Trainer

cfg = load_config("configs/default.json")
cfg.data, cfg.out = "synthetic", "/tmp/ffbench_run"
cfg.perceptual_weights = ".gpucarry/lpips_alexnet_flax_layout.npz"
cfg.checkpoint_every = cfg.sample_every = 0
cfg.log_every = 1
cfg.steps = 10_000
t0 = time.perf_counter()
try:
    tr = Trainer(cfg, resume=False)
    results["build_s"] = round(time.perf_counter() - t0, 1)
    print("model built", results["build_s"], "s; trainable params",
          sum(p.numel() for p in tr.net.parameters() if p.requires_grad), flush=True)
    # warm-up (gsplat compiles its kernels on the first render, ~40 s)
    sched = cfg.lod_schedule
    for lod, (warm, n) in ((2, (3, 8)), (1, (2, 6)), (0, (2, 6))):
        sched.lod0_until, sched.lod1_until = (1.0, 1.0) if lod == 0 else ((0.0, 1.0) if lod == 1 else (0.0, 0.0))
        sched.late_probs = (0.0, 0.0, 1.0)
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        tr.run(steps=warm)
        print(f"LOD {lod}: warm-up {warm} steps {time.perf_counter() - t:.1f} s", flush=True)
        res = tr.run(steps=n)
        times = sorted(r["step_time"] for r in res.history)
        med = times[len(times) // 2]
        results[f"lod{lod}"] = {"samples_per_s": round(cfg.batch_size / med, 2), "step_s": round(med, 4),
                                "batch": cfg.batch_size, "loss": round(res.history[-1]["loss"], 4),
                                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                                "gaussians": int(tr._last_out["means"].shape[1])}
        print(f"LOD {lod}:", results[f"lod{lod}"], flush=True)
    # the schedule's late mix: 70% LOD 2, 20% LOD 1, 10% LOD 0
    w = {0: 0.1, 1: 0.2, 2: 0.7}
    results["schedule_mix_samples_per_s"] = round(cfg.batch_size / sum(w[k] * results[f"lod{k}"]["step_s"] for k in w), 2)
    tr.close()
    del tr
except Exception:
    traceback.print_exc()
    results["train_error"] = traceback.format_exc()[-2000:]
torch.cuda.empty_cache()

# ---------------------------------------------------------------- inference: photo -> avatar
try:
    from avatar_core.recon.feedforward.network import FeedForwardNet, NetworkConfig
    from avatar_core.recon.feedforward import reconstruct_from_batch
    from avatar_core.render import orbit_camera
    torch.manual_seed(0)
    net = FeedForwardNet(NetworkConfig.default()).cuda().eval()
    net.amp_dtype = torch.bfloat16
    S = net.cfg.image_size
    cam = orbit_camera(distance=0.75, fov_deg=22, width=S, height=S)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    alpha = ((xx ** 2 / 0.5 + (yy + 0.1) ** 2 / 0.8) < 1).float()[None, None]
    g = torch.Generator().manual_seed(1)
    batch = dict(src_image=torch.rand(1, 3, S, S, generator=g), src_alpha=alpha, src_K=cam.K, src_viewmat=cam.viewmat,
                 shape=torch.randn(1, net.rig.num_shape, generator=g) * 0.3,
                 src_expression=torch.rand(1, net.rig.num_expr, generator=g) * 0.2,
                 src_pose=torch.zeros(1, 5, 3), src_translation=torch.zeros(1, 3))
    batch = {k: v.cuda() for k, v in batch.items()}
    def timed(fn, n=10, warm=3):
        for _ in range(warm):
            fn()
        ts = []
        for _ in range(n):
            torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        ts.sort()
        return round(ts[len(ts) // 2], 4), round(ts[0], 4)
    with torch.no_grad():
        med, best = timed(lambda: reconstruct_from_batch(net, batch))
        av = reconstruct_from_batch(net, batch)
        pmed, pbest = timed(lambda: net.predict(batch, 2, all_lods=True))
        p2med, _ = timed(lambda: net.predict(batch, 2, all_lods=False))
        emed, _ = timed(lambda: net.encoder(batch["src_image"]))
    results["inference"] = {"photo_to_avatar_s_median": med, "photo_to_avatar_s_best": best,
                            "predict_all_lods_s": pmed, "predict_lod2_only_s": p2med, "encoder_s": emed,
                            "lod_counts": av.lod_counts(), "num_gaussians": av.num_gaussians,
                            "note": "network pass + Avatar assembly + copy to CPU; face crop and fit not included"}
    print("inference:", results["inference"], flush=True)
except Exception:
    traceback.print_exc()
    results["inference_error"] = traceback.format_exc()[-2000:]
json.dump(results, open(f"{out_dir}/bench.json", "w"), indent=1)
print(json.dumps({k: v for k, v in results.items() if not k.endswith("error")}, indent=1))
PY
