"""Rotations: axis-angle, 3x3 matrices and unit quaternions (w, x, y, z, as Blender and gsplat
order them), batched over leading dimensions. One module for the whole project: the torch
functions (differentiable; the head model, the avatar, fitting, export) and their numpy twins
(suffix ``_np``, float64; motion resampling, the Blender add-on's conversions). torch is
imported when present, so the numpy half works in a Blender without it.
"""

from __future__ import annotations

import numpy as np

try:
    import torch
except ImportError:  # the numpy half only
    torch = None


# ----------------------------------------------------------------------------- torch
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


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation matrices -> [..., 3] axis-angle, via quaternions."""
    q = matrix_to_quaternion(R)
    w = q[..., :1].clamp(-1, 1)
    angle = 2 * torch.acos(w)
    s = torch.sqrt((1 - w * w).clamp_min(1e-12))
    return torch.where(angle > 1e-6, q[..., 1:] / s * angle, q[..., 1:] * 2)


# ----------------------------------------------------------------------------- numpy (float64)
def axis_angle_to_matrix_np(aa: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 3, 3] (Rodrigues)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    small = theta < 1e-8
    axis = np.where(small, 0.0, aa / np.where(small, 1.0, theta))
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + s * k + (1.0 - c) * (k @ k)


def matrix_to_axis_angle_np(r: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations -> [..., 3] axis-angle (angle in [0, pi]), via quaternions."""
    return quaternion_to_axis_angle_np(matrix_to_quaternion_np(r))


def matrix_to_quaternion_np(r: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> [..., 4] (w, x, y, z), w >= 0 (Shepperd's method, batched)."""
    m = np.asarray(r, dtype=np.float64)
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = np.stack([1 + t, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    i = cand.argmax(-1)
    s = 2.0 * np.sqrt(np.maximum(np.take_along_axis(cand, i[..., None], -1)[..., 0], 1e-12))
    q = np.empty(m.shape[:-2] + (4,))
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    opts = [np.stack([s / 4, d21 / s, d02 / s, d10 / s], -1),
            np.stack([d21 / s, s / 4, s01 / s, s02 / s], -1),
            np.stack([d02 / s, s01 / s, s / 4, s12 / s], -1),
            np.stack([d10 / s, s02 / s, s12 / s, s / 4], -1)]
    for k in range(4):
        q = np.where((i == k)[..., None], opts[k], q)
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quaternion_to_matrix_np(q: np.ndarray) -> np.ndarray:
    """[..., 4] (w, x, y, z), any norm -> [..., 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                    -1).reshape(*q.shape[:-1], 3, 3)


def quaternion_to_axis_angle_np(q: np.ndarray) -> np.ndarray:
    """[..., 4] (w, x, y, z) -> [..., 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    v = q[..., 1:]
    sin_half = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    # angle / sin(angle / 2) -> 2 as the angle -> 0
    factor = np.where(sin_half > 1e-8, angle / np.maximum(sin_half, 1e-12), 2.0)
    return v * factor


def axis_angle_to_quaternion_np(aa: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 4] (w, x, y, z)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(half) / theta -> 0.5 as theta -> 0
    k = np.where(theta > 1e-8, np.sin(half) / np.maximum(theta, 1e-12), 0.5)
    return np.concatenate([np.cos(half), aa * k], -1)


def slerp_axis_angle_np(a: np.ndarray, b: np.ndarray, w) -> np.ndarray:
    """Spherical interpolation between axis-angle rotations a, b [..., 3] with weights w
    (broadcastable to [..., 1]); returns axis-angle [..., 3] (float64)."""
    qa, qb = axis_angle_to_quaternion_np(np.asarray(a, np.float64)), axis_angle_to_quaternion_np(np.asarray(b, np.float64))
    dot = (qa * qb).sum(-1, keepdims=True)
    qb = np.where(dot < 0, -qb, qb)  # shortest arc
    dot = np.abs(dot).clip(0.0, 1.0)
    w = np.asarray(w, np.float64)
    theta = np.arccos(dot)
    sin = np.sin(theta)
    small = sin < 1e-6
    safe = np.where(small, 1.0, sin)
    ka = np.where(small, 1.0 - w, np.sin((1.0 - w) * theta) / safe)
    kb = np.where(small, w, np.sin(w * theta) / safe)
    q = ka * qa + kb * qb
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return quaternion_to_axis_angle_np(q)
