"""Stateless maths of a FLAME-shaped head model: blend shapes, joints, rigid transforms, LBS.

Shapes use: B batch, V vertices, J joints, S identity components, E expressions,
P pose-corrective features (= 9 * (J - 1)).
"""

from __future__ import annotations

import torch


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula.  aa: [..., 3] -> [..., 3, 3]; smooth at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)  # [..., 1]
    theta = torch.sqrt(theta2 + 1e-16)
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos(t))/t^2 with Taylor series near zero
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-16))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z), w >= 0."""
    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    q = torch.stack([
        1.0 + t,
        1.0 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
        1.0 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
        1.0 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
    ], -1)
    # choose the numerically best-conditioned of four candidate formulas
    idx = q.argmax(-1, keepdim=True)
    s = torch.sqrt(q.gather(-1, idx).clamp_min(1e-12))[..., 0] * 2.0  # 4 * |component|
    c0 = torch.stack([s / 4, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 1, 0] - m[..., 0, 1]) / s], -1)
    c1 = torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, s / 4, (m[..., 0, 1] + m[..., 1, 0]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s], -1)
    c2 = torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, s / 4, (m[..., 1, 2] + m[..., 2, 1]) / s], -1)
    c3 = torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s, (m[..., 1, 2] + m[..., 2, 1]) / s, s / 4], -1)
    cands = torch.stack([c0, c1, c2, c3], -2)  # [..., 4, 4]
    out = cands.gather(-2, idx[..., None].expand(*idx.shape[:-1], 1, 4)).squeeze(-2)
    out = out * torch.where(out[..., :1] < 0, -1.0, 1.0)
    return out / out.norm(dim=-1, keepdim=True)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[..., 4] quaternions (w, x, y, z), any norm -> [..., 3, 3]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of [..., 4] (w, x, y, z) quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


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
