"""FLAME parameter sequences in ``.npz`` files, as FLAME trackers write them.

Accepted keys (T frames; every per-frame key must have the same T; an array [W] without a
frame axis is one frame; [T, 1, W] and [T, k, 3] with k * 3 = W are read as [T, W]):

==============  =====================================================  ==========
quantity        keys (the first present is used)                       shape
==============  =====================================================  ==========
expression      ``expr``, ``exp``, ``expression``, ``expression_params``  [T, E]
root rotation   ``rotation``, ``global_orient``, ``root_pose``,        [T, 3]
                ``global_pose``
neck            ``neck_pose``                                          [T, 3]
jaw             ``jaw_pose``                                           [T, 3]
eyes            ``eyes_pose`` (left then right eye), ``eye_pose``      [T, 6]
                or ``leye_pose`` + ``reye_pose``                       [T, 3] each
combined pose   ``pose``: [T, 15] = root, neck, jaw, left eye, right   [T, 15]
                eye; or [T, 6] = root, jaw (DECA/EMOCA style)          or [T, 6]
translation     ``translation``, ``transl``, ``trans``                 [T, 3]
identity        ``shape``, ``betas``, ``shape_params``                 [S], [1, S]
                                                                       or [T, S]
frame rate      ``fps``, ``frame_rate``, ``framerate``                 scalar
==============  =====================================================  ==========

Rules:

* An expression key is required: a file without one is refused (``MotionError`` listing the
  keys it has). Pose keys are optional; a missing joint rotation is zero, and a file with
  no pose key at all gets a warning (the head is held still). Translation defaults to zero.
* Axis-angle is in radians, translation in metres (FLAME's units). Expression names are
  ``exp_000``, ``exp_001``, ... (E of them), FLAME's expression space.
* A separate joint key wins over the same joint in a combined ``pose`` (warning); a second
  alias of one quantity (``exp`` beside ``expr``) is ignored (warning).
* NaN/inf: gaps of up to 2 consecutive frames are interpolated with a warning, longer gaps
  are refused (see ``repair``).
* Per-frame identity [T, S] is reduced to its first row (warning if it varies).
* No frame-rate key: 30 fps is assumed (warning) unless the caller gives ``fps``.
* ``static_offset``/``dynamic_offset`` (per-vertex offsets some trackers save) are ignored
  with a warning; any other key is ignored with a warning naming it.
* A file holding our own format (``headsplat_motion`` key) is read by ``MotionSequence``.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from avatar_core.errors import MotionError
from avatar_core.motion.repair import describe_frames, fill_gaps
from avatar_core.motion.sequence import FORMAT_KEY, NUM_JOINTS, MotionSequence

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0

EXPRESSION_KEYS = ("expr", "exp", "expression", "expression_params")
ROOT_KEYS = ("rotation", "global_orient", "root_pose", "global_pose")
NECK_KEYS = ("neck_pose",)
JAW_KEYS = ("jaw_pose",)
EYES_KEYS = ("eyes_pose", "eye_pose")
LEYE_KEYS = ("leye_pose",)
REYE_KEYS = ("reye_pose",)
POSE_KEYS = ("pose",)
TRANSLATION_KEYS = ("translation", "transl", "trans")
SHAPE_KEYS = ("shape", "betas", "shape_params")
FPS_KEYS = ("fps", "frame_rate", "framerate")
IGNORED_KEYS = ("static_offset", "dynamic_offset")

ALL_KEYS = (EXPRESSION_KEYS + ROOT_KEYS + NECK_KEYS + JAW_KEYS + EYES_KEYS + LEYE_KEYS + REYE_KEYS
            + POSE_KEYS + TRANSLATION_KEYS + SHAPE_KEYS + FPS_KEYS + IGNORED_KEYS)


def flame_expr_names(num: int) -> List[str]:
    """FLAME's expression names: exp_000 ... exp_{num-1}."""
    return [f"exp_{i:03d}" for i in range(num)]


def read_npz(path, fps: Optional[float] = None) -> MotionSequence:
    """Read a FLAME parameter ``.npz`` or our own motion ``.npz`` (see the module doc)."""
    path = Path(path)
    where = repr(str(path))
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MotionError(f"{where} is not a readable .npz file ({exc}).") from None
    if not hasattr(archive, "files"):
        raise MotionError(f"{where} holds a single array, not an .npz archive of named motion parameters.")
    with archive:
        try:
            arrays = {k: archive[k] for k in archive.files}
        except ValueError as exc:  # object arrays need pickle, which we never load
            raise MotionError(f"{where} contains pickled Python objects ({exc}); expected plain numeric arrays.") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise MotionError(f"{where} is truncated or corrupt ({exc}).") from None
    if FORMAT_KEY in arrays:
        seq = MotionSequence.from_dict(arrays, source=str(path))
        return seq.replace(fps=fps) if fps else seq
    return flame_sequence(arrays, where=where, source=str(path), fps=fps)


def flame_sequence(arrays: Dict[str, np.ndarray], where: str = "the motion", source: str = "",
                   fps: Optional[float] = None) -> MotionSequence:
    """Build a ``MotionSequence`` from FLAME parameter arrays keyed as in the module doc."""
    warnings: List[str] = []
    keys = list(arrays)

    def pick(aliases) -> Optional[str]:
        present = [k for k in aliases if k in arrays]
        for extra in present[1:]:
            warnings.append(f"{where}: ignored {extra!r} because {present[0]!r} gives the same quantity.")
        return present[0] if present else None

    expr_key = pick(EXPRESSION_KEYS)
    if expr_key is None:
        raise MotionError(
            f"{where} has no expression key (it has {', '.join(keys) or 'no keys'}); expected one of "
            f"{', '.join(EXPRESSION_KEYS)} for a FLAME sequence, or a HeadSplat motion file.")

    per_frame: Dict[str, np.ndarray] = {}  # key -> [T, W]
    per_frame[expr_key] = _frames(where, expr_key, arrays[expr_key], None)
    E = per_frame[expr_key].shape[1]
    joint_keys = {}  # joint index -> (key, [T, 3]) from separate keys
    for j, aliases in ((0, ROOT_KEYS), (1, NECK_KEYS), (2, JAW_KEYS)):
        k = pick(aliases)
        if k is not None:
            per_frame[k] = _frames(where, k, arrays[k], 3)
            joint_keys[j] = k
    k = pick(EYES_KEYS)
    if k is not None:
        per_frame[k] = _frames(where, k, arrays[k], 6)
        joint_keys[3] = (k, slice(0, 3))
        joint_keys[4] = (k, slice(3, 6))
    for j, aliases in ((3, LEYE_KEYS), (4, REYE_KEYS)):
        k = pick(aliases)
        if k is not None:
            if j in joint_keys:
                warnings.append(f"{where}: ignored {k!r} because {joint_keys[j][0]!r} gives the same eye.")
                continue
            per_frame[k] = _frames(where, k, arrays[k], 3)
            joint_keys[j] = k
    pose_key = pick(POSE_KEYS)
    if pose_key is not None:
        a = np.asarray(arrays[pose_key])
        width = int(np.prod(a.shape[1:])) if a.ndim >= 2 else int(a.size)
        if width not in (15, 6):
            raise MotionError(f"{where}: {pose_key} has shape {list(a.shape)}; expected [T, 15] (root, neck, jaw, "
                              f"left eye, right eye) or [T, 6] (root, jaw).")
        per_frame[pose_key] = _frames(where, pose_key, a, width)
    trans_key = pick(TRANSLATION_KEYS)
    if trans_key is not None:
        per_frame[trans_key] = _frames(where, trans_key, arrays[trans_key], 3)

    # one frame count for every per-frame key
    counts = {k: v.shape[0] for k, v in per_frame.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in counts.items())
        raise MotionError(f"{where}: the keys have different frame counts ({listed}); expected the same "
                          f"number of frames T in every per-frame key.")
    T = counts[expr_key]
    if T == 0:
        raise MotionError(f"{where}: {expr_key} has no frames; expected at least one.")

    # short NaN gaps are interpolated, long ones refused
    for k in list(per_frame):
        per_frame[k], filled = fill_gaps(where, k, per_frame[k])
        if filled:
            warnings.append(f"{where}: interpolated {k} over {len(filled)} frame(s) with NaN/inf "
                            f"({describe_frames(filled)}).")

    pose = np.zeros((T, NUM_JOINTS, 3), np.float64)
    if pose_key is not None:
        p = per_frame[pose_key]
        if p.shape[1] == 15:
            pose[:] = p.reshape(T, NUM_JOINTS, 3)
            from_combined = range(NUM_JOINTS)
        else:  # [T, 6]: root, jaw
            pose[:, 0], pose[:, 2] = p[:, :3], p[:, 3:]
            from_combined = (0, 2)
        overridden = [joint_keys[j] if isinstance(joint_keys[j], str) else joint_keys[j][0]
                      for j in from_combined if j in joint_keys]
        if overridden:
            warnings.append(f"{where}: {', '.join(sorted(set(overridden)))} override(s) the same joints in "
                            f"{pose_key!r}.")
    for j, spec in joint_keys.items():
        if isinstance(spec, str):
            pose[:, j] = per_frame[spec]
        else:
            k, sl = spec
            pose[:, j] = per_frame[k][:, sl]
    if pose_key is None and not joint_keys:
        warnings.append(f"{where} has no pose key ({', '.join(ROOT_KEYS[:2])}, jaw_pose, ...); "
                        f"the head and jaw are held still.")
    translation = per_frame[trans_key] if trans_key is not None else np.zeros((T, 3))

    shape = None
    shape_key = pick(SHAPE_KEYS)
    if shape_key is not None:
        s = np.asarray(arrays[shape_key])
        if not np.issubdtype(s.dtype, np.number):
            raise MotionError(f"{where}: {shape_key} has dtype {s.dtype}; expected numbers.")
        s = s.astype(np.float64).reshape(-1, s.shape[-1]) if s.ndim >= 1 else s.reshape(1, 1)
        if not np.isfinite(s).all():
            raise MotionError(f"{where}: {shape_key} contains NaN or infinite values; expected finite numbers.")
        if s.shape[0] > 1 and np.abs(s - s[:1]).max() > 1e-6:
            warnings.append(f"{where}: {shape_key} varies over {s.shape[0]} rows; the first row is used as "
                            f"the identity.")
        shape = s[0]

    fps_key = pick(FPS_KEYS)
    if fps is None:
        if fps_key is not None:
            try:
                fps = float(np.asarray(arrays[fps_key]).reshape(-1)[0])
            except (ValueError, TypeError, IndexError):
                raise MotionError(f"{where}: {fps_key} is {arrays[fps_key]!r}; expected a positive number.") from None
        else:
            fps = DEFAULT_FPS
            warnings.append(f"{where} has no frame-rate key ({', '.join(FPS_KEYS)}); assuming {DEFAULT_FPS:g} fps.")

    for k in IGNORED_KEYS:
        if k in arrays:
            warnings.append(f"{where}: ignored {k!r} (per-vertex offsets are not part of a motion).")
    unknown = [k for k in keys if k not in ALL_KEYS]
    if unknown:
        warnings.append(f"{where}: ignored unknown keys {', '.join(unknown)}.")

    for w in warnings:
        log.info("%s", w)
    return MotionSequence(fps=fps, expr_names=flame_expr_names(E), expression=per_frame[expr_key],
                          pose=pose, translation=translation, shape=shape, source=source or where,
                          warnings=warnings)


def _frames(where: str, key: str, value, width: Optional[int]) -> np.ndarray:
    """A per-frame array as [T, W] float64 (W = width, or free when width is None)."""
    a = np.asarray(value)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise MotionError(f"{where}: {key} has dtype {a.dtype}; expected numbers.")
    want = f"[T, {width}]" if width is not None else "[T, E]"
    if a.ndim == 0:
        raise MotionError(f"{where}: {key} is a single number; expected {want}.")
    if a.ndim == 1:
        a = a[None]  # one frame
    elif a.ndim > 2:
        a = a.reshape(a.shape[0], -1)  # [T, 1, W] or [T, k, 3]
    if width is not None and a.shape[1] != width:
        raise MotionError(f"{where}: {key} has shape {list(np.asarray(value).shape)}; expected {want}.")
    return a.astype(np.float64)
