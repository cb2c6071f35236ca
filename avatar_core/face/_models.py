"""Lazily created, shared mediapipe graphs (face detection, face mesh, selfie segmentation).

mediapipe 0.10.21's legacy solutions carry their models inside the wheel, so they work
offline. A graph is not re-entrant: each shared one is created once, on first use, and
every call to it holds that graph's own lock, so threads may share them safely.
``close_models()`` frees them (it also runs at interpreter exit).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Callable, Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

_registry_lock = threading.Lock()
_graphs: Dict[Tuple, Tuple[object, threading.Lock]] = {}


def solutions():
    """The ``mediapipe.python.solutions`` package (imported on first use; ~1 s)."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # quieten mediapipe's C++ logging
    from mediapipe.python import solutions as mp_solutions

    return mp_solutions


def _make(key: Tuple) -> object:
    sol = solutions()
    kind = key[0]
    if kind == "detection":
        _, model_selection, min_conf = key
        return sol.face_detection.FaceDetection(model_selection=model_selection,
                                                min_detection_confidence=min_conf)
    if kind == "mesh":
        _, max_faces, min_conf = key
        return sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                      refine_landmarks=True, min_detection_confidence=min_conf)
    if kind == "selfie":
        _, model_selection = key
        return sol.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
    raise KeyError(kind)


def _graph(key: Tuple) -> Tuple[object, threading.Lock]:
    entry = _graphs.get(key)
    if entry is None:
        with _registry_lock:
            entry = _graphs.get(key)
            if entry is None:
                log.debug("creating mediapipe graph %s", key)
                entry = (_make(key), threading.Lock())
                _graphs[key] = entry
    return entry


def run(key: Tuple, image_u8: np.ndarray, read: Callable):
    """Run the shared graph ``key`` on an image and extract what is needed under its lock.

    Args:
        key: ("detection", model_selection, min_confidence), ("mesh", max_faces,
            min_confidence) or ("selfie", model_selection).
        image_u8: [H, W, 3] uint8 RGB, C-contiguous.
        read: called with the graph's result while the lock is still held (the result's
            buffers may be reused by the next call); its return value is returned.
    """
    graph, lock = _graph(key)
    with lock:
        return read(graph.process(image_u8))


def close_models() -> None:
    """Close every shared mediapipe graph; the next use creates them again."""
    with _registry_lock:
        entries = list(_graphs.items())
        _graphs.clear()
    for key, (graph, lock) in entries:
        with lock:
            try:
                graph.close()
            except Exception:  # noqa: BLE001 - closing at exit must not raise
                log.debug("closing mediapipe graph %s failed", key, exc_info=True)


atexit.register(close_models)


def to_u8(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (or uint8) -> [H, W, 3] C-contiguous uint8."""
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    return np.ascontiguousarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
