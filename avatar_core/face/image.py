"""Image loading: any common still image -> float32 RGB in [0, 1], downscaled early.

Pixel coordinates everywhere in ``avatar_core.face``: x right, y down, the image's
top-left corner is (0, 0) and pixel (col i, row j) covers [i, i+1) x [j, j+1), so its
centre is (i + 0.5, j + 0.5). This is mediapipe's (normalised x times width) and
gsplat's convention; with it a resize by ``s`` maps x to exactly ``s * x``.

"Original pixels" are those of the image as displayed, i.e. after its EXIF orientation.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from avatar_core.errors import ImageError

log = logging.getLogger(__name__)

MAX_SIDE = 2048  # the pipeline works on images at most this long on their long side

ImageInput = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821


@dataclass
class LoadedImage:
    """An image ready for the face pipeline.

    Attributes:
        rgb: [H, W, 3] float32 in [0, 1], the working image (long side <= max_side).
        alpha: [H, W] float32 in [0, 1], the file's own alpha channel, or None.
        scale: (sx, sy): working pixels per original pixel (<= 1), so that
            ``x_work = sx * x_orig`` and ``y_work = sy * y_orig``.
        original_size: (width, height) of the original image as displayed.
        source: the file path, or None for an in-memory array.
    """

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    scale: tuple
    original_size: tuple
    source: Optional[str]

    @property
    def work_from_original(self) -> np.ndarray:
        """[2, 3] float64 affine from original to working pixels."""
        sx, sy = self.scale
        return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])

    def describe(self) -> str:
        return self.source if self.source is not None else "the input array"


def _target_size(w: int, h: int, max_side: int) -> tuple:
    """(w, h) scaled so that the long side is at most ``max_side``."""
    long_side = max(w, h)
    if long_side <= max_side:
        return w, h
    s = max_side / long_side
    return max(1, round(w * s)), max(1, round(h * s))


def _normalise_mode(im):
    """A Pillow image in one of the modes L, LA, RGB, RGBA, F (16-bit and float grey as F in [0, 1])."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return im.convert("L")
    if mode == "La":
        return im.convert("LA")
    if mode in ("RGBa", "RGBX"):
        return im.convert("RGBA" if mode == "RGBa" else "RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG, TIFF). Pillow resizes I/F but not I;16: go through I to F.
        arr = np.asarray(im.convert("I") if mode != "I" else im, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top, 0.0, 1.0).astype(np.float32), mode="F")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if np.nanmax(arr) > 1.0:
            arr = arr / 255.0 if np.nanmax(arr) <= 255.0 else arr / 65535.0
        return Image.fromarray(np.clip(np.nan_to_num(arr), 0.0, 1.0).astype(np.float32), mode="F")
    # CMYK, YCbCr, LAB, HSV, ...
    return im.convert("RGB")


def _split(im) -> tuple:
    """Pillow image in L/LA/RGB/RGBA/F -> (rgb [H, W, 3] float32, alpha [H, W] float32 or None)."""
    arr = np.asarray(im)
    if im.mode == "F":
        grey = arr.astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    arr = arr.astype(np.float32) * (1.0 / 255.0)
    if im.mode == "L":
        return np.repeat(arr[:, :, None], 3, axis=2), None
    if im.mode == "LA":
        return np.repeat(arr[:, :, :1], 3, axis=2), np.ascontiguousarray(arr[:, :, 1])
    if im.mode == "RGB":
        return arr, None
    return np.ascontiguousarray(arr[:, :, :3]), np.ascontiguousarray(arr[:, :, 3])


def _exif_transposes() -> dict:
    """EXIF orientation tag -> the Pillow transpose that displays the image upright."""
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE,
            6: t.ROTATE_270, 7: t.TRANSVERSE, 8: t.ROTATE_90}


def _from_pil(im, max_side: int, source: Optional[str]) -> LoadedImage:
    """A loaded (or draft-configured) Pillow image -> LoadedImage: mode, downscale, EXIF orientation."""
    from PIL import Image

    stored_w, stored_h = im.size
    orientation = im.getexif().get(0x0112, 1)
    tw, th = _target_size(stored_w, stored_h, max_side)
    if im.format == "JPEG" and (tw, th) != (stored_w, stored_h):
        # decode at 1/2, 1/4 or 1/8 scale straight from the DCT: never holds the full image
        im.draft(None, (tw, th))
    im.load()
    work = _normalise_mode(im)
    if work.size != (tw, th):
        work = work.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=2.0)
    transposes = _exif_transposes()
    if orientation in transposes:
        work = work.transpose(transposes[orientation])

    swapped = orientation in (5, 6, 7, 8)
    original_size = (stored_h, stored_w) if swapped else (stored_w, stored_h)
    rgb, alpha = _split(work)
    h, w = rgb.shape[:2]
    scale = (w / original_size[0], h / original_size[1])
    if scale != (1.0, 1.0):
        log.debug("%s: %dx%d downscaled to %dx%d for processing", source or "image", *original_size, w, h)
    return LoadedImage(rgb=rgb, alpha=alpha, scale=scale, original_size=original_size, source=source)


def _load_file(name: str, max_side: int) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(name):
        raise ImageError(f"{name} does not exist or is not a file; expected an image file (JPEG, PNG, TIFF, WebP).")
    if os.path.getsize(name) == 0:
        raise ImageError(f"{name} is empty; expected an image file (JPEG, PNG, TIFF, WebP).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(name) as im:
                return _from_pil(im, max_side, name)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read; expected a JPEG, PNG, TIFF or WebP file.") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to load safely; expected an image of at most "
                         f"{Image.MAX_IMAGE_PIXELS * 2 // 1_000_000} million pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name} is truncated or corrupt ({exc}); expected a complete image file.") from None


def array_to_float_rgb(arr: np.ndarray, what: str = "the input array") -> tuple:
    """An in-memory image -> (rgb [H, W, 3] float32 in [0, 1], alpha [H, W] or None).

    Args:
        arr: [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA); uint8, uint16, bool
            or float (taken to be in [0, 1]).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or min(arr.shape[:2]) < 1:
        raise ImageError(f"{what} has shape {arr.shape}; expected an image of shape [H, W], [H, W, 3] or [H, W, 4].")
    if arr.dtype == np.uint8:
        f = arr.astype(np.float32) * (1.0 / 255.0)
    elif arr.dtype == np.uint16:
        f = arr.astype(np.float32) * (1.0 / 65535.0)
    elif arr.dtype == bool:
        f = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        f = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
    else:
        raise ImageError(f"{what} has dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1].")
    if f.ndim == 2:
        return np.repeat(f[:, :, None], 3, axis=2), None
    if f.shape[2] == 4:
        return np.ascontiguousarray(f[:, :, :3]), np.ascontiguousarray(f[:, :, 3])
    return np.ascontiguousarray(f), None


def _load_array(arr: np.ndarray, max_side: int) -> LoadedImage:
    import cv2

    rgb, alpha = array_to_float_rgb(arr)
    h, w = rgb.shape[:2]
    tw, th = _target_size(w, h, max_side)
    if (tw, th) != (w, h):
        rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
        if alpha is not None:
            alpha = cv2.resize(alpha, (tw, th), interpolation=cv2.INTER_AREA)
    return LoadedImage(rgb=rgb, alpha=alpha, scale=(tw / w, th / h), original_size=(w, h), source=None)


def load_image(source: ImageInput, max_side: int = MAX_SIDE) -> LoadedImage:
    """Load a photo for the face pipeline.

    Decodes once and downscales at once (JPEG: in the decoder), so even a 10000 x 10000
    image never exists at full size as float; applies the EXIF orientation; accepts
    8- and 16-bit, grey, grey+alpha, RGB, RGBA, palette and CMYK images. 16-bit RGB files
    are read at 8 bits per channel (Pillow's behaviour), which is plenty here.

    Args:
        source: a path (JPEG, PNG, TIFF, WebP, BMP, ...), an RGB(A)/grey array (see
            ``array_to_float_rgb``) or a PIL image.
        max_side: the working image's long side is at most this many pixels.

    Returns:
        LoadedImage with rgb [H, W, 3] float32 and alpha [H, W] float32 or None.

    Raises:
        ImageError: not an image, empty, truncated, or an array of the wrong shape.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(os.fspath(source), max_side)
    if isinstance(source, np.ndarray):
        return _load_array(source, max_side)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(source, Image.Image):
        return _from_pil(source, max_side, None)
    raise ImageError(f"{type(source).__name__} is not an image; expected a file path, a numpy array or a PIL image.")
