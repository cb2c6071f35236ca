"""Repairing short gaps (NaN/inf frames) in per-frame motion arrays.

Trackers write NaN for a frame where they lost the face. The rule, the same for every
reader: a run of at most ``MAX_GAP`` consecutive frames with any non-finite value in a key
is filled per channel by linear interpolation between the valid frames on either side (a
gap at the start or end copies the nearest valid frame), and the reader records a warning
naming the key and the frames. A longer run, or a key with no finite frame at all, is a
``MotionError``: guessing seconds of motion would hide a broken capture.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from avatar_core.errors import MotionError

MAX_GAP = 2


def fill_gaps(where: str, key: str, a: np.ndarray, max_gap: int = MAX_GAP) -> Tuple[np.ndarray, List[int]]:
    """Fill short runs of non-finite frames.

    Args:
        where: the file, for messages. key: the array's name, for messages.
        a: [T, ...] per-frame values.
    Returns:
        (filled array [T, ...] float64, list of the frames that were filled).
    Raises:
        MotionError when a run is longer than ``max_gap`` or no frame is finite.
    """
    a = np.asarray(a, np.float64)
    T = a.shape[0]
    flat = a.reshape(T, -1)
    bad = ~np.isfinite(flat).all(1)
    if not bad.any():
        return a, []
    if bad.all():
        raise MotionError(f"{where}: {key} has no finite frame (all {T} contain NaN or inf); expected numbers.")
    # runs of bad frames
    edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
    starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    longest = int((stops - starts).max())
    if longest > max_gap:
        i = int(np.argmax(stops - starts))
        raise MotionError(
            f"{where}: {key} has {longest} consecutive frames with NaN or inf (frames {starts[i]}-{stops[i] - 1}); "
            f"gaps of up to {max_gap} frames are interpolated, longer ones must be fixed in the capture.")
    good = np.nonzero(~bad)[0]
    out = flat.copy()
    frames = np.nonzero(bad)[0]
    for c in range(flat.shape[1]):
        # np.interp holds the end values outside [good[0], good[-1]]
        out[frames, c] = np.interp(frames, good, flat[good, c])
    return out.reshape(a.shape), [int(f) for f in frames]


def describe_frames(frames: List[int], limit: int = 6) -> str:
    shown = ", ".join(str(f) for f in frames[:limit])
    return shown + (f" and {len(frames) - limit} more" if len(frames) > limit else "")
