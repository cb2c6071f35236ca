"""A TensorFlow Lite graph run as a torch module (batched, CPU or CUDA).

``graph_spec(model)`` turns a parsed .tflite model (``avatar_core.face.tflite``) into a
JSON-able op list plus its constant tensors: constant-only ops (DEQUANTIZE of fp16
weights, DENSIFY of sparse ones) are folded. ``TfliteGraph(spec, tensors)`` runs it.

Layout: TFLite is NHWC; here every 4-D activation is NCHW. Layout-sensitive ops
(RESHAPE, CONCATENATION, PAD, MEAN, DEPTH_TO_SPACE) translate their axes; 4-D outputs are
returned in TFLite's NHWC order. Batch: the file's batch of 1 becomes any B. TF 'SAME'
padding is reproduced exactly (the extra pixel of an odd total goes after). On the CPU,
the graph runs traced and frozen once a batch of ``JIT_MIN_BATCH`` or more has built it
(``HEADSPLAT_FACE_JIT=0`` keeps it eager), split over ``cpu_workers()`` single-threaded workers.
Memory-bound steps are merged when the graph is built (``TfliteGraph._fuse``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from avatar_core.face.tflite import TfliteModel

SUPPORTED = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "Convolution2DTransposeBias", "TRANSPOSE_CONV", "ADD", "MUL", "SUB",
    "PRELU", "RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "TANH", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN",
    "PAD", "RESHAPE", "CONCATENATION", "RESIZE_BILINEAR", "DEPTH_TO_SPACE", "STRIDED_SLICE",
    # mediapipe's custom ops of the attention face mesh (version 2 of each)
    "Landmarks2TransformMatrix", "TransformTensorBilinear", "TransformLandmarks",
}
_FLEXBUFFER_OPS = {"Landmarks2TransformMatrix", "TransformTensorBilinear", "TransformLandmarks"}
_FOLDABLE = {"DEQUANTIZE", "DENSIFY"}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
log = logging.getLogger(__name__)
JIT_MIN_BATCH = 4  # CPU batches from this size run the traced graph (tracing costs ~1 s once per model)
WORKER_MIN_BATCH = 4  # a CPU batch is split over workers in parts of at least this many frames
SMALL_CONV_PIXELS = 256  # CPU 1 x 1 convolutions over at most this many pixels run as a matrix product


class UnsupportedGraph(ValueError):
    """The model uses an op this module does not implement."""


def graph_spec(model: TfliteModel) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(spec, constants): the op list (JSON-able) and the constants it reads, named ``t<index>``."""
    const = {i: t.data for i, t in enumerate(model.tensors) if t.data is not None}
    ops = []
    for op in model.operators:
        if op.op in _FOLDABLE:
            src = const.get(op.inputs[0])
            if src is None:
                raise UnsupportedGraph(f"{op.op} of a non-constant tensor")
            const[op.outputs[0]] = src.astype(np.float32)
            continue
        if op.op not in SUPPORTED:
            raise UnsupportedGraph(f"op {op.op} is not supported")
        options = dict(op.options)
        if op.op == "Convolution2DTransposeBias":
            # mediapipe's custom op: raw TfLiteTransposeConvParams {padding, stride_w, stride_h} (int32)
            pad, sw, sh = np.frombuffer(op.custom_options[:12], dtype="<i4")
            options = {"padding": 0 if pad == 1 else 1, "stride_w": int(sw), "stride_h": int(sh)}
        elif op.op in _FLEXBUFFER_OPS:
            if op.version != 2:
                raise UnsupportedGraph(f"{op.op} version {op.version} is not supported")
            from flatbuffers import flexbuffers  # custom-op options are a flexbuffer map

            options = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                       for k, v in (flexbuffers.Loads(op.custom_options) if op.custom_options else {}).items()}
        ops.append({"op": op.op, "inputs": list(op.inputs), "outputs": list(op.outputs), "options": options})
    used = {i for o in ops for i in o["inputs"] if i in const}
    tensors = {f"t{i}": np.ascontiguousarray(const[i].astype(np.float32) if const[i].dtype == np.float16
                                             else const[i]) for i in sorted(used)}
    spec = {
        "ops": ops,
        "inputs": list(model.inputs), "outputs": list(model.outputs),
        "names": {str(i): model.tensors[i].name for i in list(model.inputs) + list(model.outputs)},
        "ranks": {str(i): len(t.shape) for i, t in enumerate(model.tensors)},
        "shapes": {str(i): model.tensors[i].shape for o in ops for i in o["outputs"] + o["inputs"]},
    }
    return spec, tensors


def _json_key(value) -> str:
    """A hashable, order-independent key of a JSON-able value."""
    return json.dumps(value, sort_keys=True, default=str)


def _same_pads(size: int, k: int, s: int, d: int = 1) -> Tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


_scripted: List = []
_script_lock = threading.Lock()   # not _threads_lock: workers script while the caller holds that one


def _pointwise_ops():
    """(conv, conv + add) over oneDNN-reordered weights as TorchScript functions: the tracer cannot
    record these ops' empty ``Scalar?[]`` arguments itself, a call to a scripted function it can."""
    if not _scripted:
        with _script_lock:
            if not _scripted:
                def conv(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], padding: List[int],
                         stride: List[int], dilation: List[int], groups: int) -> torch.Tensor:
                    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups,
                                                                   "none", [], "")

                def conv_add(x: torch.Tensor, other: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                             padding: List[int], stride: List[int], dilation: List[int], groups: int) -> torch.Tensor:
                    return torch.ops.mkldnn._convolution_pointwise(x, other, w, b, padding, stride, dilation, groups,
                                                                   "add", None, None, [], None)

                _scripted.extend([torch.jit.script(conv), torch.jit.script(conv_add)])
    return _scripted


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == 0:
        return x
    if code == 1:
        return torch.relu(x)
    if code == 2:
        return x.clamp(-1.0, 1.0)
    if code == 3:
        return x.clamp(0.0, 6.0)
    if code == 4:
        return torch.tanh(x)
    raise UnsupportedGraph(f"fused activation {code} is not supported")


_threads_lock = threading.RLock()
_pools: Dict[int, "concurrent.futures.ThreadPoolExecutor"] = {}
_own_samples: List[Tuple[float, float]] = []  # (monotonic s, process CPU s): see _own_load
_malloc_done = False


@contextlib.contextmanager
def cpu_threads():
    """Run with ``$HEADSPLAT_FACE_THREADS`` torch CPU threads (default 1), then restore; yields
    that count (0: left as it was).

    These small models gain little from several threads, and on a busy machine (more
    runnable threads than cores) the thread pool's barriers make a 2-thread run of them
    10-30x slower than a 1-thread one (measured on 2 shared cores). Batches use the cores
    through ``cpu_workers`` instead.
    """
    want = int(os.environ.get("HEADSPLAT_FACE_THREADS", "1") or 0)
    if want <= 0:
        yield 0
        return
    with _threads_lock:
        before = torch.get_num_threads()
        if before != want:
            torch.set_num_threads(want)
        try:
            yield want
        finally:
            if before != want:
                torch.set_num_threads(before)


def _own_load() -> float:
    """This process's share of the 1-minute load average: the cores it used over about the last
    minute (its CPU time over wall time, all threads), or 1 before it has a few seconds of history."""
    import time

    now, cpu = time.monotonic(), time.process_time()
    with _threads_lock:
        while len(_own_samples) > 1 and now - _own_samples[1][0] >= 60.0:
            _own_samples.pop(0)                       # keep one sample a minute or more back
        if not _own_samples or now - _own_samples[-1][0] >= 1.0:
            _own_samples.append((now, cpu))
        t0, c0 = _own_samples[0]
    return (cpu - c0) / (now - t0) if now - t0 >= 5.0 else 1.0


def cpu_workers() -> int:
    """How many single-threaded workers a CPU batch is split over: ``$HEADSPLAT_FACE_WORKERS``,
    else the CPUs this process may use that other work does not keep busy (the 1-minute load
    average less this process's own use over that minute, ``_own_load``), at most 4, at least 1.

    On 2 cores with other work running, a split batch only adds each worker's per-call cost
    (~4 ms a call, ~15% slower); on idle cores it runs ~1.7x faster. (Counting only one of this
    process's threads as its own, a minute of its own work read as a busy machine: tracking ran
    on one worker right after ``bench face``'s parity pass, at 0.9x mediapipe's speed.)
    """
    env = os.environ.get("HEADSPLAT_FACE_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        others = max(0.0, os.getloadavg()[0] - _own_load())
    except OSError:
        others = 0.0
    return max(1, min(cpus, 4, int(cpus - others + 0.25)))


def _pool(n: int):
    """A pool of ``n`` worker threads, each with one torch (OpenMP / oneDNN) thread of its own."""
    import concurrent.futures

    pool = _pools.get(n)
    if pool is None:
        with _threads_lock:
            pool = _pools.get(n)
            if pool is None:
                # runs in each new worker, inside cpu_threads() (the count is 1 already): it sets
                # that thread's own OpenMP count, which oneDNN reads
                pool = concurrent.futures.ThreadPoolExecutor(n, "headsplat-face", initializer=torch.set_num_threads,
                                                             initargs=(1,))
                _pools[n] = pool
    return pool


def _keep_freed_memory() -> None:
    """Once: let glibc keep up to 128 MB of freed heap instead of returning it to the system.

    A batch's activations are tens of MB that are freed and allocated again on every call;
    glibc's default trims the heap top after each call, so each call page-faults its
    activations back in (~1,500 faults a frame, a quarter of the run time on 2 cores).
    Tensors under 32 MB then come from the heap (glibc's own adaptive thresholds reach the
    same after a 32 MB tensor is freed). No-op off glibc or with ``HEADSPLAT_FACE_MALLOC=0``.
    """
    global _malloc_done
    if _malloc_done:
        return
    _malloc_done = True
    if os.environ.get("HEADSPLAT_FACE_MALLOC", "1") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(M_TRIM_THRESHOLD, 128 << 20) == 1
    log.debug("glibc heap thresholds for the face models: %s", "set" if ok else "unchanged")


class _AsTuple(torch.nn.Module):
    """The graph's outputs as a tuple (for tracing)."""

    def __init__(self, graph: "TfliteGraph"):
        super().__init__()
        self.graph = graph

    def forward(self, x):
        return tuple(self.graph._eager(x).values())


class TfliteGraph(torch.nn.Module):
    """A converted TFLite graph.

    Args:
        spec: from ``graph_spec`` (or read back from the weights file).
        tensors: name -> array, the constants ``spec`` reads.
        fuse: merge steps and stack parallel branches (``_fuse``, ``_stack_branches``); False runs
            the op list as it is (the reference the tests compare with).

    ``forward(x)`` takes [B, C, H, W] float (NCHW) for the model's single 4-D input and
    returns {output name: tensor}, shaped like the TFLite outputs with batch B (NHWC).
    """

    def __init__(self, spec: dict, tensors: Dict[str, np.ndarray], fuse: bool = True):
        super().__init__()
        self.spec = spec
        self._ranks = {int(k): v for k, v in spec["ranks"].items()}
        self._shapes = {int(k): v for k, v in spec["shapes"].items()}
        self._output_names = [spec["names"][str(i)] for i in spec["outputs"]]
        self._frozen = None
        self._tracing = False
        self._build_lock = threading.Lock()
        self._const: Dict[int, str] = {}
        self._cache = None
        for op in spec["ops"]:
            kind, ins = op["op"], op["inputs"]
            for pos, i in enumerate(ins):
                key = f"t{i}"
                if i < 0 or key not in tensors or i in self._const:
                    continue
                arr = torch.from_numpy(np.array(tensors[key]))
                if kind in ("CONV_2D",) and pos == 1:
                    arr = arr.permute(0, 3, 1, 2)                      # [O, kh, kw, I] -> [O, I, kh, kw]
                elif kind == "DEPTHWISE_CONV_2D" and pos == 1:
                    arr = arr.permute(3, 0, 1, 2)                      # [1, kh, kw, O] -> [O, 1, kh, kw]
                elif kind == "Convolution2DTransposeBias" and pos == 1:
                    arr = arr.permute(3, 0, 1, 2)                      # [O, kh, kw, I] -> [I, O, kh, kw]
                elif kind == "TRANSPOSE_CONV" and pos == 1:
                    arr = arr.permute(3, 0, 1, 2)
                elif kind == "PRELU" and pos == 1:
                    arr = arr.reshape(-1, 1, 1) if self._ranks[ins[0]] == 4 else arr
                elif kind in ("ADD", "MUL", "SUB") and self._ranks[ins[1 - pos]] == 4:
                    # broadcast against NCHW: [1, H, W, C] -> [1, C, H, W]; [..., C] -> [C, 1, 1]
                    arr = arr.permute(0, 3, 1, 2) if arr.dim() == 4 else arr.reshape(-1, 1, 1)
                arr = arr.contiguous()
                if arr.is_floating_point():
                    arr = arr.float()
                if arr.dim() == 4 and kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                    arr = arr.contiguous(memory_format=torch.channels_last)   # oneDNN / cuDNN's fast path
                name = f"c{i}"
                self.register_buffer(name, arr, persistent=False)
                self._const[i] = name
        self._packed: Dict[tuple, torch.Tensor] = {}   # CPU: transposed 1 x 1 conv weights, by tensor id
        self._plan = self._stack_branches(self._fuse(spec["ops"])) if fuse else list(spec["ops"])
        self._steps = [getattr(self, "_" + op["op"].lower()) for op in self._plan]

    def _fuse(self, ops: List[dict]) -> List[dict]:
        """The op list with memory-bound steps merged (same arithmetic, fewer passes over memory):

        - ADD into a fresh convolution output used only by it: in place (``inplace``: its position),
          or done by the convolution itself (``_fuse_conv_add``);
        - MAX_POOL_2D (2 x 2, stride 2) -> PAD (channels only, zeros after) -> ADD: the pooled
          values added in place to the first channels of the other operand (``POOL_PAD_ADD``).
        """
        uses: Dict[int, int] = {}
        for op in ops:
            for i in op["inputs"]:
                uses[i] = uses.get(i, 0) + 1
        for i in self.spec["outputs"]:
            uses[i] = uses.get(i, 0) + 1
        producer = {op["outputs"][0]: op for op in ops}
        fresh = {"CONV_2D", "DEPTHWISE_CONV_2D"}

        def owned(i: int, shape) -> bool:  # a conv output nothing else reads, of the result's shape
            p = producer.get(i)
            return (p is not None and p["op"] in fresh and uses.get(i) == 1
                    and list(self._shapes.get(i, [])) == list(shape))

        out: List[dict] = []
        skip = set()
        for k, op in enumerate(ops):
            if id(op) in skip:
                continue
            if op["op"] == "ADD" and self._ranks[op["inputs"][0]] == 4 and self._ranks[op["inputs"][1]] == 4:
                shape = self._shapes[op["outputs"][0]]
                a, b = op["inputs"]
                pool = (self._pool_pad(producer.get(a), producer, uses)
                        or self._pool_pad(producer.get(b), producer, uses))
                if pool is not None:
                    other = b if pool[1]["outputs"][0] == a else a
                    if owned(other, shape) and k > ops.index(pool[1]):
                        skip.update((id(pool[0]), id(pool[1])))
                        out = [o for o in out if o is not pool[0] and o is not pool[1]]
                        out.append({"op": "POOL_PAD_ADD", "inputs": [pool[0]["inputs"][0], other],
                                    "outputs": op["outputs"], "options": dict(op["options"])})
                        continue
                for pos, i in enumerate((a, b)):
                    if owned(i, shape):
                        out.append(dict(op, options=dict(op["options"], inplace=pos)))
                        break
                else:
                    out.append(op)
                continue
            out.append(op)
        return self._fuse_conv_add(out)

    def _fuse_conv_add(self, ops: List[dict]) -> List[dict]:
        """An in-place ADD into a CONV_2D's output (no activation of its own) whose other operand
        (an activation of the same shape) exists before the convolution: the convolution does the
        add (``add``: that operand)."""
        position = {op["outputs"][0]: k for k, op in enumerate(ops)}
        position.update({i: -1 for i in self.spec["inputs"]})
        out: List[dict] = []
        for op in ops:
            pos = op["options"].get("inplace") if op["op"] == "ADD" else None
            if pos is not None:
                target, other = op["inputs"][pos], op["inputs"][1 - pos]
                k = next((j for j in range(len(out) - 1, -1, -1) if out[j]["outputs"][0] == target), None)
                conv = out[k] if k is not None else None
                if (conv is not None and conv["op"] == "CONV_2D" and conv["options"]["activation"] == 0
                        and other in position and position[other] < position[target]
                        and list(self._shapes.get(other, [])) == list(self._shapes.get(target, [None]))):
                    options = dict(conv["options"], add=other, add_activation=op["options"].get("activation", 0))
                    out[k] = dict(conv, outputs=list(op["outputs"]), options=options)
                    continue
            out.append(op)
        return out

    _STACKABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "ADD", "POOL_PAD_ADD", "MAX_POOL_2D"}

    def _stack_branches(self, ops: List[dict]) -> List[dict]:
        """Parallel branches as one: a run of k consecutive ops of one kind and shape on k
        independent tensors (the attention mesh's lips / eye / iris heads: 3, then 5 chains of
        the same layers) runs once on the k tensors stacked along channels; convolutions get
        their k weights concatenated (grouped, ``groups``: k). The same sums, ~100 fewer calls.

        A stacked op reads stacked ids (``stacks``: id -> member ids, concatenated when not
        already one op's stacked output) and writes its members (``members``) as channel slices.
        """
        out: List[dict] = []
        stacked_of: Dict[tuple, int] = {}          # member ids -> the stacked tensor holding them
        next_id = [max(self._ranks) + 1 if self._ranks else 1]

        def new_id() -> int:
            next_id[0] += 1
            return next_id[0]

        def key(op):
            opt = {k: v for k, v in op["options"].items() if k != "add"}
            shapes = tuple(tuple(self._shapes.get(i, ())) for i in op["inputs"])
            out_shape = tuple(self._shapes.get(op["outputs"][0], ()))
            return op["op"], _json_key(opt), shapes, out_shape, "add" in op["options"]

        k = 0
        while k < len(ops):
            op = ops[k]
            run = [op]
            if op["op"] in self._STACKABLE and len(self._shapes.get(op["outputs"][0], ())) == 4:
                while k + len(run) < len(ops) and key(ops[k + len(run)]) == key(op):
                    run.append(ops[k + len(run)])
                outs = {o["outputs"][0] for o in run}
                consts_ok = op["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU")   # weights concatenate on dim 0
                if (any(i in outs for o in run for i in o["inputs"] + [o["options"].get("add")])
                        or (not consts_ok and any(i in self._const for i in op["inputs"]))):
                    run = [op]                          # not independent, or a constant operand: as is
            if len(run) < 2:
                out.append(op)
                k += 1
                continue
            n = len(run)
            stacks: Dict[int, List[int]] = {}

            def stacked(members: List[int]) -> int:
                sid = stacked_of.get(tuple(members))
                if sid is None:
                    sid = stacked_of[tuple(members)] = new_id()
                    stacks[sid] = members
                return sid

            inputs = []
            for pos in range(len(op["inputs"])):
                ids = [o["inputs"][pos] for o in run]
                if ids[0] in self._const:               # weights, biases, slopes: concatenated constants
                    cid = new_id()
                    name = f"s{cid}"
                    self.register_buffer(name, torch.cat([getattr(self, self._const[i]) for i in ids]).contiguous(
                        memory_format=torch.channels_last if getattr(self, self._const[ids[0]]).dim() == 4
                        else torch.contiguous_format), persistent=False)
                    self._const[cid] = name
                    inputs.append(cid)
                else:
                    inputs.append(stacked(ids))
            options = dict(op["options"], groups=n, members=[o["outputs"][0] for o in run])
            if "add" in op["options"]:
                options["add"] = stacked([o["options"]["add"] for o in run])
            options["stacks"] = stacks
            sout = new_id()
            stacked_of[tuple(options["members"])] = sout
            out.append(dict(op, inputs=inputs, outputs=[sout], options=options))
            k += n
        return out

    def _pool_pad(self, pad, producer, uses):
        """(MAX_POOL_2D, PAD) if ``pad`` pads a 2 x 2 / 2 max pool's output with zero channels after."""
        if pad is None or pad["op"] != "PAD" or uses.get(pad["outputs"][0]) != 1 or len(pad["inputs"]) != 2:
            return None
        pool = producer.get(pad["inputs"][0])
        if pool is None or pool["op"] != "MAX_POOL_2D" or uses.get(pool["outputs"][0]) != 1:
            return None
        o = pool["options"]
        pooling = (o["filter_h"], o["filter_w"], o["stride_h"], o["stride_w"], o["padding"], o["activation"])
        if pooling != (2, 2, 2, 2, 1, 0):
            return None
        name = self._const.get(pad["inputs"][1])
        if name is None:
            return None
        p = getattr(self, name).cpu().numpy()
        if p.shape != (4, 2) or p[:3].any() or p[3, 0] != 0:
            return None
        return pool, pad

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        self._packed = {}
        for name in [n for n in self._buffers if n.startswith("p")]:   # CPU oneDNN weights: built again
            del self._buffers[name]
        self._frozen = None
        return super()._apply(fn, *args, **kwargs)

    def _get(self, env: Dict[int, torch.Tensor], i: int) -> torch.Tensor:
        if i in env:
            return env[i]
        if self._cache is None:  # constants by tensor index (Module.__getattr__ is slow per op)
            self._cache = {k: getattr(self, name) for k, name in self._const.items()}
        return self._cache[i]

    def _host(self, env, i: int) -> np.ndarray:
        """A small constant (paddings, axes) as numpy."""
        return self._get(env, i).detach().cpu().numpy()

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # x: [B, C, H, W]
        if x.device.type != "cpu" or self._tracing:
            return self._eager(x)
        with cpu_threads() as threads:
            _keep_freed_memory()
            workers = cpu_workers() if threads == 1 else 1
            n = min(workers, x.shape[0] // WORKER_MIN_BATCH)
            if n <= 1:
                return self._run_cpu(x)
            # batch split over single-threaded workers: no thread-pool barriers between them
            grad = torch.is_grad_enabled()

            def run(chunk):
                with torch.set_grad_enabled(grad):     # grad mode is per thread
                    return self._run_cpu(chunk)

            parts = list(_pool(n).map(run, x.tensor_split(n)))
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _run_cpu(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        jit = os.environ.get("HEADSPLAT_FACE_JIT", "1") != "0"
        # built on the first batch of JIT_MIN_BATCH or more; then used for any batch
        frozen = self._frozen_for_cpu(x) if jit and (x.shape[0] >= JIT_MIN_BATCH or self._frozen) else None
        if frozen is not None:
            return dict(zip(self._output_names, frozen(x)))
        return self._eager(x)

    def _frozen_for_cpu(self, x: torch.Tensor):
        """The graph traced and frozen (weights as constants, one TorchScript graph: ~1.3x the eager
        loop; ``optimize_for_inference``'s oneDNN layouts were slower here), built once on first
        use; None (eager) if that fails."""
        if self._frozen is None:
            with self._build_lock:
                if self._frozen is None:
                    self._frozen = False
                    try:
                        self._tracing = True
                        with warnings.catch_warnings(), torch.no_grad():
                            warnings.simplefilter("ignore")
                            self._tracing = False
                            self._eager(x[:2].clone())             # builds the CPU weight buffers
                            self._tracing = True
                            traced = torch.jit.trace(_AsTuple(self), x[:2].clone(), check_trace=False)
                            self._frozen = torch.jit.freeze(traced.eval())
                    except Exception:  # noqa: BLE001 - any failure: the eager path
                        log.debug("tracing the face model failed; running it eagerly", exc_info=True)
                    finally:
                        self._tracing = False
        return self._frozen or None

    def _eager(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._outputs(self._run_ops(self._input_env(x), 0, len(self._plan), x.shape[0]))

    def _input_env(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        return {self.spec["inputs"][0]: x.contiguous(memory_format=torch.channels_last)}

    def _run_ops(self, env: Dict[int, torch.Tensor], start: int, end: int, B: int) -> Dict[int, torch.Tensor]:
        for op, step in zip(self._plan[start:end], self._steps[start:end]):
            ins, opt = op["inputs"], op["options"]
            for sid, members in opt.get("stacks", {}).items():    # branches stacked along channels
                if sid not in env:
                    env[sid] = torch.cat([env[m] for m in members], 1)
            y = env[op["outputs"][0]] = step(env, self._get(env, ins[0]), ins, opt, B, op["outputs"][0])
            members = opt.get("members")
            if members:
                c = y.shape[1] // len(members)
                for j, m in enumerate(members):
                    env[m] = y[:, j * c:(j + 1) * c]
        return env

    def _outputs(self, env: Dict[int, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {}
        for i in self.spec["outputs"]:
            t = env[i]
            if t.dim() == 4:
                t = t.permute(0, 2, 3, 1)
            out[self.spec["names"][str(i)]] = t
        return out

    # -- ops: each (env, first input, input ids, options, batch, output id) -> tensor
    def _conv_2d(self, env, a, ins, opt, B, out):
        w = self._get(env, ins[1])
        bias = self._get(env, ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        s, d = (opt["stride_h"], opt["stride_w"]), (opt["dilation_h"], opt["dilation_w"])
        a, pad = self._pad_same_conv(a, w.shape[2:], s, d, opt["padding"])
        g = opt.get("groups", 1)                         # stacked branches (see _stack_branches)
        if "add" in opt:                                 # CONV_2D then ADD (see _fuse)
            y = self._conv(ins[1], a, w, bias, s, pad, d, g, self._get(env, opt["add"]))
            return _act(y, opt["add_activation"])
        return _act(self._conv(ins[1], a, w, bias, s, pad, d, g), opt["activation"])

    def _conv(self, wid: int, a, w, bias, stride, padding, dilation, groups: int, add=None) -> torch.Tensor:
        """conv2d (+ ``add``, a tensor of the output's shape). On the CPU: oneDNN with its weights
        reordered once, the add fused into it; small 1 x 1 convolutions as one matrix product
        (oneDNN's ~35 us a call is most of their time). The same sums as ``F.conv2d``."""
        stride, dilation = tuple(stride), tuple(dilation)
        padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        if a.device.type != "cpu" or a.dtype != torch.float32:
            y = F.conv2d(a, w, bias, stride, padding, dilation, groups)
            return y if add is None else y.add_(add)
        cl = torch.channels_last
        a = a.contiguous(memory_format=cl)
        B, C, H, W = a.shape
        O = w.shape[0]
        if (groups == 1 and tuple(w.shape[2:]) == (1, 1) and stride == (1, 1) and padding == (0, 0)
                and dilation == (1, 1) and H * W <= SMALL_CONV_PIXELS):
            key = ("mm", wid)
            wt = self._packed.get(key)
            if wt is None:
                wt = self._packed[key] = w.reshape(O, C).t().contiguous()
            x2 = a.permute(0, 2, 3, 1).reshape(-1, C)
            y2 = torch.mm(x2, wt) if bias is None else torch.addmm(bias, x2, wt)
            y = y2.view(B, H, W, O).permute(0, 3, 1, 2)                       # channels_last
            return y if add is None else y.add_(add)
        name = f"p{wid}"
        packed = self._buffers.get(name)
        if packed is None:
            # a buffer, so that tracing reads it as module state (an opaque oneDNN tensor cannot be
            # a trace constant); built by the eager run before tracing
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w, list(padding), list(stride), list(dilation), groups, list(a.shape))
            self.register_buffer(name, packed, persistent=False)
        ops = _pointwise_ops() if self._tracing else None
        args = (packed, bias, list(padding), list(stride), list(dilation), groups)
        if add is not None and add.is_contiguous(memory_format=cl) and add.dtype == a.dtype:
            if ops is not None:
                return ops[1](a, add, *args)
            return torch.ops.mkldnn._convolution_pointwise.binary(a, add, *args, "add", None, None, [], None)
        y = ops[0](a, *args) if ops is not None else torch.ops.mkldnn._convolution_pointwise(a, *args, "none", [], "")
        return y if add is None else y.add_(add)

    def _depthwise_conv_2d(self, env, a, ins, opt, B, out):
        w = self._get(env, ins[1])
        bias = self._get(env, ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        s, d = (opt["stride_h"], opt["stride_w"]), (opt["dilation_h"], opt["dilation_w"])
        if opt["padding"] == 0 and s == (2, 2) and d == (1, 1):
            # TF's SAME at stride 2 pads one more pixel after than before: the stride-1 convolution
            # with the larger padding on both sides, every other pixel from the first (no padded copy)
            ph = _same_pads(a.shape[2], w.shape[2], 2)
            pw = _same_pads(a.shape[3], w.shape[3], 2)
            if ph[1] == ph[0] + 1 and pw[1] == pw[0] + 1:
                oh, ow = -(-a.shape[2] // 2), -(-a.shape[3] // 2)
                y = self._conv(ins[1], a, w, bias, (1, 1), (ph[1], pw[1]), (1, 1), a.shape[1])
                return _act(y[:, :, 1:2 * oh:2, 1:2 * ow:2], opt["activation"])
        a, pad = self._pad_same_conv(a, w.shape[2:], s, d, opt["padding"])
        return _act(self._conv(ins[1], a, w, bias, s, pad, d, a.shape[1]), opt["activation"])

    def _convolution2dtransposebias(self, env, a, ins, opt, B, out):
        w = self._get(env, ins[1])                    # [I, O, kh, kw]
        bias = self._get(env, ins[2])
        s = (opt["stride_h"], opt["stride_w"])
        y = F.conv_transpose2d(a, w, bias, s)
        if opt["padding"] == 0:                       # SAME: output = input * stride, crop the rest
            oh, ow = a.shape[2] * s[0], a.shape[3] * s[1]
            th, tw = y.shape[2] - oh, y.shape[3] - ow
            y = y[:, :, th // 2: th // 2 + oh, tw // 2: tw // 2 + ow]
        return y

    @staticmethod
    def _pad_same_conv(a, k, s, d, padding):
        """(input, conv padding): symmetric 'SAME' padding goes to the conv itself, the rest is explicit."""
        if padding != 0:
            return a, 0
        ph = _same_pads(a.shape[2], k[0], s[0], d[0])
        pw = _same_pads(a.shape[3], k[1], s[1], d[1])
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return a, (ph[0], pw[0])
        return F.pad(a, (pw[0], pw[1], ph[0], ph[1])), 0

    @staticmethod
    def _pad_same(a, k, s, d, padding, value: float = 0.0):
        if padding != 0:  # VALID
            return a
        ph = _same_pads(a.shape[2], k[0], s[0], d[0])
        pw = _same_pads(a.shape[3], k[1], s[1], d[1])
        if any(ph) or any(pw):
            a = F.pad(a, (pw[0], pw[1], ph[0], ph[1]), value=value)
        return a

    def _binary(self, env, a, ins, fn, opt):
        b = self._get(env, ins[1])
        return _act(fn(a, b), opt.get("activation", 0))

    def _add(self, env, a, ins, opt, B, out):
        pos = opt.get("inplace")
        if pos is not None:                              # into a fresh conv output only this op reads
            target = self._get(env, ins[pos])
            return _act(target.add_(self._get(env, ins[1 - pos])), opt.get("activation", 0))
        return self._binary(env, a, ins, torch.add, opt)

    def _pool_pad_add(self, env, a, ins, opt, B, out):
        """ADD(PAD(MAX_POOL_2D(a, 2 x 2 / 2), zero channels after), other), in place on ``other``."""
        target = self._get(env, ins[1])
        h, w = target.shape[2:]
        m = torch.maximum(a[:, :, 0:2 * h:2, 0:2 * w:2], a[:, :, 0:2 * h:2, 1:2 * w:2])
        torch.maximum(m, a[:, :, 1:2 * h:2, 0:2 * w:2], out=m)
        torch.maximum(m, a[:, :, 1:2 * h:2, 1:2 * w:2], out=m)
        g = opt.get("groups", 1)                         # stacked branches: g blocks of channels
        target.unflatten(1, (g, -1))[:, :, :a.shape[1] // g] += m.unflatten(1, (g, -1))
        return _act(target, opt.get("activation", 0))

    def _mul(self, env, a, ins, opt, B, out):
        return self._binary(env, a, ins, torch.mul, opt)

    def _sub(self, env, a, ins, opt, B, out):
        return self._binary(env, a, ins, torch.sub, opt)

    def _prelu(self, env, a, ins, opt, B, out):
        alpha = self._get(env, ins[1])
        if a.dim() == 4 and alpha.numel() == a.shape[1]:
            return F.prelu(a, alpha.reshape(-1))       # per-channel slopes: the fused kernel
        return torch.where(a >= 0, a, a * alpha)

    def _relu(self, env, a, ins, opt, B, out):
        return torch.relu(a)

    def _relu6(self, env, a, ins, opt, B, out):
        return a.clamp(0.0, 6.0)

    def _logistic(self, env, a, ins, opt, B, out):
        return torch.sigmoid(a)

    def _tanh(self, env, a, ins, opt, B, out):
        return torch.tanh(a)

    def _hard_swish(self, env, a, ins, opt, B, out):
        return a * (a + 3.0).clamp(0.0, 6.0) / 6.0

    def _max_pool_2d(self, env, a, ins, opt, B, out):
        k, s = (opt["filter_h"], opt["filter_w"]), (opt["stride_h"], opt["stride_w"])
        a = self._pad_same(a, k, s, (1, 1), opt["padding"], value=float("-inf"))
        return _act(F.max_pool2d(a, k, s), opt["activation"])

    def _average_pool_2d(self, env, a, ins, opt, B, out):
        k, s = (opt["filter_h"], opt["filter_w"]), (opt["stride_h"], opt["stride_w"])
        if opt["padding"] == 0:
            ones = torch.ones_like(a[:1, :1])
            num = F.avg_pool2d(self._pad_same(a, k, s, (1, 1), 0), k, s)
            den = F.avg_pool2d(self._pad_same(ones, k, s, (1, 1), 0), k, s)
            y = num / den                                # TF averages over the pixels inside only
        else:
            y = F.avg_pool2d(a, k, s)
        return _act(y, opt["activation"])

    def _mean(self, env, a, ins, opt, B, out):
        axes = [int(v) for v in np.atleast_1d(self._host(env, ins[1]))]
        if a.dim() == 4:
            axes = [_NHWC_TO_NCHW_AXIS[v % 4] for v in axes]
        return a.mean(dim=axes, keepdim=bool(opt["keep_dims"]))

    def _pad(self, env, a, ins, opt, B, out):
        p = self._host(env, ins[1]).astype(int)           # [rank, 2], TFLite axis order
        if a.dim() == 4:
            p = p[[0, 3, 1, 2]]
        flat: List[int] = []
        for before, after in p[::-1]:
            flat += [int(before), int(after)]
        return F.pad(a, flat)

    def _reshape(self, env, a, ins, opt, B, out):
        if a.dim() == 4:
            a = a.permute(0, 2, 3, 1)
        shape = list(self._shapes[out])
        y = a.reshape(B, *shape[1:])
        if y.dim() == 4:
            y = y.permute(0, 3, 1, 2)
        return y

    def _concatenation(self, env, a, ins, opt, B, out):
        parts = [self._get(env, i) for i in ins]
        axis = opt["axis"] % parts[0].dim()
        if parts[0].dim() == 4:
            axis = _NHWC_TO_NCHW_AXIS[axis]
        return _act(torch.cat(parts, dim=axis), opt["activation"])

    def _resize_bilinear(self, env, a, ins, opt, B, out):
        size = [int(v) for v in self._host(env, ins[1])]
        if opt["align_corners"]:
            return F.interpolate(a, size=size, mode="bilinear", align_corners=True)
        if opt["half_pixel_centers"]:
            return F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        raise UnsupportedGraph("RESIZE_BILINEAR without half-pixel centres or aligned corners")

    def _depth_to_space(self, env, a, ins, opt, B, out):
        # TF (DCR): out[b, h*r + i, w*r + j, c] = in[b, h, w, (i*r + j)*C + c]
        r = opt["block_size"]
        b, c, h, w = a.shape
        y = a.reshape(b, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(b, c // (r * r), h * r, w * r)

    def _strided_slice(self, env, a, ins, opt, B, out):
        begin, end, strides = (self._host(env, i).astype(int) for i in ins[1:4])
        if a.dim() == 4:
            a = a.permute(0, 2, 3, 1)
        idx = (slice(None),) + tuple(slice(int(b), int(e), int(s)) for b, e, s in zip(begin[1:], end[1:], strides[1:]))
        y = a[idx]
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y

    # -- mediapipe's custom ops (mediapipe/util/tflite/operations, version 2)
    def _landmarks2transformmatrix(self, env, a, ins, opt, B, out):
        """[B, N, 3] landmarks -> [B, 4, 4]: output pixel (u, v, 0, 1) -> input pixel, for a crop of
        the rotated bounding box of a landmark subset (rotation from two landmarks)."""
        left, right = a[:, opt["left_rotation_idx"], :2], a[:, opt["right_rotation_idx"], :2]
        rot = opt["target_rotation_radians"] - torch.atan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0])
        c, s = torch.cos(rot)[:, None], torch.sin(rot)[:, None]
        pts = a[:, list(opt["subset_idxs"]), :2]
        rx = c * pts[..., 0] - s * pts[..., 1]
        ry = s * pts[..., 0] + c * pts[..., 1]
        rx_min, rx_max = rx.min(1).values, rx.max(1).values
        ry_min, ry_max = ry.min(1).values, ry.max(1).values
        w, h = rx_max - rx_min, ry_max - ry_min
        mx, my = 0.5 * (rx_max + rx_min), 0.5 * (ry_max + ry_min)
        ci, si = c[:, 0], -s[:, 0]                   # cos, sin of -rot
        cx, cy = ci * mx - si * my, si * mx + ci * my
        ow, oh = opt["output_width"], opt["output_height"]
        sx, sy = opt["scale_x"] * w / ow, opt["scale_y"] * h / oh
        zero, one = torch.zeros_like(ci), torch.ones_like(ci)
        # one stack instead of nine indexed writes (each a few calls per batch)
        return torch.stack([ci * sx, -si * sy, zero, cx - ci * sx * ow / 2 + si * sy * oh / 2,
                            si * sx, ci * sy, zero, cy - si * sx * ow / 2 - ci * sy * oh / 2,
                            zero, zero, one, zero,
                            zero, zero, zero, one], -1).reshape(-1, 4, 4)

    def _transformtensorbilinear(self, env, a, ins, opt, B, out):
        """[B, C, H, W] features sampled at output pixel centres mapped through [B, 4, 4]; zero outside."""
        m = self._get(env, ins[1])
        oh, ow = self._shapes[out][1:3]
        H, W = a.shape[2:]
        tx = m[:, 0, 3] + 0.5 * (m[:, 0, 0] + m[:, 0, 1]) - 0.5
        ty = m[:, 1, 3] + 0.5 * (m[:, 1, 0] + m[:, 1, 1]) - 0.5
        v, u = torch.meshgrid(torch.arange(oh, dtype=a.dtype, device=a.device),
                              torch.arange(ow, dtype=a.dtype, device=a.device), indexing="ij")
        x = m[:, 0, 0, None, None] * u + m[:, 0, 1, None, None] * v + tx[:, None, None]   # [B, oh, ow]
        y = m[:, 1, 0, None, None] * u + m[:, 1, 1, None, None] * v + ty[:, None, None]
        inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
        grid = torch.stack([2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1], -1)
        res = F.grid_sample(a, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        # back to channels_last: the convolutions after it take a slow path on mixed layouts (~10x)
        return res.mul_(inside[:, None].to(res.dtype)).contiguous(memory_format=torch.channels_last)

    def _transformlandmarks(self, env, a, ins, opt, B, out):
        """[B, N, 2 or 3] landmarks through [B, 4, 4] (x, y only)."""
        m = self._get(env, ins[1])
        x = m[:, 0, 0, None] * a[..., 0] + m[:, 0, 1, None] * a[..., 1] + m[:, 0, 3, None]
        y = m[:, 1, 0, None] * a[..., 0] + m[:, 1, 1, None] * a[..., 1] + m[:, 1, 3, None]
        return torch.cat([torch.stack([x, y], -1), a[..., 2:]], -1)
