"""Named subsets of the 478 face-mesh landmarks (mediapipe's index order; our own constants).

The groups are the points of the face mesh's feature contours: the face oval, the lips'
outer and inner contours, each eyelid contour and brow, the nose, and the irises. Left and
right are the subject's (the subject's left eye is on the image's right in a frontal photo).
"""

from __future__ import annotations

import functools

import numpy as np

NUM_LANDMARKS = 478
IRIS_LEFT = tuple(range(473, 478))   # subject's left iris (image right in a frontal photo)
IRIS_RIGHT = tuple(range(468, 473))

FACE_OVAL = (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251,
             284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
# outer contour (lower then upper), inner contour (lower then upper)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
# eyelid contours: lower (corner to corner), then upper
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440)


@functools.lru_cache(maxsize=None)
def landmark_groups() -> dict:
    """{'oval', 'lips', 'left_eye', 'right_eye', 'left_brow', 'right_brow', 'nose', 'left_iris',
    'right_iris'}: sorted int64 index arrays."""
    def idx(points):
        return np.array(sorted(set(points)), dtype=np.int64)
    return {
        "oval": idx(FACE_OVAL), "lips": idx(LIPS), "left_eye": idx(LEFT_EYE), "right_eye": idx(RIGHT_EYE),
        "left_brow": idx(LEFT_BROW), "right_brow": idx(RIGHT_BROW), "nose": idx(NOSE),
        "left_iris": np.array(IRIS_LEFT), "right_iris": np.array(IRIS_RIGHT),
    }


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
