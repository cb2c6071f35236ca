"""Lazily built, shared torch face models (detection, face mesh + iris, selfie segmentation).

Each model is built once per device on first use from the converted weights in the cache
(``avatar_core.face.weights``; ``python -m avatar_core fetch-models`` puts them there). The
modules are stateless, so threads may share them. ``close_models()`` frees them.
The device is ``$HEADSPLAT_FACE_DEVICE`` if set, else CUDA when available, else the CPU.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

_lock = threading.Lock()
_models: Dict[Tuple, object] = {}


def default_device():
    """torch.device for the face models."""
    import torch

    name = os.environ.get("HEADSPLAT_FACE_DEVICE", "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _build(kind: str, selection: int):
    from avatar_core.face import nets
    from avatar_core.face.weights import build_module

    if kind == "detection":
        return nets.FaceDetector(build_module(nets.DETECTORS[selection].model), selection)
    if kind == "mesh":
        return nets.FaceMesh(build_module("face_landmark_with_attention"))
    if kind == "selfie":
        return nets.SelfieSegmenter(build_module(nets.SELFIE_MODELS[selection][0]), selection)
    raise KeyError(kind)


def get(kind: str, selection: int = 0, device=None):
    """The shared model: kind "detection" (selection 0 short range, 1 full range), "mesh"
    or "selfie" (0 general, 1 landscape), on ``device`` (default ``default_device()``)."""
    import torch

    device = torch.device(device) if device is not None else default_device()
    key = (kind, selection, str(device))
    model = _models.get(key)
    if model is None:
        with _lock:
            model = _models.get(key)
            if model is None:
                log.debug("building face model %s", key)
                model = _build(kind, selection).to(device).eval()
                _models[key] = model
    return model


def close_models() -> None:
    """Drop every shared face model; the next use builds them again."""
    with _lock:
        _models.clear()


def to_u8(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (or uint8) -> [H, W, 3] C-contiguous uint8."""
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    return np.ascontiguousarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))


def to_tensor(images_u8: np.ndarray, device) -> "torch.Tensor":
    """[H, W, 3] or [B, H, W, 3] uint8 -> [B, 3, H, W] uint8 on ``device`` (on the CPU a view of the
    array's memory: the models crop from it and convert only their crops to float)."""
    import torch

    arr = np.asarray(images_u8)
    if arr.ndim == 3:
        arr = arr[None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    return t.permute(0, 3, 1, 2)
