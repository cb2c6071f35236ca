"""Rendering: one interface over the torch (CPU reference) and gsplat (CUDA) rasterizers.

    from avatar_core.render import render, orbit_camera
    cam = orbit_camera(distance=0.8, yaw_deg=20, fov_deg=18, width=512, height=512)
    out = render(frame, cam, background=1.0)   # out.image [B, H, W, C], out.alpha, out.depth

Backends: ``"torch"`` (any device; the reference), ``"gsplat"`` (CUDA tensors, needs the
``cuda_backend`` package and gsplat), ``"auto"`` (gsplat for CUDA tensors when available,
else torch; the environment variable ``HEADSPLAT_RENDER_BACKEND`` overrides it).
Both are differentiable with respect to every Gaussian parameter.

Cameras (Camera, look_at, orbit_camera) live one floor down in ``avatar_core.camera`` and are
re-exported here. Submodules: ``project`` (EWA projection), ``rasterize_torch`` (the CPU
reference rasterizer), ``refiner`` (the neural refiner U-Net), ``realtime`` (FramePipeline: a
viewer's per-frame path with CUDA graphs). The CUDA backend lives in the top-level package
``cuda_backend`` and is imported only when used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Union

import torch

from avatar_core.camera import Camera, focal_from_fov, intrinsics, look_at, orbit_camera
from avatar_core.errors import ParameterError
from avatar_core.gaussians.frame import GaussianFrame
from avatar_core.render.project import EPS2D, FAR_PLANE, NEAR_PLANE

log = logging.getLogger(__name__)

__all__ = ["Camera", "RenderOutput", "render", "orbit_camera", "look_at", "intrinsics", "focal_from_fov",
           "resolve_backend", "validate_frame", "BACKENDS"]

BACKENDS = ("auto", "torch", "gsplat")


@dataclasses.dataclass
class RenderOutput:
    """image [B, H, W, C] (features composited over the background; first 3 channels RGB),
    alpha [B, H, W, 1] accumulated opacity, depth [B, H, W, 1] expected camera z in metres
    (alpha-normalised; 0 where nothing was drawn) or None when not asked for."""

    image: torch.Tensor
    alpha: torch.Tensor
    depth: Optional[torch.Tensor]

    @property
    def rgb(self) -> torch.Tensor:  # [B, H, W, 3]
        return self.image[..., :3]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Pick the concrete backend ("torch" or "gsplat") for tensors on ``device``."""
    if backend == "auto":
        backend = os.environ.get("HEADSPLAT_RENDER_BACKEND", "auto") or "auto"
    if backend == "cuda":
        backend = "gsplat"
    if backend not in BACKENDS:
        raise ParameterError(f"Unknown render backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        if device.type == "cuda":
            try:
                import cuda_backend
                if cuda_backend.available():
                    return "gsplat"
                log.info("gsplat backend unavailable (%s); using the torch rasterizer",
                         cuda_backend.unavailable_reason())
            except ImportError:
                log.info("cuda_backend not importable; using the torch rasterizer")
        return "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ParameterError(f"The gsplat backend needs CUDA tensors, but the Gaussians are on {device}.")
    return backend


def validate_frame(frame: GaussianFrame, check_finite: bool = True) -> None:
    """Raise ParameterError unless the frame's tensors have consistent shapes and finite values."""
    m = frame.means
    if m.dim() != 3 or m.shape[-1] != 3:
        raise ParameterError(f"Gaussian means must have shape [B, N, 3], got {list(m.shape)}.")
    B, N = m.shape[:2]
    expect = {"quats": (B, N, 4), "scales": (B, N, 3), "opacities": (B, N)}
    for name, shape in expect.items():
        t = getattr(frame, name)
        if tuple(t.shape) != shape:
            raise ParameterError(f"Gaussian {name} must have shape {list(shape)}, got {list(t.shape)}.")
    f = frame.features
    if f.dim() != 3 or tuple(f.shape[:2]) != (B, N) or f.shape[-1] < 1:
        raise ParameterError(f"Gaussian features must have shape [{B}, {N}, C>=1], got {list(f.shape)}.")
    for fld in dataclasses.fields(frame):
        t = getattr(frame, fld.name)
        if not t.is_floating_point():
            raise ParameterError(f"Gaussian {fld.name} must be a floating-point tensor, got {t.dtype}.")
        if t.device != m.device:
            raise ParameterError(f"Gaussian {fld.name} is on {t.device} but means are on {m.device}.")
    if check_finite:
        for fld in dataclasses.fields(frame):
            t = getattr(frame, fld.name)
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise ParameterError(f"Gaussian {fld.name} contain NaN or infinite values.")


def _background(background, B: int, C: int, device, dtype) -> torch.Tensor:
    """None | number | [C] | [3] (C > 3: other channels 0) | [B, C] -> [B, C]."""
    if background is None:
        return torch.zeros(B, C, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.dim() == 0:
        bg = bg.expand(C)
    if bg.dim() == 1 and bg.shape[0] == 3 and C > 3:
        bg = torch.cat([bg, torch.zeros(C - 3, device=device, dtype=dtype)])
    if bg.dim() == 1:
        bg = bg[None]
    if bg.dim() != 2 or bg.shape[-1] != C or bg.shape[0] not in (1, B):
        raise ParameterError(f"background must be a number, [C], [3] or [B, C] with C={C}, B={B}; "
                             f"got shape {list(bg.shape)}.")
    if not bool(torch.isfinite(bg).all()):
        raise ParameterError("background contains NaN or infinite values.")
    return bg.expand(B, C)


def render(frame: GaussianFrame, camera: Camera, background=None, backend: str = "auto", *,
           with_depth: bool = True, near: float = NEAR_PLANE, far: float = FAR_PLANE, eps2d: float = EPS2D,
           check_finite: bool = True, **backend_options) -> RenderOutput:
    """Rasterise a batch of Gaussian frames through a batch of cameras.

    Args:
        frame: GaussianFrame with batch Bf (from ``Avatar.animate``), N Gaussians, C channels.
        camera: Camera with batch Bc; Bf and Bc must match or one of them be 1
            (one frame seen by many cameras, or many frames by one camera).
        background: None (zeros), a number, [C], [3] (then other channels 0) or [B, C].
        backend: "auto", "torch" or "gsplat" (see module docstring).
        with_depth: also composite camera z for ``depth`` (one more channel).
        near, far: clipping distances along camera z (metres).
        eps2d: the low-pass filter added to the projected covariance (pixels^2).
        check_finite: reject NaN/inf inputs (costs one device sync on CUDA).
        backend_options: passed to the backend (torch: tile_size, chunk, step_elements).
    Returns:
        RenderOutput with B = max(Bf, Bc) images of camera.height x camera.width.
    """
    if not isinstance(frame, GaussianFrame):
        raise ParameterError(f"render expects a GaussianFrame, got {type(frame).__name__}.")
    if not isinstance(camera, Camera):
        raise ParameterError(f"render expects a Camera, got {type(camera).__name__}.")
    validate_frame(frame, check_finite)
    device, dtype = frame.means.device, frame.means.dtype
    Bf, Bc = frame.batch, camera.batch
    if Bf != Bc and 1 not in (Bf, Bc):
        raise ParameterError(f"Frame batch {Bf} and camera batch {Bc} must match or one must be 1.")
    B = max(Bf, Bc)
    camera = camera.to(device=device, dtype=dtype)
    if check_finite and not (bool(torch.isfinite(camera.K).all()) and bool(torch.isfinite(camera.viewmat).all())):
        raise ParameterError("Camera K or viewmat contains NaN or infinite values.")
    C = frame.channels
    bg = _background(background, B, C, device, dtype)
    W, H = camera.width, camera.height
    name = resolve_backend(backend, device)

    if frame.num == 0:
        image = bg[:, None, None, :].expand(B, H, W, C).clone()
        alpha = torch.zeros(B, H, W, 1, device=device, dtype=dtype)
        depth = torch.zeros_like(alpha) if with_depth else None
        return RenderOutput(image, alpha, depth)

    if name == "gsplat":
        import cuda_backend
        acc, alpha = cuda_backend.rasterize_frame(frame, camera, bg, with_depth=with_depth, near=near,
                                                  far=far, eps2d=eps2d, **backend_options)
    else:
        from avatar_core.render.rasterize_torch import render_frame_torch
        acc, alpha = render_frame_torch(frame, camera, bg, with_depth=with_depth, near=near, far=far,
                                        eps2d=eps2d, **backend_options)
    image = acc[..., :C]
    depth = None
    if with_depth:
        depth = acc[..., C:C + 1] / alpha.clamp_min(1e-10)
    return RenderOutput(image, alpha, depth)
