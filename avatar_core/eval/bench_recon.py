"""Timing photo -> avatar file, stage by stage (``python -m avatar_core bench recon``).

``run_one`` runs the default reconstruction path (``avatar_core.recon.reconstruct``, the one
the CLI and Blender call) on one photo and returns the wall time of every stage (head, face,
fit, init, optimise, refiner, evaluate, save), the total, the source-view PSNR per LOD, the
landmark error and the peak memory (process RSS; GPU allocator peak on CUDA).
"""

from __future__ import annotations

import os
import resource
import time


def default_photo(folder: str) -> str:
    """scikit-image's public-domain astronaut as a PNG in ``folder`` (read back like a user's photo)."""
    import numpy as np
    from PIL import Image
    from skimage import data
    path = os.path.join(folder, "astronaut.png")
    Image.fromarray(np.asarray(data.astronaut())).save(path)
    return path


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_one(photo: str, quality: str, device, head, out_dir: str, save: bool) -> dict:
    import torch

    from avatar_core.recon import reconstruct
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = os.path.join(out_dir, "bench.avatar") if save else None
    _sync(device)
    t0 = time.perf_counter()
    _, report = reconstruct(photo, out_path=out, head=head, quality=quality, device=device)
    _sync(device)
    wall = time.perf_counter() - t0
    row = {
        "photo": os.path.basename(photo), "quality": quality, "device": str(device),
        "wall_s": round(wall, 3),
        "stages_s": {k: round(v, 3) for k, v in report.timings.items()},
        "psnr_masked_source": {str(k): round(v, 2) for k, v in report.psnr.items()},
        "landmark_error_frac": round(report.landmark_error_frac, 5),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
    }
    if device.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return row
