"""``process_portrait``: one photo -> a square head crop with landmarks and a matte."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from avatar_core.errors import FaceNotFoundError, FaceTooSmallError, ParameterError
from avatar_core.face.crop import CropTransform, crop_with, head_crop, inside_mask
from avatar_core.face.detect import detect_faces
from avatar_core.face.image import ImageInput, LoadedImage, load_image
from avatar_core.face.landmarks import NUM_LANDMARKS, landmarks_for_face, landmarks_to_crop
from avatar_core.face.matte import face_hull_mask, portrait_matte
from avatar_core.progress import ProgressFn, as_progress

log = logging.getLogger(__name__)

MIN_FACE_PX = 64        # face-box width in original pixels below which we refuse
MAX_UPSCALE = 2.5       # warn when the crop enlarges the photo more than this


@dataclass
class FacePortrait:
    """A portrait ready for fitting and reconstruction.

    Pixel coordinates follow ``avatar_core.face.image``: pixel (i, j) covers
    [i, i+1) x [j, j+1).

    Attributes:
        image: [S, S, 3] float32 RGB in [0, 1], the head crop (edge pixels repeated
            where the crop leaves the photo).
        alpha: [S, S] float32 in [0, 1], the person matte; 0 outside the photo (where
            ``inside`` is False).
        landmarks: [478, 3] float64, mediapipe face-mesh points: x, y in crop pixels,
            z (relative depth, smaller is nearer) in the same crop-pixel units.
        face_box: [4] float64 (x0, y0, x1, y1), the detector's face box in crop pixels.
        crop_from_original: [2, 3] float64 affine, original-photo pixels -> crop pixels.
        original_from_crop: [2, 3] float64, its inverse.
        inside: [S, S] bool, crop pixels that come from inside the photo (not padding).
        size: S.
        source: the file path, or None for an array input.
        original_size: (width, height) of the photo as displayed (after EXIF orientation).
        warnings: non-fatal problems, one sentence each, to show the user.
    """

    image: np.ndarray
    alpha: np.ndarray
    landmarks: np.ndarray
    face_box: np.ndarray
    crop_from_original: np.ndarray
    original_from_crop: np.ndarray
    inside: np.ndarray
    size: int
    source: Optional[str]
    original_size: tuple
    warnings: List[str] = field(default_factory=list)

    @property
    def transform(self) -> CropTransform:
        """The crop as a CropTransform from original pixels (for ``crop_with`` on video frames)."""
        return CropTransform(self.crop_from_original, self.size)


def _check_size(face, loaded: LoadedImage) -> float:
    """The face's width in original pixels; raises FaceTooSmallError under MIN_FACE_PX."""
    width_orig = face.width / loaded.scale[0]
    if width_orig < MIN_FACE_PX:
        raise FaceTooSmallError(f"The face in {loaded.describe()} is only {width_orig:.0f} pixels wide; use a photo "
                                f"where the face is at least {MIN_FACE_PX} pixels wide, or crop closer.")
    return width_orig


def _find_face(faces, face_index, loaded: LoadedImage, warnings: List[str]):
    """(face, width in original pixels, landmarks [478, 3] in working pixels) of the face to use.

    With ``face_index`` None the largest face whose landmarks can be found is used: a
    larger detection that face_mesh cannot confirm is taken for a false detection.
    """
    what = loaded.describe()
    if not faces:
        raise FaceNotFoundError(f"No face was found in {what}; expected a photo showing a face, "
                                "reasonably frontal and not heavily covered.")
    n = len(faces)
    if face_index is not None and not 0 <= int(face_index) < n:
        raise FaceNotFoundError(f"face_index {face_index} was asked for, but {n} face{'s' if n > 1 else ''} "
                                f"{'were' if n > 1 else 'was'} found in {what}; expected 0 to {n - 1} (0 = largest).")
    candidates = range(n) if face_index is None else [int(face_index)]
    for index in candidates:
        face = faces[index]
        width_orig = _check_size(face, loaded)
        lms = landmarks_for_face(loaded.rgb, face)
        if lms is not None:
            break
        log.debug("%s: no landmarks for detection %d (score %.2f); %s", what, index, face.score,
                  "trying the next" if face_index is None else "giving up")
    else:
        k = len(candidates)
        raise FaceNotFoundError(f"No face was found in {what}: {k} face-like region{'s' if k > 1 else ''} "
                                f"{'were' if k > 1 else 'was'} detected, but no face landmarks could be placed; "
                                "expected a clear, reasonably frontal face.")
    if face_index is None:
        n -= index  # the larger, unconfirmed detections were not faces
        index = 0
    if n > 1:
        which = "the largest (index 0)" if index == 0 else f"face index {index} (0 = largest)"
        warnings.append(f"{n} faces found; using {which}.")
    return face, width_orig, lms


def _matte(image: np.ndarray, landmarks: np.ndarray, loaded: LoadedImage, t_work: CropTransform,
           inside: np.ndarray, warnings: List[str]) -> np.ndarray:
    """[S, S] alpha: the file's own alpha when it is a person cut-out (over 5% of the crop's
    pixels inside the photo transparent, the face opaque), else the segmentation matte, times
    the file's alpha when that only hides some background (e.g. rounded corners)."""
    if loaded.alpha is None:
        return portrait_matte(image, landmarks)
    file_alpha = np.clip(crop_with(loaded.alpha, t_work, border="constant", fill=0.0), 0.0, 1.0)
    if float(file_alpha[face_hull_mask(landmarks, t_work.size)].mean()) < 0.9:
        warnings.append("The file's alpha channel hides part of the face, so it was ignored.")
        return portrait_matte(image, landmarks)
    if float((file_alpha < 0.5)[inside].mean()) > 0.05:  # the padding around the photo is not the file's
        log.debug("%s: using the file's own alpha channel as the matte", loaded.describe())
        return file_alpha.astype(np.float32)
    return (portrait_matte(image, landmarks) * file_alpha).astype(np.float32)


def process_portrait(path_or_array: ImageInput, size: int = 512, face_index: Optional[int] = None,
                     progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
                     ) -> FacePortrait:
    """Load a photo, find the face, and cut out a matted square head crop with landmarks.

    Args:
        path_or_array: image file path, [H, W(, 3|4)] array (RGB order) or PIL image.
        size: crop side S in pixels.
        face_index: which face when there are several, by size (0 = largest, the default).
        progress: ``progress(fraction, message)`` callback.
        cancel: a threading.Event; when set, raises Cancelled between stages.

    Returns:
        FacePortrait.

    Raises:
        ImageError: the input is not a readable image.
        FaceNotFoundError: no face (or no face at ``face_index``).
        FaceTooSmallError: the face is under 64 pixels wide in the original image.
        ParameterError: ``size`` is not an integer >= 64.
        Cancelled: ``cancel`` was set.
    """
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise ParameterError(f"size {size!r} is not a crop size; expected an integer of at least 64 pixels.")
    p = as_progress(progress, cancel)
    p(0.0, "loading image")
    loaded = load_image(path_or_array)
    warnings: List[str] = []

    p(0.15, "detecting faces")
    faces = detect_faces(loaded.rgb)
    p(0.35, "finding landmarks")
    face, width_orig, lms_work = _find_face(faces, face_index, loaded, warnings)
    assert lms_work.shape == (NUM_LANDMARKS, 3)

    p(0.6, "cropping")
    t_work = head_crop(lms_work, size)
    t_orig = t_work.after(loaded.work_from_original)
    image = crop_with(loaded.rgb, t_work)
    landmarks = landmarks_to_crop(lms_work, t_work)
    face_box = t_work.to_crop(face.box.reshape(2, 2)).reshape(4)
    if t_orig.scale > MAX_UPSCALE:
        warnings.append(f"The face is small ({width_orig:.0f} pixels wide), so the {size}-pixel crop enlarges "
                        f"the photo {t_orig.scale:.1f}x; a higher-resolution photo gives a sharper avatar.")
    inside = inside_mask(t_orig, loaded.original_size)
    padded = 1.0 - float(inside.mean())
    if padded > 0.3:
        warnings.append(f"The head is near the photo's edge: {100 * padded:.0f}% of the crop is padding; "
                        "a photo with more room around the head works better.")

    p(0.7, "matting")
    # padding repeats edge pixels, which segmentation may take for hair or body: nothing
    # outside the photo is known, so it is not part of the person
    alpha = _matte(image, landmarks, loaded, t_work, inside, warnings) * inside
    p(1.0, "done")

    return FacePortrait(
        image=image.astype(np.float32), alpha=alpha.astype(np.float32), landmarks=landmarks, face_box=face_box,
        crop_from_original=t_orig.matrix, original_from_crop=t_orig.inverse, inside=inside,
        size=int(size), source=loaded.source, original_size=tuple(loaded.original_size),
        warnings=warnings)
