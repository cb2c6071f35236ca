"""The neural refiner: a small U-Net from the rasterised feature image to RGB.

In the spirit of the StyleUNet-light refiners of Gaussian head avatars: a 3-level
encoder-decoder (3x3 convolutions, LeakyReLU, stride-2 downsampling, 2x2 transposed-convolution
upsampling, skip connections by concatenation) that turns the C-channel feature image (first three
channels RGB) into the final RGB. It predicts a residual on top of the splatted RGB and its
last layer starts at zero, so an untrained refiner is exactly "refiner off".

    refiner = Refiner(RefinerConfig(in_channels=32))
    rgb = refine(out.image, refiner)        # [B, H, W, 3]; refine(x, None) = x[..., :3]

On a GPU, ``refiner.optimize_for_inference(torch.bfloat16)`` casts the weights to bf16 (or
fp16) and uses the channels-last layout: the NHWC image coming out of the rasterizer is
then consumed without a copy. Any H, W works (inputs are padded to a multiple of 4).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avatar_core.errors import ParameterError


@dataclasses.dataclass
class RefinerConfig:
    """in_channels: feature channels C (>= 3); widths: channels at full, 1/2 and 1/4 resolution."""

    in_channels: int = 32
    widths: Sequence[int] = (32, 64, 96)
    out_channels: int = 3

    def to_dict(self) -> Dict:
        return {"in_channels": int(self.in_channels), "widths": [int(w) for w in self.widths],
                "out_channels": int(self.out_channels)}

    @classmethod
    def from_dict(cls, d: Dict) -> "RefinerConfig":
        return cls(in_channels=int(d.get("in_channels", 32)), widths=tuple(int(w) for w in d.get("widths", (32, 64, 96))),
                   out_channels=int(d.get("out_channels", 3)))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class _Block(nn.Sequential):
    """conv3x3 -> LeakyReLU(0.2), twice; the first conv may downsample (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(_conv(cin, cout, stride), nn.LeakyReLU(0.2, inplace=True),
                         _conv(cout, cout), nn.LeakyReLU(0.2, inplace=True))


class Refiner(nn.Module):
    """features [B, H, W, C] (NHWC, as rasterised) -> RGB [B, H, W, 3] (float32)."""

    def __init__(self, config: Optional[RefinerConfig] = None):
        super().__init__()
        self.config = config = config or RefinerConfig()
        if config.in_channels < 3 or len(config.widths) != 3 or config.out_channels != 3:
            raise ParameterError("RefinerConfig needs in_channels >= 3, three widths and out_channels = 3.")
        w0, w1, w2 = config.widths
        self.enc0 = _Block(config.in_channels, w0)
        self.enc1 = _Block(w0, w1, stride=2)
        self.enc2 = _Block(w1, w2, stride=2)
        # learned 2x upsampling (a 2x2 transposed convolution computed at the coarse resolution:
        # far cheaper at full resolution than nearest-upsample + 3x3 conv)
        self.up2 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _Block(2 * w1, w1)
        self.up1 = nn.ConvTranspose2d(w1, w0, 2, stride=2)
        self.dec0 = _Block(2 * w0, w0)
        self.head = nn.Conv2d(w0, config.out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def optimize_for_inference(self, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True) -> "Refiner":
        """Cast weights to ``dtype`` (bf16/fp16 on GPU) and use the channels-last layout; eval mode."""
        self.eval()
        self.to(dtype=dtype)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4 or features.shape[-1] != self.config.in_channels:
            raise ParameterError(f"Refiner expects features [B, H, W, {self.config.in_channels}], "
                                 f"got {list(features.shape)}.")
        B, H, W, _ = features.shape
        # NHWC -> NCHW view; for a contiguous NHWC tensor this *is* the channels-last layout
        x = features.permute(0, 3, 1, 2).to(self.dtype)
        ph, pw = (-H) % 4, (-W) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.leaky_relu(self.up2(e2), 0.2), e1], 1))
        d0 = self.dec0(torch.cat([F.leaky_relu(self.up1(d1), 0.2), e0], 1))
        residual = self.head(d0)[:, :, :H, :W]
        out = features[..., :3].float() + residual.permute(0, 2, 3, 1).float()
        return out


def refine(features: torch.Tensor, refiner: Optional[Refiner] = None) -> torch.Tensor:
    """features [B, H, W, C] -> RGB [B, H, W, 3]: the refiner's output, or the first three channels when off."""
    if refiner is None:
        return features[..., :3]
    return refiner(features)


def refiner_from_state(state: Optional[Dict[str, torch.Tensor]], config: Optional[Dict] = None,
                       device=None) -> Optional[Refiner]:
    """A refiner from a saved ``state_dict`` and config dict (as stored in an avatar file); None if no state."""
    if state is None:
        return None
    refiner = Refiner(RefinerConfig.from_dict(config or {}))
    try:
        refiner.load_state_dict(state)
    except RuntimeError as exc:
        raise ParameterError(f"The refiner weights do not match the refiner configuration ({exc}).") from None
    return refiner.to(device) if device is not None else refiner
