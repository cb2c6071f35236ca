"""``python -m avatar_core track VIDEO -o motion.npz``: per-frame expression and pose."""

from __future__ import annotations

import time


def add_arguments(p):
    p.add_argument("video", help="a video file (mp4, mpg, mov, ...)")
    p.add_argument("-o", "--output", required=True, help="motion file to write (.npz)")
    p.add_argument("--head", default="open", help="head model: open (default) or a FLAME file")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps for all frames together")
    p.add_argument("--smooth", type=float, default=5.0, help="temporal smoothness weight")
    p.add_argument("--size", type=int, default=256, help="crop size in pixels")


def run(args) -> int:
    from avatar_core.atomic import check_output
    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.fit.track import track_video
    from avatar_core.head import load_head
    from avatar_core.motion import MotionSequence
    from avatar_core.validate import check_range, check_steps
    check_output(args.output, [args.video, args.head], "motion file", suffix=".npz")
    check_steps(args.steps)
    check_range(args.size, "--size", 64, 1024, " pixels")
    check_range(args.smooth, "--smooth", 0.0, 1e6)
    head = load_head(args.head)
    bar = ProgressBar("track")
    t0 = time.perf_counter()
    result = track_video(args.video, head, size=args.size, steps=args.steps, smooth=args.smooth, progress=bar)
    seq = MotionSequence.from_track(result, head, source=args.video)
    seq.save(args.output)
    dt = time.perf_counter() - t0
    err = result.fit.median_error_px
    print(f"tracked {seq.num_frames} frames in {dt:.1f} s; landmark median error {err:.2f} px "
          f"({100 * result.fit.median_error_frac:.2f}% of the face); wrote {args.output}")
    for w in result.warnings:
        print("warning:", w)
    return 0
