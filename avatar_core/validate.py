"""One validation pass for what HeadSplat reads, and bounds on numeric options.

Every reader calls these after parsing and before anything is built from the data: the
avatar file (``io.avatar_file``), FLAME files (``head.flame``), motion files (``motion.load``),
and the Blender add-on through the same readers. Each failure is one ``AvatarError``
sentence naming the file and what was expected. Nothing here imports torch at module level,
so the bounds checks are cheap for the CLI and the add-on.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import numpy as np

from avatar_core.errors import AvatarFileError, HeadModelError, MotionError, ParameterError

# ----------------------------------------------------------------------------- option bounds
FPS_RANGE = (1.0, 240.0)             # output frame rates
RES_RANGE = (16, 4096)               # longer image side, pixels
STEPS_RANGE = (1, 100_000)           # optimisation steps
MAX_FRAMES = 100_000                 # frames of one motion after resampling (~55 min at 30 fps)
MAX_ABS_EXPRESSION = 100.0           # expression / blendshape coefficients
MAX_ABS_ROTATION = 100.0             # axis-angle radians (anything sane is < 2 pi)
MAX_ABS_TRANSLATION = 1.0e3          # metres
LODS = (-1, 0, 1, 2)


def check_range(value, name: str, lo, hi, unit: str = "") -> float:
    """``value`` as a number within [lo, hi], or a ParameterError naming the option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number between {lo:g} and {hi:g}{unit}, not {value!r}.") from None
    if not math.isfinite(v) or v < lo or v > hi:
        shown = f"{v:g}" if isinstance(value, (int, float)) else repr(value)
        raise ParameterError(f"{name} must be between {lo:g} and {hi:g}{unit}, not {shown}.")
    return v


def check_fps(value, name: str = "--fps") -> Optional[float]:
    """None stays None; else a frame rate within ``FPS_RANGE``."""
    if value is None:
        return None
    return check_range(value, name, *FPS_RANGE, unit=" frames per second")


def check_resolution(value, name: str = "--res") -> int:
    return int(check_range(value, name, *RES_RANGE, unit=" pixels"))


def check_steps(value, name: str = "--steps") -> int:
    return int(check_range(value, name, *STEPS_RANGE))


def check_frame_count(num_frames: int, fps: float, where: str = "the motion") -> None:
    """Refuse a motion that would be more than ``MAX_FRAMES`` frames (e.g. after resampling)."""
    if num_frames > MAX_FRAMES:
        raise ParameterError(f"{where} would be {num_frames} frames at {fps:g} fps; at most {MAX_FRAMES} frames "
                             "are rendered or keyed in one go (lower the fps or cut the motion).")


def resampled_frames(num_frames: int, fps: float, new_fps: float) -> int:
    """How many frames a motion of ``num_frames`` at ``fps`` has at ``new_fps`` (before resampling)."""
    if not fps > 0 or not math.isfinite(new_fps):
        return num_frames
    return max(1, int(round(num_frames * new_fps / fps)))


def parse_expression_value(item: str) -> tuple:
    """``NAME=VALUE`` -> (name, float) with a finite value, else a ParameterError sentence."""
    if "=" not in item:
        raise ParameterError(f"--expr {item!r} must look like NAME=VALUE.")
    k, v = item.split("=", 1)
    if not k:
        raise ParameterError(f"--expr {item!r} has no expression name before '='.")
    try:
        x = float(v)
    except ValueError:
        raise ParameterError(f"--expr {item!r}: {v!r} is not a number.") from None
    if not math.isfinite(x) or abs(x) > MAX_ABS_EXPRESSION:
        raise ParameterError(f"--expr {item!r}: expected a finite number between {-MAX_ABS_EXPRESSION:g} and "
                             f"{MAX_ABS_EXPRESSION:g}.")
    return k, x


# ----------------------------------------------------------------------------- motion
def check_motion_values(motion, where: str = "the motion") -> None:
    """Finite values of sane magnitude in a MotionSequence; the CLI and Import Motion both call it."""
    for key, bound in (("expression", MAX_ABS_EXPRESSION), ("pose", MAX_ABS_ROTATION),
                       ("translation", MAX_ABS_TRANSLATION)):
        a = getattr(motion, key, None)
        if a is None:
            continue
        a = np.asarray(a)
        if a.size == 0:
            continue
        if not np.isfinite(a).all():
            raise MotionError(f"{where}: {key} contains NaN or infinite values; expected finite numbers.")
        m = float(np.abs(a).max())
        if m > bound:
            raise MotionError(f"{where}: {key} reaches {m:.3g}; expected values within +-{bound:g}.")
    fps = getattr(motion, "fps", None)
    if fps is not None and (not math.isfinite(float(fps)) or not 0 < float(fps) <= 1000):
        raise MotionError(f"{where}: the frame rate {fps!r} is not a positive number up to 1000.")
    check_frame_count(int(getattr(motion, "num_frames", 0)), float(fps or 0), where)


# ----------------------------------------------------------------------------- avatar
def check_avatar_metadata(meta, where: str, format_name: str, format_version: int) -> dict:
    """The avatar file's JSON metadata: a dict of the right format, an integer version we read,
    well-typed head/split/names. Returns it."""
    if not isinstance(meta, dict):
        raise AvatarFileError(f"{where} has corrupt avatar metadata ({type(meta).__name__}, expected a JSON object).")
    if meta.get("format") != format_name:
        raise AvatarFileError(f"{where} is not a HeadSplat avatar (format {meta.get('format')!r}).")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise AvatarFileError(f"{where} has avatar format version {version!r}; expected a whole number "
                              f"1..{format_version}.")
    if version > format_version:
        raise AvatarFileError(
            f"{where} was written by a newer HeadSplat (avatar format {version}; this one reads up to "
            f"{format_version}); please update HeadSplat.")
    if version < 1:
        raise AvatarFileError(f"{where} has avatar format version {version}; expected 1..{format_version}.")
    for key, typ, what in (("head", dict, "an object"), ("split", dict, "an object"), ("info", dict, "an object"),
                           ("expr_names", list, "a list"), ("joint_names", list, "a list")):
        if key in meta and not isinstance(meta[key], typ):
            raise AvatarFileError(f"{where} has corrupt avatar metadata: {key} is {type(meta[key]).__name__}; "
                                  f"expected {what}.")
    for key in ("expr_names", "joint_names"):
        if not all(isinstance(s, str) for s in meta.get(key, [])):
            raise AvatarFileError(f"{where} has corrupt avatar metadata: {key} holds non-text entries.")
    head = meta.get("head", {})
    for key in ("name", "identity"):
        if key in head and not isinstance(head[key], str):
            raise AvatarFileError(f"{where} has corrupt avatar metadata: head.{key} is not text.")
    split = meta.get("split", {})
    for key in ("k", "levels"):
        v = split.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 64:
            raise AvatarFileError(f"{where} has corrupt avatar metadata: split.{key} is {v!r}; expected a whole "
                                  "number 0..64.")
    if meta.get("refiner") is not None and not isinstance(meta["refiner"], dict):
        raise AvatarFileError(f"{where} has corrupt avatar metadata: refiner is not an object.")
    return meta


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def check_avatar_tensors(fields: Mapping[str, object], meta: dict, where: str) -> None:
    """Shapes, dtypes, index bounds and finiteness of an avatar's rig and Gaussian tensors.

    ``fields`` uses ``Avatar`` field names (rig_template ... region); extra fields are ignored.
    """
    def fail(msg):
        raise AvatarFileError(f"{where} is corrupt: {msg}.")

    a = {k: _np(v) for k, v in fields.items()}
    for k, v in a.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            fail(f"{k} contains NaN or infinite values; expected finite numbers")
        if v.dtype.kind not in "fiub":
            fail(f"{k} has dtype {v.dtype}; expected numbers")
    tpl = a["rig_template"]
    if tpl.ndim != 2 or tpl.shape[1] != 3 or tpl.shape[0] < 3:
        fail(f"rig.template has shape {list(tpl.shape)}; expected [V, 3] with V >= 3")
    V = tpl.shape[0]
    faces = a["rig_faces"]
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] < 1 or faces.dtype.kind not in "iu":
        fail(f"rig.faces has shape {list(faces.shape)} ({faces.dtype}); expected [F, 3] integers")
    F = faces.shape[0]
    _bounds(fail, "rig.faces", faces, 0, V, f"vertex ids 0..{V - 1}")
    parents = a["rig_parents"]
    if parents.ndim != 1 or parents.shape[0] < 1 or parents.dtype.kind not in "iu":
        fail(f"rig.parents has shape {list(parents.shape)}; expected [J] integers")
    J = parents.shape[0]
    if parents[0] != -1 or any(not (-1 <= int(p) < j) for j, p in enumerate(parents[1:], 1)):
        fail(f"rig.parents {parents.tolist()} is not a joint tree (root -1, each parent before its child)")
    for k, shape in (("rig_weights", (V, J)), ("rig_j_regressor", (J, V))):
        if tuple(a[k].shape) != shape:
            fail(f"{k.replace('_', '.', 1)} has shape {list(a[k].shape)}; expected {list(shape)}")
    for k in ("rig_exprdirs", "rig_shapedirs", "rig_posedirs"):
        if a[k].ndim != 3 or a[k].shape[:2] != (V, 3):
            fail(f"{k.replace('_', '.', 1)} has shape {list(a[k].shape)}; expected [{V}, 3, K]")
    E = a["rig_exprdirs"].shape[2]
    names = meta.get("expr_names", [])
    if names and len(names) != E:
        fail(f"it names {len(names)} expressions but rig.exprdirs has {E}")
    N = a["offset"].shape[0]
    want = {"bind_ids": (N, 3), "bind_bary": (N, 3), "frame_face": (N,), "offset": (N, 3), "rotation": (N, 4),
            "log_scale": (N, 3), "opacity_logit": (N,), "lod": (N,), "split_layer": (N,), "parent": (N,),
            "soft_mask": (N,), "region": (N,)}
    for k, shape in want.items():
        if k in a and tuple(a[k].shape) != shape:
            fail(f"gauss.{k} has shape {list(a[k].shape)}; expected {list(shape)}")
    if "features" in a and (a["features"].ndim != 2 or a["features"].shape[0] != N):
        fail(f"gauss.features has shape {list(a['features'].shape)}; expected [{N}, C]")
    for k in ("bind_ids", "frame_face", "lod", "split_layer", "parent", "region"):
        if k in a and a[k].dtype.kind not in "iu":
            fail(f"gauss.{k} has dtype {a[k].dtype}; expected integers")
    ff = a["frame_face"]
    _bounds(fail, "gauss.frame_face", ff, -1, F, f"-1 or face ids 0..{F - 1}")
    bound = ff >= 0
    _bounds(fail, "gauss.bind_ids", a["bind_ids"][bound], 0, V, f"vertex ids 0..{V - 1}")
    lod = a["lod"]
    bad = ~np.isin(lod, LODS)
    if bad.any():
        fail(f"gauss.lod holds {int(lod[bad][0])}; expected LODs -1 (all), 0, 1 or 2")
    _bounds(fail, "gauss.split_layer", a["split_layer"], -1, 65, "-1..64")
    par = a["parent"]
    _bounds(fail, "gauss.parent", par, -1, N, f"-1 or Gaussian ids 0..{N - 1}")
    if N and (par >= np.arange(N)).any():
        i = int(np.nonzero(par >= np.arange(N))[0][0])
        fail(f"gauss.parent[{i}] = {int(par[i])} does not precede its child; expected parents before children")


def _bounds(fail, name, arr, lo, hi, what) -> None:
    if arr.size == 0:
        return
    mn, mx = int(arr.min()), int(arr.max())
    if mn < lo or mx >= hi:
        fail(f"{name} holds {mn if mn < lo else mx}; expected {what}")


# ----------------------------------------------------------------------------- head models
MAX_HEAD_VERTICES = 2_000_000
MAX_SPARSE_CELLS = 50_000_000        # a J_regressor is 5 x ~5k; refuse absurd declared shapes


def check_sparse_shape(shape, where: str, key: str) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise HeadModelError(f"{where}: the sparse matrix {key!r} has no valid shape.") from None
    if len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] > MAX_SPARSE_CELLS:
        raise HeadModelError(f"{where}: the sparse matrix {key!r} declares shape {list(shape)}; expected two "
                             f"positive sizes of at most {MAX_SPARSE_CELLS} cells.")
    return shape


def check_head_arrays(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """v_template [V,3] finite with 3 <= V; faces [F,3] within 0..V-1; finite bases and weights;
    parents a joint tree. ``arrays`` keys: v_template, faces, parents and optional float arrays."""
    def fail(msg):
        raise HeadModelError(f"{where} is not a usable head model: {msg}.")

    v = arrays["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or not 3 <= v.shape[0] <= MAX_HEAD_VERTICES:
        fail(f"v_template has shape {list(v.shape)}; expected [V, 3] with 3 <= V <= {MAX_HEAD_VERTICES}")
    V = v.shape[0]
    f = arrays["faces"]
    if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] < 1:
        fail(f"f has shape {list(f.shape)}; expected [F, 3]")
    _bounds(fail, "f", f, 0, V, f"vertex ids 0..{V - 1}")
    for k, arr in arrays.items():
        if k in ("faces", "parents"):
            continue
        if np.asarray(arr).dtype.kind == "f" and not np.isfinite(arr).all():
            fail(f"{k} contains NaN or infinite values")
    p = arrays["parents"]
    if p.ndim != 1 or p.shape[0] < 1 or p[0] != -1 or any(not (-1 <= int(x) < j) for j, x in enumerate(p[1:], 1)):
        fail(f"kintree_table gives parents {np.asarray(p).tolist()[:8]}; expected a joint tree (root first, each "
             "parent before its child)")


# ----------------------------------------------------------------------------- caches
def check_embedding(landmark_ids, face_idx, bary, num_faces: int, where: str) -> None:
    """A landmark embedding: K face ids within the mesh, K x 3 finite barycentrics."""
    li, fi, b = np.asarray(landmark_ids), np.asarray(face_idx), np.asarray(bary)
    ok = (li.ndim == 1 and fi.shape == li.shape and b.shape == (li.shape[0], 3) and fi.dtype.kind in "iu"
          and b.dtype.kind == "f" and np.isfinite(b).all() and (fi.size == 0 or (fi.min() >= 0 and fi.max() < num_faces)))
    if not ok:
        raise HeadModelError(f"{where} is not a landmark embedding of this head (face ids 0..{num_faces - 1}, "
                             "[K, 3] finite barycentric coordinates).")


def finite_or_fail(values: Iterable[float], what: str) -> None:
    for v in values:
        if not math.isfinite(float(v)):
            raise ParameterError(f"{what} contains NaN or infinite values; expected finite numbers.")

