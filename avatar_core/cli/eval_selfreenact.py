"""``python -m avatar_core eval selfreenact VIDEO... --out DIR``: self-reenactment report.

For each clip an avatar is reconstructed from the source frame (frame 0, or the first with a
face), driven by the tracked clip and compared with the real frames on the matted head
(PSNR, SSIM, LPIPS-alex, head PSNR, AKD, mouth PSNR; ``avatar_core.eval.selfreenact`` says
how), against the static source frame as the baseline.

Writes to ``--out``: ``report.md``, ``summary.json``, ``per_frame.csv`` (all clips), and per
clip ``<clip>/metrics.png``, ``<clip>/strip.png``, ``<clip>/result.json`` (with ``--reuse`` a
later run with the same settings takes them instead of recomputing) and, with
``--keep-avatars``, ``<clip>/avatar.safetensors``. The report files are rewritten after every
clip; a clip that cannot be evaluated is reported and skipped, and the exit status is 1 if
any clip failed.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import List

from avatar_core.errors import AvatarError


def add_arguments(parser) -> None:
    parser.add_argument("videos", nargs="+", help="video clips (mpg, mp4, ...), one talking head each")
    parser.add_argument("--out", required=True, help="report folder (created; its parent must exist)")
    parser.add_argument("--quality", default="fast", help="reconstruction quality: fast (default), default, best")
    parser.add_argument("--size", type=int, default=256, help="evaluation image size in pixels (default 256)")
    parser.add_argument("--frames", type=int, default=None, help="use at most this many frames per clip")
    parser.add_argument("--lod", type=int, default=None, help="level of detail to render (default: highest)")
    parser.add_argument("--head", default="open", help="head model: open (default) or a FLAME file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--track-steps", type=int, default=150, help="tracking optimisation steps (default 150)")
    parser.add_argument("--track-smooth", type=float, default=5.0, help="tracking smoothness weight (default 5)")
    parser.add_argument("--expression", choices=("relative", "absolute"), default="relative",
                        help="drive the avatar with expression changes from the source frame (default) or the "
                             "tracked values as they are")
    parser.add_argument("--strip-frames", type=int, default=4, help="frames in each strip image (default 4)")
    parser.add_argument("--lpips-weights", default=None,
                        help="LPIPS-alex weights .npz (default ../shared/data/metrics/lpips_alexnet_flax_layout.npz)")
    parser.add_argument("--reuse", action="store_true",
                        help="resume: reuse each clip's results (<out>/<clip>/result.json) from an earlier run with the "
                             "same settings, else its avatar.safetensors, instead of recomputing")
    parser.add_argument("--keep-avatars", action="store_true",
                        help="keep each clip's avatar as <out>/<clip>/avatar.safetensors (default: deleted after use)")


def run(args) -> int:
    from avatar_core.cli.eval_data import lpips_weights
    from avatar_core.eval.lpips import LPIPS
    from avatar_core.eval.report import EvalError, prepare_out_dir
    from avatar_core.eval.selfreenact import (BACKGROUND, RESULT_KEY, ClipResult, clip_names, evaluate_clip,
                                              load_result, save_result, write_reports)
    from avatar_core.recon.config import get_config

    videos = [Path(v) for v in args.videos]
    for v in videos:
        if not v.is_file():
            raise EvalError(f"The video {str(v)!r} does not exist.")
    if not 64 <= args.size <= 2048:
        raise EvalError(f"--size must be between 64 and 2048 pixels, not {args.size}.")
    if args.frames is not None and args.frames < 2:
        raise EvalError(f"--frames must be at least 2 (a source frame and one to drive), not {args.frames}.")
    cfg = get_config(args.quality)
    out = prepare_out_dir(args.out)
    lpips_net = LPIPS.load(lpips_weights(args.lpips_weights))
    from avatar_core.devices import resolve_device
    device = resolve_device(args.device)
    from avatar_core.head import load_head
    head = load_head(args.head)

    names = clip_names(videos)
    settings = {
        "command": "python -m avatar_core eval selfreenact " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        if sys.argv[1:3] == ["eval", "selfreenact"] else None,
        "quality": cfg.name, "size": args.size, "frames": args.frames, "lod": args.lod, "head": args.head,
        "device": device, "track_steps": args.track_steps, "track_smooth": args.track_smooth,
        "expression": args.expression,
        "background": BACKGROUND, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    key = {k: settings[k] for k in RESULT_KEY}
    results: List[ClipResult] = []
    failed = 0
    for i, (video, name) in enumerate(zip(videos, names)):
        print(f"[{i + 1}/{len(videos)}] {name}: {video}", file=sys.stderr, flush=True)
        try:
            res = load_result(out / name, key) if args.reuse else None
            if res is not None:
                res.video, res.reused = str(video), True
                print(f"    {name}: results of an earlier run with the same settings", file=sys.stderr)
            else:
                res = evaluate_clip(video, name, out / name, cfg, head, lpips_net, size=args.size,
                                    max_frames=args.frames, lod=args.lod, device=device,
                                    track_steps=args.track_steps, track_smooth=args.track_smooth,
                                    expression=args.expression,
                                    strip_frames=args.strip_frames, reuse=args.reuse,
                                    keep_avatar=args.keep_avatars, progress=_stage_printer(name))
                save_result(out / name, res, key)
        except AvatarError as exc:
            if len(videos) == 1:
                raise
            print(f"error: {name}: {exc}", file=sys.stderr)
            res = ClipResult(name=name, video=str(video), error=str(exc))
            failed += 1
        results.append(res)
        write_reports(out, results, settings)
        if res.error is None:
            a, b = res.means["avatar"], res.means["baseline"]
            print(f"    {name}: AKD {a['akd']:.2f} vs {b['akd']:.2f} px, mouth PSNR {a['mouth_psnr']:.2f} vs "
                  f"{b['mouth_psnr']:.2f} dB, PSNR {a['psnr']:.2f} vs {b['psnr']:.2f} dB "
                  f"({res.timings.get('total', 0):.0f} s)", file=sys.stderr, flush=True)
    if failed == len(videos):
        raise EvalError(f"None of the {len(videos)} clips could be evaluated; see {str(out / 'report.md')!r}.")
    print(f"wrote {out / 'report.md'}, summary.json, per_frame.csv and per-clip plots/strips"
          + (f"; {failed} clip(s) failed" if failed else ""))
    return 1 if failed else 0


def _stage_printer(name: str):
    t0 = time.perf_counter()

    def show(message: str) -> None:
        print(f"    {name}: {message} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return show
