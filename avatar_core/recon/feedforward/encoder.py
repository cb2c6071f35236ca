"""The image encoder of the feed-forward reconstructor: a ViT with DINOv2's layout.

``ViTEncoder`` is a plain pre-norm vision transformer written for this project whose
parameter names follow the official DINOv2 checkpoints (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``register_tokens``, ``blocks.{i}.norm1 / attn.qkv /
attn.proj / ls1.gamma / norm2 / mlp.fc1 / mlp.fc2 / ls2.gamma``, ``norm``), so a local
DINOv2 ViT-B/14 weights file (``dinov2_vitb14_pretrain.pth`` or a safetensors export) loads
with :func:`load_vit_weights`. With no file the weights are random: fine for tests and
timing, not for quality.

The interface the network uses is small::

    enc = build_encoder(EncoderConfig(...))
    out = enc(image)           # image [B, 3, H, W] RGB in [0, 1]
    out.tokens                 # [B, 1 + R + h*w, D] class, register and patch tokens
    out.patches                # [B, D, h, w] patch tokens as a feature map
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_core.errors import CheckpointError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class EncoderConfig:
    """Sizes of the ViT. ``vitb14()`` is DINOv2 ViT-B/14; ``tiny()`` is for tests.

    image_size: the side the input is resized to (a multiple of ``patch``); DINOv2 uses 518
        (37 x 37 = 1,369 patch tokens, the identity-feature size OMG-Avatar reports).
    pretrain_size: the side the position embeddings were trained at (interpolated to
        ``image_size`` when they differ).
    weights: a local DINOv2 weights file, or None for random weights.
    trainable: whether the encoder is optimised (OMG-Avatar and SplitAvatar freeze DINOv2).
    """

    dim: int = 768
    depth: int = 12
    heads: int = 12
    patch: int = 14
    mlp_ratio: float = 4.0
    registers: int = 0
    image_size: int = 518
    pretrain_size: int = 518
    layerscale: float = 1e-5
    weights: Optional[str] = None
    trainable: bool = False

    @classmethod
    def vitb14(cls, **kw) -> "EncoderConfig":
        return cls(**{**dict(dim=768, depth=12, heads=12, patch=14), **kw})

    @classmethod
    def tiny(cls, **kw) -> "EncoderConfig":
        return cls(**{**dict(dim=32, depth=1, heads=2, patch=8, image_size=64, pretrain_size=64,
                             trainable=True), **kw})

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


@dataclasses.dataclass
class EncoderOutput:
    tokens: torch.Tensor    # [B, T, D]
    patches: torch.Tensor   # [B, D, h, w]


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, D, h, w]
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D]
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, h, T, D/h]
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, layerscale: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, layerscale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """Pre-norm ViT with a class token, optional register tokens and learned positions."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.image_size % cfg.patch or cfg.pretrain_size % cfg.patch:
            raise ValueError(f"encoder image_size {cfg.image_size} and pretrain_size {cfg.pretrain_size} "
                             f"must be multiples of the patch size {cfg.patch}")
        self.cfg = cfg
        n = (cfg.pretrain_size // cfg.patch) ** 2
        self.patch_embed = PatchEmbed(cfg.patch, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, cfg.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, cfg.dim)) if cfg.registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))  # unused; kept for DINOv2 key parity
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.layerscale)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.mask_token.requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w patch grid: [1, 1 + h*w, D] (bicubic resampling)."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(round(math.sqrt(n)))
        if side * side == h * w and side == h:
            return pos
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], 1)

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        """image [B, 3, H, W] RGB in [0, 1] (resized to ``image_size``) -> EncoderOutput."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"encoder input must be [B, 3, H, W], got {list(image.shape)}")
        s = self.cfg.image_size
        if image.shape[-2:] != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = (image - self.mean) / self.std
        x = self.patch_embed(x)  # [B, D, h, w]
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], 1) + self.positions(h, w)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        patches = x[:, 1 + self.cfg.registers:].transpose(1, 2).reshape(B, D, h, w)
        return EncoderOutput(x, patches)


def build_encoder(cfg: EncoderConfig) -> ViTEncoder:
    enc = ViTEncoder(cfg)
    if cfg.weights:
        load_vit_weights(enc, cfg.weights)
    if not cfg.trainable:
        enc.requires_grad_(False)
    return enc


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "teacher", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def load_vit_weights(encoder: ViTEncoder, path) -> None:
    """Load a DINOv2 state dict (official key names; ``backbone.`` / ``module.`` prefixes and the
    ``blocks.{chunk}.{i}`` layout of chunked checkpoints are accepted) into ``encoder``.

    Raises CheckpointError naming the file when it is missing, unreadable or does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The encoder weights file {str(path)!r} does not exist; expected a local "
                              "DINOv2 ViT checkpoint (.pth or .safetensors).")
    try:
        raw = _read_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one sentence
        raise CheckpointError(f"The encoder weights file {str(path)!r} could not be read ({exc}).") from exc
    sd = {}
    for k, v in raw.items():
        for prefix in ("module.", "backbone.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        parts = k.split(".")
        # chunked blocks: blocks.<chunk>.<i>.xxx -> blocks.<i>.xxx
        if len(parts) > 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
            k = ".".join([parts[0]] + parts[2:])
        sd[k] = v
    own = encoder.state_dict()
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        raise CheckpointError(f"The encoder weights in {str(path)!r} have position embeddings "
                              f"{list(sd['pos_embed'].shape)}; the configuration expects {list(own['pos_embed'].shape)} "
                              "(set encoder.pretrain_size / patch / dim to the checkpoint's).")
    missing = [k for k in own if k not in sd and k != "mask_token"]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise CheckpointError(f"The encoder weights in {str(path)!r} do not fit this ViT configuration: "
                              f"{len(missing)} missing (e.g. {missing[:3]}), {len(bad)} of another shape "
                              f"(e.g. {bad[:3]}).")
    encoder.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)
    log.info("loaded encoder weights from %s", path)
