"""The preview sheet written beside a reconstructed avatar (``OUT.preview.png``).

Labelled panels, six to a row:

    source | LOD 0 | LOD 1 | LOD 2 | split layers (head grey, layers coloured) | soft masks (heat)
    yaw -45 | yaw +45 | back (yaw 150) | yaw -30 | yaw +30 | (blank)
    expressions at the source view: jawOpen | blink | smile | browInnerUp | tongueOut | glance
    the same expressions turned 30 degrees

Every render uses the avatar's stored source camera and parameters (the expressions are set
on top of the photo's); the turned views orbit the source camera about the head's vertical
axis through the head centre. The expression rows need the ARKit units (the open head); a
FLAME avatar's sheet stops after the second row.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from avatar_core.camera import Camera
from avatar_core.gaussians.avatar import Avatar
from avatar_core.regions import MASK_HIGH, MASK_LOW, layer_colour
from avatar_core.render import render

# the sheet's expression rows: label -> ARKit units set to 1
EXPRESSIONS = (("jawOpen", {"jawOpen": 1.0}),
               ("blink", {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
               ("smile", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}),
               ("browInnerUp", {"browInnerUp": 1.0}),
               ("tongueOut", {"tongueOut": 1.0, "jawOpen": 0.4}),
               ("glance", {"eyeLookOutLeft": 1.0, "eyeLookInRight": 1.0}))
TURNS = (-45.0, 45.0, 150.0, -30.0, 30.0)
COLUMNS = 6
BACKGROUND = 1.0


def source_params(avatar: Avatar) -> dict:
    s = avatar.source
    return {"expression": s["expression"].float()[None], "pose": s["pose"].float()[None],
            "translation": s["translation"].float()[None]}


def head_centre(avatar: Avatar) -> torch.Tensor:
    """World position of the head's centre at the source pose: [3]."""
    with torch.no_grad():
        v, _ = avatar.deform_rig(**{k: t.to(avatar.device) for k, t in source_params(avatar).items()})
    v = v[0]
    lo, hi = v.min(0).values, v.max(0).values
    return 0.5 * (lo + hi)


def turned_camera(camera: Camera, centre: torch.Tensor, yaw_deg: float) -> Camera:
    """``camera`` orbited by ``yaw_deg`` about the world vertical (+Y) through ``centre``
    (positive moves the camera toward +X, as ``orbit_camera``)."""
    a = math.radians(yaw_deg)
    c, s = math.cos(-a), math.sin(-a)
    R = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=camera.dtype)
    M = torch.eye(4, dtype=camera.dtype)
    M[:3, :3] = R
    M[:3, 3] = centre.to(camera.dtype) - R @ centre.to(camera.dtype)
    # the world turned by -yaw about the centre, seen by the old camera = the camera turned by +yaw
    return Camera(camera.K, camera.viewmat @ M[None], camera.width, camera.height)


def _render(avatar: Avatar, camera: Camera, lod: int, features: Optional[torch.Tensor] = None,
            index: Optional[torch.Tensor] = None, refiner=None, expression: Optional[dict] = None) -> np.ndarray:
    with torch.no_grad():
        if index is None:
            index = avatar.select(lod)
        params = {k: t.to(avatar.device).clone() for k, t in source_params(avatar).items()}
        for name, v in (expression or {}).items():
            params["expression"][0, list(avatar.expr_names).index(name)] = float(v)
        frame = avatar.animate(**params, lod=lod, index=index)
        if features is not None:
            frame = dataclasses.replace(frame, features=features[index][None])
        out = render(frame, camera, background=BACKGROUND, with_depth=False)
        img = out.image
        if refiner is not None and features is None:
            img = refiner(img)
        return img[0, ..., :3].clamp(0, 1).cpu().numpy()


def split_colours(avatar: Avatar) -> torch.Tensor:
    """Per-Gaussian RGB [N, 3]: head/shoulders a light grey, split layer l in its colour
    (``regions.layer_colour``, as Blender's inspection shows it)."""
    col = torch.full((avatar.num_gaussians, 3), 0.82, device=avatar.device)
    for layer in range(avatar.split_levels + 1):
        sel = avatar.split_layer == layer
        col[sel] = torch.tensor(layer_colour(layer), device=avatar.device)
    return col


def mask_colours(avatar: Avatar) -> torch.Tensor:
    """Per-Gaussian RGB [N, 3]: split Gaussians of layers >= 1 coloured by their effective soft
    mask (``regions.MASK_LOW`` 0 -> ``MASK_HIGH`` 1, the product with every ancestor's), the rest
    light grey."""
    col = torch.full((avatar.num_gaussians, 3), 0.82, device=avatar.device)
    soft = torch.sigmoid(avatar.soft_mask.float())
    eff = soft.clone()
    for layer in range(1, avatar.split_levels + 1):
        idx = torch.nonzero(avatar.split_layer == layer)[:, 0]
        par = avatar.parent[idx]
        ok = par >= 0
        pm = torch.ones_like(eff[idx])
        pm[ok] = torch.where(avatar.split_layer[par[ok]] >= 1, eff[par[ok]], torch.ones_like(pm[ok]))
        eff[idx] = soft[idx] * pm
    sel = avatar.split_layer >= 1
    m = eff[sel][:, None]
    hot, cold = torch.tensor(MASK_HIGH, device=col.device), torch.tensor(MASK_LOW, device=col.device)
    col[sel] = m * hot + (1 - m) * cold
    return col


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2
    out = (np.clip(img, 0, 1) * 255).astype(np.uint8).copy()
    scale = max(0.4, img.shape[0] / 560)
    thick = max(1, int(round(scale * 2)))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(out, (0, 0), (w + 8, h + base + 8), (255, 255, 255), -1)
    cv2.putText(out, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def preview_panels(avatar: Avatar, source_image: Optional[np.ndarray], size: int = 256,
                   refiner=None, device=None) -> List[np.ndarray]:
    """The labelled panels [size, size, 3] uint8, in sheet order (rendered on ``device``,
    default the avatar's; see the module docstring)."""
    if device is not None:
        avatar = avatar.to(device)
    cam = avatar.source_camera(size).to(device=avatar.device)
    lods = avatar.available_lods()
    top = max(lods)
    panels = []
    if source_image is not None:
        import cv2
        src = cv2.resize(np.asarray(source_image, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA)
    else:
        src = np.full((size, size, 3), 1.0, np.float32)
    panels.append(_label(src, "source"))
    for k in (0, 1, 2):
        if k in lods:
            panels.append(_label(_render(avatar, cam, k), f"LOD {k} ({avatar.lod_counts()[k]:,})"))
        else:
            panels.append(_label(np.ones((size, size, 3)), f"LOD {k}: none"))
    panels.append(_label(_render(avatar, cam, top, features=split_colours(avatar)),
                         f"split layers (L={avatar.split_levels})"))
    everything = torch.nonzero((avatar.lod == top) | (avatar.lod < 0))[:, 0]
    panels.append(_label(_render(avatar, cam, top, features=mask_colours(avatar), index=everything),
                         "soft masks (blue 0, red 1)"))
    centre = head_centre(avatar).cpu()
    for yaw in TURNS:
        turned = turned_camera(cam.to(device="cpu"), centre, yaw).to(device=avatar.device)
        label = f"back (yaw {yaw:.0f})" if abs(yaw) > 90 else f"yaw {yaw:+.0f}"
        panels.append(_label(_render(avatar, turned, top, refiner=refiner), label))
    panels.append(_label(np.ones((size, size, 3)), ""))
    names = set(avatar.expr_names)
    if not all(set(units) <= names for _, units in EXPRESSIONS):
        return panels
    turned30 = turned_camera(cam.to(device="cpu"), centre, 30.0).to(device=avatar.device)
    for camera, suffix in ((cam, ""), (turned30, ", yaw +30")):
        for label, units in EXPRESSIONS:
            panels.append(_label(_render(avatar, camera, top, refiner=refiner, expression=units), label + suffix))
    return panels


def preview_sheet(avatar: Avatar, source_image: Optional[np.ndarray], size: int = 256,
                  columns: int = COLUMNS, refiner=None, device=None) -> np.ndarray:
    """The sheet as one uint8 image [rows * size, columns * size, 3]."""
    from avatar_core.recon.threads import ThreadGovernor
    old = torch.get_num_threads()
    on_cpu = (device is None and avatar.device.type == "cpu") or str(device) == "cpu"
    ThreadGovernor(enabled=on_cpu).begin()
    try:
        panels = preview_panels(avatar, source_image, size, refiner, device)
    finally:
        torch.set_num_threads(old)
    rows = []
    for r in range(0, len(panels), columns):
        row = panels[r:r + columns]
        row += [np.full_like(panels[0], 255)] * (columns - len(row))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


def write_png(image: np.ndarray, path, what: str = "preview image") -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    import cv2

    from avatar_core.atomic import atomic_path
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode the {what}")
    with atomic_path(path, what) as tmp:
        Path(tmp).write_bytes(buf.tobytes())
    return path


def preview_path(out_path) -> Path:
    """``OUT.avatar`` -> ``OUT.preview.png``."""
    p = Path(out_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + ".preview.png")
