"""Playing a motion on an avatar: into its expression space, cameras, batched rendering.

``render_motion`` is what ``python -m avatar_core animate`` runs, minus the file writing, so
other front ends (the Blender batch render, notebooks) share it:

    motion = bring_to_avatar(load_motion("take.csv"), avatar)
    cams = make_cameras(avatar, motion.num_frames, "source", 512, device)
    for i, rgb in render_motion(avatar, motion, cams):   # rgb: [H, W, 3] uint8
        ...
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Optional, Tuple

import numpy as np

from avatar_core.errors import AvatarError, MotionError

log = logging.getLogger(__name__)

ORBIT_SWING_DEG = 30.0
FOV_DEG = 20.0


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
    target = avatar.rig_model()
    retargeter = ExpressionRetargeter.from_heads(source, landmark_embedding(source), target,
                                                 landmark_embedding(target))
    if retargeter.residual > 0.5:
        motion.warn(f"the avatar's expressions reproduce the motion's only roughly (fit residual "
                    f"{100 * retargeter.residual:.0f}%).")
    return retarget(motion, names, retargeter)


def motion_for_avatar(motion, avatar, motion_head: Optional[str] = None, fps: Optional[float] = None,
                      translation: str = "relative", where: Optional[str] = None):
    """A loaded motion made ready to drive ``avatar``: its expressions brought to the avatar's
    (``bring_to_avatar``), resampled to ``fps`` when given (the frame budget checked first), and
    its root translation kept ("on"), made relative to the first frame ("relative") or dropped
    ("off"). ``where`` names the motion in a refusal (default: its source). The one path the
    commands (animate, export), the add-on's Import Motion and batch_render share."""
    from avatar_core.validate import check_frame_count, resampled_frames

    motion = bring_to_avatar(motion, avatar, motion_head)
    if fps is not None:
        check_frame_count(resampled_frames(motion.num_frames, motion.fps, fps), fps,
                          where or repr(str(motion.source)))
        motion = motion.resample(fps)
    t = motion.translation
    if translation == "relative":
        t = t - t[:1]
    elif translation == "off":
        t = np.zeros_like(t)
    return motion.replace(translation=t.astype(np.float32))


# ----------------------------------------------------------------------------- cameras
def make_cameras(avatar, num_frames: int, mode: str, res: int, device):
    """One camera per frame (batch T), or one shared camera (batch 1) for ``source``."""
    from avatar_core.camera import focal_from_fov, orbit_camera
    if mode == "source" and avatar.has_source_camera:
        return avatar.source_camera(res).to(device=device)
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
def render_motion(avatar, motion, cameras, lod: Optional[int] = None, refiner=None, batch: int = 4,
                  background=1.0, progress=None, cancel=None) -> Iterator[Tuple[int, "np.ndarray"]]:
    """Render every frame of ``motion`` (already in the avatar's expression space).

    Args:
        avatar: Avatar (on the device to render on). motion: MotionSequence with T frames.
        cameras: Camera of batch 1 (fixed) or T (one per frame), e.g. from ``make_cameras``.
        lod: level of detail (None = the avatar's highest). refiner: feature image
            [B, H, W, C] -> RGB [B, H, W, 3] callable, or None for the 3DGS image.
        batch: frames rendered together. background: grey level, or [3] RGB.
        progress, cancel: ``progress(fraction, message)`` and a ``threading.Event``.
    Yields:
        (frame index, RGB image [H, W, 3] uint8 numpy), in order.
    """
    import torch

    from avatar_core.progress import as_progress
    from avatar_core.render import render

    if list(motion.expr_names) != list(avatar.expr_names):
        raise MotionError(f"{motion.source or 'The motion'} is not in the avatar's expression space; "
                          f"bring it there first (bring_to_avatar / retarget).")
    T = motion.num_frames
    if cameras.batch not in (1, T):
        raise AvatarError(f"Expected one camera or one per frame ({T}); got {cameras.batch}.")
    lods = avatar.available_lods()
    lod = lods[-1] if lod is None else lod
    prog = as_progress(progress, cancel)
    device = avatar.device
    index = avatar.select(lod)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    bg = bg.expand(3) if bg.dim() == 0 else bg
    for start in range(0, T, batch):
        prog.check()
        stop = min(T, start + batch)
        with torch.no_grad():
            frame = avatar.animate(index=index, **motion.frames(start, stop, device=device))
            cam = cameras if cameras.batch == 1 else _camera_slice(cameras, start, stop)
            out = render(frame, cam, background=bg)
            image = refiner(out.image) if refiner is not None else out.image[..., :3]
            rgb = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        for i in range(rgb.shape[0]):
            yield start + i, rgb[i]
        prog(stop / T, f"frame {stop}/{T}")


def _camera_slice(cameras, start: int, stop: int):
    from avatar_core.camera import Camera
    return Camera(cameras.K[start:stop], cameras.viewmat[start:stop], cameras.width, cameras.height)


def load_refiner(avatar, device):
    """The avatar's neural refiner (feature image [B, H, W, C] -> RGB [B, H, W, 3]) in eval mode,
    or None when the avatar has no refiner weights."""
    if not avatar.refiner_state:
        log.info("the avatar has no refiner; rendering the 3DGS image")
        return None
    try:
        from avatar_core.render.refiner import refiner_from_state
    except ImportError as exc:
        raise AvatarError(f"The avatar has refiner weights, but the refiner cannot be imported ({exc}); "
                          f"use --refiner off.") from None
    import torch

    net = refiner_from_state(avatar.refiner_state, avatar.refiner_config, device=device).eval()
    if str(device).startswith("cuda"):
        net = net.optimize_for_inference(torch.bfloat16)  # bf16 weights, channels-last: the fast path
    return net
