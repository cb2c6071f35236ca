"""``python -m avatar_core bench recon``: time photo -> avatar file, stage by stage.

Runs the default reconstruction path (``avatar_core.recon.reconstruct``, the one the CLI and
Blender call) on each photo and prints the wall time of every stage (head, face, fit, init,
optimise, refiner, evaluate, save), the total, the source-view PSNR per LOD, the landmark
error and the peak memory (process RSS; GPU allocator peak on CUDA), then the JSON
(``avatar_core.eval.bench_recon`` measures).

The first reconstruction in a process pays one-off costs that a user pays once per session
(CUDA context, gsplat's kernel build or load, cuDNN autotuning, mediapipe's graph set-up).
``--warmup`` (default on) runs one small ``test``-quality reconstruction first and reports
its time separately, so the figures are those of a user's second photo; ``--warmup off``
times a cold start.
"""

from __future__ import annotations

import json
import os
import platform
import time


def add_arguments(parser) -> None:
    parser.add_argument("photos", nargs="*",
                        help="portraits to reconstruct (default: scikit-image's astronaut)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to optimise (default: cuda when available)")
    parser.add_argument("--quality", default="default", help="comma-separated presets (default: default)")
    parser.add_argument("--repeat", type=int, default=1, help="reconstructions per photo and preset (default 1)")
    parser.add_argument("--warmup", choices=("on", "off"), default="on",
                        help="one untimed test-quality reconstruction first (default on)")
    parser.add_argument("--head", default="open", help="head model (default: the built-in open head)")
    parser.add_argument("--save", choices=("on", "off"), default="on",
                        help="also write the avatar file (to a temporary folder), as the CLI does (default on)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def run(args) -> int:
    import tempfile

    import torch

    from avatar_core.devices import resolve_device
    from avatar_core.errors import ParameterError
    from avatar_core.eval.bench_recon import default_photo, run_one
    from avatar_core.head import load_head
    from avatar_core.recon.config import get_config
    device = torch.device(resolve_device(args.device))
    qualities = [q.strip() for q in args.quality.split(",") if q.strip()]
    for q in qualities:
        get_config(q)  # a clear error for an unknown preset, before any work
    if args.repeat < 1:
        raise ParameterError("--repeat must be at least 1.")
    photos = list(args.photos)
    for p in photos:
        if not os.path.isfile(p):
            raise ParameterError(f"no such photo: {p!r}")
    head = load_head(args.head)
    meta = {"device": str(device), "host": platform.node(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(f"bench recon on {meta.get('gpu', 'cpu')} ({meta['threads']} torch threads)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = photos or [default_photo(tmp)]
        if args.warmup == "on":
            t0 = time.perf_counter()
            warm = run_one(photos[0], "test", device, head, tmp, save=False)
            meta["warmup_s"] = round(time.perf_counter() - t0, 2)
            print(f"warm-up (test quality, one-off set-up costs): {meta['warmup_s']:.1f} s "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in warm['stages_s'].items())})")
        for q in qualities:
            for p in photos:
                for _ in range(args.repeat):
                    row = run_one(p, q, device, head, tmp, save=args.save == "on")
                    rows.append(row)
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items())
                    psnr = "/".join(f"{v:.1f}" for v in row["psnr_masked_source"].values())
                    mem = f"RSS {row['peak_rss_gb']:.2f} GB" + (f", GPU {row['peak_gpu_gb']:.2f} GB"
                                                                 if "peak_gpu_gb" in row else "")
                    print(f"{row['photo']:>18} {q:>8}: {row['wall_s']:6.2f} s  [{stages}]  "
                          f"PSNR LODs {psnr} dB, landmarks {100 * row['landmark_error_frac']:.2f}%, {mem}")
    result = {"meta": meta, "runs": rows}
    print(json.dumps(result))
    if args.json:
        from avatar_core.atomic import atomic_path
        with atomic_path(args.json) as tmp_path:
            with open(tmp_path, "w") as f:
                json.dump(result, f, indent=1)
    return 0
