"""The one head-model interface, FLAME-shaped.

A ``HeadModel`` holds buffers only; the maths is in ``lbs``. Both the FLAME loader and
the built-in open head produce one. Joint order is FLAME's: root, neck, jaw, eye_L, eye_R.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, Optional, Sequence

import torch

from avatar_core.errors import ParameterError
from avatar_core.head import lbs

JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")
NUM_JOINTS = len(JOINT_NAMES)
PARENTS = (-1, 0, 1, 1, 1)


@dataclasses.dataclass
class HeadOutput:
    """vertices [B, V, 3], joints [B, J, 3] (posed), transforms [B, J, 4, 4] (rest -> posed)."""

    vertices: torch.Tensor
    joints: torch.Tensor
    transforms: torch.Tensor


@dataclasses.dataclass
class HeadModel:
    """A FLAME-shaped head model.

    Attributes (V vertices, F faces, S identity, E expressions, J = 5 joints, P = 9 (J-1)):
        name: "open" for the built-in head, "flame2020", "flame2023", ... for FLAME files.
        v_template [V, 3]; faces [F, 3] (int64); shapedirs [V, 3, S]; exprdirs [V, 3, E];
        expr_names: E names (ARKit for the open head, exp_000... for FLAME);
        posedirs [V, 3, P]; j_regressor [J, V]; lbs_weights [V, J]; parents [J] (int64);
        licence: where the data comes from and its licence.
    """

    name: str
    v_template: torch.Tensor
    faces: torch.Tensor
    shapedirs: torch.Tensor
    exprdirs: torch.Tensor
    expr_names: Sequence[str]
    posedirs: torch.Tensor
    j_regressor: torch.Tensor
    lbs_weights: torch.Tensor
    parents: torch.Tensor
    licence: str = ""
    joint_names: Sequence[str] = JOINT_NAMES
    lod: int = 0

    # ---------------------------------------------------------------- sizes
    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[-1])

    @property
    def num_expr(self) -> int:
        return int(self.exprdirs.shape[-1])

    @property
    def num_joints(self) -> int:
        return int(self.lbs_weights.shape[-1])

    def identity(self) -> str:
        """A short content hash naming this head model (stored in avatar files)."""
        h = hashlib.sha1()
        h.update(self.name.encode())
        for t in (self.v_template, self.faces, self.exprdirs[..., : min(4, self.num_expr)]):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.name}-{h.hexdigest()[:12]}"

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device=None, dtype=None) -> "HeadModel":
        out = {}
        for k, t in self.tensors().items():
            if t.is_floating_point():
                out[k] = t.to(device=device, dtype=dtype or t.dtype)
            else:
                out[k] = t.to(device=device)
        return dataclasses.replace(self, **out)

    # ---------------------------------------------------------------- parameters
    def expression_vector(self, expression, batch: Optional[int] = None) -> torch.Tensor:
        """Accepts a [B, E] / [E] tensor or a {name: value} dict; returns [B, E]."""
        return expression_vector(expression, self.expr_names, batch, self.v_template.device,
                                 self.v_template.dtype, f"this head model ({self.name})")

    # ---------------------------------------------------------------- forward
    def forward(self, shape=None, expression=None, pose=None, translation=None) -> HeadOutput:
        """Deform the head.

        Args:
            shape: [B, S'] identity coefficients (S' <= S; missing ones are zero) or None.
            expression: [B, E], a {name: value} dict, or None.
            pose: [B, J, 3] axis-angle per joint (root, neck, jaw, eye_L, eye_R) or None.
            translation: [B, 3] or None.
        Returns:
            HeadOutput with vertices [B, V, 3], joints [B, J, 3], transforms [B, J, 4, 4].
        """
        B = batch_size(shape, expression, pose, translation)
        dev, dt = self.v_template.device, self.v_template.dtype
        beta = self.shape_vector(shape, B)
        expr = self.expression_vector(expression, B)
        pose = check_param("pose", pose, (self.num_joints, 3), B, dev, dt)
        v = self.v_template[None] + lbs.blend_shapes(beta, self.shapedirs[..., : beta.shape[1]])
        t = None if translation is None else check_param("translation", translation, (3,), B, dev, dt)
        verts, joints, transforms = lbs.deform(v, expr, self.exprdirs, self.j_regressor, self.posedirs,
                                               self.lbs_weights, self.parents, pose, t)
        return HeadOutput(verts, joints, transforms)

    __call__ = forward

    def shape_vector(self, shape, batch: int) -> torch.Tensor:
        dev, dt = self.v_template.device, self.v_template.dtype
        if shape is None:
            return torch.zeros(batch, 0, device=dev, dtype=dt)
        shape = torch.as_tensor(shape, device=dev, dtype=dt)
        if shape.dim() == 1:
            shape = shape[None]
        if shape.dim() != 2 or shape.shape[1] > self.num_shape:
            raise ParameterError(
                f"shape has shape {tuple(shape.shape)}; expected [B, S] with S <= {self.num_shape}.")
        if shape.shape[0] == 1 and batch > 1:
            shape = shape.expand(batch, -1)
        check_finite("shape", shape)
        return shape


def expression_vector(expression, names: Sequence[str], batch: Optional[int], device, dtype,
                      owner: str = "this head model") -> torch.Tensor:
    """Expression coefficients [B, E] from a [B, E] / [E] tensor, a {name: value} dict or None."""
    E = len(names)
    if expression is None:
        return torch.zeros(batch or 1, E, device=device, dtype=dtype)
    if isinstance(expression, dict):
        index = {n: i for i, n in enumerate(names)}
        out = torch.zeros(batch or 1, E, device=device, dtype=dtype)
        for name, value in expression.items():
            if name not in index:
                raise ParameterError(f"Unknown expression name {name!r}: {owner} has {E} expressions "
                                     f"such as {', '.join(list(names)[:4])}.")
            out[:, index[name]] = float(value)
        return out
    return check_param("expression", expression, (E,), batch, device, dtype)


def batch_size(*params) -> int:
    for p in params:
        if isinstance(p, torch.Tensor) and p.dim() >= 2:
            return int(p.shape[0])
    return 1


def check_finite(name: str, t: torch.Tensor) -> None:
    """Reject NaN/inf in CPU tensors. Device tensors are not read back (that would stall the
    per-frame GPU path); parameters normally come from the CPU (files, Blender, the CLI)."""
    if t.device.type == "cpu" and not torch.isfinite(t).all():
        raise ParameterError(f"{name} contains NaN or infinite values; expected finite numbers.")


def check_param(name: str, value, per_item: tuple, batch: Optional[int], device, dtype) -> torch.Tensor:
    """Validate a parameter as [B, *per_item] (or [*per_item]); zeros when None."""
    b = batch or 1
    if value is None:
        return torch.zeros(b, *per_item, device=device, dtype=dtype)
    t = torch.as_tensor(value, device=device, dtype=dtype)
    if tuple(t.shape) == tuple(per_item):
        t = t[None]
    if tuple(t.shape[1:]) != tuple(per_item):
        raise ParameterError(
            f"{name} has shape {tuple(t.shape)}; expected [B, {', '.join(map(str, per_item))}].")
    if batch is not None and t.shape[0] != batch:
        if t.shape[0] == 1:
            t = t.expand(batch, *per_item)
        else:
            raise ParameterError(f"{name} has batch {t.shape[0]}; expected {batch} like the other parameters.")
    check_finite(name, t)
    return t
