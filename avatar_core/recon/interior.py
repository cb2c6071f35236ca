"""The parts a photo never shows, painted so that an animated avatar reads: the mouth
interior (teeth, gums, tongue, a cavity darkening with depth), the eyeballs (sclera, iris,
pupil, turned by gaze) and the upper eyelids (lid skin with a darker lash line, so that a
blink closes with skin).

The geometry is the head model's own: the open head carries MakeHuman's mouth bag, upper
and lower teeth, tongue and eyeballs, skinned to the rig (upper teeth to the skull, lower
teeth and tongue to the jaw, eyeballs to eye_L / eye_R; the tongue follows ``tongueOut``).
Every LOD's Gaussians are bound to it through the LOD-0 surface, so what is painted here
is carried through the subdivision like the rest. What this module decides is colour:

* **Mouth.** Interior skin is the skin of the mouth box hidden from the front at rest (the
  inner lips and the mouth bag); its depth behind the lips sets a shading that darkens the
  cavity to near black at the back. Teeth and tongue take priors, shaded by depth the same
  way. Where the photo shows the inside of the mouth (teeth in a smile, an open mouth: the
  inner-lip contour of its landmarks encloses bright or dark pixels) its colours are used;
  elsewhere the priors are toned to the photo's white balance and exposure.
* **Eyes.** Eyeball Gaussians are painted by their angle from the eyeball's forward axis:
  pupil, iris (its colour from the photo's iris landmarks), a darker limbal ring, sclera.
* **Lids.** Skin that a blink moves (the upper lids) takes the colour of the photo's skin
  between the lid and the brow, never the eye's; the lid margin gets a darker lash line.

Gaussians the photo sees well keep their photo colour (the optimisation refines them).
Shapes: V0 rig vertices, N Gaussians.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

# priors, linear-ish sRGB in [0, 1], before toning
TEETH_RGB = (0.86, 0.83, 0.76)
GUM_RGB = (0.62, 0.30, 0.30)
TONGUE_RGB = (0.70, 0.36, 0.38)
CAVITY_RGB = (0.28, 0.07, 0.07)
SCLERA_RGB = (0.86, 0.84, 0.80)
IRIS_RGB = (0.35, 0.25, 0.18)
PUPIL_RGB = (0.03, 0.03, 0.03)
# shading by depth behind the lips (metres): exp(-max(d - start, 0) / scale)
SHADE_START = 0.004
SHADE_SCALE = 0.016
TEETH_SHADE_SCALE = 0.02
# eyes: iris and pupil radii on the eyeball (metres), limbal ring width (fraction of the iris)
IRIS_RADIUS = 0.0060
PUPIL_RADIUS = 0.0022
LIMBUS = 0.18
# the photo's iris radius is used within this range (x IRIS_RADIUS; the pupil scales with it)
IRIS_RANGE = (0.75, 1.4)
# the eyeball's white: past this many iris radii from the iris' centre, the photo fit's colour
# keeps only its shading (``shade_sclera``): refined freely, the lids' shadow and the iris'
# edge turned with the eyeball as pink and mauve patches on the white
IRIS_EDGE = 1.15
SCLERA_SHADE = (0.6, 1.1)     # the white's shading, x its painted colour (down to 0.3 it kept grey blotches)
# lids: a vertex is lid skin when a blink moves it more than this (metres, full weight at 2x)
LID_MOTION = 0.0015
LASH_DARKEN = 0.6
LID_SHADE_MIN = 0.8
UPPER_TEETH_LIGHT = 0.7
# the lower teeth sit deeper in the lips' shadow (at 0.4 they showed as a grey slab under the tongue)
LOWER_TEETH_LIGHT = 0.12
# light on the back of a resting tongue, deep in the mouth, before its depth shading (at 0.25,
# with the jaw open, the tongue filled the opening brighter than a mouth reads)
TONGUE_REST_LIGHT = 0.1
# how far the upper incisors show below the upper lip's margin at rest (metres)
UPPER_TEETH_SHOW = 0.0025
# the inner lips' skin just behind the lip line, as a share of the lips' colour (it faces down
# and in, out of the light; at 0.65 it ringed an open mouth with a band as bright as the lips)
INNER_LIP_SHADE = 0.45

# the skin at the inner eye corner (the caruncle) that stays over the photo's eye opening, as a
# share of the eye's width: hidden, the eyeball's white showed there as a bright spot
CARUNCLE_FRAC = 0.15
# how far the lids' split Gaussians may reach into the photo's eye opening (two sigmas), as a share
# of the opening's height: a lash fringe, not a veil over the iris
LASH_FRINGE = 0.15

# mediapipe face-mesh contours (478-point topology)
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
# subject's left eye (image right) and right eye; upper lid arcs; brows
EYE_LEFT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
EYE_RIGHT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
UPPER_LID_LEFT = (362, 398, 384, 385, 386, 387, 388, 466, 263)
UPPER_LID_RIGHT = (133, 173, 157, 158, 159, 160, 161, 246, 33)
BROW_LEFT = (336, 296, 334, 293, 300)
BROW_RIGHT = (107, 66, 105, 63, 70)
IRIS_LEFT = (473, 474, 475, 476, 477)
IRIS_RIGHT = (468, 469, 470, 471, 472)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


def luminance(rgb):
    """Rec. 709 luminance of RGB [..., 3]: a tensor for a tensor, else a float64 array."""
    if not isinstance(rgb, torch.Tensor):
        rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


def polygon_mask(points: np.ndarray, size) -> np.ndarray:
    """bool [H, W] inside the polygon ``points`` [n, 2] (pixel coordinates)."""
    import cv2
    H, W = (size, size) if np.isscalar(size) else size
    m = np.zeros((H, W), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(points)[:, :2] * 4).astype(np.int32)], 1, shift=2)
    return m.astype(bool)


# ----------------------------------------------------------------------------- regions
def head_regions(head) -> Optional[Dict[str, torch.Tensor]]:
    """LOD-0 vertex ids of the eyeballs, tongue and teeth of the head model, or None when it
    has none recorded (the open head records them; a FLAME head does not)."""
    if getattr(head, "name", "") != "open":
        return None
    try:
        from avatar_core.head.open_head import open_head_metadata
        meta = open_head_metadata()
    except Exception as exc:  # noqa: BLE001 - an unreadable cache only loses the painting
        log.warning("no open-head regions (%s); the mouth and eyes keep their photo colours", exc)
        return None
    regions = {k: torch.as_tensor(v, dtype=torch.long) for k, v in meta.get("regions", {}).items()}
    V = head.num_vertices if hasattr(head, "num_vertices") else None
    if not regions or (V is not None and max(int(r.max()) for r in regions.values()) >= V):
        return None
    return regions


def photo_tone(image: np.ndarray, alpha: np.ndarray, landmarks: Optional[np.ndarray]) -> np.ndarray:
    """Per-channel gain [3] that tones a prior to the photo: exposure from the face skin's
    luminance, white balance from the person's grey-world cast (half strength)."""
    img = np.asarray(image, dtype=np.float64)
    S = img.shape[0]
    person = np.asarray(alpha) > 0.5
    if landmarks is not None:
        face = polygon_mask(landmarks[list(FACE_OVAL), :2], S)
        for poly in (EYE_LEFT, EYE_RIGHT, OUTER_LIPS):
            face &= ~polygon_mask(landmarks[list(poly), :2], S)
        face &= person
    else:
        face = person
    if face.sum() < 50:
        return np.ones(3)
    px = img[face]
    lum = luminance(px)
    lo, hi = np.percentile(lum, [25, 85])
    skin = px[(lum >= lo) & (lum <= hi)]
    exposure = float(np.clip(luminance(np.median(skin, 0)) / 0.50, 0.55, 1.25))
    mean = img[person].mean(0) if person.any() else px.mean(0)
    cast = mean / max(float(luminance(mean)), 1e-3)
    cast = np.clip(cast, 0.7, 1.3) ** 0.5
    return exposure * cast / max(float(luminance(cast)), 1e-3)


def toned(rgb, tone) -> torch.Tensor:
    """A prior colour ``rgb`` [3] toned by ``photo_tone``'s gain [3], scaled down as a whole
    when a channel passes 1 so that its hue survives. Clamped channel by channel, a bright
    photo's teeth and sclera priors (gain 1.2-1.4) came out with red and green both at 1: a
    neutral grey that read as teal beside the lips and the skin (driving video d10)."""
    c = torch.as_tensor(rgb, dtype=torch.float32) * torch.as_tensor(tone, dtype=torch.float32)
    return c.clamp_min(0) / c.max().clamp_min(1.0)


def photo_mouth(image: np.ndarray, landmarks: Optional[np.ndarray]) -> dict:
    """What the photo shows inside the inner-lip contour: {"teeth": rgb or None, "cavity":
    rgb or None, "lips": rgb or None}."""
    out = {"teeth": None, "cavity": None, "lips": None}
    if landmarks is None:
        return out
    img = np.asarray(image, dtype=np.float64)
    S = img.shape[0]
    inner = polygon_mask(landmarks[list(INNER_LIPS), :2], S)
    outer = polygon_mask(landmarks[list(OUTER_LIPS), :2], S)
    lips = outer & ~inner
    if lips.sum() > 10:
        out["lips"] = np.median(img[lips], 0)
    if inner.sum() < 12:
        return out
    px = img[inner]
    lum = luminance(px)
    lip_l = luminance(out["lips"]) if out["lips"] is not None else 0.4
    bright = px[lum > max(np.percentile(lum, 60), 1.15 * lip_l)]
    if len(bright) >= 6 and luminance(np.median(bright, 0)) > 0.35:
        out["teeth"] = np.median(bright, 0)
    dark = px[lum < min(np.percentile(lum, 30), 0.5 * lip_l)]
    if len(dark) >= 6:
        out["cavity"] = np.median(dark, 0)
    return out


def photo_eyes(image: np.ndarray, landmarks: Optional[np.ndarray]) -> dict:
    """Iris, sclera and lid-skin colours seen in the photo, per eye ("L", "R"), or None."""
    out = {}
    if landmarks is None or landmarks.shape[0] < 478:
        return out
    img = np.asarray(image, dtype=np.float64)
    S = img.shape[0]
    yy, xx = np.mgrid[0:S, 0:S]
    skin = face_skin(img, landmarks)
    for side, eye, lid, brow, iris in (("L", EYE_LEFT, UPPER_LID_LEFT, BROW_LEFT, IRIS_LEFT),
                                      ("R", EYE_RIGHT, UPPER_LID_RIGHT, BROW_RIGHT, IRIS_RIGHT)):
        opening = polygon_mask(landmarks[list(eye), :2], S)
        c = landmarks[iris[0], :2]
        r = float(np.median(np.linalg.norm(landmarks[list(iris[1:]), :2] - c, axis=1)))
        d = np.hypot(xx - c[0], yy - c[1])
        res = {}
        ring = opening & (d < 0.9 * r) & (d > 0.35 * r)
        if ring.sum() >= 4:
            res["iris"] = np.median(img[ring], 0)
        white = opening & (d > 1.15 * r)
        if white.sum() >= 4:
            px = img[white]
            lum = luminance(px)
            res["sclera"] = np.median(px[lum >= np.percentile(lum, 50)], 0)
        # lid skin: between the upper-lid arc (raised a little off the lashes) and the brow
        arc = landmarks[list(lid), :2]
        br = landmarks[list(brow), :2]
        gap = float(np.median(np.abs(br[:, 1].mean() - arc[:, 1].mean())))
        top = arc.copy()
        top[:, 1] -= 0.2 * gap
        band = polygon_mask(np.concatenate([top, br[::-1] + [0, 0.25 * gap]], 0), S) & ~opening
        if band.sum() < 6:
            band = polygon_mask(np.concatenate([top, br[::-1]], 0), S) & ~opening
        if band.sum() >= 6:
            res["lid"] = lid_colour(np.median(img[band], 0), skin)
        out[side] = res
    return out


def on_regions(avatar, regions: Dict[str, torch.Tensor]) -> torch.Tensor:
    """[N] bool: Gaussians bound wholly to one of ``regions`` (eyeballs, teeth, tongue)."""
    ids = avatar.bind_ids.cpu()
    out = torch.zeros(ids.shape[0], dtype=torch.bool)
    for r in regions.values():
        out |= torch.isin(ids, r).all(1)
    return out & (avatar.frame_face.cpu() >= 0)


def blink_moved(avatar, metres: float = LID_MOTION) -> torch.Tensor:
    """[N] bool: Gaussians on skin that either blink moves by more than ``metres``."""
    names = list(avatar.expr_names)
    ex = avatar.rig_exprdirs.detach().cpu()
    m = torch.zeros(ex.shape[0])
    for unit in ("eyeBlinkLeft", "eyeBlinkRight"):
        if unit in names:
            m = torch.maximum(m, ex[:, :, names.index(unit)].norm(dim=1))
    return m[avatar.bind_ids.cpu()].max(1).values > metres


def in_eye_openings(uv: torch.Tensor, landmarks, size: int) -> torch.Tensor:
    """[N] bool: points ``uv`` [N, 2] (crop pixels) inside the photo's eye openings (the lid
    contours of the face-mesh ``landmarks``); all False without landmarks."""
    out = torch.zeros(uv.shape[0], dtype=torch.bool)
    if landmarks is None:
        return out
    opening = torch.as_tensor(polygon_mask(landmarks[list(EYE_LEFT), :2], size) |
                              polygon_mask(landmarks[list(EYE_RIGHT), :2], size))
    q = uv.detach().cpu().round().long()
    ok = (q[:, 0] >= 0) & (q[:, 0] < size) & (q[:, 1] >= 0) & (q[:, 1] < size)
    out[ok] = opening[q[ok, 1], q[ok, 0]]
    return out


def eye_opening_distance(uv: torch.Tensor, landmarks) -> torch.Tensor:
    """[N] distance (crop pixels) of points ``uv`` [N, 2] from the photo's nearer eye opening
    (the lid contours of the face-mesh ``landmarks``): 0 inside, inf without landmarks."""
    q = uv.detach().cpu().double()
    out = torch.full((q.shape[0],), float("inf"), dtype=torch.float64)
    if landmarks is None:
        return out
    for eye in (EYE_LEFT, EYE_RIGHT):
        poly = torch.as_tensor(np.asarray(landmarks)[list(eye), :2], dtype=torch.float64)
        a, b = poly, poly.roll(-1, 0)                      # the contour's edges a -> b
        ab = b - a
        t = (((q[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        d = (q[:, None] - (a[None] + t[..., None] * ab[None])).norm(dim=-1).amin(1)
        # inside by the crossing rule (an edge straddling the point's row, crossing right of it)
        ya, yb = a[None, :, 1], b[None, :, 1]
        cross = ((ya > q[:, None, 1]) != (yb > q[:, None, 1])) & \
            (q[:, None, 0] < a[None, :, 0] + (q[:, None, 1] - ya) * ab[None, :, 0] / (yb - ya + 1e-300))
        inside = cross.sum(1) % 2 == 1
        out = torch.minimum(out, torch.where(inside, torch.zeros_like(d), d))
    return out.float()


def eye_opening_heights(landmarks) -> float:
    """The mean height (crop pixels) of the photo's two eye openings; 0 without landmarks."""
    if landmarks is None:
        return 0.0
    lm = np.asarray(landmarks)
    return float(np.mean([np.ptp(lm[list(eye), 1]) for eye in (EYE_LEFT, EYE_RIGHT)]))


def near_inner_corners(uv: torch.Tensor, landmarks, frac: float = CARUNCLE_FRAC) -> torch.Tensor:
    """[N] bool: points ``uv`` [N, 2] (crop pixels) within ``frac`` of the eye's width of the
    photo's inner eye corners (the caruncle: skin that stays put when the eye turns); all False
    without landmarks."""
    out = torch.zeros(uv.shape[0], dtype=torch.bool)
    if landmarks is None:
        return out
    q = uv.detach().cpu().double()
    for lid in (UPPER_LID_RIGHT, UPPER_LID_LEFT):  # each arc runs from the inner corner to the outer
        inner, outer = lid[0], lid[-1]
        c = torch.as_tensor(landmarks[inner, :2], dtype=torch.float64)
        width = float(np.linalg.norm(landmarks[inner, :2] - landmarks[outer, :2]))
        out |= (q - c).norm(dim=1) < frac * width
    return out


def face_skin(img: np.ndarray, landmarks: np.ndarray) -> Optional[np.ndarray]:
    """Median colour of the face's skin (inside the face oval, eyes and lips left out, the
    25th to 85th luminance percentiles), or None."""
    S = img.shape[0]
    face = polygon_mask(landmarks[list(FACE_OVAL), :2], S)
    for poly in (EYE_LEFT, EYE_RIGHT, OUTER_LIPS):
        face &= ~polygon_mask(landmarks[list(poly), :2], S)
    if face.sum() < 50:
        return None
    px = img[face]
    lum = luminance(px)
    lo, hi = np.percentile(lum, [25, 85])
    return np.median(px[(lum >= lo) & (lum <= hi)], 0)


def lid_colour(band: np.ndarray, skin: Optional[np.ndarray]) -> np.ndarray:
    """The closed lid's colour: the photo's skin between lid and brow, its shade kept within
    ``LID_SHADE_MIN`` of the face's skin and half its chroma from it (a deep-set eye's band is
    shadowed grey, which on a closed lid reads as a smudge, not as skin)."""
    if skin is None:
        return band
    lb, ls = float(luminance(band)), max(float(luminance(skin)), 1e-3)
    lum = max(lb, LID_SHADE_MIN * ls)
    tinted = 0.5 * band / max(lb, 1e-3) + 0.5 * skin / ls
    return np.clip(tinted / max(float(luminance(tinted)), 1e-3) * lum, 0.0, 1.0)


# the back of the mouth: the open head's mouth bag is open toward the throat, so an open jaw
# showed the inside of the neck and the back of the head through it (skin-coloured, lit)
BACKSTOP_SPACING = 0.002   # metres between the backstop's Gaussians
BACKSTOP_DARKEN = 0.35     # of the cavity prior: the throat is near black
BACKSTOP_BELOW = 0.01      # how far below the lower teeth it reaches, metres (at 0.02 it showed through the skin under the chin)
BACKSTOP_INSIDE = 0.006    # how far behind the head's front surface each of its discs must lie, metres


def mouth_backstop(verts: torch.Tensor, faces: torch.Tensor, regions: Dict[str, torch.Tensor], tone) -> "PlanePoints":
    """Dark discs facing forward in a plane just behind the back teeth, across the teeth's
    width and from the upper teeth down past the lower ones: what an open mouth shows behind
    the tongue; only inside the head (hidden from the front and from below). Head-bound, unseen
    (their colour is kept), at the source pose ``verts`` [V, 3] with ``faces``."""
    from avatar_core.recon.init import PlanePoints
    dt = verts.dtype
    teeth = torch.cat([regions["teeth_upper"], regions["teeth_lower"]])
    tp = verts[teeth]
    lo, hi = tp.min(0).values, tp.max(0).values
    xs = torch.arange(float(lo[0]), float(hi[0]) + 1e-9, BACKSTOP_SPACING, dtype=dt)
    ys = torch.arange(float(lo[1]) - BACKSTOP_BELOW, float(hi[1]) + 1e-9, BACKSTOP_SPACING, dtype=dt)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.full((gx.numel(),), float(lo[2]), dtype=dt)], -1)
    # only inside the head: hidden from the front (not in front of the face) and from below
    # (not in the air under the chin, which the front view cannot tell from the throat)
    centre = 0.5 * (lo + hi)
    half = float(0.5 * (hi - lo).max()) + BACKSTOP_BELOW + 0.01
    up = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=dt)  # -y becomes +z
    inside = (frontal_hidden_depth(verts, faces, centre, half, res=256, points=pts) > BACKSTOP_INSIDE) & \
             (frontal_hidden_depth(verts @ up.T, faces, centre @ up.T, half, res=256, points=pts @ up.T) > BACKSTOP_INSIDE)
    pts = pts[inside]
    n = pts.shape[0]
    colour = (toned(CAVITY_RGB, tone).to(dt) * BACKSTOP_DARKEN).clamp(0, 1)
    return PlanePoints(points=pts, colours=colour.expand(n, 3).clone(), opacity=torch.full((n,), 0.99, dtype=dt),
                       scale=torch.full((n,), 0.75 * BACKSTOP_SPACING, dtype=dt),
                       normal=torch.tensor([0.0, 0.0, 1.0], dtype=dt).expand(n, 3).clone(),
                       head_bound=torch.ones(n, dtype=torch.bool), seen=torch.zeros(n, dtype=torch.bool))


# ----------------------------------------------------------------------------- per vertex
def frontal_hidden_depth(verts: torch.Tensor, faces: torch.Tensor, centre: torch.Tensor,
                         half_size: float, res: int = 192, points: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How far each vertex (or each of ``points`` [P, 3]) lies behind the front-most surface
    as seen from +Z, inside a square of ``half_size`` metres about ``centre`` (orthographic-like
    view): [V] (or [P]) metres, 0 for visible ones and those outside the square."""
    from avatar_core.render.mesh import rasterize_mesh
    dist = 10.0
    f = res / 2 / half_size * dist
    K = torch.tensor([[f, 0, (res - 1) / 2], [0, f, (res - 1) / 2], [0, 0, 1.0]])
    view = torch.eye(4)
    view[1, 1], view[2, 2] = -1.0, -1.0
    view[:3, 3] = torch.tensor([-float(centre[0]), float(centre[1]), dist + float(centre[2])])
    v = verts.float()
    ras = rasterize_mesh(v, faces, K, view, res, res)
    q = v if points is None else points.float()
    pc = q @ view[:3, :3].T + view[:3, 3]
    uv = pc[:, :2] / pc[:, 2:3] * f + (res - 1) / 2
    j, i = uv[:, 0].round().long(), uv[:, 1].round().long()
    inside = (j >= 0) & (j < res) & (i >= 0) & (i < res)
    d = torch.zeros(q.shape[0])
    zb = ras.depth.float()[i[inside], j[inside]]
    d[inside] = (pc[inside, 2] - zb).clamp_min(0)
    d[~torch.isfinite(d)] = 0
    return d


def _smoothstep(x, a, b):
    t = ((x - a) / (b - a)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def interior_paint(rest: torch.Tensor, faces: torch.Tensor, exprdirs: torch.Tensor, expr_names,
                   j_regressor: torch.Tensor, regions: Dict[str, torch.Tensor], tone: np.ndarray,
                   mouth: dict, eyes: dict, irises: Optional[Dict[str, dict]] = None) -> dict:
    """Per LOD-0 vertex paint of the mouth interior, eyeballs and lids.

    Returns {"colour": [V0, 3] target colour, "weight": [V0] how much it replaces the photo
    colour (0..1), "kind": [V0] int8 (0 none, 1 mouth, 2 eyeball, 3 lid), "eye_centre":
    [2, 3], "eye_axis": [2, 3], "eye_radius": [2], "iris_radius": [2]} (eye data: left, right;
    ``irises``: ``photo_irises``, where and how large the photo shows them)."""
    V = rest.shape[0]
    dt = torch.float32
    rest = rest.float()
    g = torch.as_tensor(tone, dtype=dt)
    col = torch.zeros(V, 3, dtype=dt)
    wgt = torch.zeros(V, dtype=dt)
    kind = torch.zeros(V, dtype=torch.int8)
    names = list(expr_names)
    skin = torch.ones(V, dtype=torch.bool)
    for r in regions.values():
        skin[r] = False

    def prior(rgb):
        return toned(rgb, g).to(dt)

    # ---- mouth: interior skin hidden from the front in the mouth box, teeth, tongue
    teeth = torch.cat([regions["teeth_upper"], regions["teeth_lower"]])
    tongue = regions["tongue"]
    tp = rest[teeth]
    lo, hi = tp.min(0).values, tp.max(0).values
    centre = 0.5 * (lo + hi)
    half = float(0.5 * (hi - lo)[:2].max()) * 1.6
    hidden = frontal_hidden_depth(rest, faces, centre, half)
    # the mouth bag lies within the teeth's width and height (a little more) and behind the
    # lips: skin hidden from the front elsewhere (under the chin, behind the nose's wings) is not it
    box = ((rest[:, 0] - centre[0]).abs() < 1.15 * (hi[0] - lo[0]) / 2) & \
          (rest[:, 1] > lo[1] - 0.008) & (rest[:, 1] < hi[1] + 0.008) & \
          (rest[:, 2] < hi[2] + 0.03) & (rest[:, 2] > lo[2] - 0.03)
    # the lips' front: the front-most skin of the box near the midline
    mid = box & skin & ((rest[:, 0] - centre[0]).abs() < 0.01)
    lip_front = float(rest[mid, 2].max()) if bool(mid.any()) else float(hi[2] + 0.015)
    depth = (lip_front - rest[:, 2]).clamp_min(0)
    shade = torch.exp(-(depth - SHADE_START).clamp_min(0) / SHADE_SCALE)
    interior = box & skin & (hidden > 0.0015)
    teeth_rgb = torch.as_tensor(mouth["teeth"], dtype=dt) if mouth.get("teeth") is not None else prior(TEETH_RGB)
    cavity_rgb = prior(CAVITY_RGB)
    if mouth.get("cavity") is not None:
        # the photo's darkest inner-lip pixels may darken the prior, never lighten it: in a
        # closed or barely open mouth they are the lips' seam, not a cavity
        seen = torch.as_tensor(mouth["cavity"], dtype=dt)
        if float(luminance(seen.numpy())) < float(luminance(cavity_rgb.numpy())):
            cavity_rgb = 0.5 * cavity_rgb + 0.5 * seen
    lip_rgb = torch.as_tensor(mouth["lips"], dtype=dt) if mouth.get("lips") is not None else prior(GUM_RGB)
    # gums: interior skin near the teeth roots
    from scipy.spatial import cKDTree
    dteeth = torch.as_tensor(cKDTree(tp.numpy()).query(rest.numpy(), k=1)[0], dtype=dt)
    gum = torch.exp(-(dteeth / 0.004) ** 2)
    # inner lips (just behind the lip line) keep a darkened lip colour, deeper skin is cavity
    t = _smoothstep(hidden, 0.0015, 0.008)[:, None]
    deep = prior(GUM_RGB) * gum[:, None] + cavity_rgb * (1 - gum[:, None])
    skin_col = (1 - t) * INNER_LIP_SHADE * lip_rgb + t * deep * shade[:, None]
    col[interior] = skin_col[interior]
    wgt[interior] = 1.0
    kind[interior] = 1
    tshade = torch.exp(-(depth - (lip_front - float(hi[2]))).clamp_min(0) / TEETH_SHADE_SCALE)
    # inside an open mouth the teeth sit in the lips' shadow (the lower ones deeper in it)
    lit = torch.zeros(V, dtype=dt)
    lit[regions["teeth_upper"]] = UPPER_TEETH_LIGHT
    lit[regions["teeth_lower"]] = LOWER_TEETH_LIGHT
    col[teeth] = (teeth_rgb[None] * (tshade[teeth] * lit[teeth])[:, None]).clamp(0, 1)
    wgt[teeth] = 1.0
    kind[teeth] = 1
    # the tongue is shaded where tongueOut brings it (its tip then shows in the light) and,
    # like the cavity's walls, by how deep it rests (an open mouth shows the back of a resting
    # tongue in the mouth's shadow; lit as the lips, it filled the opening with pink)
    if "tongueOut" in names:
        out_z = rest[:, 2] + exprdirs[:, 2, names.index("tongueOut")].float()
        shade_out = torch.exp(-(lip_front - out_z - SHADE_START).clamp_min(0) / SHADE_SCALE)
    else:
        shade_out = shade
    col[tongue] = prior(TONGUE_RGB)[None] * ((0.2 + 0.8 * shade_out[tongue]) * (TONGUE_REST_LIGHT + (1 - TONGUE_REST_LIGHT) * shade[tongue]))[:, None]
    wgt[tongue] = 1.0
    kind[tongue] = 1

    # ---- eyeballs
    centres = j_regressor[3:5].float() @ rest
    axes, radii, iris_radii, eye_colours = [], [], [], []
    for e, (side, key) in enumerate((("L", "eye_L"), ("R", "eye_R"))):
        ids = regions[key]
        p = rest[ids] - centres[e]
        front = p[p[:, 2].argmax()]
        seen = (irises or {}).get(key)
        if seen is not None:
            front = seen["axis"].float()
        iris_radii.append(IRIS_RADIUS if seen is None else float(seen["radius"]))
        axis = front / front.norm().clamp_min(1e-9)
        radius = float(p.norm(dim=1).median())
        axes.append(axis)
        radii.append(radius)
        info = eyes.get(side, {})
        iris = torch.as_tensor(info["iris"], dtype=dt) if "iris" in info else prior(IRIS_RGB)
        sclera = torch.as_tensor(info["sclera"], dtype=dt) if "sclera" in info else prior(SCLERA_RGB)
        # keep the sclera off pure skin tones and off the iris: at least as bright as the prior's 80 %,
        # a near-white floor (clamped channel by channel: toned as a whole it came out yellowish, and
        # the landmarker read the astronaut's glance at 0.078 of the eye's width against 0.10-0.31)
        sclera = torch.maximum(sclera, 0.8 * (torch.tensor(SCLERA_RGB, dtype=dt) * g).clamp(0, 1))
        eye_colours.append((iris, sclera))
        col[ids] = eyeball_colour(p, axis, radius, iris, sclera, iris_radii[-1])
        wgt[ids] = 1.0
        kind[ids] = 2

    # ---- upper lids: skin moved by the blinks
    for side, name in (("L", "eyeBlinkLeft"), ("R", "eyeBlinkRight")):
        if name not in names:
            continue
        m = exprdirs[:, :, names.index(name)].float().norm(dim=1)
        m = torch.where(skin, m, torch.zeros_like(m))
        w = _smoothstep(m, LID_MOTION, 2 * LID_MOTION)
        lid = eyes.get(side, {}).get("lid")
        if lid is None:
            continue
        lid = torch.as_tensor(lid, dtype=dt)
        mmax = float(m.max())
        # the lid margin (the skin a blink moves farthest) carries the lashes
        lash = _smoothstep(m, 0.92 * mmax, 0.99 * mmax)
        c = lid[None] * (1 - (1 - LASH_DARKEN) * lash[:, None])
        sel = w > 0
        col[sel] = c[sel]
        wgt[sel] = torch.maximum(wgt[sel], w[sel])
        kind[sel] = 3
    return {"colour": col.clamp(0, 1), "weight": wgt, "kind": kind, "eye_centre": centres,
            "eye_axis": torch.stack(axes), "eye_radius": torch.tensor(radii), "iris_radius": torch.tensor(iris_radii),
            "eye_colours": eye_colours}


def iris_distance(p: torch.Tensor, axis: torch.Tensor, radius: float) -> torch.Tensor:
    """[n] how far eyeball points p [n, 3] (relative to the eyeball centre, on a sphere of
    ``radius``) lie from the gaze ``axis`` [3], metres; infinite behind the centre."""
    u = p / p.norm(dim=1, keepdim=True).clamp_min(1e-9)
    cosang = (u * axis).sum(1).clamp(-1, 1)
    r = radius * torch.sqrt((1 - cosang ** 2).clamp_min(0))
    return torch.where(cosang > 0, r, torch.full_like(r, float("inf")))


def eyeball_colour(p: torch.Tensor, axis: torch.Tensor, radius: float, iris: torch.Tensor,
                   sclera: torch.Tensor, iris_radius: float = IRIS_RADIUS) -> torch.Tensor:
    """Colour of eyeball points p [n, 3] (relative to the eyeball centre): pupil, iris (of
    ``iris_radius`` metres) with a darker limbal ring, sclera, by the distance from the
    forward axis."""
    r = iris_distance(p, axis, radius)
    pupil = r < PUPIL_RADIUS * iris_radius / IRIS_RADIUS
    irisz = r < iris_radius
    ring = irisz & (r > (1 - LIMBUS) * iris_radius)
    out = sclera[None].expand(p.shape[0], 3).clone()
    out[irisz] = iris
    out[ring] = 0.55 * iris
    out[pupil] = torch.tensor(PUPIL_RGB, dtype=out.dtype)
    return out


# ----------------------------------------------------------------------------- Gaussians
def photo_irises(avatar, regions: Dict[str, torch.Tensor], params: dict, camera,
                 landmarks: np.ndarray) -> Dict[str, dict]:
    """Where and how large the photo shows each iris, on the eyeball: {"eye_L": {"axis": [3],
    "radius": metres}, "eye_R": ...}. "axis": the rest-space direction (from the eyeball's
    centre) of the eyeball points that the photo's iris centre falls on at the source pose;
    painting the iris there makes the avatar look where the person looks in the photo, whatever
    gaze the fit gave the head model, and eye movements turn it from there. "radius": the
    photo's iris radius (its landmarks' ring, in pixels) at the eyeball's depth, within
    ``IRIS_RANGE`` of ``IRIS_RADIUS``: painted smaller than the photo's, the fit spread the
    iris' colour over the white round it."""
    out = {}
    with torch.no_grad():
        verts, _ = avatar.deform_rig(**params)
    v = verts[0].detach().cpu().float()
    rest = avatar.rig_template.detach().cpu().float()
    cam = camera.to(device="cpu", dtype=torch.float32) if hasattr(camera, "to") else camera
    cam_pos = cam.position[0].float()
    for key, iris in (("eye_L", IRIS_LEFT), ("eye_R", IRIS_RIGHT)):
        ids = regions[key]
        c_src, c_rest = v[ids].mean(0), rest[ids].mean(0)
        uv, z = cam.project(v[ids][None])
        uv, z = uv[0], z[0]
        facing = ((v[ids] - c_src) * (cam_pos - c_src)).sum(1) > 0
        t = torch.as_tensor(landmarks[iris[0], :2], dtype=torch.float32)
        r = float(np.median(np.linalg.norm(landmarks[list(iris[1:]), :2] - landmarks[iris[0], :2], axis=1)))
        d2 = ((uv - t) ** 2).sum(1)
        w = torch.exp(-d2 / (2 * max(0.5 * r, 1.0) ** 2)) * facing.float()
        if float(w.sum()) < 1e-6:
            continue
        dirs = rest[ids] - c_rest
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-9)
        depth = float((w * z).sum() / w.sum())
        radius = r * depth / float(cam.fx[0])
        lo, hi = IRIS_RANGE
        out[key] = {"axis": (w[:, None] * dirs).sum(0),
                    "radius": min(max(radius, lo * IRIS_RADIUS), hi * IRIS_RADIUS)}
    return out


def fit_teeth(avatar, regions: Dict[str, torch.Tensor], show: float = UPPER_TEETH_SHOW) -> None:
    """Lower the rig's upper teeth so that their edge shows ``show`` metres below the upper
    lip's margin at rest, as a relaxed upper lip shows incisors (the open head's teeth end
    at the lip line, hidden behind the lip as soon as the mouth opens)."""
    rest = avatar.rig_template
    up = regions["teeth_upper"].to(rest.device)
    tp = rest[up]
    xs = 0.5 * (tp[:, 0].max() - tp[:, 0].min())
    skin = torch.ones(rest.shape[0], dtype=torch.bool, device=rest.device)
    for r in regions.values():
        skin[r.to(rest.device)] = False
    # the upper lip's margin at the midline: the lowest skin point above the teeth' lower edge
    # and in front of them, within the teeth' width
    front = skin & (rest[:, 0].abs() < 0.25 * xs) & (rest[:, 2] > tp[:, 2].max()) & \
        (rest[:, 1] < tp[:, 1].max()) & (rest[:, 1] > tp[:, 1].min() - 0.004)
    if not bool(front.any()):
        return
    margin = float(rest[front, 1].min())
    edge = float(tp[:, 1].min())
    drop = max(0.0, edge - (margin - show))
    with torch.no_grad():
        if drop > 0:
            avatar.rig_template[up, 1] -= drop



def paint_avatar(avatar, regions: Dict[str, torch.Tensor], image: np.ndarray, alpha: np.ndarray,
                 landmarks: Optional[np.ndarray], seen_weight: Optional[torch.Tensor] = None,
                 uv: Optional[torch.Tensor] = None, source=None) -> dict:
    """Paint the mouth interior, eyeballs and lids of every face-bound Gaussian of ``avatar``
    (in place, RGB channels). ``seen_weight`` [N] in [0, 1]: how much the photo's colour of
    each Gaussian is trusted (kept); None = 0 everywhere. ``uv`` [N, 2]: where each Gaussian
    falls in the photo (crop pixels): lid Gaussians falling inside the photo's eye opening
    are painted even when seen (the photo shows the eye there, not the lid). ``source``:
    (params, camera) of the photo; the iris is then painted where the photo's iris is.

    Returns a summary (tone gain, what the photo showed, counts per kind), "locked" [N]
    bool: the Gaussians painted outright, whose colour the photo should not bend, "eyeball"
    [N] bool: the eyeballs' Gaussians, and "sclera": ([N] bool, [N, 3]) the eyeballs' Gaussians
    on the white (past ``IRIS_EDGE``) and its painted colour, for ``shade_sclera``.
    """
    tone = photo_tone(image, alpha, landmarks)
    mouth = photo_mouth(image, landmarks)
    eyes = photo_eyes(image, landmarks)
    irises = None
    if source is not None and landmarks is not None and landmarks.shape[0] >= 478:
        irises = photo_irises(avatar, regions, source[0], source[1], landmarks)
    paint = interior_paint(avatar.rig_template.detach().cpu(), avatar.rig_faces.cpu(),
                           avatar.rig_exprdirs.detach().cpu(), avatar.expr_names,
                           avatar.rig_j_regressor.detach().cpu(), regions, tone, mouth, eyes, irises)
    face = avatar.frame_face.cpu() >= 0
    ids = avatar.bind_ids.cpu()
    bary = avatar.bind_bary.detach().cpu().float()
    w = (paint["weight"][ids] * bary).sum(1)
    col = (paint["colour"][ids] * bary[..., None]).sum(1)
    kind = paint["kind"][ids]
    # eyeball Gaussians: paint by their own rest position (sharper than the LOD-0 vertices)
    rest = (avatar.rig_template.detach().cpu()[ids] * bary[..., None]).sum(1)
    eyeball = torch.zeros(ids.shape[0], dtype=torch.bool)
    white = torch.zeros(ids.shape[0], dtype=torch.bool)
    white_rgb = torch.zeros(ids.shape[0], 3)
    for e, key in enumerate(("eye_L", "eye_R")):
        on = face & torch.isin(ids, regions[key]).all(1)
        eyeball |= on
        if bool(on.any()):
            iris, sclera = paint["eye_colours"][e]
            p, axis, radius = rest[on] - paint["eye_centre"][e], paint["eye_axis"][e], float(paint["eye_radius"][e])
            iris_r = float(paint["iris_radius"][e])
            col[on] = eyeball_colour(p, axis, radius, iris, sclera, iris_r)
            on_white = on.clone()
            on_white[on] = iris_distance(p, axis, radius) >= IRIS_EDGE * iris_r
            white |= on_white
            white_rgb[on_white] = sclera.float()
            w[on] = 1.0
    w = torch.where(face, w, torch.zeros_like(w))
    mouth_g = (kind == 1).any(1)
    if seen_weight is not None:
        # the photo's own view of the mouth interior (teeth in a smile, an open mouth) is kept;
        # eyeballs and lids are always painted (a lid seen over the iris must not carry it)
        seen = seen_weight.detach().cpu().float().clamp(0, 1)
        lid_g = (kind == 3).any(1) & ~mouth_g
        in_eye = (in_eye_openings(uv, landmarks, int(np.asarray(image).shape[0])) if uv is not None
                  else torch.zeros_like(lid_g))
        # inner lips that the photo shows as teeth (the fitted lips overlap a smile's teeth)
        # would show teeth when the mouth opens: they are painted, not taken from the photo
        skin_ids = torch.ones(avatar.rig_template.shape[0], dtype=torch.bool)
        for r in regions.values():
            skin_ids[r] = False
        mouth_skin = mouth_g & skin_ids[ids].all(1)
        cur = avatar.features[:, :3].detach().cpu().float()
        lip_l = float(luminance(mouth["lips"])) if mouth.get("lips") is not None else 0.5
        grey = cur.max(1).values - cur.min(1).values < 0.25 * cur.max(1).values.clamp_min(1e-3)
        if mouth.get("teeth") is not None:  # or the colour of the teeth the photo shows
            grey |= (cur - torch.as_tensor(mouth["teeth"], dtype=cur.dtype)).abs().amax(1) < 0.1
        teethlike = torch.as_tensor(luminance(cur.numpy()) > 1.05 * lip_l) & grey
        # the tongue is always painted: a photo shows it only in a few open mouths, and a
        # resting tongue the fit places in a smile's opening would carry the teeth' colour
        tongue_g = torch.isin(ids, regions["tongue"]).all(1)
        keep_mouth = mouth_g & ~(mouth_skin & teethlike) & ~tongue_g
        keep = seen * (keep_mouth.float() + (lid_g & ~in_eye).float())
        w = w * (1 - keep.clamp(0, 1))
    sel = torch.nonzero(w > 1e-3)[:, 0]
    dev = avatar.features.device
    with torch.no_grad():
        f = avatar.features[sel, :3]
        ww = w[sel].to(dev, f.dtype)[:, None]
        avatar.features[sel, :3] = (1 - ww) * f + ww * col[sel].to(dev, f.dtype)
    locked = w > 0.5
    kinds = {name: int(((kind == k).any(1) & (w > 0.5)).sum()) for k, name in ((1, "mouth"), (2, "eyeball"), (3, "lid"))}
    return {"tone": [round(float(x), 3) for x in tone],
            "photo_teeth": mouth["teeth"] is not None, "photo_cavity": mouth["cavity"] is not None,
            "photo_iris": sorted(k for k, v in eyes.items() if "iris" in v), "painted": kinds,
            "iris_mm": [round(1000 * float(r), 2) for r in paint["iris_radius"]],
            "locked": locked, "eyeball": eyeball, "sclera": (white, white_rgb)}


def shade_sclera(avatar, sclera) -> None:
    """After the photo fit: the eyeballs' white (``paint_avatar``'s "sclera": mask [N], painted
    colour [N, 3]) keeps the fit's shading (its luminance over the painted one, within
    ``SCLERA_SHADE``) on the painted colour, and drops the hues the fit gave it. In place."""
    mask, rgb = sclera
    if not bool(mask.any()):
        return
    dev = avatar.features.device
    idx = torch.nonzero(mask)[:, 0].to(dev)
    with torch.no_grad():
        c = avatar.features[idx, :3]
        white = rgb[mask].to(dev, c.dtype)
        ratio = (luminance(c) / luminance(white).clamp_min(1e-3)).clamp(*SCLERA_SHADE)
        avatar.features[idx, :3] = (white * ratio[:, None]).clamp(0, 1)
