"""A small reader of TensorFlow Lite model files (flatbuffers), without TensorFlow.

Only what the face models need is read: the first subgraph's tensors (shape, type,
constant data), its operators (op name, inputs, outputs, the options of the ops listed
in ``_OPTION_FIELDS``, raw custom options) and its inputs and outputs. The field numbers
are those of TensorFlow Lite's ``schema.fbs``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

# schema.fbs: enum BuiltinOperator (only the ones the face models use, plus a few neighbours)
BUILTIN_OPS = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU",
    21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM",
    34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV", 43: "SQUEEZE", 45: "STRIDED_SLICE",
    54: "PRELU", 55: "MAXIMUM", 57: "MINIMUM", 67: "TRANSPOSE_CONV", 98: "LEAKY_RELU", 117: "HARD_SWISH",
    124: "DENSIFY",
}
# schema.fbs: enum TensorType -> numpy dtype
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
                7: np.int16, 9: np.int8}

# builtin options tables: field number -> (name, struct format, default)
_CONV = {0: ("padding", "b", 0), 1: ("stride_w", "i", 0), 2: ("stride_h", "i", 0),
         3: ("activation", "b", 0), 4: ("dilation_w", "i", 1), 5: ("dilation_h", "i", 1)}
_DEPTHWISE = {0: ("padding", "b", 0), 1: ("stride_w", "i", 0), 2: ("stride_h", "i", 0),
              3: ("depth_multiplier", "i", 0), 4: ("activation", "b", 0), 5: ("dilation_w", "i", 1),
              6: ("dilation_h", "i", 1)}
_POOL = {0: ("padding", "b", 0), 1: ("stride_w", "i", 0), 2: ("stride_h", "i", 0),
         3: ("filter_w", "i", 0), 4: ("filter_h", "i", 0), 5: ("activation", "b", 0)}
_ACT_ONLY = {0: ("activation", "b", 0)}
_OPTION_FIELDS = {
    "CONV_2D": _CONV, "DEPTHWISE_CONV_2D": _DEPTHWISE, "AVERAGE_POOL_2D": _POOL, "MAX_POOL_2D": _POOL,
    "ADD": _ACT_ONLY, "MUL": _ACT_ONLY, "SUB": _ACT_ONLY, "DIV": _ACT_ONLY,
    "CONCATENATION": {0: ("axis", "i", 0), 1: ("activation", "b", 0)},
    "FULLY_CONNECTED": {0: ("activation", "b", 0), 2: ("keep_num_dims", "?", False)},
    "RESIZE_BILINEAR": {2: ("align_corners", "?", False), 3: ("half_pixel_centers", "?", False)},
    "MEAN": {0: ("keep_dims", "?", False)},
    "DEPTH_TO_SPACE": {0: ("block_size", "i", 0)},
    "TRANSPOSE_CONV": {0: ("padding", "b", 0), 1: ("stride_w", "i", 0), 2: ("stride_h", "i", 0)},
}


class TfliteFormatError(ValueError):
    """The bytes are not a TensorFlow Lite model this reader understands."""


class _Buf:
    """Flatbuffer access over bytes: tables, vectors, strings, scalars."""

    def __init__(self, data: bytes):
        self.data = data

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def table_field(self, table: int, index: int) -> Optional[int]:
        """Absolute position of a table's field, or None when absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vsize = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        off = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default=0):
        pos = self.table_field(table, index)
        return default if pos is None else struct.unpack_from("<" + fmt, self.data, pos)[0]

    def ref(self, table: int, index: int) -> Optional[int]:
        """The table/vector/string a field points to (absolute position), or None."""
        pos = self.table_field(table, index)
        return None if pos is None else pos + self.u32(pos)

    def vector(self, table: int, index: int):
        """(start, length) of a vector field, or (0, 0) when absent."""
        pos = self.ref(table, index)
        return (0, 0) if pos is None else (pos + 4, self.u32(pos))

    def tables(self, table: int, index: int) -> List[int]:
        start, n = self.vector(table, index)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(n)]

    def ints(self, table: int, index: int, fmt: str = "i") -> List[int]:
        start, n = self.vector(table, index)
        return list(struct.unpack_from(f"<{n}{fmt}", self.data, start)) if n else []

    def raw(self, table: int, index: int) -> bytes:
        start, n = self.vector(table, index)
        return self.data[start:start + n]

    def string(self, table: int, index: int) -> str:
        return self.raw(table, index).decode("utf-8", "replace")


@dataclass
class Tensor:
    name: str
    shape: List[int]
    dtype: type
    data: Optional[np.ndarray]  # constant data (shape ``shape``), or None for activations


@dataclass
class Operator:
    op: str                      # builtin name, or the custom op's name
    inputs: List[int]            # tensor indices (-1: optional input left out)
    outputs: List[int]
    options: Dict[str, object] = field(default_factory=dict)
    custom_options: bytes = b""
    version: int = 1


@dataclass
class TfliteModel:
    tensors: List[Tensor]
    operators: List[Operator]
    inputs: List[int]
    outputs: List[int]


def read_tflite(data: bytes) -> TfliteModel:
    """Parse a .tflite file's bytes (the first subgraph).

    Raises:
        TfliteFormatError: not a TFLite flatbuffer (identifier ``TFL3``) or malformed.
    """
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TfliteFormatError("not a TensorFlow Lite model (no TFL3 identifier)")
    try:
        return _read(_Buf(data))
    except (struct.error, IndexError, ValueError) as exc:
        raise TfliteFormatError(f"malformed TensorFlow Lite model ({exc})") from exc


def _read(b: _Buf) -> TfliteModel:
    model = b.u32(0)
    codes, versions = [], []
    for oc in b.tables(model, 1):  # operator_codes
        code = max(b.scalar(oc, 0, "b", 0), b.scalar(oc, 3, "i", 0))  # deprecated_builtin_code, builtin_code
        codes.append(b.string(oc, 1) if code == 32 else BUILTIN_OPS.get(code, f"BUILTIN_{code}"))
        versions.append(b.scalar(oc, 2, "i", 1))
    buffers = [b.raw(buf, 0) for buf in b.tables(model, 4)]
    sub = b.tables(model, 2)[0]
    tensors = []
    for t in b.tables(sub, 0):
        shape = b.ints(t, 0)
        ttype = b.scalar(t, 1, "b", 0)
        dtype = TENSOR_TYPES.get(ttype)
        raw = buffers[b.scalar(t, 2, "I", 0)]
        arr = None
        if raw:
            if dtype is None:
                raise ValueError(f"tensor type {ttype} is not supported")
            arr = np.frombuffer(raw, dtype=dtype)
            sparsity = b.ref(t, 6)
            arr = _densify(b, sparsity, arr, shape) if sparsity is not None else arr.reshape(shape).copy()
        tensors.append(Tensor(b.string(t, 3), shape, dtype, arr))
    ops = []
    for o in b.tables(sub, 3):
        code_index = b.scalar(o, 0, "I", 0)
        name = codes[code_index]
        options = {}
        spec = _OPTION_FIELDS.get(name)
        opt_table = b.ref(o, 4)
        if name == "RESHAPE" and opt_table is not None:
            options["new_shape"] = b.ints(opt_table, 0)
        elif spec and opt_table is not None:
            options = {key: b.scalar(opt_table, idx, fmt, default) for idx, (key, fmt, default) in spec.items()}
        elif spec:
            options = {key: default for key, _, default in spec.values()}
        ops.append(Operator(name, b.ints(o, 1), b.ints(o, 2), options, b.raw(o, 5), versions[code_index]))
    return TfliteModel(tensors, ops, b.ints(sub, 1), b.ints(sub, 2))


def _densify(b: _Buf, sp: int, values: np.ndarray, shape: List[int]) -> np.ndarray:
    """A sparse constant (schema.fbs SparsityParameters, CSR levels, optional blocks) -> dense [shape]."""
    order = b.ints(sp, 0)
    block_map = b.ints(sp, 1)
    levels = []
    for dm in b.tables(sp, 2):
        fmt, dense_size = b.scalar(dm, 0, "b", 0), b.scalar(dm, 1, "i", 0)
        if fmt == 0:
            levels.append((0, dense_size, None, None))
            continue
        vecs = []
        for type_idx, idx in ((2, 3), (4, 5)):
            vtype = b.scalar(dm, type_idx, "B", 0)
            tab = b.ref(dm, idx)
            vecs.append(np.array(b.ints(tab, 0, {1: "i", 2: "H", 3: "B"}[vtype]), dtype=np.int64))
        levels.append((1, dense_size, vecs[0], vecs[1]))
    n = len(shape)
    block_size = {block_map[j]: levels[order.index(n + j)][1] for j in range(len(block_map))}
    out = np.zeros(shape, dtype=values.dtype)
    coords = [0] * len(order)
    counter = [0]

    def walk(level: int, pos: int) -> None:
        if level == len(order):
            orig = [coords[d] * block_size.get(d, 1) for d in range(n)]
            for j, d in enumerate(block_map):
                orig[d] += coords[n + j]
            out[tuple(orig)] = values[counter[0]]
            counter[0] += 1
            return
        fmt, dense_size, segments, indices = levels[level]
        if fmt == 0:
            for i in range(dense_size):
                coords[order[level]] = i
                walk(level + 1, pos * dense_size + i)
        else:
            for k in range(segments[pos], segments[pos + 1]):
                coords[order[level]] = int(indices[k])
                walk(level + 1, k)

    walk(0, 0)
    if counter[0] != len(values):
        raise ValueError(f"sparse tensor has {len(values)} values but its index lists name {counter[0]}")
    return out
