"""EWA splatting: 3D Gaussians -> 2D screen-space Gaussians (pure torch, differentiable).

Follows the classic 3DGS projection (Zwicker et al. EWA splatting; Kerbl et al. 2023):
covariance Sigma = R S S^T R^T from the rotation/scale, camera-space covariance
W Sigma W^T, the affine approximation J of the perspective map at the mean, and a
0.3-pixel low-pass filter added to the 2D covariance. The conventions match gsplat's
fused projection, so the CPU and CUDA backends agree:

- internally pixel (i, j) is centred at (j + 0.5, i + 0.5), so an OpenCV ``cx`` becomes
  ``cx + 0.5`` here (see :mod:`avatar_core.camera`);
- the Jacobian is evaluated at x/z, y/z clamped to 1.3x the field of view;
- Gaussians nearer than ``near`` or beyond ``far``, with a non-positive 2D determinant,
  an opacity below 1/255, or a footprint entirely off screen get radius 0 (culled);
- the footprint radius per axis is ceil(e * sqrt(var)) with e = min(3.33, sqrt(2 ln(255 o))),
  the distance at which alpha falls under 1/255.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from avatar_core.rotation import quaternion_to_matrix

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
T_THRESHOLD = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


@dataclasses.dataclass
class Splats:
    """Screen-space Gaussians of B images (N per image, culled ones have radius 0).

    means2d [B, N, 2] pixels (pixel centres at +0.5); conics [B, N, 3] the upper triangle
    (a, b, c) of the inverse 2D covariance; depths [B, N] camera z; radii [B, N, 2] int32
    footprint half-sizes in pixels (0 = culled); opacities [B, N].
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    opacities: torch.Tensor

    @property
    def visible(self) -> torch.Tensor:  # [B, N] bool
        return (self.radii > 0).all(-1)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """quats [..., 4] (w, x, y, z, any norm), scales [..., 3] -> M [..., 3, 3] with Sigma = M M^T.

    M = R diag(s); returning the factor keeps Sigma positive semi-definite by construction.
    """
    R = quaternion_to_matrix(quats)
    return R * scales[..., None, :]


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                      opacities: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
                      width: int, height: int, eps2d: float = EPS2D, near: float = NEAR_PLANE,
                      far: float = FAR_PLANE) -> Splats:
    """Project B batches of N Gaussians through B pinhole cameras.

    Args:
        means: [B, N, 3] world positions.
        quats: [B, N, 4] rotations (w, x, y, z).
        scales: [B, N, 3] linear standard deviations (metres).
        opacities: [B, N] in [0, 1].
        viewmat: [B, 4, 4] world-to-camera (OpenCV).
        K: [B, 3, 3] OpenCV intrinsics (integer = pixel centre).
        width, height: image size.
    Returns:
        Splats; differentiable in means2d, conics, depths, opacities.
    """
    B, N = means.shape[:2]
    R = viewmat[:, :3, :3]  # [B, 3, 3]
    t = viewmat[:, :3, 3]  # [B, 3]
    # p[b, n, i] = sum_j R[b, i, j] * means[b, n, j] + t[b, i]
    p = torch.einsum("bij,bnj->bni", R, means) + t[:, None, :]
    x, y, z = p.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # [B, 1]
    cx, cy = K[:, 0, 2, None] + 0.5, K[:, 1, 2, None] + 0.5
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z_safe
    u = x * rz
    v = y * rz
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, u))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, v))
    rz2 = rz * rz
    zero = torch.zeros_like(rz)
    # J [B, N, 2, 3]: the perspective map's Jacobian at the (clamped) mean
    J = torch.stack([fx * rz, zero, -fx * tx * rz2,
                     zero, fy * rz, -fy * ty * rz2], -1).reshape(B, N, 2, 3)
    M = covariance_3d(quats, scales)  # [B, N, 3, 3]
    # T = J W M, cov2d = T T^T ; W = R (world-to-camera rotation)
    T = J @ (R[:, None] @ M)  # [B, N, 2, 3]
    cov2d = T @ T.transpose(-1, -2)  # [B, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)

    with torch.no_grad():
        o = opacities.detach()
        ok = ok & (o >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m2 = means2d.detach()
        ok = ok & ((rx > 0) | (ry > 0))
        ok = ok & ~((m2[..., 0] + rx <= 0) | (m2[..., 0] - rx >= width)
                    | (m2[..., 1] + ry <= 0) | (m2[..., 1] - ry >= height))
        ok = ok & torch.isfinite(rx) & torch.isfinite(ry)
        radii = torch.stack([rx, ry], -1).clamp(0, 1e6)
        radii = torch.where(ok[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Splats(means2d=means2d, conics=conics, depths=z, radii=radii, opacities=opacities)


def tile_ranges(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int):
    """Tile rectangle [x0, x1) x [y0, y1) covered by each splat's footprint.

    means2d [..., 2] float, radii [..., 2] int -> (x0, x1, y0, y1) each [...] int64, clamped to the grid;
    empty (x1 <= x0 or y1 <= y0) for culled splats.
    """
    r = radii.to(means2d.dtype)
    m = means2d / tile_size
    rt = r / tile_size
    x0 = torch.floor(m[..., 0] - rt[..., 0]).clamp(0, tiles_x).to(torch.int64)
    x1 = torch.ceil(m[..., 0] + rt[..., 0]).clamp(0, tiles_x).to(torch.int64)
    y0 = torch.floor(m[..., 1] - rt[..., 1]).clamp(0, tiles_y).to(torch.int64)
    y1 = torch.ceil(m[..., 1] + rt[..., 1]).clamp(0, tiles_y).to(torch.int64)
    culled = (radii <= 0).any(-1)
    x1 = torch.where(culled, x0, x1)
    return x0, x1, y0, y1


def num_tiles(size: int, tile_size: int) -> int:
    return int(math.ceil(size / tile_size))
