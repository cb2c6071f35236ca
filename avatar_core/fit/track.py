"""Video tracking: per-frame expression and pose with a shared identity.

Frames are cropped exactly like the first frame with a face (the same square crop the
photo pipeline makes), the face mesh tracks 478 landmarks frame to frame (batched, as
mediapipe's video mode does: ``FaceTracker.track_batch``), and
all frames are fitted at once (``fit_landmarks``) with one identity, one focal length and a
temporal smoothness term; the person's outline in each frame (``fit.outline``) keeps the head's
rigid motion from following what is only the face deforming. Frames without a face are filled
in by the smoothness term and reported. The rigid head motion, fitted as a per-frame camera, is re-expressed relative to
the first frame as root rotation + translation for the motion file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional

import numpy as np

from avatar_core.errors import FaceNotFoundError, MotionError
from avatar_core.fit.single import FitResult, fit_landmarks
from avatar_core.progress import as_progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrackResult:
    """fit: the per-frame FitResult (camera batch T); frames: [T, S, S, 3] uint8 crops;
    landmarks [T, 478, 3] (nan where missing); valid [T]; fps; portrait: the first frame's
    FacePortrait (crop transform, matte); warnings."""

    fit: FitResult
    frames: np.ndarray
    landmarks: np.ndarray
    valid: np.ndarray
    fps: float
    portrait: object
    warnings: List[str]


def read_video(path, max_frames: Optional[int] = None):
    """All frames of a video as RGB uint8 [T, H, W, 3] and its fps."""
    import cv2
    path = Path(path)
    if not path.is_file():
        raise MotionError(f"The video {str(path)!r} does not exist.")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MotionError(f"{str(path)!r} is not a video that can be read (OpenCV/FFmpeg could not open it).")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1].copy())
    cap.release()
    if not frames:
        raise MotionError(f"The video {str(path)!r} has no frames.")
    return np.stack(frames), fps


def track_frames(frames: np.ndarray, fps: float, head, embedding=None, size: int = 256,
                 steps: int = 150, smooth: float = 5.0, progress=None, cancel=None,
                 source: str = "the video") -> TrackResult:
    """Track RGB frames [T, H, W, 3]; see the module docstring."""
    from avatar_core.face import FaceTracker, crop_with, process_portrait
    from avatar_core.fit.correspondence import landmark_embedding
    prog = as_progress(progress, cancel)
    warnings: List[str] = []
    T = len(frames)
    portrait, first = None, 0
    for first in range(T):
        try:
            portrait = process_portrait(frames[first], size=size)
            break
        except FaceNotFoundError:
            continue
        finally:
            prog.check()
    if portrait is None:
        raise FaceNotFoundError(f"No face was found in any of the {T} frames of {source}.")
    if first > 0:
        warnings.append(f"frames 0-{first - 1} have no face; cropped like frame {first}.")
    prog(0.1, "landmarks")
    crops = np.stack([crop_with(f, portrait.transform) for f in frames])
    with FaceTracker() as tracker:
        lms = tracker.track_batch(crops, progress=lambda done, total: prog(0.1 + 0.4 * done / total,
                                                                           f"landmarks {done}/{total}"))
    valid = ~np.isnan(lms[:, 0, 0])
    missing = np.nonzero(~valid)[0]
    if len(missing):
        warnings.append(f"{len(missing)} of {T} frames had no face ({_frames(missing)}); "
                        "their parameters are interpolated.")
    emb = embedding if embedding is not None else landmark_embedding(head)
    outline = None
    if T > 1 and valid[first]:
        from avatar_core.fit.outline import outline_targets
        outline = outline_targets(crops, lms, valid, first,
                                  progress=lambda done, total: prog(0.5 + 0.1 * done / total, f"outline {done}/{total}"))
    fit = fit_landmarks(head, emb, np.nan_to_num(lms), size, valid=valid, steps=steps, smooth=smooth,
                        progress=prog.sub(0.6, 1.0), outline=outline)
    return TrackResult(fit, crops, lms, valid, fps, portrait, warnings)


def track_video(path, head, embedding=None, size: int = 256, steps: int = 150, smooth: float = 5.0,
                max_frames: Optional[int] = None, progress=None, cancel=None) -> TrackResult:
    """Track a video file; raises MotionError for unreadable/empty videos."""
    frames, fps = read_video(path, max_frames)
    return track_frames(frames, fps, head, embedding, size, steps, smooth, progress, cancel, source=repr(str(path)))


def _frames(idx) -> str:
    idx = list(map(int, idx))
    return ", ".join(map(str, idx[:6])) + (" ..." if len(idx) > 6 else "")
