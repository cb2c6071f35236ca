"""Building blocks of the feed-forward network (OMG-Avatar's branches).

* ``GlobalBranch``: learnable positional queries, one per LOD-0 head vertex, attend to the
  encoder's identity tokens through ``layers`` transformer decoder layers (cross-attention,
  optional self-attention, MLP) -> F_global [B, V0, d]; an MLP gives vertex offsets (Eq. 1).
* ``LocalHead``: patch tokens -> a local feature map [B, c, s, s] (convolutions with x2
  upsampling stages, plus a shallow RGB stem so the map carries pixel-level colour).
* ``GaussianHead``: fused features -> raw Gaussian attributes (Eq. 7).
* ``ShoulderBranch``: convolutions on the local map -> an image-plane grid of raw Gaussian
  attributes and offsets along the rays (Eq. 9).

Shapes: B batch, V0 vertices, T tokens, d feature width, C Gaussian channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# raw attribute layout of a Gaussian head output: offset 3, rotation 4, scale 3, opacity 1, features C
ATTR_OFFSET, ATTR_ROT, ATTR_SCALE, ATTR_OPAC = slice(0, 3), slice(3, 7), slice(7, 10), slice(10, 11)
ATTR_BASE = 11


def attr_dim(channels: int) -> int:
    return ATTR_BASE + channels


class MLP(nn.Module):
    """Linear -> GELU -> ... -> Linear; ``final_scale`` shrinks the last layer's initial weights."""

    def __init__(self, dims, final_scale: float = 1.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            self.layers[-1].weight.mul_(final_scale)
            self.layers[-1].bias.zero_()

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, N, d] queries, context [B, T, d_kv] -> [B, N, d]."""
        B, N, D = x.shape
        h = self.heads
        q = self.q(x).view(B, N, h, D // h).transpose(1, 2)
        kv = self.kv(context).view(B, context.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: cross-attention to the tokens, self-attention, MLP."""

    def __init__(self, dim: int, heads: int, token_dim: int, self_attention: bool = True):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(token_dim)
        self.cross = MultiHeadAttention(dim, heads, token_dim)
        self.self_attention = self_attention
        if self_attention:
            self.norm_s = nn.LayerNorm(dim)
            self.attn = MultiHeadAttention(dim, heads)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP([dim, 4 * dim, dim])

    def forward(self, x, tokens):
        x = x + self.cross(self.norm_q(x), self.norm_kv(tokens))
        if self.self_attention:
            y = self.norm_s(x)
            x = x + self.attn(y, y)
        return x + self.mlp(self.norm_m(x))


def sinusoidal(points: torch.Tensor, dim: int, scale: float = 10.0) -> torch.Tensor:
    """Fixed Fourier features of 3-D points [V, 3] -> [V, dim] (initialises the queries)."""
    n = max(1, dim // 6)
    freqs = scale * (2.0 ** torch.arange(n, dtype=points.dtype))
    ang = points[:, :, None] * freqs  # [V, 3, n]
    f = torch.cat([ang.sin(), ang.cos()], -1).reshape(points.shape[0], -1)
    out = torch.zeros(points.shape[0], dim, dtype=points.dtype)
    out[:, : min(dim, f.shape[1])] = f[:, :dim]
    return out


class GlobalBranch(nn.Module):
    """Per-vertex queries x identity tokens -> F_global [B, V0, d] and offsets [B, V0, 3]."""

    def __init__(self, template: torch.Tensor, dim: int, token_dim: int, layers: int, heads: int,
                 self_attention: bool, offset_scale: float):
        super().__init__()
        centred = template - template.mean(0)
        self.queries = nn.Parameter(0.5 * sinusoidal(centred / centred.abs().max(), dim, scale=3.0)
                                    + 0.02 * torch.randn(template.shape[0], dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, token_dim, self_attention) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.offset = MLP([dim, dim, 3], final_scale=0.01)
        self.offset_scale = offset_scale

    def forward(self, tokens: torch.Tensor):
        x = self.queries[None].expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, tokens)
        x = self.norm(x)
        offsets = torch.tanh(self.offset(x)) * self.offset_scale
        return x, offsets


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.n1 = nn.GroupNorm(_groups(cout), cout)
        self.n2 = nn.GroupNorm(_groups(cout), cout)

    def forward(self, x):
        x = F.silu(self.n1(self.c1(x)))
        return F.silu(self.n2(self.c2(x)))


def _groups(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class LocalHead(nn.Module):
    """Patch tokens [B, D, h, w] (+ the image) -> local feature map [B, c, size, size]."""

    def __init__(self, token_dim: int, channels: int, size: int, upsample: int):
        super().__init__()
        self.size = size
        self.inp = nn.Conv2d(token_dim, channels, 1)
        self.ups = nn.ModuleList(ConvBlock(channels, channels) for _ in range(upsample))
        stem = max(8, channels // 4)
        self.rgb = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.SiLU(), nn.Conv2d(stem, stem, 3, padding=1))
        self.fuse = nn.Conv2d(channels + stem, channels, 3, padding=1)

    def forward(self, patches: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.inp(patches)
        for blk in self.ups:
            x = blk(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        img = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False,
                            antialias=True)
        return self.fuse(torch.cat([x, self.rgb(img.to(x.dtype))], 1))


class GaussianHead(nn.Module):
    """Features [..., d] -> raw attributes [..., 11 + C] (offset, rotation, scale, opacity, features)."""

    def __init__(self, dim: int, hidden: int, channels: int):
        super().__init__()
        self.mlp = MLP([dim, hidden, hidden, attr_dim(channels)], final_scale=0.1)

    def forward(self, x):
        return self.mlp(x)


class ShoulderBranch(nn.Module):
    """Local map [B, c, s, s] -> raw plane attributes [B, P*P, 12 + C]
    (the head layout plus one offset along the viewing ray, last)."""

    def __init__(self, channels_in: int, hidden: int, channels: int, size: int):
        super().__init__()
        self.size = size
        self.block = ConvBlock(channels_in, hidden)
        self.out = nn.Conv2d(hidden, attr_dim(channels) + 1, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, local_map: torch.Tensor) -> torch.Tensor:
        shrink = local_map.shape[-1] > self.size
        x = F.interpolate(local_map.float() if shrink else local_map, size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=shrink).to(local_map.dtype)
        x = self.out(self.block(x))
        return x.flatten(2).transpose(1, 2)
