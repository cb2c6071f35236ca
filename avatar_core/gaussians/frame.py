"""One frame of world-space Gaussians: what ``animate`` returns and renderers take."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class GaussianFrame:
    """World-space Gaussians, batched.

    means [B, N, 3]; quats [B, N, 4] (w, x, y, z, unit); scales [B, N, 3] (linear, metres);
    opacities [B, N] in [0, 1]; features [B, N, C] (first three channels are RGB in [0, 1]).
    Gaussians switched off (LOD filter, soft mask) are simply absent, or have opacity 0
    during training so gradients reach the masks.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    features: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.means.shape[0])

    @property
    def num(self) -> int:
        return int(self.means.shape[1])

    @property
    def channels(self) -> int:
        return int(self.features.shape[-1])

    def to(self, device=None, dtype=None) -> "GaussianFrame":
        return GaussianFrame(*(getattr(self, f.name).to(device=device, dtype=dtype)
                               for f in dataclasses.fields(self)))

    def index(self, b: int) -> "GaussianFrame":
        """The b-th frame as a batch of one."""
        return GaussianFrame(*(getattr(self, f.name)[b:b + 1] for f in dataclasses.fields(self)))
