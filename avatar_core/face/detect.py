"""Face detection with mediapipe's short- and full-range BlazeFace models (run in torch).

The short-range model (128 px input) finds faces that fill much of the frame; the
full-range one (192 px input) finds faces down to about a fifteenth of the frame. Both
run on the whole image; unless one of them finds a face confidently, the full-range
model runs again on overlapping tiles (2 x 2, 3 x 3, then 5 x 5, stopping at the first
confident find), which finds faces down to ~1/40 of the frame. Duplicates (a box mostly
inside another) keep the more confident detection: a low-score box around a face found
confidently on a tile gives way to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List

import numpy as np

from avatar_core.face import _models

log = logging.getLogger(__name__)

MIN_CONFIDENCE = 0.6  # uniform noise can reach 0.52 with the short-range model; real faces score 0.8+
CONFIDENT = 0.8      # real faces score 0.83-0.97 on the shared portraits
TILE_LEVELS = (2, 3, 5)
SHORT_RANGE, FULL_RANGE = 0, 1


@dataclass
class FaceDetection:
    """One detected face.

    Attributes:
        box: [4] float64 (x0, y0, x1, y1) in the pixels of the image it was found in.
        score: detector confidence in [0, 1].
        keypoints: [6, 2] float64: right eye, left eye, nose tip, mouth centre, right ear
            tragion, left ear tragion (the subject's right and left).
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre(self) -> np.ndarray:
        """[2] float64."""
        return 0.5 * (self.box[:2] + self.box[2:])


def _run(image: "torch.Tensor", model: int, x0: int = 0, y0: int = 0) -> List[FaceDetection]:
    """BlazeFace on [1, 3, h, w] (0..255) pixels; detections shifted by (x0, y0)."""
    from avatar_core.face.nets import DETECTORS
    boxes, scores, kps = _models.get("detection", model, image.device)(
        image, MIN_CONFIDENCE, DETECTORS[model].candidate_score)[0]
    off = np.array([x0, y0], dtype=np.float64)
    return [FaceDetection(box=b + np.tile(off, 2), score=float(s), keypoints=k + off)
            for b, s, k in zip(boxes, scores, kps)]


def _overlap(a: FaceDetection, b: FaceDetection) -> float:
    """Intersection over the smaller box's area: [0, 1]."""
    lo = np.maximum(a.box[:2], b.box[:2])
    hi = np.minimum(a.box[2:], b.box[2:])
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    return inter / max(min(a.area, b.area), 1e-9)


def _merge(dets: List[FaceDetection], overlap: float = 0.4) -> List[FaceDetection]:
    """Drop duplicates (one box mostly inside another), keeping the more confident."""
    keep: List[FaceDetection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_overlap(d, k) < overlap for k in keep):
            keep.append(d)
    return keep


def _tiles(w: int, h: int, n: int):
    """(x0, y0, x1, y1) of n x n tiles, each 2/(n+1) of the side, overlapping by half."""
    tw, th = 2 * w // (n + 1), 2 * h // (n + 1)
    for j in range(n):
        for i in range(n):
            x0, y0 = i * tw // 2, j * th // 2
            yield x0, y0, min(w, x0 + tw), min(h, y0 + th)


def detect_faces(rgb: np.ndarray) -> List[FaceDetection]:
    """All faces in an image, largest first.

    Args:
        rgb: [H, W, 3] float32 in [0, 1] or uint8 RGB.

    Returns:
        detections in the image's pixels, sorted by box area, largest first; empty if none.
    """
    image = _models.to_tensor(_models.to_u8(rgb), _models.default_device())
    h, w = image.shape[2:]
    dets = _run(image, SHORT_RANGE) + _run(image, FULL_RANGE)
    for n in TILE_LEVELS:
        if any(d.score >= CONFIDENT for d in dets) or 2 * min(w, h) / (n + 1) < 192:
            break
        for x0, y0, x1, y1 in _tiles(w, h, n):
            dets += _run(image[:, :, y0:y1, x0:x1], FULL_RANGE, x0, y0)
        log.debug("no confident face in the whole image; %d detections after %dx%d tiles", len(dets), n, n)
    faces = _merge(dets)
    faces.sort(key=lambda d: -d.area)
    return faces
