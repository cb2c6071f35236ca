"""Derive MIRROR_PAIRS (avatar_core/fit/landmark_sets.py): each landmark's left-right twin.

The face models run on images and on their horizontal flips; landmark i of a flipped image,
flipped back, lands on the twin of i in the original. Distances (in eye spacings) are averaged
over the open head's frontal render and the portraits, symmetrised, and matched as one
assignment, which gives an involution. Run: python scripts/landmark_mirror.py [PORTRAIT ...]
(default: ../shared/data/portraits/*); it prints the table to paste.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from avatar_core.face.detect import detect_faces
from avatar_core.face.landmarks import landmarks_for_face
from avatar_core.fit.correspondence import render_head_for_landmarks
from avatar_core.head import load_head


def landmarks(img):
    det = max(detect_faces(img), key=lambda d: d.area)
    return landmarks_for_face(img, det)[:, :2]


def main(paths):
    head = load_head("open").to(dtype=torch.float32)
    images = [render_head_for_landmarks(head, 0.0, 512)[0]]
    images += [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths]
    dist = 0.0
    for img in images:
        a = landmarks(img)
        back = landmarks(np.ascontiguousarray(img[:, ::-1]))
        back[:, 0] = img.shape[1] - back[:, 0]
        eye_spacing = np.linalg.norm(a[33] - a[263])
        dist = dist + np.linalg.norm(back[:, None] - a[None], axis=2) / eye_spacing
    _, twin = linear_sum_assignment(dist + dist.T)
    assert (twin[twin] == np.arange(len(twin))).all(), "the matching is not an involution"
    pairs = [f"({i}, {j})" for i, j in enumerate(twin) if j > i]
    print(f"# {len(pairs)} pairs, {int((twin == np.arange(len(twin))).sum())} on the midline")
    print("MIRROR_PAIRS = (")
    for k in range(0, len(pairs), 8):
        print("    " + ", ".join(pairs[k:k + 8]) + ("," if k + 8 < len(pairs) else ")"))


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(Path("../shared/data/portraits").glob("*.png")) + sorted(Path("../shared/data/portraits").glob("*.jpg")))
