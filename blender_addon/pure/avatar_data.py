"""What Blender needs of an avatar, as plain arrays (torch/numpy, no bpy).

``scene_arrays(avatar)`` computes everything the scene builder writes into the point mesh:
the rest positions of every Gaussian (LOD-0 neutral pose, all LODs at once), the per-point
attributes, the per-point skin weights (the barycentric blend of the rig's weights at the
Gaussian's binding; shoulder Gaussians follow the root only) and one shape key per
expression (``means(e_i = 1) - means(0)``, computed with ``Avatar.animate``).

Blender then deforms the points natively: shape keys summed linearly, then the Armature
modifier's linear blend skinning. avatar_core deforms the LOD-0 rig and re-places each
Gaussian on it (deform-then-interpolate) with its offset in the face frame, so Blender's
result is a close approximation (tests/test_blender_scene.py measures the difference); the
render engine always uses avatar_core's exact ``animate``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from blender_addon.pure.constants import (COLOUR_MODES, LAYER_COLOURS, MASK_HIGH, MASK_LOW, MAX_LAYERS,  # noqa: F401
                                     REGION_COLOURS)


@dataclasses.dataclass
class SceneArrays:
    """Per-Gaussian arrays for the point mesh (N Gaussians, E expressions, J joints)."""

    rest: np.ndarray           # [N, 3] float32 neutral means, head space
    quats: np.ndarray          # [N, 4] float32 neutral world rotations (w, x, y, z)
    scales: np.ndarray         # [N, 3] float32 linear scales (metres)
    opacity: np.ndarray        # [N] float32 in [0, 1]
    rgb: np.ndarray            # [N, 3] float32 first three feature channels, clamped to [0, 1]
    lod: np.ndarray            # [N] int8
    split_layer: np.ndarray    # [N] int8
    region: np.ndarray         # [N] int8
    soft_mask: np.ndarray      # [N] float32 logit
    mask_chain: np.ndarray     # [N] float32: min sigmoid(soft_mask) over the split ancestry (1 for non-split)
    weights: np.ndarray        # [N, J] float32 skin weights (rows sum to 1)
    joints: np.ndarray         # [J, 3] float32 rest joint positions (neutral expression)
    parents: List[int]
    joint_names: List[str]
    expr_names: List[str]


def all_index(avatar) -> torch.Tensor:
    return torch.arange(avatar.num_gaussians, device=avatar.device)


@torch.no_grad()
def scene_arrays(avatar) -> SceneArrays:
    """The point mesh's data for ``avatar`` (see module docstring)."""
    idx = all_index(avatar)
    frame = avatar.animate(index=idx)
    rest = frame.means[0].float().cpu().numpy()
    # weights: sum_k bary[n, k] * rig_weights[bind_ids[n, k]]; root-bound Gaussians: root only
    w = (avatar.rig_weights[avatar.bind_ids] * avatar.bind_bary[..., None]).sum(1)
    rooted = avatar.frame_face < 0
    if bool(rooted.any()):
        root = torch.zeros_like(w[0])
        root[0] = 1.0
        w = torch.where(rooted[:, None], root[None], w)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-8)
    joints = (avatar.rig_j_regressor @ avatar.rig_template).float().cpu().numpy()
    return SceneArrays(
        rest=rest,
        quats=frame.quats[0].float().cpu().numpy(),
        scales=frame.scales[0].float().cpu().numpy(),
        opacity=frame.opacities[0].float().cpu().numpy(),
        rgb=frame.features[0, :, :3].clamp(0, 1).float().cpu().numpy(),
        lod=avatar.lod.to(torch.int8).cpu().numpy(),
        split_layer=avatar.split_layer.to(torch.int8).cpu().numpy(),
        region=avatar.region.to(torch.int8).cpu().numpy(),
        soft_mask=avatar.soft_mask.float().cpu().numpy(),
        mask_chain=mask_chain(avatar).cpu().numpy(),
        weights=w.float().cpu().numpy(),
        joints=joints,
        parents=[int(p) for p in avatar.rig_parents.tolist()],
        joint_names=list(avatar.joint_names),
        expr_names=list(avatar.expr_names),
    )


@torch.no_grad()
def mask_chain(avatar) -> torch.Tensor:
    """[N] the smallest sigmoid(soft_mask) along each split Gaussian's ancestry (layers >= 1),
    1 for the rest. ``mask_chain >= t`` equals ``Avatar.effective_mask(threshold=t)`` for every
    threshold t, so a single per-point comparison reproduces delayed filtering."""
    soft = torch.sigmoid(avatar.soft_mask.float())
    is_split = avatar.split_layer >= 1
    m = torch.where(is_split, soft, torch.ones_like(soft))
    for layer in range(1, int(avatar.split_levels) + 1):
        idx = torch.nonzero(avatar.split_layer == layer)[:, 0]
        if idx.numel() == 0:
            continue
        par = avatar.parent[idx]
        parent_m = torch.where(par >= 0, m[par.clamp_min(0)], torch.ones_like(m[idx]))
        m[idx] = torch.minimum(m[idx], parent_m)
    return m


@torch.no_grad()
def expression_deltas(avatar, rest: Optional[np.ndarray] = None, chunk: int = 8) -> Iterator[Tuple[int, np.ndarray]]:
    """Yields (i, delta [N, 3] float32): the shape key of expression i, ``means(e_i = 1) - rest``.

    Exactly ``Avatar.animate``'s means, but computed only for the Gaussians an expression can
    move: those whose binding vertices or frame face include a vertex with a non-zero
    blend shape for it (expressions are local: ~20% of the open head's vertices each).
    Every other Gaussian's delta is exactly zero at zero pose, so it is not computed, and only
    means (not rotations) are evaluated. tests/test_blender_scene.py checks the keys
    against ``animate``.
    """
    from avatar_core.gaussians.avatar import face_frames
    N, E = avatar.num_gaussians, avatar.num_expr
    if rest is None:
        rest = avatar.animate(index=all_index(avatar)).means[0].float().cpu().numpy()
    rest_t = torch.as_tensor(rest)
    faces = avatar.rig_faces
    has_face = avatar.frame_face >= 0
    moving = avatar.rig_exprdirs.abs().amax(1) > 0                            # [V, E]
    # hit[n, i]: a binding vertex or a frame-face vertex of Gaussian n moves under expression i
    hit_all = moving[avatar.bind_ids].any(1)                                  # [N, E]
    face_hit = moving[faces[avatar.frame_face.clamp_min(0)]].any(1)           # [N, E]
    hit_all |= has_face[:, None] & face_hit
    del face_hit
    dt = avatar.offset.dtype
    for start in range(0, E, chunk):
        stop = min(E, start + chunk)
        e = torch.zeros(stop - start, E, device=avatar.device, dtype=dt)
        e[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        verts, transforms = avatar.deform_rig(expression=e)                   # [B, V, 3], [B, J, 4, 4]
        frames = face_frames(verts, faces)                                    # [B, F, 3, 3]
        for k in range(stop - start):
            i = start + k
            idx = torch.nonzero(hit_all[:, i])[:, 0]
            delta = np.zeros((N, 3), np.float32)
            if idx.numel():
                means = avatar.place_means(verts[k:k + 1], frames[k:k + 1], transforms[k:k + 1], idx)[0].float().cpu()
                idx_cpu = idx.cpu()
                delta[idx_cpu.numpy()] = (means - rest_t[idx_cpu]).numpy()
            yield i, delta


def bone_tails(joints: np.ndarray, joint_names: Sequence[str], template: np.ndarray) -> np.ndarray:
    """Tail positions [J, 3] for the armature's bones (head space). Only for display: the pose
    conversion uses each bone's actual rest matrix, whatever its direction."""
    lo, hi = template.min(0), template.max(0)
    size = float(np.linalg.norm(hi - lo)) or 0.3
    tails = joints.copy()
    for j, name in enumerate(joint_names):
        if name == "root":
            tails[j] = joints[j] + np.array([0.0, 0.12, 0.0]) * size
        elif name == "neck":
            tails[j] = joints[j] + np.array([0.0, 0.25, 0.0]) * size
        elif name == "jaw":
            tails[j] = joints[j] + np.array([0.0, -0.12, 0.22]) * size
        elif name.startswith("eye"):
            tails[j] = joints[j] + np.array([0.0, 0.0, 0.08]) * size
        else:
            tails[j] = joints[j] + np.array([0.0, 0.1, 0.0]) * size
    return tails.astype(np.float32)


def quantise_weights(weights: np.ndarray, step: float = 1.0 / 4096) -> Dict[int, List[Tuple[float, np.ndarray]]]:
    """Group points by quantised weight per joint, for ``VertexGroup.add`` (one call per value).

    Returns {joint: [(weight, point indices), ...]}, zero weights left out. The Armature
    modifier normalises weights per point, so the quantisation error (<= step / 2 per weight)
    moves a point by at most that fraction of the joints' relative displacement.
    """
    q = np.round(np.asarray(weights, dtype=np.float64) / step).astype(np.int64)
    out: Dict[int, List[Tuple[float, np.ndarray]]] = {}
    for j in range(q.shape[1]):
        col = q[:, j]
        nz = np.nonzero(col)[0]
        if nz.size == 0:
            out[j] = []
            continue
        vals, inv = np.unique(col[nz], return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(vals.size + 1))
        out[j] = [(float(vals[k] * step), nz[order[bounds[k]:bounds[k + 1]]]) for k in range(vals.size)]
    return out


def slider_range(expr_names: Sequence[str]) -> Tuple[float, float]:
    """Shape-key slider limits: ARKit activations are 0..1, FLAME coefficients are signed."""
    if expr_names and all(n.startswith("exp_") for n in expr_names):
        return -3.0, 3.0
    return -1.0, 1.0


# ------------------------------------------------------------------------------------------------
# inspection colours (used by the render engine's viewport; the geometry nodes compute the same)
# ------------------------------------------------------------------------------------------------
def inspection_rgb(mode: str, split_layer: torch.Tensor, soft_mask: torch.Tensor, region: torch.Tensor,
                   rgb: torch.Tensor) -> torch.Tensor:
    """[n, 3] display colours (sRGB-ish, [0, 1]) for a colour mode in COLOUR_MODES."""
    if mode == "LAYER":
        pal = torch.as_tensor(LAYER_COLOURS, device=rgb.device, dtype=rgb.dtype)
        return pal[(split_layer.long() + 1).clamp(0, len(pal) - 1)]
    if mode == "REGION":
        pal = torch.as_tensor(REGION_COLOURS, device=rgb.device, dtype=rgb.dtype)
        return pal[region.long().clamp(0, len(pal) - 1)]
    if mode == "MASK":
        s = torch.sigmoid(soft_mask.to(rgb.dtype))[:, None]
        lo = torch.tensor(MASK_LOW, device=rgb.device, dtype=rgb.dtype)
        hi = torch.tensor(MASK_HIGH, device=rgb.device, dtype=rgb.dtype)
        return lo * (1 - s) + hi * s
    return rgb


# ------------------------------------------------------------------ native Gaussian splats
SH_C0 = 0.28209479177387814   # the degree-0 spherical-harmonic constant of 3DGS (colour = 0.5 + C0 * dc)


def splat_radiance(rgba: np.ndarray, linear: bool = False) -> np.ndarray:
    """[N, 4] colour + opacity (the point mesh's ``color``) -> [N, 4] ``radiance:base`` as
    Blender 5.3's own splat renderer reads it: its PLY importer stores the file's f_dc_0..2
    (degree-0 SH coefficients) and sigmoid(opacity). ``linear``: convert the sRGB colour to
    linear first (for a renderer that takes SH colour as scene-linear)."""
    rgba = np.asarray(rgba, np.float32).reshape(-1, 4)
    rgb = rgba[:, :3]
    if linear:
        rgb = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    out = np.empty_like(rgba)
    out[:, :3] = (rgb - 0.5) / SH_C0
    out[:, 3] = rgba[:, 3]
    return out
