"""``python -m avatar_core eval sideviews AVATAR... [--yaw 45] [--json F]``: does a turned head hold?

Measured on stills at the avatar's source camera turned about the head centre by -yaw and
+yaw (``recon.still``; issue 16's acceptance 2):

* **notch**: the person's mask (alpha > 0.5) closed with a disk of radius 4% of the image
  width, minus the mask, over the mask's area: a gap between head and bust, or a wedge cut
  out under the jaw, fills the closing. ``notch`` (target <= 0.01).
* **speckles**: pixels of the face whose colour differs from its 5 x 5 median by more than
  0.3 (any channel, colours in [0, 1]): isolated dark or pale dots. The face is where the
  head's own Gaussians (not the hair or bust) cover the still with alpha > 0.5, eroded by 3
  pixels so that the outline's edge does not count. ``speckles`` (target <= 20 in total over
  the two views).

One JSON object per avatar is printed (and all are written with ``--json``); ``pass`` holds
each target's verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

NOTCH_MAX = 0.01
SPECKLES_MAX = 20
NOTCH_RADIUS = 0.04      # of the image width
SPECKLE_STEP = 0.3


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= r * r


def notch_fraction(alpha: np.ndarray) -> float:
    """(closing(mask) - mask) / mask for mask = alpha > 0.5, closing with a disk of radius
    ``NOTCH_RADIUS`` of the width (the image is padded so the closing does not touch its border)."""
    from scipy import ndimage
    mask = np.asarray(alpha) > 0.5
    area = int(mask.sum())
    if area == 0:
        return 1.0
    r = max(1, int(round(NOTCH_RADIUS * mask.shape[1])))
    padded = np.pad(mask, r + 1)
    closed = ndimage.binary_closing(padded, structure=_disk(r))[r + 1:-r - 1, r + 1:-r - 1]
    return float((closed & ~mask).sum()) / area


def speckle_count(rgb: np.ndarray, face: np.ndarray) -> int:
    """Pixels of ``face`` (bool [H, W]) where ``rgb`` ([H, W, 3] in [0, 1]) differs from its
    5 x 5 median by more than ``SPECKLE_STEP`` in any channel."""
    from scipy import ndimage
    img = np.asarray(rgb, dtype=np.float64)
    med = np.stack([ndimage.median_filter(img[..., c], size=5, mode="nearest") for c in range(3)], -1)
    out = (np.abs(img - med) > SPECKLE_STEP).any(-1) & face
    return int(out.sum())


def turned_still(avatar, yaw: float, res: int, lod: Optional[int] = None, refiner=None):
    """(rgb [H, W, 3] in [0, 1], alpha [H, W], face [H, W] bool) of ``avatar`` turned by ``yaw``
    degrees, the photo's expression, over white."""
    import torch

    from avatar_core.regions import REGION_HEAD
    from avatar_core.recon.still import still_camera, still_params
    from avatar_core.render import render
    from scipy import ndimage
    lods = avatar.available_lods()
    lod = lods[-1] if lod is None else lod
    cam = still_camera(avatar, res, yaw, 0.0).to(device=avatar.device)
    params = still_params(avatar)
    with torch.no_grad():
        frame = avatar.animate(**params, lod=lod)
        out = render(frame, cam, background=1.0)
        img = refiner(out.image) if refiner is not None else out.image[..., :3]
        rgb = img[0].clamp(0, 1).cpu().numpy()
        alpha = out.alpha[0, ..., 0].cpu().numpy()
        head = torch.nonzero(avatar.region == REGION_HEAD)[:, 0]
        hframe = avatar.animate(**params, lod=lod, index=head.to(avatar.device))
        halpha = render(hframe, cam, background=1.0).alpha[0, ..., 0].cpu().numpy()
    face = ndimage.binary_erosion(halpha > 0.5, iterations=3)
    return rgb, alpha, face


def sideview_figures(avatar, yaw: float = 45.0, res: int = 512, lod: Optional[int] = None, refiner=None,
                     stills_dir: Optional[Path] = None) -> Dict[str, object]:
    """Notch and speckle figures at -yaw and +yaw (see the module docstring)."""
    views = {}
    total = 0
    for y in (-abs(yaw), abs(yaw)):
        rgb, alpha, face = turned_still(avatar, y, res, lod, refiner)
        n = speckle_count(rgb, face)
        total += n
        views[f"{y:+g}"] = {"notch": round(notch_fraction(alpha), 5), "speckles": n}
        if stills_dir is not None:
            from avatar_core.recon.preview import write_png
            stills_dir.mkdir(parents=True, exist_ok=True)
            write_png((rgb * 255 + 0.5).astype(np.uint8), stills_dir / f"yaw{y:+g}.png", "still image")
    worst = max(v["notch"] for v in views.values())
    return {"views": views, "notch_max": worst, "speckles_total": total, "res": res,
            "pass": {"notch": worst <= NOTCH_MAX, "speckles": total <= SPECKLES_MAX}}
