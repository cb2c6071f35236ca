"""478 face-mesh landmarks: mediapipe's attention face mesh (what face_mesh runs with
refine_landmarks=True), in torch.

Landmarks are [478, 3] float64: x, y in pixels (see ``avatar_core.face.image``) and z,
mediapipe's relative depth (smaller is nearer the camera, ~0 at the face's centre),
in the same pixel units as x.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import List, Optional

import numpy as np

from avatar_core.face import _models
from avatar_core.face.crop import CropTransform, crop_with, square_crop
from avatar_core.face.detect import SHORT_RANGE, FaceDetection

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478
MESH_INPUT = 384          # side of the square crop face_mesh runs on
MESH_CONTEXT = (2.2, 1.6, 3.2)  # crop side / detection box side, tried in turn
MESH_MIN_CONFIDENCE = 0.3  # the face is already detected: its own detector may be lenient
ROI_TOLERANCE = 0.02       # tracking: a frame's ROI within this share of its side of the batch's is reused
MIN_PRESENCE = 0.5         # mediapipe's min_tracking_confidence: the mesh's own face-presence score

# a few named landmarks (the subject's right/left)
RIGHT_IRIS, LEFT_IRIS = 468, 473
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
UPPER_LIP, LOWER_LIP = 13, 14
MOUTH_RIGHT, MOUTH_LEFT = 61, 291


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


def _static_landmarks(crop_u8: np.ndarray, max_faces: int, min_detection: float,
                      min_presence: float = MIN_PRESENCE) -> List[np.ndarray]:
    """mediapipe face_mesh in static-image mode on one image: short-range detection, then the
    attention mesh on each detected face's ROI; faces whose presence is under ``min_presence``
    are dropped. Returns [F][478, 3] in the image's pixels."""
    import torch

    from avatar_core.face import nets

    device = _models.default_device()
    image = _models.to_tensor(crop_u8, device)
    boxes, scores, kps = _models.get("detection", SHORT_RANGE, device)(image, min_detection)[0]
    if len(boxes) == 0:
        return []
    rois = nets.detection_rois(boxes[:max_faces], kps[:max_faces], device)
    lms, presence = _models.get("mesh", 0, device)(image, rois, torch.zeros(len(rois), dtype=torch.long, device=device))
    return [lm for lm, p in zip(lms.cpu().numpy(), presence.cpu().numpy()) if p >= min_presence]


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
        found = _static_landmarks(crop, 2, MESH_MIN_CONFIDENCE)
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
    """Per-frame landmarks for a video, as mediapipe face_mesh's video mode finds them.

    The face is detected once; each later frame's ROI comes from the previous frame's
    landmarks, and detection runs again only after the face is lost (presence under
    ``min_tracking_confidence``). ``track(frame)`` does one frame; ``track_batch(frames)``
    runs the mesh on batches of frames: a first pass with the ROI the batch starts from,
    then, for the frames where the ROI of the predecessor's first-pass landmarks moved
    from it by more than ``ROI_TOLERANCE`` of its side (centre, side or rotation), a
    second pass with that ROI (the frame-to-frame ROI of video mode, batched). Not for concurrent use by several threads
    (calls are serialised by a lock). Use as a context manager or call ``close()``.

    Args:
        min_detection_confidence, min_tracking_confidence: mediapipe's thresholds.
        device: torch device (default: the face models' device).
        batch_size: frames per batch in ``track_batch`` (default 8 on the CPU: fewer second-pass
            frames than 16, ~80 mesh runs for 75 frames instead of ~95; 64 on CUDA).
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
                 device=None, batch_size: Optional[int] = None):
        import torch

        self.min_detection = float(min_detection_confidence)
        self.min_tracking = float(min_tracking_confidence)
        self.device = torch.device(device) if device is not None else _models.default_device()
        self.batch_size = int(batch_size or (64 if self.device.type == "cuda" else 8))
        self.roi_tolerance = ROI_TOLERANCE
        self._mesh = _models.get("mesh", 0, self.device)
        self._detector = _models.get("detection", SHORT_RANGE, self.device)
        self._prev = None                               # [1, 478, 3] tensor, the last frame's landmarks
        self._lock = threading.Lock()
        self._closed = False

    def reset(self) -> None:
        """Forget the tracked face (the next frame runs detection)."""
        self._prev = None

    def _frames(self, frames) -> "torch.Tensor":
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"FaceTracker expects [H, W, 3] RGB frames, got shape {np.shape(frames)}")
        if arr.dtype != np.uint8:
            arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return _models.to_tensor(arr, self.device)

    def _detect_roi(self, frame: "torch.Tensor") -> Optional["torch.Tensor"]:
        from avatar_core.face import nets

        boxes, _, kps = self._detector(frame, self.min_detection)[0]
        if len(boxes) == 0:
            return None
        return nets.detection_rois(boxes[:1], kps[:1], self.device)

    def track(self, frame_rgb: np.ndarray) -> Optional[np.ndarray]:
        """Landmarks of the face in the next frame.

        Args:
            frame_rgb: [H, W, 3] uint8 RGB (or float in [0, 1]); frames in order.

        Returns:
            [478, 3] float64 in the frame's pixels (z in the same units), or None when no
            face is visible.
        """
        from avatar_core.face import nets

        with self._lock:
            if self._closed:
                raise RuntimeError("FaceTracker.track called after close()")
            frame = self._frames(frame_rgb)
            roi = nets.landmark_rois(self._prev) if self._prev is not None else self._detect_roi(frame)
            if roi is None:
                return None
            lm, presence = self._mesh(frame, roi)
            if float(presence[0]) < self.min_tracking:
                self._prev = None
                return None
            self._prev = lm
            return lm[0].cpu().numpy()

    def track_batch(self, frames: np.ndarray, progress=None) -> np.ndarray:
        """Landmarks of every frame, the mesh run on batches of frames.

        Args:
            frames: [T, H, W, 3] uint8 RGB (or float in [0, 1]), in order.
            progress: optional callable(done_frames, total).

        Returns:
            [T, 478, 3] float64 in the frames' pixels; NaN where no face was found.
        """
        import torch

        from avatar_core.face import nets
        from avatar_core.face.graph import cpu_threads

        threads = cpu_threads() if self.device.type == "cpu" else contextlib.nullcontext()  # CUDA: per call
        with self._lock, torch.inference_mode(), threads:
            if self._closed:
                raise RuntimeError("FaceTracker.track_batch called after close()")
            T = len(frames)
            out = np.full((T, NUM_LANDMARKS, 3), np.nan)
            t = 0
            while t < T:
                if self._prev is None:
                    frame = self._frames(frames[t])
                    roi = self._detect_roi(frame)
                    if roi is None:
                        t += 1
                        continue
                    lm, presence = self._mesh(frame, roi)
                    if float(presence[0]) >= self.min_tracking:
                        self._prev = lm
                        out[t] = lm[0].cpu().numpy()
                    t += 1
                    continue
                t1 = min(T, t + self.batch_size)
                if T - t1 < self.batch_size // 2:           # no short last batch: its call costs as much
                    t1 = T
                batch = self._frames(frames[t:t1])
                n = t1 - t
                first = nets.landmark_rois(self._prev).expand(n, 5)
                lm1, p1 = self._mesh(batch, first)                        # pass 1: the batch's start ROI
                if n > 1:
                    # pass 2: frames whose predecessor's ROI differs from the start ROI run again with it
                    rois = torch.cat([first[:1], nets.landmark_rois(lm1[:-1])])
                    again = nets.roi_moved(rois, first, self.roi_tolerance).nonzero()[:, 0]
                    if len(again):
                        lm2, p2 = self._mesh(batch, rois[again], again)
                        lm1[again], p1[again] = lm2, p2
                lost = (p1 < self.min_tracking).nonzero()
                keep = n if len(lost) == 0 else int(lost[0, 0])
                out[t:t + keep] = lm1[:keep].cpu().numpy()
                if keep < n:                                              # lost: detect again after it
                    self._prev = None
                    t += keep + 1
                else:
                    self._prev = lm1[-1:]
                    t = t1
                if progress is not None:
                    progress(min(t, T), T)
            return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._prev = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
