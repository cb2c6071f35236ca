"""``python -m avatar_core animate AVATAR --motion M -o out.mp4|DIR``: render a driven avatar.

The motion (FLAME npz, ARKit-52 CSV or our motion npz) is read, brought into the avatar's
expression space (``retarget``), optionally resampled to ``--fps``, and rendered frame by
frame in small batches, through the avatar's fitted source camera (``--camera source``; a
frontal camera when the avatar has none) or a camera swinging +-30 degrees around the head
(``--camera orbit``). The output is an mp4 (``mp4v``) when the name ends in .mp4/.avi/.mov,
else a folder of ``frame_00000.png``... Both are written atomically: a video to a
temporary file renamed at the end; frames to a temporary folder moved into place at the end
(existing ``frame_*.png`` in the folder are replaced). Nothing is left half-written on an
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from avatar_core.errors import AvatarError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("avatar", help="avatar file (.safetensors written by reconstruct)")
    parser.add_argument("--motion", required=True,
                        help="motion file: FLAME parameters .npz, ARKit-52 .csv (Live Link Face), or a HeadSplat motion .npz")
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


def run(args) -> int:
    import numpy as np

    from avatar_core.cli_util import ProgressBar, resolve_device
    from avatar_core.io import load_avatar
    from avatar_core.motion.load import load_motion
    from avatar_core.motion.playback import bring_to_avatar, load_refiner, make_cameras, render_motion

    out = Path(args.output)
    video = out.suffix.lower() in VIDEO_SUFFIXES
    _check_output(out, video)
    if args.res < 16 or args.res > 8192:
        raise AvatarError(f"--res must be between 16 and 8192 pixels, not {args.res}.")
    if args.batch < 1:
        raise AvatarError(f"--batch must be at least 1, not {args.batch}.")
    if args.fps is not None and not args.fps > 0:
        raise AvatarError(f"--fps must be positive, not {args.fps}.")
    device = resolve_device(args.device)

    motion = load_motion(args.motion, fps=args.motion_fps, head_joint=args.head_joint)
    avatar = load_avatar(args.avatar, device=device)
    motion = bring_to_avatar(motion, avatar, args.motion_head)
    if args.fps is not None:
        motion = motion.resample(args.fps)
    for w in motion.warnings:
        print(f"warning: {w}", file=sys.stderr)
    translation = motion.translation
    if args.translation == "relative":
        translation = translation - translation[:1]
    elif args.translation == "off":
        translation = np.zeros_like(translation)
    motion = motion.replace(translation=translation.astype(np.float32))

    lods = avatar.available_lods()
    lod = lods[-1] if args.lod is None else args.lod
    if lod not in lods:
        raise AvatarError(f"--lod {lod} is not in {args.avatar!r}; it has LODs {lods}.")
    refiner = load_refiner(avatar, device) if args.refiner == "on" else None
    cameras = make_cameras(avatar, motion.num_frames, args.camera, args.res, device)

    T = motion.num_frames
    bar = ProgressBar("animate")
    with _writer(out, video, motion.fps, cameras.width, cameras.height) as write:
        for i, rgb in render_motion(avatar, motion, cameras, lod=lod, refiner=refiner, batch=args.batch,
                                    background=args.background, progress=bar):
            write(i, rgb)
    print(f"wrote {T} frames at {motion.fps:g} fps ({cameras.width}x{cameras.height}, LOD {lod}"
          f"{', refiner' if refiner is not None else ''}) to {out}")
    return 0


# ----------------------------------------------------------------------------- output
def _check_output(out: Path, video: bool) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise AvatarError(f"Cannot write {str(out)!r}: the folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK):
        raise AvatarError(f"Cannot write {str(out)!r}: the folder {str(parent)!r} is not writable.")
    if video and out.is_dir():
        raise AvatarError(f"Cannot write the video {str(out)!r}: a folder has that name.")
    if not video and out.exists() and not out.is_dir():
        raise AvatarError(f"Cannot write frames into {str(out)!r}: it is a file, not a folder "
                          f"(name the output .mp4 for a video).")
    if not video and out.is_dir() and not os.access(out, os.W_OK):
        raise AvatarError(f"Cannot write frames into {str(out)!r}: the folder is not writable.")


@contextlib.contextmanager
def _writer(out: Path, video: bool, fps: float, width: int, height: int):
    """Yields write(i, rgb [H, W, 3] uint8); publishes the result only on success."""
    import cv2

    parent = out.parent if str(out.parent) else Path(".")
    if video:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=parent)
        os.close(fd)
        _default_mode(tmp, 0o666)
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            os.unlink(tmp)
            raise AvatarError(f"Cannot write the video {str(out)!r}: OpenCV could not open an mp4v writer.")

        def write(i, rgb):
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

        try:
            yield write
            writer.release()
            if os.path.getsize(tmp) == 0:
                raise AvatarError(f"Writing the video {str(out)!r} failed: OpenCV wrote nothing.")
            os.replace(tmp, out)
        except BaseException:
            writer.release()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return

    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    _default_mode(tmpdir, 0o777)

    def write(i, rgb):
        path = tmpdir / f"frame_{i:05d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise AvatarError(f"Cannot write the frame {str(out / path.name)!r}.")

    try:
        yield write
        if not out.exists():
            os.replace(tmpdir, out)
        else:
            for old in out.glob("frame_*.png"):
                old.unlink()
            for new in sorted(tmpdir.iterdir()):
                os.replace(new, out / new.name)
            tmpdir.rmdir()
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def _default_mode(path, mode: int) -> None:
    """Give a temporary file/folder the permissions a normal one would get (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)
