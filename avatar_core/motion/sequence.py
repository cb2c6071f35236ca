"""``MotionSequence``: the one in-memory motion type, and HeadSplat's own motion file.

A motion is T frames at ``fps`` of named expression coefficients [T, E], axis-angle joint
rotations [T, 5, 3] in FLAME's joint order (root, neck, jaw, eye_L, eye_R) and a root
translation [T, 3] (metres), with an optional identity vector [S] and the list of warnings
its reader collected. Every reader returns one; ``animate`` and the Blender bridge consume it.

Our motion file (``.npz``, written by ``save``) holds:

=====================  ===========================  ======================================
key                    array                        meaning
=====================  ===========================  ======================================
``headsplat_motion``   int, 0-d                     format version (``FORMAT_VERSION``)
``fps``                float, 0-d                   frames per second
``expr_names``         str [E]                      expression names
``expression``         float32 [T, E]               coefficients
``pose``               float32 [T, 5, 3]            axis-angle: root, neck, jaw, eye_L, eye_R
``translation``        float32 [T, 3]               metres
``shape``              float32 [S] (optional)       identity coefficients
``source``             str, 0-d                     where the motion came from
``warnings``           str [W]                      what its reader warned about
=====================  ===========================  ======================================

It loads without pickle (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from avatar_core.errors import MotionError
from avatar_core.rotation import slerp_axis_angle_np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FORMAT_KEY = "headsplat_motion"
JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
NUM_JOINTS = len(JOINT_NAMES)


@dataclasses.dataclass
class MotionSequence:
    """T frames of named expressions, joint rotations and translation.

    Attributes (T frames, E expressions, S identity components):
        fps: frames per second (> 0).
        expr_names: E names (ARKit names, or ``exp_000``... for FLAME).
        expression: [T, E] float32.
        pose: [T, 5, 3] float32 axis-angle (root, neck, jaw, eye_L, eye_R), radians.
        translation: [T, 3] float32, metres.
        shape: [S] float32 identity coefficients of the captured person, or None.
        source: where it came from (a path, "synthetic", ...); named in error messages.
        warnings: sentences about what the reader repaired or ignored.

    Construction validates shapes and values and raises ``MotionError`` naming ``source``.
    """

    fps: float
    expr_names: List[str]
    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    shape: Optional[np.ndarray] = None
    source: str = ""
    warnings: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        where = self.source or "the motion"
        self.expr_names = [str(n) for n in self.expr_names]
        self.expression = _array(where, "expression", self.expression)
        self.pose = _array(where, "pose", self.pose)
        self.translation = _array(where, "translation", self.translation)
        if self.expression.ndim != 2:
            raise MotionError(f"{where}: expression has shape {list(self.expression.shape)}; expected [T, E].")
        T, E = self.expression.shape
        if T == 0:
            raise MotionError(f"{where} has no frames; expected at least one.")
        if len(self.expr_names) != E:
            raise MotionError(f"{where}: {len(self.expr_names)} expression names for {E} expression "
                              f"columns; expected one name per column.")
        if len(set(self.expr_names)) != E:
            dup = sorted({n for n in self.expr_names if self.expr_names.count(n) > 1})
            raise MotionError(f"{where}: expression names repeat ({', '.join(dup[:3])}); expected unique names.")
        if self.pose.shape != (T, NUM_JOINTS, 3):
            raise MotionError(f"{where}: pose has shape {list(self.pose.shape)}; expected [{T}, 5, 3] "
                              f"(T frames x root, neck, jaw, eye_L, eye_R x axis-angle).")
        if self.translation.shape != (T, 3):
            raise MotionError(f"{where}: translation has shape {list(self.translation.shape)}; expected [{T}, 3].")
        if self.shape is not None:
            self.shape = _array(where, "shape", self.shape).reshape(-1)
        try:
            self.fps = float(self.fps)
        except (TypeError, ValueError):
            raise MotionError(f"{where}: fps is {self.fps!r}; expected a positive number.") from None
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise MotionError(f"{where}: fps is {self.fps}; expected a positive number.")
        self.warnings = [str(w) for w in self.warnings]

    # ------------------------------------------------------------------ basics
    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    @property
    def num_expr(self) -> int:
        return int(self.expression.shape[1])

    @property
    def duration(self) -> float:
        """Seconds from the first frame to one frame past the last."""
        return self.num_frames / self.fps

    def __len__(self) -> int:
        return self.num_frames

    def replace(self, **changes) -> "MotionSequence":
        return dataclasses.replace(self, **changes)

    def warn(self, message: str) -> None:
        """Record a warning (and log it)."""
        log.info("%s", message)
        self.warnings.append(message)

    # ------------------------------------------------------------------ frames
    def slice(self, start: int = 0, stop: Optional[int] = None, step: int = 1) -> "MotionSequence":
        """Frames ``start:stop:step`` (Python slice semantics); fps becomes fps / step."""
        if step < 1:
            raise MotionError(f"slice step must be a positive integer, got {step}.")
        s = slice(start, stop, step)
        out = self.replace(expression=self.expression[s].copy(), pose=self.pose[s].copy(),
                           translation=self.translation[s].copy(), fps=self.fps / step,
                           warnings=list(self.warnings))
        if out.num_frames == 0:
            raise MotionError(f"{self.source or 'the motion'}: frames {start}:{stop}:{step} select nothing "
                              f"from {self.num_frames} frames.")
        return out

    def resample(self, fps: float) -> "MotionSequence":
        """The same motion at ``fps``: expressions and translation interpolated linearly, joint
        rotations by spherical linear interpolation. Frame 0 stays at t = 0; the new frame
        count is round(duration * fps) (at least 1), sampled at t = i / fps, clamped to the
        last frame."""
        fps = float(fps)
        if not np.isfinite(fps) or fps <= 0:
            raise MotionError(f"resample fps must be a positive number, got {fps}.")
        if abs(fps - self.fps) < 1e-9:
            return self.replace(warnings=list(self.warnings))
        n = max(1, int(round(self.num_frames * fps / self.fps)))
        t = np.minimum(np.arange(n) / fps * self.fps, self.num_frames - 1)  # in source frames
        i0 = np.floor(t).astype(np.int64)
        i1 = np.minimum(i0 + 1, self.num_frames - 1)
        w = (t - i0)[:, None]

        def lerp(a):
            return ((1 - w) * a[i0] + w * a[i1]).astype(np.float32)

        pose = slerp_axis_angle_np(self.pose[i0], self.pose[i1], w[:, :, None])
        return self.replace(fps=fps, expression=lerp(self.expression), translation=lerp(self.translation),
                            pose=pose.astype(np.float32), warnings=list(self.warnings))

    def frame(self, t: int, device=None) -> Dict[str, object]:
        """Parameters of frame ``t`` as a batch of one, ready for ``Avatar.animate(**params)``:
        {"expression": [1, E], "pose": [1, 5, 3], "translation": [1, 3]} torch tensors."""
        t = int(t) + (self.num_frames if t < 0 else 0)
        return self.frames(t, t + 1, device=device)

    def frames(self, start: int, stop: int, device=None) -> Dict[str, object]:
        """Parameters of frames ``start:stop`` as a batch (see ``frame``)."""
        import torch

        if not 0 <= start < stop <= self.num_frames:
            raise MotionError(f"frames {start}:{stop} are outside {self.source or 'the motion'} "
                              f"({self.num_frames} frames).")
        s = slice(start, stop)
        return {
            "expression": torch.as_tensor(self.expression[s], device=device),
            "pose": torch.as_tensor(self.pose[s], device=device),
            "translation": torch.as_tensor(self.translation[s], device=device),
        }

    # ------------------------------------------------------------------ files
    def to_dict(self) -> Dict[str, np.ndarray]:
        """The arrays of our motion file (see the module doc)."""
        d = {
            FORMAT_KEY: np.asarray(FORMAT_VERSION, np.int64),
            "fps": np.asarray(self.fps, np.float64),
            "expr_names": np.asarray(self.expr_names, dtype=np.str_).reshape(len(self.expr_names)),
            "expression": self.expression,
            "pose": self.pose,
            "translation": self.translation,
            "source": np.asarray(self.source, dtype=np.str_),
            "warnings": np.asarray(self.warnings, dtype=np.str_).reshape(len(self.warnings)),
        }
        if self.shape is not None:
            d["shape"] = self.shape
        return d

    @classmethod
    def from_dict(cls, d, source: str = "") -> "MotionSequence":
        """Inverse of ``to_dict`` (``d`` may be an open ``np.load`` archive)."""
        where = source or "the motion"
        keys = set(d.keys())
        version = int(np.asarray(d[FORMAT_KEY])) if FORMAT_KEY in keys else None
        if version is None:
            raise MotionError(f"{where} is not a HeadSplat motion file (no {FORMAT_KEY!r} key).")
        if version > FORMAT_VERSION:
            raise MotionError(f"{where} was written by a newer HeadSplat (motion format {version}; this one "
                              f"reads up to {FORMAT_VERSION}); please update HeadSplat.")
        missing = [k for k in ("fps", "expr_names", "expression", "pose", "translation") if k not in keys]
        if missing:
            raise MotionError(f"{where} lacks the key {missing[0]!r}; expected a complete HeadSplat motion file.")
        shape = np.asarray(d["shape"]) if "shape" in keys else None
        src = str(np.asarray(d["source"])) if "source" in keys else ""
        warnings = [str(w) for w in np.asarray(d["warnings"]).reshape(-1)] if "warnings" in keys else []
        extra = sorted(keys - {FORMAT_KEY, "fps", "expr_names", "expression", "pose", "translation",
                               "shape", "source", "warnings"})
        seq = cls(fps=float(np.asarray(d["fps"])), expr_names=[str(n) for n in np.asarray(d["expr_names"]).reshape(-1)],
                  expression=np.asarray(d["expression"]), pose=np.asarray(d["pose"]),
                  translation=np.asarray(d["translation"]), shape=shape,
                  source=source or src, warnings=warnings)
        if extra:
            seq.warn(f"{where}: ignored unknown keys {', '.join(extra)}.")
        return seq

    def save(self, path) -> Path:
        """Write our motion file atomically (temporary file beside it, then rename)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise MotionError(f"Cannot write the motion file {str(path)!r}: the name must end in .npz.")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise MotionError(f"Cannot write the motion file {str(path)!r}: the folder {str(folder)!r} does not exist.")
        from avatar_core.atomic import atomic_path
        import io
        buf = io.BytesIO()  # built in memory: a full disk fails the plain write below, not zipfile's close
        np.savez(buf, **self.to_dict())
        with atomic_path(path, "motion file", size_hint=buf.tell()) as tmp:
            Path(tmp).write_bytes(buf.getvalue())
        return path

    @classmethod
    def load(cls, path) -> "MotionSequence":
        """Read our motion file (use ``load_motion`` for any supported format)."""
        path = Path(path)
        if not path.is_file():
            raise MotionError(f"The motion file {str(path)!r} does not exist.")
        try:
            with np.load(path, allow_pickle=False) as d:
                return cls.from_dict(d, source=str(path))
        except MotionError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise MotionError(f"{str(path)!r} is not a readable .npz motion file ({exc}).") from None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def zeros(cls, num_frames: int, expr_names: Sequence[str], fps: float = 30.0, source: str = "") -> "MotionSequence":
        """A still, neutral motion."""
        E = len(expr_names)
        return cls(fps=fps, expr_names=list(expr_names), expression=np.zeros((num_frames, E), np.float32),
                   pose=np.zeros((num_frames, NUM_JOINTS, 3), np.float32),
                   translation=np.zeros((num_frames, 3), np.float32), source=source)

    @classmethod
    def from_track(cls, result, head, source: str = "") -> "MotionSequence":
        """The motion of a video tracked with ``head`` (``fit.track.TrackResult``): the per-frame
        camera re-expressed, relative to frame 0, as a turn of the neck joint (composed with the
        tracked neck's) plus a root translation, so the head moves exactly as tracked and the
        shoulders only shift with it (as ``motion.drive`` drives an avatar, and as a CSV's head
        angles drive the neck by default); on the root the shoulders swung with every turn.

        A video's fit lets ARKit-style units leave [0, 1] (``fit.single.EXPR_RANGE_VIDEO``: the
        part of a face the head's identity shapes miss is taken up by units held outside it). A
        motion is in the units' own range: the first well-fitted frame's values, brought into
        [0, 1], plus each frame's change from them (as ``motion.drive`` drives an avatar), clipped
        to [0, 1]. FLAME-style coefficients are kept as fitted."""
        import torch

        from avatar_core.fit.single import EXPR_RANGE_PHOTO, camera_motion_to_pose, is_unit_range
        from avatar_core.motion.drive import motion_reference
        from avatar_core.rotation import axis_angle_to_matrix, matrix_to_axis_angle
        fit = result.fit
        expression = fit.expression.numpy()
        if is_unit_range(head):
            ref = expression[motion_reference(result, 0)]
            expression = np.clip(np.clip(ref, *EXPR_RANGE_PHOTO) + (expression - ref), *EXPR_RANGE_PHOTO)
        joints = head.j_regressor @ (head.v_template + torch.einsum(
            "k,vik->vi", fit.shape, head.shapedirs[..., : fit.shape.numel()]))
        turn, trans = camera_motion_to_pose(fit.camera.viewmat, joints[1])
        pose = fit.pose.clone()
        pose[:, 0] = 0.0
        pose[:, 1] = matrix_to_axis_angle(axis_angle_to_matrix(turn) @ axis_angle_to_matrix(pose[:, 1]))
        return cls(fps=result.fps, expr_names=list(head.expr_names), expression=expression,
                   pose=pose.numpy(), translation=trans.numpy(), shape=fit.shape.numpy(), source=source,
                   warnings=list(result.warnings))


def _array(where: str, key: str, value) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise MotionError(f"{where}: {key} is not numeric; expected an array of numbers.") from None
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise MotionError(f"{where}: {key} contains NaN or infinite values (first at index "
                          f"{tuple(int(i) for i in bad)}); expected finite numbers.")
    return np.ascontiguousarray(a)
