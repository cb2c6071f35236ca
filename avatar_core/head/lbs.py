"""Stateless maths of a FLAME-shaped head model: blend shapes, joints, rigid transforms, LBS.

Shapes use: B batch, V vertices, J joints, S identity components, E expressions,
P pose-corrective features (= 9 * (J - 1)).
"""

from __future__ import annotations

import torch

# the rotation maths is avatar_core.rotation's; recon.init still reads matrix_to_quaternion here
from avatar_core.rotation import axis_angle_to_matrix, matrix_to_quaternion  # noqa: F401


def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """coeffs [B, K], dirs [V, 3, K] -> offsets [B, V, 3]."""
    # out[b, v, i] = sum_k coeffs[b, k] * dirs[v, i, k]
    return torch.einsum("bk,vik->bvi", coeffs, dirs)


def pose_features(rot_mats: torch.Tensor) -> torch.Tensor:
    """FLAME's pose-corrective input: rot_mats [B, J, 3, 3] -> [B, 9 * (J - 1)] (root excluded)."""
    B, J = rot_mats.shape[:2]
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).reshape(B, 9 * (J - 1))


_PARENTS_CACHE: dict = {}


def parent_tuple(parents) -> tuple:
    """Parents as a tuple of ints. A device tensor is read once and remembered, so the
    per-frame path never waits for the GPU (no host sync inside animate or CUDA graphs)."""
    if not isinstance(parents, torch.Tensor):
        return tuple(int(p) for p in parents)
    if parents.device.type == "cpu":
        return tuple(parents.tolist())
    key = (parents.data_ptr(), parents.numel(), str(parents.device))
    if key not in _PARENTS_CACHE:
        _PARENTS_CACHE[key] = tuple(parents.tolist())
    return _PARENTS_CACHE[key]


def rigid_transforms(rot_mats: torch.Tensor, joints: torch.Tensor, parents):
    """Forward kinematics.

    Args:
        rot_mats: [B, J, 3, 3] local joint rotations.
        joints: [B, J, 3] rest joint locations.
        parents: [J] parent index (tensor or sequence), -1 for the root; parents precede children.
    Returns:
        posed_joints [B, J, 3], rel_transforms [B, J, 4, 4] mapping rest space to posed space.
    """
    B, J = joints.shape[:2]
    par = parent_tuple(parents)
    # joint offsets from their parents, by slicing only (no index tensors built per call)
    rel = torch.stack([joints[:, 0]] + [joints[:, j] - joints[:, par[j]] for j in range(1, J)], 1)
    local = torch.zeros(B, J, 4, 4, dtype=joints.dtype, device=joints.device)
    local[..., :3, :3] = rot_mats
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[par[j]] @ local[:, j])
    world = torch.stack(chain, 1)  # [B, J, 4, 4]
    posed_joints = world[..., :3, 3]
    # remove the rest joint location: T_j = world_j @ translate(-joint_j)
    offset = (world[..., :3, :3] @ joints[..., None])[..., 0]
    rel_transforms = world.clone()
    rel_transforms[..., :3, 3] = world[..., :3, 3] - offset
    return posed_joints, rel_transforms


def skin(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor):
    """Linear blend skinning.

    Args:
        points: [B, V, 3] rest-space points.
        weights: [V, J] skin weights (rows sum to 1).
        transforms: [B, J, 4, 4] rest->posed joint transforms.
    Returns:
        posed points [B, V, 3], per-point blended 3x4 transforms [B, V, 3, 4].
    """
    # T[b, v] = sum_j weights[v, j] * transforms[b, j]
    T = torch.einsum("vj,bjrc->bvrc", weights, transforms[:, :, :3, :])
    posed = (T[..., :3] @ points[..., None])[..., 0] + T[..., 3]
    return posed, T


def deform(v_rest: torch.Tensor, expression: torch.Tensor, exprdirs: torch.Tensor, j_regressor: torch.Tensor,
           posedirs: torch.Tensor, weights: torch.Tensor, parents: torch.Tensor, pose: torch.Tensor,
           translation: torch.Tensor = None):
    """The whole FLAME-style deformation after identity: expression blend shapes, joint
    regression, pose correctives, forward kinematics and skinning, then translation.

    Args:
        v_rest: [B, V, 3] template with identity applied; expression [B, E]; exprdirs [V, 3, E];
        j_regressor [J, V]; posedirs [V, 3, P] (P may be 0); weights [V, J]; parents [J];
        pose [B, J, 3] axis-angle; translation [B, 3] or None.
    Returns:
        vertices [B, V, 3], posed joints [B, J, 3], rest->posed transforms [B, J, 4, 4].
    """
    v = v_rest + blend_shapes(expression, exprdirs)
    # joints[b, j, i] = sum_v R[j, v] * v[b, v, i]
    joints = torch.einsum("jv,bvi->bji", j_regressor, v)
    rot = axis_angle_to_matrix(pose)
    if posedirs.shape[-1] > 0:
        v = v + blend_shapes(pose_features(rot), posedirs)
    posed_joints, transforms = rigid_transforms(rot, joints, parents)
    verts, _ = skin(v, weights, transforms)
    if translation is not None:
        verts = verts + translation[:, None]
        posed_joints = posed_joints + translation[:, None]
        transforms = transforms.clone()
        transforms[..., :3, 3] = transforms[..., :3, 3] + translation[:, None]
    return verts, posed_joints, transforms
