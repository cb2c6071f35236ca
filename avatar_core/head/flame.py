"""Loading FLAME head-model files the user downloaded (never shipped with HeadSplat).

Accepted: FLAME 2020 ``generic_model.pkl``, FLAME 2023 ``flame2023*.pkl`` (incl. "Open"),
and ``.npz`` files with the same keys. The pickles were written by Python 2 and hold
chumpy objects and scipy sparse matrices; they are read by a restricted unpickler that
admits only numpy arrays and stand-ins for chumpy/scipy classes, so chumpy is not needed
and no arbitrary code can run.

Keys used: v_template [V,3], f [F,3], shapedirs [V,3,S+E] (identity first, 300 in FLAME;
the rest are expressions) or separate ``exprdirs``, posedirs [V,3,36] (or [V*3, 36]),
J_regressor [J,V] (dense or sparse), weights [V,J], kintree_table [2,J].
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from avatar_core.errors import HeadModelError
from avatar_core.head.model import JOINT_NAMES, HeadModel

FLAME_NUM_SHAPE = 300
FLAME_LICENCE = ("FLAME model supplied by the user from https://flame.is.tue.mpg.de "
                 "(MPI licence; not redistributed by HeadSplat)")


class _Stub:
    """Stand-in for chumpy and scipy.sparse objects: keeps the pickled state only."""

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict_state, slot_state)
        self.__dict__["_state"] = state

    def __reduce__(self):  # pragma: no cover - never pickled back
        raise TypeError("stub objects cannot be pickled")


def _stub_class(module: str, name: str):
    return type(name, (_Stub,), {"_origin": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    _NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._NUMPY:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        if (module, name) in {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}:
            import copyreg
            return copyreg._reconstructor
        if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]
        if (module, name) == ("_codecs", "encode"):  # bytes in pickles written by Python 3
            import codecs
            return codecs.encode
        if module.startswith("chumpy") or module.startswith("scipy.sparse"):
            return _stub_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a head-model pickle")


def _to_array(obj: Any, key: str, path: Path) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, _Stub):
        state = obj.__dict__.get("_state") or {}
        origin = getattr(obj, "_origin", "")
        if "sparse" in origin:
            try:
                shape = tuple(state.get("_shape") or state.get("shape"))
                data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
            except (KeyError, TypeError):
                raise HeadModelError(f"{str(path)!r}: the sparse matrix {key!r} is unreadable.") from None
            from avatar_core.validate import check_sparse_shape
            shape = check_sparse_shape(shape, repr(str(path)), key)
            fmt = state.get("format", "csc")
            outer_n, inner_n = (shape[0], shape[1]) if fmt == "csr" else (shape[1], shape[0])
            try:
                indptr = indptr.astype(np.int64)
                indices = indices.astype(np.int64)
                ok = (indptr.ndim == 1 and len(indptr) == outer_n + 1 and indptr[0] == 0
                      and (np.diff(indptr) >= 0).all() and indptr[-1] <= min(len(indices), len(data))
                      and (indices.size == 0 or (indices.min() >= 0 and indices.max() < inner_n)))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise HeadModelError(f"{str(path)!r}: the sparse matrix {key!r} has indices outside its declared "
                                     f"shape {list(shape)}; the file is corrupt.")
            dense = np.zeros(shape, dtype=np.float64)
            for outer in range(len(indptr) - 1):
                sl = slice(indptr[outer], indptr[outer + 1])
                if fmt == "csr":
                    dense[outer, indices[sl]] = data[sl]
                else:
                    dense[indices[sl], outer] = data[sl]
            return dense
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise HeadModelError(f"{str(path)!r}: the chumpy object {key!r} holds no array ('x').")
    try:
        return np.asarray(obj)
    except Exception:  # noqa: BLE001
        raise HeadModelError(f"{str(path)!r}: {key!r} is not an array.") from None


def _read_raw(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise HeadModelError(f"The FLAME file {str(path)!r} does not exist; download FLAME from "
                             "https://flame.is.tue.mpg.de and pass the path of generic_model.pkl or flame2023.pkl.")
    raw = path.read_bytes()
    if raw[:2] == b"PK":  # .npz
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise HeadModelError(f"{str(path)!r} is a corrupt .npz file ({exc}).") from None
    try:
        data = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise HeadModelError(f"{str(path)!r} is truncated or not a FLAME pickle ({exc}).") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise HeadModelError(f"{str(path)!r} is truncated or corrupt ({type(exc).__name__}).") from None
    if not isinstance(data, dict):
        raise HeadModelError(f"{str(path)!r} does not hold a FLAME dictionary (found {type(data).__name__}).")
    return data


def load_flame(path, num_expr: int = 100) -> HeadModel:
    """Load a FLAME file as a HeadModel (expression names exp_000 ...).

    Raises HeadModelError with one sentence when the file is missing, corrupt or not FLAME.
    """
    try:
        return _load_flame(Path(path), num_expr)
    except (ValueError, TypeError, IndexError, OverflowError) as exc:  # arrays of the wrong kind or shape
        raise HeadModelError(f"{str(path)!r} is not a usable FLAME model: {exc}.") from None


def _load_flame(path: Path, num_expr: int) -> HeadModel:
    data = _read_raw(path)
    need = ["v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights"]
    missing = [k for k in need if k not in data]
    if missing:
        raise HeadModelError(f"{str(path)!r} is not a FLAME model: it lacks {', '.join(missing)}.")
    arr = {k: _to_array(data[k], k, path) for k in need + [k for k in ("kintree_table", "exprdirs") if k in data]}
    v = arr["v_template"].astype(np.float32)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
        raise HeadModelError(f"{str(path)!r}: v_template has shape {v.shape}; expected [V, 3] with V >= 3.")
    V = v.shape[0]
    if arr["f"].dtype.kind not in "iuf":
        raise HeadModelError(f"{str(path)!r}: f has dtype {arr['f'].dtype}; expected integer vertex ids.")
    faces = arr["f"].astype(np.int64)
    sd = arr["shapedirs"].astype(np.float32)
    if sd.ndim != 3 or sd.shape[:2] != (V, 3):
        raise HeadModelError(f"{str(path)!r}: shapedirs has shape {sd.shape}; expected [{V}, 3, K].")
    if "exprdirs" in arr:
        shapedirs, exprdirs = sd, arr["exprdirs"].astype(np.float32)
    else:
        S = min(FLAME_NUM_SHAPE, sd.shape[2])
        shapedirs, exprdirs = sd[..., :S], sd[..., S:]
    exprdirs = exprdirs[..., :num_expr]
    pd = arr["posedirs"].astype(np.float32)
    if pd.ndim == 2:
        pd = pd.reshape(V, 3, -1)
    jr = arr["J_regressor"].astype(np.float32)
    w = arr["weights"].astype(np.float32)
    J = w.shape[1] if w.ndim == 2 else -1
    if J != len(JOINT_NAMES) or jr.shape != (J, V) or pd.shape[:2] != (V, 3):
        raise HeadModelError(f"{str(path)!r}: weights {w.shape}, J_regressor {jr.shape}, posedirs {pd.shape} "
                             f"do not describe FLAME's 5 joints over {V} vertices.")
    parents = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
    if "kintree_table" in arr:
        kt = arr["kintree_table"]
        if kt.ndim != 2 or kt.shape != (2, J) or kt.dtype.kind not in "iuf":
            raise HeadModelError(f"{str(path)!r}: kintree_table has shape {list(kt.shape)}; expected [2, {J}] "
                                 "joint ids.")
        parents = kt[0].astype(np.int64)
        parents[0] = -1
        parents[parents > 1e6] = -1
    from avatar_core.validate import check_head_arrays
    check_head_arrays({"v_template": v, "faces": faces, "parents": parents, "shapedirs": shapedirs,
                       "exprdirs": exprdirs, "posedirs": pd, "J_regressor": jr, "weights": w}, repr(str(path)))
    name = "flame2023" if "2023" in path.name.lower() else "flame2020" if "generic" in path.name.lower() else "flame"
    return HeadModel(
        name=name,
        v_template=torch.from_numpy(v), faces=torch.from_numpy(faces),
        shapedirs=torch.from_numpy(np.ascontiguousarray(shapedirs)),
        exprdirs=torch.from_numpy(np.ascontiguousarray(exprdirs)),
        expr_names=[f"exp_{i:03d}" for i in range(exprdirs.shape[-1])],
        posedirs=torch.from_numpy(np.ascontiguousarray(pd)), j_regressor=torch.from_numpy(jr),
        lbs_weights=torch.from_numpy(w), parents=torch.from_numpy(parents), licence=FLAME_LICENCE,
    )
