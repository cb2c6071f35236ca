"""Named subsets of MediaPipe's 478 face-mesh landmarks (from mediapipe's own connection sets)."""

from __future__ import annotations

import functools

import numpy as np

NUM_LANDMARKS = 478
IRIS_LEFT = tuple(range(473, 478))   # subject's left iris (image right in a frontal photo)
IRIS_RIGHT = tuple(range(468, 473))


@functools.lru_cache(maxsize=None)
def landmark_groups() -> dict:
    """{'oval', 'lips', 'left_eye', 'right_eye', 'left_brow', 'right_brow', 'nose'}: index arrays."""
    from mediapipe.python.solutions import face_mesh_connections as c

    def idx(edges):
        return np.array(sorted({i for e in edges for i in e}), dtype=np.int64)
    groups = {
        "oval": idx(c.FACEMESH_FACE_OVAL),
        "lips": idx(c.FACEMESH_LIPS),
        "left_eye": idx(c.FACEMESH_LEFT_EYE),
        "right_eye": idx(c.FACEMESH_RIGHT_EYE),
        "left_brow": idx(c.FACEMESH_LEFT_EYEBROW),
        "right_brow": idx(c.FACEMESH_RIGHT_EYEBROW),
        "nose": idx(getattr(c, "FACEMESH_NOSE", ())),
        "left_iris": np.array(IRIS_LEFT), "right_iris": np.array(IRIS_RIGHT),
    }
    return groups


def landmark_weights() -> np.ndarray:
    """Per-landmark weights for fitting [478]: the face oval is a silhouette (its 3D position
    slides with the view) so it counts less; eyes, irises, lips and brows count more."""
    g = landmark_groups()
    w = np.ones(NUM_LANDMARKS, dtype=np.float32)
    for key in ("lips", "left_eye", "right_eye", "left_brow", "right_brow"):
        w[g[key]] = 2.0
    for key in ("left_iris", "right_iris"):
        w[g[key]] = 2.0
    w[g["oval"]] = 0.3
    return w
