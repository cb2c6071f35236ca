"""``python -m avatar_core animate AVATAR --motion M -o out.mp4|DIR``: render a driven avatar.

The motion (FLAME npz, ARKit-52 CSV or our motion npz) is read, or a video is tracked first
(as ``track`` does, on ``--motion-head``, default the open head), brought into the avatar's
expression space (``retarget``), optionally resampled to ``--fps``, and rendered frame by
frame in small batches, through the avatar's fitted source camera (``--camera source``; a
frontal camera when the avatar has none) or a camera swinging +-30 degrees around the head
(``--camera orbit``). The output is an mp4 (``mp4v``) when the name ends in .mp4/.avi/.mov,
else a folder of ``frame_00000.png``... Both are written atomically (``io.video.frame_writer``): a video to a
temporary file, reopened and its frame count checked, renamed at the end; frames to a temporary
folder moved into place at the end (existing ``frame_*.png`` in the folder are replaced). Nothing is left half-written on an
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avatar_core.errors import AvatarError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v")  # as io.video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("avatar", help="avatar file (.safetensors written by reconstruct)")
    parser.add_argument("--motion", required=True,
                        help="motion file: FLAME parameters .npz, ARKit-52 .csv (Live Link Face), a HeadSplat motion "
                             ".npz, or a video (.mp4, .mov, ...), tracked first as `track` does")
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4) or a folder for PNG frames")
    parser.add_argument("--lod", type=int, choices=(0, 1, 2), default=None,
                        help="level of detail (default: the avatar's highest)")
    parser.add_argument("--refiner", choices=("on", "off"), default="on",
                        help="neural refiner: on uses it when the avatar has one (default on)")
    parser.add_argument("--camera", choices=("source", "orbit"), default="source",
                        help="source: the photo's fitted camera (frontal if absent); orbit: swing around the head")
    parser.add_argument("--res", type=int, default=512, help="longer image side in pixels (default 512)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the motion's; resamples)")
    parser.add_argument("--motion-fps", type=float, default=None,
                        help="the motion file's frame rate, overriding what it says or what is estimated")
    parser.add_argument("--motion-head", default=None,
                        help="head model the motion's expressions belong to, for retargeting: 'open' or a FLAME "
                             "file (default: 'open' for ARKit motions)")
    parser.add_argument("--head-joint", choices=("neck", "root"), default="neck",
                        help="joint that CSV head rotations drive (default neck: shoulders stay)")
    parser.add_argument("--translation", choices=("relative", "absolute", "off"), default="relative",
                        help="motion translation: relative to its first frame (default), as is, or ignored")
    parser.add_argument("--batch", type=int, default=4, help="frames rendered together (default 4)")
    parser.add_argument("--background", type=float, default=1.0, help="background grey level 0..1 (default 1)")
    parser.add_argument("--track-steps", type=int, default=150,
                        help="a video motion: tracking optimisation steps (default 150, as track)")
    parser.add_argument("--track-smooth", type=float, default=5.0,
                        help="a video motion: tracking smoothness weight (default 5, as track)")
    parser.add_argument("--track-size", type=int, default=256, help="a video motion: crop size in pixels (default 256)")


def run(args) -> int:

    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.devices import resolve_device
    from avatar_core.io import load_avatar
    from avatar_core.motion.load import load_motion
    from avatar_core.motion.playback import load_refiner, make_cameras, motion_for_avatar, render_motion

    from avatar_core.atomic import check_output
    from avatar_core.io.video import frame_writer
    from avatar_core.validate import check_fps, check_range, check_resolution

    out = Path(args.output)
    video = out.suffix.lower() in VIDEO_SUFFIXES
    check_output(out, [args.avatar, args.motion, args.motion_head], "video" if video else "frame folder",
                 folder=not video)
    check_resolution(args.res)
    check_range(args.batch, "--batch", 1, 256)
    check_fps(args.fps)
    check_fps(args.motion_fps, "--motion-fps")
    check_range(args.background, "--background", 0.0, 1.0)
    device = resolve_device(args.device)

    if is_video(args.motion):
        motion = track_motion(args)
    else:
        motion = load_motion(args.motion, fps=args.motion_fps, head_joint=args.head_joint)
    avatar = load_avatar(args.avatar, device=device)
    motion = motion_for_avatar(motion, avatar, args.motion_head, args.fps, args.translation)
    for w in motion.warnings:
        print(f"warning: {w}", file=sys.stderr)

    lods = avatar.available_lods()
    lod = lods[-1] if args.lod is None else args.lod
    if lod not in lods:
        raise AvatarError(f"--lod {lod} is not in {args.avatar!r}; it has LODs {lods}.")
    refiner = load_refiner(avatar, device) if args.refiner == "on" else None
    cameras = make_cameras(avatar, motion.num_frames, args.camera, args.res, device)

    T = motion.num_frames
    bar = ProgressBar("animate")
    with frame_writer(out, motion.fps, cameras.width, cameras.height, total=T) as write:
        for i, rgb in render_motion(avatar, motion, cameras, lod=lod, refiner=refiner, batch=args.batch,
                                    background=args.background, progress=bar):
            write(i, rgb)
    print(f"wrote {T} frames at {motion.fps:g} fps ({cameras.width}x{cameras.height}, LOD {lod}"
          f"{', refiner' if refiner is not None else ''}) to {out}")
    return 0


# ----------------------------------------------------------------------------- video motion
TRACKED_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".mkv", ".webm")


def is_video(path) -> bool:
    """A motion path that is a video (by its extension): it is tracked before animating."""
    return Path(str(path)).suffix.lower() in TRACKED_SUFFIXES


def track_motion(args):
    """Track the video ``args.motion`` on the head model ``args.motion_head`` (default the
    open head) as ``python -m avatar_core track`` does; returns its MotionSequence."""
    import time

    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.fit.track import track_video
    from avatar_core.head import load_head
    from avatar_core.motion import MotionSequence
    from avatar_core.validate import check_range
    check_range(args.track_steps, "--track-steps", 1, 100000)
    check_range(args.track_size, "--track-size", 64, 2048)
    path = Path(args.motion)
    if not path.is_file():
        raise AvatarError(f"The motion video {str(path)!r} does not exist or is not a file.")
    head = load_head(args.motion_head or "open")
    bar = ProgressBar("track")
    t0 = time.perf_counter()
    try:
        result = track_video(str(path), head, size=args.track_size, steps=args.track_steps,
                             smooth=args.track_smooth, progress=bar)
    finally:
        bar.close()
    seq = MotionSequence.from_track(result, head, source=str(path))
    if args.motion_fps is not None:
        seq = seq.replace(fps=float(args.motion_fps))
    for w in result.warnings:
        seq.warn(w)
    print(f"tracked {seq.num_frames} frames of {str(path)!r} in {time.perf_counter() - t0:.1f} s (landmark median "
          f"error {result.fit.median_error_px:.2f} px)", file=sys.stderr)
    return seq
