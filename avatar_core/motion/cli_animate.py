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
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from avatar_core.errors import AvatarError, MotionError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v")
ORBIT_SWING_DEG = 30.0
FOV_DEG = 20.0


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
    import torch

    from avatar_core.cli_util import ProgressBar, resolve_device
    from avatar_core.io import load_avatar
    from avatar_core.motion.load import load_motion

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
    index = avatar.select(lod)
    background = torch.full((3,), float(args.background), device=device)

    T = motion.num_frames
    bar = ProgressBar("animate")
    with _writer(out, video, motion.fps, cameras.width, cameras.height) as write:
        with torch.no_grad():
            for start in range(0, T, args.batch):
                stop = min(T, start + args.batch)
                rgb = render_frames(avatar, motion, start, stop, cameras, index, background, refiner, device)
                for i in range(rgb.shape[0]):
                    write(start + i, rgb[i])
                bar(stop / T, f"frame {stop}/{T}")
    print(f"wrote {T} frames at {motion.fps:g} fps ({cameras.width}x{cameras.height}, LOD {lod}"
          f"{', refiner' if refiner is not None else ''}) to {out}")
    return 0


# ----------------------------------------------------------------------------- motion
def bring_to_avatar(motion, avatar, motion_head: Optional[str] = None):
    """The motion in the avatar's expression space: by names when they overlap, else through
    both head models' landmark correspondences (needs the motion's head model)."""
    from avatar_core.motion.arkit import is_arkit_space
    from avatar_core.motion.retarget import ExpressionRetargeter, retarget

    names = list(avatar.expr_names)
    if list(motion.expr_names) == names:
        return motion
    shared = set(motion.expr_names) & set(names)
    if shared and motion_head is None:
        return retarget(motion, names)
    if motion_head is None and is_arkit_space(motion.expr_names):
        motion_head = "open"
    if motion_head is None:
        from avatar_core.motion.retarget import describe_names
        raise MotionError(
            f"{motion.source} uses the expressions {describe_names(motion.expr_names)}, but the avatar expects "
            f"{describe_names(names)}; pass --motion-head with the motion's head model (the FLAME file for "
            f"exp_000... motions) to retarget between them through facial landmarks.")
    from avatar_core.head import load_head
    try:
        from avatar_core.fit.correspondence import landmark_embedding
    except ImportError as exc:
        raise MotionError(f"Retargeting between head models needs the landmark correspondences "
                          f"(avatar_core.fit.correspondence), which cannot be imported ({exc}).") from None
    source = load_head(motion_head)
    if not set(motion.expr_names) <= set(source.expr_names):
        raise MotionError(f"The motion's expressions ({', '.join(motion.expr_names[:3])}, ...) are not those of "
                          f"the head model {motion_head!r} ({', '.join(list(source.expr_names)[:3])}, ...).")
    target = rig_head(avatar)
    retargeter = ExpressionRetargeter.from_heads(source, landmark_embedding(source), target,
                                                 landmark_embedding(target))
    if retargeter.residual > 0.5:
        motion.warn(f"the avatar's expressions reproduce the motion's only roughly (fit residual "
                    f"{100 * retargeter.residual:.0f}%).")
    return retarget(motion, names, retargeter)


def rig_head(avatar):
    """The avatar's LOD-0 rig as a HeadModel (same topology as its head model)."""
    import torch

    from avatar_core.head.model import HeadModel
    return HeadModel(name=avatar.head_name or "avatar", v_template=avatar.rig_template.cpu(),
                     faces=avatar.rig_faces.cpu(), shapedirs=avatar.rig_shapedirs.cpu(),
                     exprdirs=avatar.rig_exprdirs.cpu(), expr_names=list(avatar.expr_names),
                     posedirs=avatar.rig_posedirs.cpu(), j_regressor=avatar.rig_j_regressor.cpu(),
                     lbs_weights=avatar.rig_weights.cpu(), parents=avatar.rig_parents.cpu().to(torch.long))


# ----------------------------------------------------------------------------- cameras
def make_cameras(avatar, num_frames: int, mode: str, res: int, device):
    """One camera per frame (batch T), or one shared camera (batch 1) for ``source``."""
    import torch

    from avatar_core.render.camera import Camera, focal_from_fov, orbit_camera
    src = avatar.source or {}
    if mode == "source" and all(k in src for k in ("K", "viewmat", "width", "height")):
        w, h = int(torch.as_tensor(src["width"]).reshape(-1)[0]), int(torch.as_tensor(src["height"]).reshape(-1)[0])
        scale = res / max(w, h)
        cam = Camera(src["K"].float().cpu(), src["viewmat"].float().cpu(), w, h)
        cam = cam.scaled(max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return cam.to(device=device)
    if mode == "source":
        log.info("the avatar has no source camera; using a frontal camera")
    target, distance = _framing(avatar)
    if mode == "orbit":
        yaw = [ORBIT_SWING_DEG * math.sin(2 * math.pi * i / max(num_frames, 1)) for i in range(num_frames)]
        pitch = 5.0
    else:
        yaw, pitch = 0.0, 0.0
    return orbit_camera(target=target, distance=distance, yaw_deg=yaw, pitch_deg=pitch,
                        focal=focal_from_fov(FOV_DEG, res), width=res, height=res, device=device)


def _framing(avatar):
    """(target, distance) that frame the rig's head in a 20-degree field of view."""
    v = avatar.rig_template.detach().float().cpu()
    lo, hi = v.min(0).values, v.max(0).values
    centre = 0.5 * (lo + hi)
    radius = float(0.5 * (hi - lo).max())
    distance = 1.5 * radius / math.tan(math.radians(FOV_DEG) / 2)
    return centre.tolist(), distance


# ----------------------------------------------------------------------------- rendering
def render_frames(avatar, motion, start: int, stop: int, cameras, index, background, refiner, device):
    """Frames start:stop as uint8 RGB images [b, H, W, 3] (numpy)."""
    import torch

    from avatar_core.render import render
    params = motion.frames(start, stop, device=device)
    frame = avatar.animate(index=index, **params)
    cam = cameras if cameras.batch == 1 else _camera_slice(cameras, start, stop)
    out = render(frame, cam, background=background)
    image = refiner(out.image) if refiner is not None else out.image[..., :3]
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def _camera_slice(cameras, start: int, stop: int):
    from avatar_core.render.camera import Camera
    return Camera(cameras.K[start:stop], cameras.viewmat[start:stop], cameras.width, cameras.height)


def load_refiner(avatar, device):
    """A callable feature image [B, H, W, C] -> RGB [B, H, W, 3], or None when the avatar has
    no refiner weights."""
    if not avatar.refiner_state:
        log.info("the avatar has no refiner; rendering the 3DGS image")
        return None
    try:
        from avatar_core.render import refiner as refiner_module
    except ImportError as exc:
        raise AvatarError(f"The avatar has refiner weights, but the refiner module cannot be imported ({exc}); "
                          f"use --refiner off.") from None
    loader = getattr(refiner_module, "load_refiner", None)
    if loader is None:
        raise AvatarError("The refiner module has no load_refiner(state, config); use --refiner off.")
    net = loader(avatar.refiner_state, avatar.refiner_config)
    net = net.to(device).eval() if hasattr(net, "to") else net
    return net


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
