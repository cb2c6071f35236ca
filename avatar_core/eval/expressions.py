"""``python -m avatar_core eval expressions AVATAR... [--json F]``: does the animation read?

Measured on stills rendered at the avatar's source camera (``recon.still``) from a neutral
face with only the measured units set, with the face landmarker run on the rendered
pictures (issue 15's acceptance):

* **mouth** (jawOpen = 1): mean luminance inside the inner-lip contour over the mean
  luminance of the lips (outer minus inner contour): ``dark_ratio`` (target <= 0.6); the
  teeth band (the top quarter of the opening, under the upper lip) against the cavity (its
  middle): ``teeth_over_cavity`` (target > 1); and tongueOut = 1 (with the jaw half open)
  against the jaw alone: ``tongue_changed`` (share of the mouth box that changes by more
  than ΔE 10: the tongue shows).
* **eyes**: with both blinks at 1, the mean CIELAB colour inside each eye's opening (the
  polygon of the neutral still) against the skin between that eye's lid and brow:
  ``blink_delta_e`` per eye (target <= 12); eyeLookOutLeft = 1 moves the left iris by
  ``gaze_shift`` of the eye's width (target >= 0.25; the iris centre is the centroid of
  the visible iris in a render with the iris black and the rest white; the eye's width is
  the landmarks' corner distance; ``gaze_shift_landmarks``: the landmarker's iris centre).

Figures are printed as one JSON object per avatar (and written with ``--json``); ``pass``
holds each target's verdict. Nothing here trains or changes the avatar.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)

DARK_RATIO_MAX = 0.6
BLINK_DELTA_E_MAX = 12.0
GAZE_SHIFT_MIN = 0.25


# ----------------------------------------------------------------------------- colour
def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] [..., 3] -> CIELAB (D65) [..., 3]."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ M.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """CIE76 ΔE between two sRGB colours in [0, 1]."""
    return float(np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b)))


# ----------------------------------------------------------------------------- landmarks
def detect(rgb: np.ndarray) -> Optional[np.ndarray]:
    """[478, 3] face-mesh landmarks of a rendered still (uint8 RGB), or None."""
    from avatar_core.face import FaceTracker
    with FaceTracker() as tracker:
        return tracker.track(rgb)


# ----------------------------------------------------------------------------- figures
def mouth_figures(stills: Dict[str, np.ndarray], lm_open: Optional[np.ndarray]) -> dict:
    """Mouth figures from the jawOpen still and its landmarks (see the module docstring)."""
    from avatar_core.recon.interior import INNER_LIPS, OUTER_LIPS, luminance, polygon_mask
    out = {"detected": lm_open is not None}
    if lm_open is None:
        return out
    img = stills["jaw"].astype(np.float64) / 255
    S = img.shape[:2]
    inner = polygon_mask(lm_open[list(INNER_LIPS), :2], S)
    outer = polygon_mask(lm_open[list(OUTER_LIPS), :2], S)
    lips = outer & ~inner
    out["inner_px"] = int(inner.sum())
    if inner.sum() < 10 or lips.sum() < 10:
        return out
    lum = luminance(img)
    li, ll = float(lum[inner].mean()), float(lum[lips].mean())
    out.update(inner_luminance=round(li, 4), lips_luminance=round(ll, 4), dark_ratio=round(li / max(ll, 1e-6), 4))
    rows = np.nonzero(inner.any(1))[0]
    top, bottom = rows.min(), rows.max()
    h = max(bottom - top + 1, 4)
    band = inner.copy()
    band[: top] = False
    band[top + max(1, h // 4):] = False
    cav = inner.copy()
    cav[: top + int(0.35 * h)] = False
    cav[top + int(0.7 * h):] = False
    if band.sum() and cav.sum():
        lt, lc = float(lum[band].mean()), float(lum[cav].mean())
        out.update(teeth_luminance=round(lt, 4), cavity_luminance=round(lc, 4),
                   teeth_over_cavity=round(lt / max(lc, 1e-6), 3))
    # the tongue: what tongueOut changes around the mouth (jaw half open in both stills)
    if "tongue" in stills and "half" in stills:
        y0, y1 = top - h, min(S[0], bottom + 2 * h)
        cols = np.nonzero(outer.any(0))[0]
        x0, x1 = cols.min(), cols.max() + 1
        a = srgb_to_lab(stills["tongue"][max(0, y0):y1, x0:x1] / 255)
        b = srgb_to_lab(stills["half"][max(0, y0):y1, x0:x1] / 255)
        out["tongue_changed"] = round(float((np.linalg.norm(a - b, axis=-1) > 10).mean()), 4)
    return out


def eye_figures(stills: Dict[str, np.ndarray], lm_neutral: Optional[np.ndarray],
                lm_look: Optional[np.ndarray], lm_ahead: Optional[np.ndarray] = None) -> dict:
    """Blink and gaze figures (see the module docstring)."""
    from avatar_core.recon.interior import (BROW_LEFT, BROW_RIGHT, EYE_LEFT, EYE_RIGHT, IRIS_LEFT,
                                            UPPER_LID_LEFT, UPPER_LID_RIGHT, polygon_mask)
    out = {"detected": lm_neutral is not None}
    if lm_neutral is None:
        return out
    blink = stills["blink"].astype(np.float64) / 255
    S = blink.shape[:2]
    for side, eye, lid, brow in (("left", EYE_LEFT, UPPER_LID_LEFT, BROW_LEFT),
                                 ("right", EYE_RIGHT, UPPER_LID_RIGHT, BROW_RIGHT)):
        opening = polygon_mask(lm_neutral[list(eye), :2], S)
        arc = lm_neutral[list(lid), :2]
        br = lm_neutral[list(brow), :2]
        gap = abs(float(br[:, 1].mean() - arc[:, 1].mean()))
        top = arc.copy()
        top[:, 1] -= 0.25 * gap
        band = polygon_mask(np.concatenate([top, br[::-1] + [0, 0.25 * gap]], 0), S) & ~opening
        if opening.sum() < 4 or band.sum() < 4:
            continue
        # the skin between lid and brow, as the blink still shows it there
        de = delta_e(blink[opening].mean(0), blink[band].mean(0))
        out[f"blink_delta_e_{side}"] = round(de, 2)
    ref = lm_ahead if lm_ahead is not None else lm_neutral
    width = float(np.linalg.norm(ref[263, :2] - ref[362, :2]))
    if lm_look is not None:
        shift = float(np.linalg.norm(lm_look[IRIS_LEFT[0], :2] - ref[IRIS_LEFT[0], :2]))
        out["gaze_shift_landmarks"] = round(shift / max(width, 1e-6), 4)
    # the iris as the picture shows it: the centroid of the visible iris in a mask render (the
    # landmarker's iris points lean toward the eye's middle on rendered eyes)
    if "iris_ahead" in stills and "iris_look" in stills:
        c0, c1 = mask_centroid(stills["iris_ahead"]), mask_centroid(stills["iris_look"])
        if c0 is not None and c1 is not None:
            out["gaze_shift"] = round(float(np.linalg.norm(c1 - c0)) / max(width, 1e-6), 4)
    return out


def mask_centroid(rgb: np.ndarray) -> Optional[np.ndarray]:
    """Pixel centroid (x, y) of the dark pixels of a mask render, or None when nothing is
    darker than 7/8 white. Dark means at least half as dark as the darkest pixel, so an iris
    seen grey through half-transparent lashes is found as well as a black one."""
    dark = 255.0 - rgb[..., 0].astype(np.float64)
    peak = float(dark.max())
    if peak < 32:
        return None
    ys, xs = np.nonzero(dark > 0.5 * peak)
    if xs.size < 3:
        return None
    return np.array([xs.mean(), ys.mean()])


def iris_colours(avatar) -> Optional["torch.Tensor"]:
    """Per-Gaussian RGB [N, 3] for an iris mask render: the left eyeball's dark Gaussians
    (iris and pupil, as painted) black, everything else white; None without eye regions."""
    import torch

    from avatar_core.recon.interior import head_regions, luminance
    regions = head_regions(_rig_head_stub(avatar))
    if regions is None:
        return None
    on = (avatar.frame_face >= 0) & torch.isin(avatar.bind_ids, regions["eye_L"].to(avatar.device)).all(1)
    lum = torch.as_tensor(luminance(avatar.features[:, :3].detach().cpu().numpy()), device=avatar.device)
    if not bool(on.any()):
        return None
    thr = 0.5 * float(lum[on].max())
    col = torch.ones(avatar.num_gaussians, 3, device=avatar.device)
    col[on & (lum < thr)] = 0.0
    return col


def _rig_head_stub(avatar):
    class _Stub:  # what head_regions reads: the name and the vertex count
        name = avatar.head_name
        num_vertices = int(avatar.rig_template.shape[0])
    return _Stub()


def expression_figures(avatar, res: int = 512, lod: Optional[int] = None, refiner=None,
                       stills_dir: Optional[Path] = None, neutral: bool = True) -> dict:
    """Every figure for one avatar (renders 7 stills at ``res``), with the verdicts.

    ``neutral``: each still sets only the units measured on a neutral face (default); False
    sets them on top of the photo's fitted expression (a smiling photo then keeps its smile).
    """
    from avatar_core.recon.still import render_still
    sets = {"neutral": {}, "jaw": {"jawOpen": 1.0}, "half": {"jawOpen": 0.5},
            "tongue": {"jawOpen": 0.5, "tongueOut": 1.0},
            "blink": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, "look": {"eyeLookOutLeft": 1.0}}
    names = set(avatar.expr_names)
    # the gaze is measured from eyes looking ahead (every eye-look unit at 0)
    ahead = {n: 0.0 for n in names if n.startswith("eyeLook")}
    sets["ahead"] = ahead
    sets["look"] = {**ahead, **sets["look"]}
    stills = {}
    for key, expr in sets.items():
        if not set(expr) <= names:
            continue
        stills[key] = render_still(avatar, expr, lod=lod, res=res, refiner=refiner, neutral=neutral)
    iris = iris_colours(avatar) if "look" in stills else None
    if iris is not None:
        saved = avatar.features[:, :3].clone()
        try:
            avatar.features[:, :3] = iris
            for key in ("ahead", "look"):
                stills["iris_" + key] = render_still(avatar, sets[key], lod=lod, res=res, neutral=neutral)
        finally:
            avatar.features[:, :3] = saved
    if stills_dir is not None:
        from avatar_core.recon.preview import write_png
        stills_dir.mkdir(parents=True, exist_ok=True)
        for key, img in stills.items():
            write_png(img, stills_dir / f"{key}.png", "still image")
    lm_neutral = detect(stills["neutral"])
    lm_jaw = detect(stills["jaw"]) if "jaw" in stills else None
    lm_look = detect(stills["look"]) if "look" in stills else None
    lm_ahead = detect(stills["ahead"]) if "ahead" in stills else None
    mouth = mouth_figures(stills, lm_jaw) if "jaw" in stills else {}
    eyes = eye_figures(stills, lm_neutral, lm_look, lm_ahead) if "blink" in stills else {}
    verdict = {}
    if "dark_ratio" in mouth:
        verdict["mouth_dark"] = mouth["dark_ratio"] <= DARK_RATIO_MAX
    if "teeth_over_cavity" in mouth:
        verdict["teeth_band"] = mouth["teeth_over_cavity"] > 1.0
    des = [v for k, v in eyes.items() if k.startswith("blink_delta_e")]
    if des:
        verdict["blink_skin"] = max(des) <= BLINK_DELTA_E_MAX
    if "gaze_shift" in eyes:
        verdict["gaze"] = eyes["gaze_shift"] >= GAZE_SHIFT_MIN
    return {"mouth": mouth, "eyes": eyes, "pass": verdict, "res": res}
