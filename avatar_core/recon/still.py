"""A still of an avatar at its source camera, turned about the head centre, with expressions.

What an artist uses to check an avatar (``python -m avatar_core render``) and what the
mouth/eye checks (``eval expressions``) render:

    img = render_still(avatar, expression={"jawOpen": 1.0}, yaw=30, res=256)   # [H, W, 3] uint8
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch

from avatar_core.errors import ParameterError
from avatar_core.gaussians.avatar import Avatar
from avatar_core.camera import Camera

BACKGROUND = 1.0


def parse_expressions(items, names) -> Dict[str, float]:
    """``["jawOpen=1", "eyeBlinkLeft=0.5"]`` -> {name: value}; one clear sentence when wrong."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep:
            raise ParameterError(f"--expr {item!r} should be NAME=VALUE, e.g. jawOpen=1.")
        try:
            v = float(value)
        except ValueError:
            raise ParameterError(f"--expr {item!r}: {value!r} is not a number.") from None
        if not math.isfinite(v):
            raise ParameterError(f"--expr {item!r}: the value must be a finite number.")
        if name not in names:
            close = [n for n in names if n.lower() == name.lower()]
            hint = f" (did you mean {close[0]}?)" if close else f"; it has {', '.join(list(names)[:6])}, ..."
            raise ParameterError(f"--expr {item!r}: the avatar has no expression {name!r}{hint}")
        out[name] = v
    return out


def still_params(avatar: Avatar, expression: Optional[Dict[str, float]] = None,
                 neutral: bool = False) -> dict:
    """The source parameters with named expressions set: expression [1, E], pose [1, J, 3],
    translation [1, 3]. ``neutral`` starts from zero expressions instead of the photo's."""
    from avatar_core.recon.preview import source_params
    if avatar.source and "expression" in avatar.source:
        p = {k: v.clone() for k, v in source_params(avatar).items()}
    else:
        J = avatar.rig_weights.shape[1]
        p = {"expression": torch.zeros(1, avatar.num_expr), "pose": torch.zeros(1, J, 3),
             "translation": torch.zeros(1, 3)}
    if neutral:
        p["expression"].zero_()
    for name, v in (expression or {}).items():
        p["expression"][0, list(avatar.expr_names).index(name)] = float(v)
    return {k: v.to(avatar.device) for k, v in p.items()}


def turned(camera: Camera, centre: torch.Tensor, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> Camera:
    """``camera`` orbited about ``centre``: by ``yaw_deg`` about world +Y (positive moves the
    camera toward +X), then ``pitch_deg`` about the camera's x axis (positive looks from above)."""
    from avatar_core.recon.preview import turned_camera
    cam = turned_camera(camera, centre, yaw_deg) if yaw_deg else camera
    if not pitch_deg:
        return cam
    a = math.radians(pitch_deg)
    c, s = math.cos(a), math.sin(a)
    Rc = cam.viewmat[0, :3, :3]
    # rotate the world about the camera's x axis (in world coordinates) through the centre
    axis = Rc[0].to(cam.dtype)
    K = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]], dtype=cam.dtype)
    R = torch.eye(3, dtype=cam.dtype) + s * K + (1 - c) * (K @ K)
    M = torch.eye(4, dtype=cam.dtype)
    M[:3, :3] = R
    ctr = centre.to(cam.dtype)
    M[:3, 3] = ctr - R @ ctr
    return Camera(cam.K, cam.viewmat @ M[None], cam.width, cam.height)


def still_camera(avatar: Avatar, res: int, yaw: float = 0.0, pitch: float = 0.0) -> Camera:
    """The source camera at ``res`` px (longer side), turned about the head centre."""
    from avatar_core.motion.playback import make_cameras
    from avatar_core.recon.preview import head_centre
    cam = make_cameras(avatar, 1, "source", res, "cpu")
    if yaw or pitch:
        cam = turned(cam, head_centre(avatar).cpu().float(), yaw, pitch)
    return cam


def render_still(avatar: Avatar, expression: Optional[Dict[str, float]] = None, yaw: float = 0.0,
                 pitch: float = 0.0, lod: Optional[int] = None, res: int = 512, refiner=None,
                 neutral: bool = False, background=BACKGROUND, return_camera: bool = False):
    """RGB uint8 [H, W, 3] of ``avatar`` (rendered on its device) at its source camera.

    Args:
        expression: {ARKit name: value} set on top of the photo's fitted expression
            (or on zeros when ``neutral``).
        yaw, pitch: degrees about the head centre. lod: None = the highest.
        refiner: a feature-image -> RGB callable (``load_refiner``) or None for the 3DGS image.
    """
    from avatar_core.render import render
    lods = avatar.available_lods()
    lod = lods[-1] if lod is None else lod
    if lod not in lods:
        raise ParameterError(f"LOD {lod} is not in this avatar; it has LODs {lods}.")
    cam = still_camera(avatar, res, yaw, pitch)
    params = still_params(avatar, expression, neutral)
    with torch.no_grad():
        frame = avatar.animate(**params, lod=lod)
        out = render(frame, cam.to(device=avatar.device), background=background)
        img = refiner(out.image) if refiner is not None else out.image[..., :3]
        rgb = (img[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return (rgb, cam) if return_camera else rgb
