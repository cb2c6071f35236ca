"""Debug pictures of a FacePortrait: landmarks drawn on the crop, and the matte."""

from __future__ import annotations

import numpy as np

from avatar_core.face.landmarks import CHIN, FOREHEAD, LEFT_IRIS, NOSE_TIP, RIGHT_IRIS


def debug_image(portrait) -> np.ndarray:
    """[S, 3S, 3] uint8 RGB: crop + landmarks + face box | crop over green by alpha | alpha.

    Landmarks are white dots; irises red (subject's right) and blue (left); nose tip,
    chin and forehead yellow; the detector's face box green.
    """
    import cv2

    s = portrait.size
    crop = np.clip(portrait.image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    left = crop.copy()
    lm = portrait.landmarks
    for x, y in lm[:, :2]:
        cv2.circle(left, (int(x), int(y)), 1, (255, 255, 255), -1, cv2.LINE_AA)
    for idx, colour in ((RIGHT_IRIS, (255, 0, 0)), (LEFT_IRIS, (0, 80, 255)),
                        (NOSE_TIP, (255, 255, 0)), (CHIN, (255, 255, 0)), (FOREHEAD, (255, 255, 0))):
        cv2.circle(left, (int(lm[idx, 0]), int(lm[idx, 1])), 3, colour, -1, cv2.LINE_AA)
    x0, y0, x1, y1 = portrait.face_box
    cv2.rectangle(left, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 1)

    a = portrait.alpha[:, :, None]
    green = np.array([0.0, 0.8, 0.0], np.float32)
    comp = np.clip((portrait.image * a + green * (1 - a)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    matte = np.repeat(np.clip(portrait.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return np.concatenate([left, comp, matte], axis=1).reshape(s, 3 * s, 3)
