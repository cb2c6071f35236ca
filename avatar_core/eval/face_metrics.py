"""Face-specific metrics for self-reenactment: keypoint distance (AKD) and mouth-box PSNR.

Landmarks are MediaPipe face-mesh points [478, 2+] in pixels of the image they were found in
(x right, y down); a frame without landmarks is all-NaN. Images are [H, W, 3] float in [0, 1].

    akd(render_lms, real_lms)                  # mean 2-D distance over the 478 points, pixels
    box = mouth_box(real_lms, size=256)        # (x0, y0, x1, y1) around the lips, padded
    box_psnr(render, real, box)                # PSNR inside it
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from avatar_core.metrics import psnr

__all__ = ["LIP_LANDMARKS", "akd", "mouth_box", "box_psnr", "landmark_sequence"]

# the lips of the face mesh, outer and inner contours (avatar_core.fit.landmark_sets.LIPS)
LIP_LANDMARKS = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269,
                          270, 409, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13,
                          312, 311, 310, 415])
MOUTH_PAD = 0.25   # the box grows by this share of its larger side on every side


def akd(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    """Average keypoint distance: mean Euclidean distance between corresponding 2-D landmarks
    [K, 2+] and [K, 2+] (pixels). NaN when either side has no landmarks (None or NaN)."""
    if a is None or b is None:
        return float("nan")
    a = np.asarray(a, dtype=np.float64)[:, :2]
    b = np.asarray(b, dtype=np.float64)[:, :2]
    if a.shape != b.shape:
        raise ValueError(f"akd: landmark shapes differ: {a.shape} vs {b.shape}")
    d = np.linalg.norm(a - b, axis=-1)
    if not np.isfinite(d).any():
        return float("nan")
    return float(np.nanmean(d))


def mouth_box(landmarks: Optional[np.ndarray], size: Tuple[int, int], pad: float = MOUTH_PAD,
              min_side: int = 8) -> Optional[Tuple[int, int, int, int]]:
    """Integer pixel box (x0, y0, x1, y1), exclusive ends, around the lip landmarks, grown by
    ``pad`` of its larger side on every side and clipped to the image ``size`` = (width, height).
    None when there are no landmarks."""
    if landmarks is None:
        return None
    lips = np.asarray(landmarks, dtype=np.float64)[LIP_LANDMARKS, :2]
    if not np.isfinite(lips).all():
        return None
    lo, hi = lips.min(0), lips.max(0)
    margin = pad * float((hi - lo).max())
    w, h = int(size[0]), int(size[1])
    x0 = int(np.clip(np.floor(lo[0] - margin), 0, w - 1))
    y0 = int(np.clip(np.floor(lo[1] - margin), 0, h - 1))
    x1 = int(np.clip(np.ceil(hi[0] + margin) + 1, x0 + 1, w))
    y1 = int(np.clip(np.ceil(hi[1] + margin) + 1, y0 + 1, h))
    # a degenerate box (a face far too small) is grown to min_side around its centre
    if x1 - x0 < min_side or y1 - y0 < min_side:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        half = min_side // 2
        x0, x1 = max(0, cx - half), min(w, cx + half)
        y0, y1 = max(0, cy - half), min(h, cy + half)
    return x0, y0, x1, y1


def box_psnr(a: np.ndarray, b: np.ndarray, box: Optional[Tuple[int, int, int, int]]) -> float:
    """PSNR (dB) of images [H, W, C] in [0, 1] inside ``box`` (x0, y0, x1, y1); NaN without a box."""
    if box is None:
        return float("nan")
    x0, y0, x1, y1 = box
    return float(psnr(np.array(a[y0:y1, x0:x1], np.float32), np.array(b[y0:y1, x0:x1], np.float32))[0])


def landmark_sequence(images, tracker=None) -> np.ndarray:
    """MediaPipe landmarks of a sequence of images [T, H, W, 3] (uint8, or float in [0, 1]),
    tracked in video mode: [T, 478, 3] in pixels, NaN where no face was found."""
    from avatar_core.face import NUM_LANDMARKS, FaceTracker

    out = np.full((len(images), NUM_LANDMARKS, 3), np.nan)
    own = tracker is None
    tracker = FaceTracker() if own else tracker
    try:
        for t, img in enumerate(images):
            lm = tracker.track(np.ascontiguousarray(img))
            if lm is not None:
                out[t] = lm
    finally:
        if own:
            tracker.close()
    return out
