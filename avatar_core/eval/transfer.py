"""Expression transfer: do the avatar's frames move the way the driving video's face does?

Issue 15's acceptance 3. From the face landmarker's 478 points found on the real frames and
on the avatar's renders of the same frames, five measures per frame, each normalised by
that frame's distance between the outer eye corners:

* ``mouth_width``: mouth corner to mouth corner (61, 291): smiles, pouts;
* ``lip_opening``: inner upper to inner lower lip (13, 14);
* ``brow_height``: each brow's middle (105, 334) above its eye's centre, both sides' mean;
* ``eye_openness``: upper to lower lid (159-145, 386-374), both eyes' mean;
* ``iris_x``: each iris centre (468, 473) along its eye's corner-to-corner axis from the
  eye's middle, in eye widths, both eyes' mean (a sideways glance).

Each measure's displacement from the source frame is compared between avatar and real over
the driven frames where both have landmarks: Pearson correlation ``r`` (target >= 0.8) and
the amplitude ratio ``amplitude`` = RMS(avatar) / RMS(real) (target 0.7 to 1.3). A measure
the real face hardly moves (RMS below ``STILL``) is reported but not judged (``judged``
false): its correlation would be that of noise.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

R_MIN = 0.8
AMPLITUDE_RANGE = (0.7, 1.3)
STILL = {"mouth_width": 0.01, "lip_opening": 0.01, "brow_height": 0.008, "eye_openness": 0.006, "iris_x": 0.03}

_EYE_R = (33, 133)   # the subject's right eye: outer, inner corner
_EYE_L = (263, 362)


def _dist(lm: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(lm[:, a, :2] - lm[:, b, :2], axis=-1)


def measures(lm: np.ndarray) -> Dict[str, np.ndarray]:
    """{measure: [T]} of landmark sequences [T, 478, 2+] (NaN where a frame has none)."""
    lm = np.asarray(lm, dtype=np.float64)
    iod = _dist(lm, 33, 263)
    iod = np.where(iod > 1e-6, iod, np.nan)
    out = {"mouth_width": _dist(lm, 61, 291) / iod, "lip_opening": _dist(lm, 13, 14) / iod}
    brow = []
    for b, (o, i) in ((105, _EYE_R), (334, _EYE_L)):
        centre = 0.5 * (lm[:, o, :2] + lm[:, i, :2])
        brow.append(np.linalg.norm(lm[:, b, :2] - centre, axis=-1))
    out["brow_height"] = 0.5 * (brow[0] + brow[1]) / iod
    out["eye_openness"] = 0.5 * (_dist(lm, 159, 145) + _dist(lm, 386, 374)) / iod
    if lm.shape[1] >= 478:
        iris = []
        for c, (o, i) in ((468, _EYE_R), (473, _EYE_L)):
            axis = lm[:, i, :2] - lm[:, o, :2]
            width = np.linalg.norm(axis, axis=-1)
            u = axis / np.where(width > 1e-6, width, np.nan)[:, None]
            mid = 0.5 * (lm[:, o, :2] + lm[:, i, :2])
            # toward the subject's left (image +x for a frontal face) for both eyes
            sign = 1.0 if c == 473 else -1.0
            iris.append(sign * ((lm[:, c, :2] - mid) * u).sum(-1) / width)
        out["iris_x"] = 0.5 * (iris[0] + iris[1])
    return out


def transfer_figures(real_lm: np.ndarray, avatar_lm: np.ndarray, src: int) -> Dict[str, Dict[str, object]]:
    """Per measure: r, amplitude, real_rms, frames used, judged, pass (see the module docstring).
    ``real_lm``, ``avatar_lm`` [T, 478, 2+] at the same pixel scale; ``src`` the source frame."""
    real, av = measures(real_lm), measures(avatar_lm)
    T = len(real_lm)
    driven = np.arange(T) != src
    out = {}
    for name in real:
        a = av[name] - av[name][src]
        b = real[name] - real[name][src]
        ok = driven & np.isfinite(a) & np.isfinite(b)
        n = int(ok.sum())
        fig: Dict[str, object] = {"frames": n}
        if n < 3 or not np.isfinite(av[name][src]) or not np.isfinite(real[name][src]):
            fig.update(r=None, amplitude=None, real_rms=None, judged=False, passed=None)
            out[name] = fig
            continue
        a, b = a[ok], b[ok]
        rms_a, rms_b = float(np.sqrt((a ** 2).mean())), float(np.sqrt((b ** 2).mean()))
        sa, sb = a.std(), b.std()
        r = float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb)) if sa > 0 and sb > 0 else 0.0
        amp = rms_a / rms_b if rms_b > 0 else None
        judged = rms_b >= STILL.get(name, 0.0) and amp is not None
        ok_r = r >= R_MIN
        ok_a = amp is not None and AMPLITUDE_RANGE[0] <= amp <= AMPLITUDE_RANGE[1]
        fig.update(r=round(r, 4), amplitude=None if amp is None else round(amp, 4), real_rms=round(rms_b, 5),
                   judged=bool(judged),
                   passed=bool(ok_r and ok_a) if judged else None)
        out[name] = fig
    return out
