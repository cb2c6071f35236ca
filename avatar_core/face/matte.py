"""Portrait matte: mediapipe's selfie segmentation (run in torch), cleaned up and snapped to the image's edges.

The raw segmentation is a soft, low-resolution (256 x 256) person mask. It is refined by:
keeping only the connected person region that contains the face, filling its holes,
forcing the face (the landmarks' convex hull) opaque, and an edge-aware colour guided
filter (He et al. 2013) that moves the soft edge onto the image's real edges (hair).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from avatar_core.face import _models

log = logging.getLogger(__name__)

SELFIE_MODEL = 0  # the general (square, 256 x 256) model; model 1 is for landscape video
GUIDED_EPS = 5e-4  # guided-filter regularisation: smaller follows image edges (hair) more closely


def segment_person(rgb: np.ndarray, model: int = SELFIE_MODEL) -> np.ndarray:
    """Raw selfie segmentation.

    Args:
        rgb: [H, W, 3] float32 in [0, 1] or uint8.

    Returns:
        [H, W] float32 in [0, 1], the person probability.
    """
    device = _models.default_device()
    image = _models.to_tensor(_models.to_u8(rgb), device)
    mask = _models.get("selfie", model, device)(image)[0]
    return np.clip(mask.cpu().numpy().astype(np.float32), 0.0, 1.0)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    import cv2

    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def _solve_sym3(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[..., 3, 3] symmetric positive definite, [..., 3] -> [..., 3] solving m x = v (by cofactors)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]
    # cofactors of [[a, b, c], [b, d, e], [c, e, f]]
    i00, i01, i02 = d * f - e * e, c * e - b * f, b * e - c * d
    i11, i12, i22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * i00 + b * i01 + c * i02
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([i00 * x + i01 * y + i02 * z,
                     i01 * x + i11 * y + i12 * z,
                     i02 * x + i12 * y + i22 * z], axis=-1) / det[..., None]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter.

    Args:
        guide: [H, W, 3] float32 in [0, 1], the image whose edges the output follows.
        src: [H, W] float32, the map to filter.
        radius: window radius in pixels.
        eps: regularisation; larger smooths more across weak edges.

    Returns:
        [H, W] float32.
    """
    guide = guide.astype(np.float32)
    src = src.astype(np.float32)
    h, w = src.shape
    mean_i = _box(guide, radius)                                    # [H, W, 3]
    mean_p = _box(src, radius)                                      # [H, W]
    cov_ip = _box(guide * src[:, :, None], radius) - mean_i * mean_p[:, :, None]  # [H, W, 3]
    # sigma[h, w, c, d] = E[I_c I_d] - E[I_c] E[I_d] over the window
    prods = np.stack([guide[:, :, c] * guide[:, :, d] for c in range(3) for d in range(3)], axis=-1)
    sigma = (_box(prods, radius) - np.einsum("hwc,hwd->hwcd", mean_i, mean_i).reshape(h, w, 9)).reshape(h, w, 3, 3)
    sigma = sigma + eps * np.eye(3, dtype=np.float32)
    a = _solve_sym3(sigma, cov_ip)                                 # [H, W, 3]
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_i)               # [H, W]
    return np.einsum("hwc,hwc->hw", _box(a, radius), guide) + _box(b, radius)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool -> [H, W] bool with every region not connected to the border filled."""
    import cv2

    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask.astype(np.uint8)
    flood = padded.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def _disk(r: int) -> np.ndarray:
    import cv2

    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def face_hull_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """[size, size] bool: the convex hull of the landmarks ([N, 2+] in crop pixels)."""
    import cv2

    pts = np.round(landmarks[:, :2] - 0.5).astype(np.int32)
    hull = cv2.convexHull(pts)
    out = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(out, hull, 1)
    return out.astype(bool)


def refine_matte(rgb: np.ndarray, soft: np.ndarray, landmarks: Optional[np.ndarray] = None) -> np.ndarray:
    """Clean up a soft person mask.

    Args:
        rgb: [S, S, 3] float32 in [0, 1], the crop.
        soft: [S, S] float32 in [0, 1], the raw person probability.
        landmarks: [478, 3] in crop pixels, or None.

    Returns:
        [S, S] float32 alpha in [0, 1].
    """
    import cv2

    size = soft.shape[0]
    face = face_hull_mask(landmarks, size) if landmarks is not None else np.zeros_like(soft, bool)
    binary = soft > 0.5
    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    if n > 2 and face.any():
        hits = np.bincount(labels[face & binary], minlength=n)
        hits[0] = 0
        keep = np.isin(labels, np.flatnonzero(hits)) if hits.any() else binary
        binary = keep
    person = _fill_holes(binary | face)

    r = max(2, size // 64)
    near = cv2.dilate(person.astype(np.uint8), _disk(2 * r)).astype(bool)
    core = cv2.erode(person.astype(np.uint8), _disk(2 * r)).astype(bool)
    alpha = np.where(near, soft, 0.0).astype(np.float32)
    alpha[core | face] = 1.0
    alpha = guided_filter(rgb, alpha, radius=r, eps=GUIDED_EPS)
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[~near] = 0.0
    alpha[cv2.erode(face.astype(np.uint8), _disk(r)).astype(bool)] = 1.0
    return alpha.astype(np.float32)


def portrait_matte(rgb: np.ndarray, landmarks: Optional[np.ndarray] = None, model: int = SELFIE_MODEL) -> np.ndarray:
    """Alpha matte of the person in a portrait crop.

    Args:
        rgb: [S, S, 3] float32 in [0, 1], the crop.
        landmarks: [478, 3] in crop pixels (used to keep the person whose face it is).
        model: selfie-segmentation model, 0 (general, 256 x 256) or 1 (landscape, 144 x 256).

    Returns:
        [S, S] float32 alpha in [0, 1].
    """
    return refine_matte(rgb, segment_person(rgb, model), landmarks)
