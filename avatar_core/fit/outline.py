"""The person's outline in every frame of a video, as a cue to the head's rigid motion.

Face landmarks alone cannot tell a head that turns from a face that deforms: in a lopsided
smile the real nose and chin move sideways, and a landmark fit turned and rolled the head by
4 degrees while the person's outline (hair, ears) stayed put to a pixel (driving video d19).
The outline of the upper head moves only with the head, so the tracker also asks points of
the first frame's upper outline, carried rigidly with the head, to stay on each frame's
outline (``fit.single.fit_landmarks``).

``outline_targets`` segments every ``STRIDE``-th crop (the selfie model at 256 x 256) and returns
the first frame's upper-head outline points and, per segmented frame, the distance to that
frame's outline.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

SEG_SIZE = 256       # the selfie model's input
GRID = 128           # distance maps' resolution
MAX_POINTS = 256     # outline points of the source frame
BORDER = 3           # outline pixels this close to the crop's edge are the crop's, not the person's
EYE_CORNERS = (33, 133, 362, 263)   # the outline's points are taken above these landmarks' mean height
STRIDE = 2           # every second frame is segmented (16 ms a frame on a CPU core); the tracker's
                     # smoothness carries the head's motion between them


@dataclasses.dataclass
class OutlineTargets:
    """points [A, 2]: the source frame's upper-head outline (crop pixels); dist [T, GRID, GRID]
    float32: distance in crop pixels to frame t's outline; valid [T] bool (the frame was
    segmented and has an outline); src: the source frame; size: the crop size."""

    points: np.ndarray
    dist: np.ndarray
    valid: np.ndarray
    src: int
    size: int


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=1)
    edge[:BORDER] = edge[-BORDER:] = False
    edge[:, :BORDER] = edge[:, -BORDER:] = False
    return edge


def outline_targets(crops: np.ndarray, landmarks: np.ndarray, valid: np.ndarray, src: int,
                    progress=None) -> Optional[OutlineTargets]:
    """Outline targets for crops [T, S, S, 3] uint8 with landmarks [T, 478, 3] (crop pixels, nan
    where a frame has none), ``valid`` [T] and the source frame ``src``; None when the source
    frame shows no outline above its eyes."""
    import cv2
    from scipy import ndimage

    from avatar_core.face.matte import segment_person

    T, S = crops.shape[0], crops.shape[1]
    k = S / SEG_SIZE
    dist = np.zeros((T, GRID, GRID), np.float32)
    ok = np.zeros(T, bool)
    points = None
    for t in range(T):
        if t % STRIDE and t != src:
            continue
        img = crops[t] if S == SEG_SIZE else cv2.resize(crops[t], (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA)
        edge = _outline(segment_person(img) > 0.5)
        if t == src:
            eyes_v = float(np.nanmean(landmarks[src, list(EYE_CORNERS), 1])) / k
            vi, ui = np.nonzero(edge)
            upper = vi < eyes_v
            if upper.sum() < 16:
                return None
            pts = np.stack([ui[upper], vi[upper]], -1).astype(np.float64)
            step = max(1, int(np.ceil(len(pts) / MAX_POINTS)))
            points = (pts[::step] + 0.5) * k - 0.5
        if edge.any():
            d = ndimage.distance_transform_edt(~edge).astype(np.float32) * k
            dist[t] = cv2.resize(d, (GRID, GRID), interpolation=cv2.INTER_AREA)
            ok[t] = True
        if progress is not None:
            progress(t + 1, T)
    return OutlineTargets(points, dist, ok & np.asarray(valid, bool), int(src), int(S))
