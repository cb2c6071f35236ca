"""478 face-mesh landmarks (mediapipe face_mesh, refine_landmarks=True).

Landmarks are [478, 3] float64: x, y in pixels (see ``avatar_core.face.image``) and z,
mediapipe's relative depth (smaller is nearer the camera, ~0 at the face's centre),
in the same pixel units as x.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import numpy as np

from avatar_core.face import _models
from avatar_core.face.crop import CropTransform, crop_with, square_crop
from avatar_core.face.detect import FaceDetection

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478
MESH_INPUT = 384          # side of the square crop face_mesh runs on
MESH_CONTEXT = (2.2, 1.6, 3.2)  # crop side / detection box side, tried in turn
MESH_MIN_CONFIDENCE = 0.3  # the face is already detected: its own detector may be lenient

# a few named landmarks (the subject's right/left)
RIGHT_IRIS, LEFT_IRIS = 468, 473
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
UPPER_LIP, LOWER_LIP = 13, 14
MOUTH_RIGHT, MOUTH_LEFT = 61, 291


def _read_landmarks(w: int, h: int):
    """A result reader: every face's landmarks, [F][478, 3] in pixels of a w x h image."""

    def read(result):
        faces = []
        for lms in result.multi_face_landmarks or []:
            a = np.array([[p.x, p.y, p.z] for p in lms.landmark], dtype=np.float64)
            a *= np.array([w, h, w], dtype=np.float64)
            faces.append(a)
        return faces

    return read


def landmarks_to_source(landmarks: np.ndarray, transform: CropTransform) -> np.ndarray:
    """[N, 3] landmarks in crop pixels -> [N, 3] in source pixels (z divided by the crop's scale)."""
    out = np.empty_like(landmarks)
    out[:, :2] = transform.to_source(landmarks[:, :2])
    out[:, 2] = landmarks[:, 2] / transform.scale
    return out


def landmarks_to_crop(landmarks: np.ndarray, transform: CropTransform) -> np.ndarray:
    """[N, 3] landmarks in source pixels -> [N, 3] in crop pixels (z times the crop's scale)."""
    out = np.empty_like(landmarks)
    out[:, :2] = transform.to_crop(landmarks[:, :2])
    out[:, 2] = landmarks[:, 2] * transform.scale
    return out


def landmarks_for_face(rgb: np.ndarray, face: FaceDetection) -> Optional[np.ndarray]:
    """The 478 landmarks of one detected face, found on a crop around it.

    Running face_mesh on a crop centred on ``face`` makes sure it is this face, not
    another in the photo, that gets the landmarks.

    Args:
        rgb: [H, W, 3] float32 in [0, 1] or uint8, the image ``face`` was detected in.
        face: the detection, in that image's pixels.

    Returns:
        [478, 3] float64 in the image's pixels, or None if face_mesh found no face there.
    """
    image = _models.to_u8(rgb)
    side = max(face.width, face.height)
    for context in MESH_CONTEXT:
        t = square_crop(face.centre, context * side, MESH_INPUT)
        crop = np.ascontiguousarray(crop_with(image, t))
        found = _models.run(("mesh", 2, MESH_MIN_CONFIDENCE), crop, _read_landmarks(MESH_INPUT, MESH_INPUT))
        if not found:
            log.debug("face_mesh found no face at context %.1f", context)
            continue
        # the face nearest the crop centre is the detected one
        centre = np.array([MESH_INPUT / 2.0, MESH_INPUT / 2.0])
        best = min(found, key=lambda a: float(np.linalg.norm(a[:, :2].mean(axis=0) - centre)))
        lms = landmarks_to_source(best, t)
        inside = (lms[:, 0] >= face.box[0]) & (lms[:, 0] <= face.box[2]) & \
                 (lms[:, 1] >= face.box[1]) & (lms[:, 1] <= face.box[3])
        if np.linalg.norm(lms[NOSE_TIP, :2] - face.centre) > 0.6 * side or inside.mean() < 0.3:
            log.debug("face_mesh's face at context %.1f is not the detected one", context)
            continue
        return lms
    return None


class FaceTracker:
    """Per-frame landmarks for a video: mediapipe face_mesh in video mode.

    In video mode face_mesh tracks the face from frame to frame instead of detecting it
    again, which is fast and temporally stable. One tracker per video; not shared
    between threads concurrently (calls are serialised by a lock). Use as a context
    manager or call ``close()``.

    Args:
        min_detection_confidence, min_tracking_confidence: mediapipe's thresholds.
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        self._mesh = _models.solutions().face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence)
        self._lock = threading.Lock()

    def track(self, frame_rgb: np.ndarray) -> Optional[np.ndarray]:
        """Landmarks of the face in the next frame.

        Args:
            frame_rgb: [H, W, 3] uint8 RGB (or float in [0, 1]); frames in order.

        Returns:
            [478, 3] float64 in the frame's pixels (z in the same units), or None when no
            face is visible.
        """
        frame = _models.to_u8(np.asarray(frame_rgb))
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"FaceTracker.track expects an [H, W, 3] RGB frame, got shape {frame.shape}")
        h, w = frame.shape[:2]
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("FaceTracker.track called after close()")
            faces = _read_landmarks(w, h)(self._mesh.process(frame))
        return faces[0] if faces else None

    def close(self) -> None:
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
