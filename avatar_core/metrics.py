"""Image metrics: PSNR and SSIM, whole-image and masked; differentiable where it matters.

Images are float tensors in [0, 1] laid out [H, W, C] or [B, H, W, C] (the renderer's layout);
numpy arrays are accepted too. A mask is [H, W], [H, W, 1], [B, H, W] or [B, H, W, 1], values
in [0, 1] (soft masks weight pixels). Masked metrics average over the masked pixels only, so a
large empty background does not inflate them.

    psnr(render, target)                       # dB, one number per image [B]
    psnr(render, target, mask=alpha > 0.5)     # over the person only
    ssim(render, target, mask=alpha)           # SSIM map averaged over the mask
    ssim_loss(render, target)                  # 1 - SSIM, differentiable, for optimisation
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = ["psnr", "mse", "ssim", "ssim_map", "ssim_loss", "gaussian_window"]


def _as_bhwc(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 2:
        t = t[None, :, :, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"{name} must be [H, W], [H, W, C] or [B, H, W, C], got shape {list(t.shape)}")
    return t


def _mask_bhw1(mask: Optional[ArrayLike], like: torch.Tensor) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    m = m.to(device=like.device, dtype=like.dtype)
    if m.dim() == 2:
        m = m[None, :, :, None]
    elif m.dim() == 3:
        m = m[..., None] if m.shape[-1] != 1 or m.shape[:2] != like.shape[1:3] else m[None]
    if m.dim() != 4 or m.shape[-1] != 1 or tuple(m.shape[1:3]) != tuple(like.shape[1:3]):
        raise ValueError(f"mask of shape {list(m.shape)} does not match images of shape {list(like.shape)}")
    return m.expand(like.shape[0], -1, -1, 1)


def mse(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None) -> torch.Tensor:
    """Mean squared error per image [B] (over the mask's pixels and all channels)."""
    x, y = _as_bhwc(a, "a"), _as_bhwc(b, "b")
    y = y.to(x)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {list(x.shape)} vs {list(y.shape)}")
    err = (x - y) ** 2
    m = _mask_bhw1(mask, x)
    if m is None:
        return err.mean(dim=(1, 2, 3))
    C = x.shape[-1]
    return (err * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * C).clamp_min(1e-12)


def psnr(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image [B]: 10 log10(max^2 / MSE) (MSE over the mask)."""
    e = mse(a, b, mask)
    return 10.0 * torch.log10(max_val ** 2 / e.clamp_min(1e-12))


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian window [size]."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid'-free blur with reflect padding: x [B, C, H, W]."""
    C = x.shape[1]
    k = w.numel()
    p = k // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)
    x = F.conv2d(x, w.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)
    return x


def ssim_map(a: ArrayLike, b: ArrayLike, window: int = 11, sigma: float = 1.5,
             max_val: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM [B, H, W] (Wang et al. 2004, Gaussian window, channels averaged).

    Differentiable with respect to both images. Borders use reflect padding, so the map has
    the images' size.
    """
    x, y = _as_bhwc(a, "a"), _as_bhwc(b, "b")
    y = y.to(x)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {list(x.shape)} vs {list(y.shape)}")
    window = min(window, 2 * (min(x.shape[1], x.shape[2]) // 2) - 1)
    w = gaussian_window(window, sigma, x.device, x.dtype)
    x = x.permute(0, 3, 1, 2)
    y = y.permute(0, 3, 1, 2)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mx, my = _blur(x, w), _blur(y, w)
    sxx = _blur(x * x, w) - mx * mx
    syy = _blur(y * y, w) - my * my
    sxy = _blur(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(1)


def ssim(a: ArrayLike, b: ArrayLike, mask: Optional[ArrayLike] = None, window: int = 11,
         sigma: float = 1.5, max_val: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image [B], over the mask's pixels when a mask is given."""
    s = ssim_map(a, b, window, sigma, max_val)
    m = _mask_bhw1(mask, _as_bhwc(a, "a").to(s))
    if m is None:
        return s.mean(dim=(1, 2))
    m = m[..., 0]
    return (s * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1e-12)


def ssim_loss(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None,
              window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM over the batch (and mask): a scalar loss."""
    return 1.0 - ssim(a, b, mask, window, sigma).mean()
