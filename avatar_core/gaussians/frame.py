"""One frame of world-space Gaussians: what ``animate`` returns and renderers take."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from avatar_core.rotation import matrix_to_quaternion, quaternion_multiply


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

    def transformed(self, rotation, scale: float = 1.0, translation=None) -> "GaussianFrame":
        """The Gaussians moved by x -> scale * R x + t: rotation [3, 3] (proper), scale > 0, t [3]
        (e.g. an object's world transform, for export in its scene's coordinates)."""
        dt = self.means.dtype
        R = torch.as_tensor(np.asarray(rotation, dtype=np.float64), dtype=dt, device=self.means.device)
        t = torch.zeros(3, dtype=dt, device=R.device) if translation is None else \
            torch.as_tensor(np.asarray(translation, dtype=np.float64), dtype=dt, device=R.device)
        q = matrix_to_quaternion(R)
        quats = quaternion_multiply(q.expand_as(self.quats), self.quats)
        return GaussianFrame(scale * self.means @ R.T + t, quats, self.scales * scale, self.opacities,
                             self.features)

    def index(self, b: int) -> "GaussianFrame":
        """The b-th frame as a batch of one."""
        return GaussianFrame(*(getattr(self, f.name)[b:b + 1] for f in dataclasses.fields(self)))
