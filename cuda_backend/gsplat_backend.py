"""The gsplat 1.5.3 rasterizer behind ``avatar_core.render``'s interface.

Pipeline per call: ``fully_fused_projection`` (EWA projection, 0.3-px low-pass, culling),
tile binning (gsplat's ``isect_tiles`` + ``isect_offset_encode``, or :mod:`cuda_backend.static_binning`
for CUDA-graph capture), ``rasterize_to_pixels`` (front-to-back compositing, early stop).
Every step is differentiable through gsplat's own backward kernels.

Pixel convention: gsplat puts pixel (i, j)'s centre at (j + 0.5, i + 0.5); our cameras are
OpenCV (centre at (j, i)), so cx and cy are shifted by +0.5 on the way in.
"""

from __future__ import annotations

from typing import Optional

import torch

from cuda_backend.static_binning import bin_static, compiled_bin_static, tile_grid

DEFAULT_TILE = 16


def _gsplat():
    from gsplat.cuda import _wrapper as w  # lazy: triggers no compilation until a kernel runs
    return w


def opencv_to_gsplat_K(K: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] OpenCV intrinsics -> gsplat's (pixel centres at +0.5)."""
    K = K.clone()
    K[..., 0, 2] += 0.5
    K[..., 1, 2] += 0.5
    return K


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
              background: Optional[torch.Tensor] = None, with_depth: bool = False,
              near: float = 0.01, far: float = 1e10, eps2d: float = 0.3, tile_size: int = DEFAULT_TILE,
              binning: str = "sort", capacity: Optional[int] = None, overflow_out: Optional[list] = None,
              compile_binning: bool = False):
    """Rasterise B sets of N Gaussians, each seen by V views.

    Args:
        means [B, N, 3], quats [B, N, 4] (w, x, y, z), scales [B, N, 3], opacities [B, N],
        colors [B, N, Cc]: world-space Gaussians.
        viewmats [B, V, 4, 4] world-to-camera (OpenCV); Ks [B, V, 3, 3] OpenCV intrinsics.
        background: [B, V, Cc] (+1 channel if with_depth, zero there) or None.
        with_depth: append camera z as one more composited channel.
        binning: "sort" (gsplat's isect_tiles; reads the count back to the host) or "static"
            (fixed ``capacity``, no host sync; CUDA-graph safe). ``overflow_out`` (a list) receives
            the static binning's overflow flag tensor. ``compile_binning`` runs the static binning
            through torch.compile (fewer kernels; compiles on first use).
    Returns:
        colors [B, V, H, W, Cc (+1)] composited over the background, alphas [B, V, H, W, 1].
    """
    w = _gsplat()
    B, N = means.shape[:2]
    V = viewmats.shape[1]
    Kg = opencv_to_gsplat_K(Ks)
    radii, means2d, depths, conics, _ = w.fully_fused_projection(
        means, None, quats, scales, viewmats, Kg, width, height, eps2d=eps2d, near_plane=near,
        far_plane=far, opacities=opacities)
    # radii [B, V, N, 2], means2d [B, V, N, 2], depths [B, V, N], conics [B, V, N, 3]
    cols = colors[:, None].expand(B, V, N, colors.shape[-1])
    if with_depth:
        cols = torch.cat([cols, depths[..., None]], -1)
    opac = opacities[:, None].expand(B, V, N)
    tx, ty = tile_grid(width, height, tile_size)
    if binning == "sort":
        _, isect_ids, flatten_ids = w.isect_tiles(means2d, radii, depths, tile_size, tx, ty)
        offsets = w.isect_offset_encode(isect_ids, B * V, tx, ty).reshape(B, V, ty, tx)
    elif binning == "static":
        if capacity is None:
            raise ValueError("static binning needs a capacity")
        fn = compiled_bin_static() if compile_binning else bin_static
        offsets, flatten_ids, overflow = fn(means2d.reshape(B * V, N, 2), radii.reshape(B * V, N, 2),
                                                    depths.reshape(B * V, N), width, height, tile_size, capacity)
        offsets = offsets.reshape(B, V, ty, tx)
        if overflow_out is not None:
            overflow_out.append(overflow)
    else:
        raise ValueError(f"unknown binning {binning!r}")
    return w.rasterize_to_pixels(means2d, conics, cols, opac, width, height, tile_size, offsets, flatten_ids,
                                 backgrounds=background)


def rasterize_frame(frame, camera, background: torch.Tensor, with_depth: bool = True, near: float = 0.01,
                    far: float = 1e10, eps2d: float = 0.3, tile_size: int = DEFAULT_TILE,
                    binning: str = "sort", capacity: Optional[int] = None):
    """The gsplat backend of :func:`avatar_core.render.render` (inputs already validated).

    frame: GaussianFrame (batch Bf); camera: Camera (batch Bc); background [B, C].
    Returns acc [B, H, W, C (+1)], alpha [B, H, W, 1].
    """
    Bf, Bc = frame.batch, camera.batch
    B = max(Bf, Bc)
    bg = background
    if with_depth:
        bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], -1)
    f32 = torch.float32

    def g(t):
        return t.to(f32).contiguous()

    if Bf == 1 and Bc > 1:  # one frame, many views: gsplat's camera dimension, no copies
        args = (g(frame.means), g(frame.quats), g(frame.scales), g(frame.opacities), g(frame.features),
                g(camera.viewmat)[None], g(camera.K)[None])
        bg = bg[None]
    else:
        cam = camera.expand(B)
        args = (g(frame.means), g(frame.quats), g(frame.scales), g(frame.opacities), g(frame.features),
                g(cam.viewmat)[:, None], g(cam.K)[:, None])
        bg = bg[:, None]
    img, alpha = rasterize(*args, camera.width, camera.height, background=g(bg), with_depth=with_depth,
                           near=near, far=far, eps2d=eps2d, tile_size=tile_size, binning=binning,
                           capacity=capacity)
    H, W = camera.height, camera.width
    dtype = frame.means.dtype
    return img.reshape(B, H, W, -1).to(dtype), alpha.reshape(B, H, W, 1).to(dtype)
