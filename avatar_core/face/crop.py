"""Square head crops as 2-D affine transforms, and cropping any frame with one.

Transforms are [2, 3] float64 matrices ``M`` acting on pixel coordinates in the
convention of ``avatar_core.face.image`` (pixel (i, j) covers [i, i+1) x [j, j+1)):
``p_crop = M[:, :2] @ p_source + M[:, 2]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

HEAD_SCALE = 2.2   # crop side / the larger side of the face-mesh box
HEAD_LIFT = 0.15   # crop centre above the mesh box centre, in mesh-box heights
CROP_GRID = 1.0 / 16.0  # square crops' centre and side, in source pixels, are multiples of this


def invert_affine(m: np.ndarray) -> np.ndarray:
    """[2, 3] -> [2, 3], the inverse affine map."""
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -a @ m[:, 2:]], axis=1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """[2, 3], [2, 3] -> [2, 3]: ``outer`` applied after ``inner``."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]], axis=1)


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[2, 3], [..., 2] -> [..., 2]."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]


def affine_scale(m: np.ndarray) -> float:
    """Target pixels per source pixel (sqrt of |det|) of a [2, 3] affine."""
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


@dataclass
class CropTransform:
    """A square crop of a source image.

    Attributes:
        matrix: [2, 3] float64, source pixels -> crop pixels.
        size: the crop's side in pixels.
    """

    matrix: np.ndarray
    size: int

    @property
    def inverse(self) -> np.ndarray:
        """[2, 3] float64, crop pixels -> source pixels."""
        return invert_affine(self.matrix)

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return affine_scale(self.matrix)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] source pixels -> [..., 2] crop pixels."""
        return apply_affine(self.matrix, points)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] crop pixels -> [..., 2] source pixels."""
        return apply_affine(self.inverse, points)

    def after(self, inner: np.ndarray) -> "CropTransform":
        """This crop applied after the [2, 3] map ``inner`` (e.g. original -> working pixels)."""
        return CropTransform(compose_affine(self.matrix, inner), self.size)


def square_crop(centre, side: float, size: int) -> CropTransform:
    """The axis-aligned square of side ``side`` source pixels around ``centre`` [2], as a size x size crop.

    The centre and side are rounded to ``CROP_GRID`` (1/16 source pixel): boxes and landmarks
    that differ only by float noise (another device, thread count or build of the face models)
    then give the same crop to the bit. Without it, OpenCV's fixed-point warp turns a 1e-4 px
    change of the box into a changed crop, and face_mesh's landmarks move by ~0.02 px.
    """
    side = max(round(float(side) / CROP_GRID), 1) * CROP_GRID
    s = size / side
    cx, cy = (round(float(c) / CROP_GRID) * CROP_GRID for c in centre[:2])
    m = np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])
    return CropTransform(m, int(size))


def head_crop(landmarks: np.ndarray, size: int = 512, scale: float = HEAD_SCALE,
              lift: float = HEAD_LIFT) -> CropTransform:
    """The portrait crop around a face: the whole head, some hair and the top of the shoulders.

    Args:
        landmarks: [478, 2 or 3] face-mesh points in source pixels.
        size: crop side in pixels.
        scale: crop side / the larger side of the landmarks' bounding box.
        lift: how far the crop centre sits above the box centre, in box heights.

    Returns:
        CropTransform from source pixels to crop pixels.
    """
    xy = np.asarray(landmarks, dtype=np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    w, h = hi - lo
    centre = 0.5 * (lo + hi) - np.array([0.0, lift * h])
    return square_crop(centre, scale * max(w, h), size)


def _cv_matrix(m: np.ndarray) -> np.ndarray:
    """Pixel-corner convention [2, 3] -> OpenCV's pixel-centre convention (p_cv = p - 0.5)."""
    out = m.copy()
    out[:, 2] = m[:, 2] + 0.5 * m[:, :2].sum(axis=1) - 0.5
    return out


def crop_with(image: np.ndarray, transform: Union[CropTransform, np.ndarray], size: Optional[int] = None,
              border: str = "replicate", fill: float = 0.0) -> np.ndarray:
    """Crop (and resample) any image with a source -> crop affine, e.g. a video frame
    cropped exactly like the photo it came from.

    Anti-aliased: when the crop shrinks the source by more than 2x, the region used is
    first area-averaged down to the crop's scale.

    Args:
        image: [H, W] or [H, W, C], uint8, uint16 or float32.
        transform: CropTransform, or a [2, 3] source -> crop matrix (then ``size`` is required).
        size: crop side; defaults to ``transform.size``.
        border: "replicate" (repeat edge pixels) or "constant" (``fill``) outside the image.

    Returns:
        [size, size] or [size, size, C], the image's dtype.
    """
    import cv2

    if isinstance(transform, CropTransform):
        m = transform.matrix
        size = transform.size if size is None else size
    else:
        m = np.asarray(transform, dtype=np.float64)
        if size is None:
            raise ValueError("crop_with needs a size when given a bare matrix")
    if m.shape != (2, 3):
        raise ValueError(f"crop transform has shape {m.shape}; expected [2, 3]")
    image = np.asarray(image)
    h, w = image.shape[:2]
    size = int(size)

    # the source region the crop reads, plus a margin for the interpolation
    corners = apply_affine(invert_affine(m), np.array([[0, 0], [size, 0], [0, size], [size, size]], float))
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    x1, y1 = max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1)
    src = image[y0:y1, x0:x1]
    inner = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])  # source -> region pixels

    s = affine_scale(m)
    if s < 0.5:
        rw, rh = src.shape[1], src.shape[0]
        nw, nh = max(1, round(rw * s)), max(1, round(rh * s))
        src = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        inner = compose_affine(np.array([[nw / rw, 0.0, 0.0], [0.0, nh / rh, 0.0]]), inner)
    m_region = compose_affine(m, invert_affine(inner))

    mode = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}[border]
    squeeze = src.ndim == 3 and src.shape[2] == 1
    out = cv2.warpAffine(np.ascontiguousarray(src), _cv_matrix(m_region), (size, size),
                         flags=cv2.INTER_LINEAR, borderMode=mode,
                         borderValue=(fill, fill, fill, fill))
    if squeeze:
        out = out[:, :, None]
    return out


def inside_mask(transform: CropTransform, source_size) -> np.ndarray:
    """[S, S] bool: crop pixels whose centre maps inside the source image of (width, height)."""
    size = transform.size
    g = np.arange(size) + 0.5
    xx, yy = np.meshgrid(g, g)
    src = transform.to_source(np.stack([xx, yy], axis=-1))
    w, h = source_size
    return (src[..., 0] >= 0) & (src[..., 0] < w) & (src[..., 1] >= 0) & (src[..., 1] < h)
