"""``python -m avatar_core eval novelview --out DIR``: novel-view report on a textured head scan.

The scan (``--scan``, default ``../shared/data/headscan``) is rendered with Blender by the
checkout's ``scripts/render_headscan.py`` at yaws -60..60 degrees; an avatar is reconstructed
from the frontal render and compared with the scan at every yaw (masked PSNR, SSIM,
LPIPS-alex, silhouette IoU; ``avatar_core.eval.novelview`` says how), against the frontal
render itself as the baseline.

Writes to ``--out``: ``report.md``, ``summary.json``, ``per_view.csv``, ``metrics.png``,
``strip.png``, ``renders/`` (Blender's views, reused with ``--reuse``) and ``avatar.safetensors``.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Dict

from avatar_core.eval.novelview import DEFAULT_YAWS, GLB


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="report folder (created; its parent must exist)")
    parser.add_argument("--scan", default=None, help=f"head-scan folder with {GLB} and its maps "
                                                     "(default ../shared/data/headscan)")
    parser.add_argument("--yaws", default=",".join(str(y) for y in DEFAULT_YAWS),
                        help="comma-separated yaw angles in degrees (default -60..60 every 15; 0 is always rendered)")
    parser.add_argument("--render-size", type=int, default=384, help="Blender image size in pixels (default 384)")
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples per pixel (default 32)")
    parser.add_argument("--quality", default="fast", help="reconstruction quality: fast (default), default, best")
    parser.add_argument("--size", type=int, default=256, help="evaluation image size in pixels (default 256)")
    parser.add_argument("--lod", type=int, default=None, help="level of detail to render (default: highest)")
    parser.add_argument("--head", default="open", help="head model: open (default) or a FLAME file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--lpips-weights", default=None,
                        help="LPIPS-alex weights .npz (default ../shared/data/metrics/lpips_alexnet_flax_layout.npz)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse <out>/renders and <out>/avatar.safetensors from an earlier run with the same settings")
    parser.add_argument("--render-only", action="store_true",
                        help="only render the scan into <out>/renders (e.g. to carry them to a machine without bpy)")
    parser.add_argument("--blender-timeout", type=float, default=1800.0,
                        help="seconds the Blender render may take (default 1800)")


def run(args) -> int:
    from avatar_core.cli.eval_data import SCAN_RENDERER, lpips_weights, scan_dir
    from avatar_core.devices import resolve_device
    from avatar_core.eval.lpips import LPIPS
    from avatar_core.eval.novelview import evaluate_views, render_scan
    from avatar_core.eval.report import EvalError, prepare_out_dir
    from avatar_core.recon.config import get_config

    try:
        yaws = sorted({float(y) for y in str(args.yaws).split(",") if y.strip()} | {0.0})
    except ValueError:
        raise EvalError(f"--yaws must be comma-separated numbers of degrees, not {args.yaws!r}.") from None
    if any(abs(y) > 90 for y in yaws):
        raise EvalError("--yaws must lie within -90..90 degrees (the scan is a bust seen from the front).")
    if not 64 <= args.size <= 2048 or not 64 <= args.render_size <= 4096:
        raise EvalError("--size and --render-size must be between 64 and 2048/4096 pixels.")
    if args.samples < 1:
        raise EvalError(f"--samples must be at least 1, not {args.samples}.")
    cfg = get_config(args.quality)
    scan = scan_dir(args.scan)
    if not (scan / GLB).is_file():
        raise EvalError(f"The head scan {str(scan / GLB)!r} does not exist; pass --scan with the folder holding {GLB}.")
    out = prepare_out_dir(args.out)
    lpips_net = LPIPS.load(lpips_weights(args.lpips_weights))
    device = resolve_device(args.device)
    timings: Dict[str, float] = {}

    print(f"rendering the scan at {len(yaws)} yaws with Blender ({args.render_size} px, {args.samples} samples)",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    views = render_scan(scan, out / "renders", yaws, SCAN_RENDERER, args.render_size, args.samples,
                        timeout=args.blender_timeout, reuse=args.reuse)
    timings["blender"] = time.perf_counter() - t0
    if args.render_only:
        print(f"rendered {len(views.yaws)} views into {out / 'renders'} ({views.meta.get('material')})")
        return 0
    command = ("python -m avatar_core eval novelview " + " ".join(shlex.quote(a) for a in sys.argv[3:])
               if sys.argv[1:3] == ["eval", "novelview"] else None)
    per = evaluate_views(views, out, cfg, lpips_net, args.size, args.lod, device, head=args.head, reuse=args.reuse,
                         command=command, render_size=args.render_size, samples=args.samples, timings=timings,
                         say=lambda message: print(message, file=sys.stderr, flush=True))
    a30 = [per["avatar"]["psnr"][i] for i, y in enumerate(views.yaws) if abs(abs(y) - 30) < 1e-6]
    print(f"wrote {out / 'report.md'}; masked PSNR at +-30 deg: "
          + ", ".join(f"{v:.2f}" for v in a30) + " dB")
    return 0
