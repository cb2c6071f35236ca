"""SplitAvatar's expression branch: G0 generator, graph splitting network, soft masks.

G0 has one Gaussian per expression-region vertex (``split_vertices``). Its attributes come
from an MLP on the vertex's fused identity feature (global + local, LOD 0) and an embedding
of the vertex's expression blend shapes, so the Gaussians know how their vertex moves; the
driving frame places them on the driving mesh through their binding (``Avatar.animate``).

Layer i -> i+1 (SplitAvatar Eq. 4-5, 10): F_i = E_i(G_i) + latent_i; H = F_i + GAT(F_i, E^i)
over E_topo ∪ E_conn; G_{i+1} = decode(H) as k children per Gaussian (offsets, scales shrunk
by 1/sqrt(k) per layer, rotations, opacities, features relative to the parent);
m_{i+1} = sigmoid(N_mask_i(F_i)).

Masks (Eq. 11-13): q(x) = [x > 0.5]; M_0 = 1;
M_{i+1} = m_{i+1} M_i + sg(q(m_{i+1}) ∧ q(M_i) - m_{i+1} M_i) (M_i duplicated k times):
forward value the logical AND, gradient that of the product (straight-through).

Shapes: B batch, n_i Gaussians of layer i (n_i = n_0 k^i), d width, C channels.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_core.recon.feedforward.blocks import (ATTR_OFFSET, ATTR_OPAC, ATTR_ROT, ATTR_SCALE, ATTR_BASE, MLP,
                                              attr_dim)

IDENTITY_QUAT = (1.0, 0.0, 0.0, 0.0)


def ste_masks(soft: List[torch.Tensor], k: int) -> List[torch.Tensor]:
    """SplitAvatar Eq. 13 for layers 1..L.

    Args:
        soft: m_1..m_L, each [B, n_i] in (0, 1) (n_i = n_{i-1} k; child c's parent is c // k).
    Returns:
        [M_0, M_1, ..., M_L] with M_0 = 1 [B, n_0]; forward values are in {0, 1}.
    """
    B, n1 = soft[0].shape if soft else (0, 0)
    M = [torch.ones(B, n1 // k, dtype=soft[0].dtype, device=soft[0].device)] if soft else []
    for m in soft:
        parent = M[-1].repeat_interleave(k, dim=1)
        logical = ((m > 0.5) & (parent > 0.5)).to(m.dtype)
        prod = m * parent
        M.append(prod + (logical - prod).detach())
    return M


class GraphAttention(nn.Module):
    """A GAT layer (Velickovic et al.) over a fixed edge list shared by the batch."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"GAT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.lin = nn.Linear(dim, dim, bias=False)
        self.att_src = nn.Parameter(torch.randn(heads, dim // heads) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(heads, dim // heads) * 0.1)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """x [B, n, d], edges [2, M] (source, target) incl. self loops -> x + GAT(x) [B, n, d]."""
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.norm(x.float())
            B, n, D = y.shape
            H = self.heads
            h = F.linear(y, self.lin.weight.float()).view(B, n, H, D // H)
            a_src = (h * self.att_src.float()).sum(-1)  # [B, n, H]
            a_dst = (h * self.att_dst.float()).sum(-1)
            src, dst = edges[0], edges[1]
            e = F.leaky_relu(a_src[:, src] + a_dst[:, dst], 0.2)  # [B, M, H]
            # softmax over each target's incoming edges
            emax = torch.full((B, n, H), -1e30, dtype=e.dtype, device=e.device)
            emax = emax.scatter_reduce(1, dst[None, :, None].expand(B, -1, H), e, reduce="amax")
            w = torch.exp(e - emax[:, dst])
            denom = torch.zeros(B, n, H, dtype=e.dtype, device=e.device).index_add(1, dst, w)
            alpha = w / denom[:, dst].clamp_min(1e-20)
            # out[b, t] = sum_{(s, t)} alpha[b, (s, t)] * h[b, s]
            msg = h[:, src] * alpha[..., None]
            agg = torch.zeros(B, n, H, D // H, dtype=h.dtype, device=h.device).index_add(1, dst, msg)
            out = F.linear(F.elu(agg.reshape(B, n, D)), self.out.weight.float(), self.out.bias.float())
        return x + out.to(dtype)


class ExpressionBranch(nn.Module):
    """G0 generator + L graph splitting layers + L soft-mask networks."""

    def __init__(self, exprdirs: torch.Tensor, split_vertices: torch.Tensor, graphs: List[torch.Tensor],
                 feat_dim: int, dim: int, hidden: int, channels: int, levels: int, k: int,
                 gat_heads: int, gat_layers: int, edge_length: float):
        super().__init__()
        self.levels, self.k, self.channels = int(levels), int(k), int(channels)
        self.edge = float(edge_length)
        self.register_buffer("split_vertices", split_vertices.long().clone(), persistent=False)
        for i, g in enumerate(graphs):
            self.register_buffer(f"graph_{i}", g.long().clone(), persistent=False)
        ed = exprdirs[split_vertices].reshape(split_vertices.numel(), -1).float()
        ed = ed / ed.abs().max().clamp_min(1e-12)
        self.register_buffer("expr_basis", ed, persistent=False)
        A = attr_dim(channels)
        self.expr_embed = nn.Linear(ed.shape[1], feat_dim)
        self.g0 = MLP([feat_dim, hidden, A + dim], final_scale=0.1)
        self.embed = nn.ModuleList(nn.Linear(A, dim) for _ in range(levels))
        self.gsn = nn.ModuleList(nn.ModuleList(GraphAttention(dim, gat_heads) for _ in range(gat_layers))
                                 for _ in range(levels))
        self.decode = nn.ModuleList(MLP([dim, hidden, k * A], final_scale=0.1) for _ in range(levels))
        self.mask = nn.ModuleList(MLP([dim, hidden // 2, k]) for _ in range(levels))
        self.sibling = nn.Parameter(torch.randn(levels, k, dim) * 0.1)
        for m in self.mask:  # start with every mask open (sigmoid(2) = 0.88)
            nn.init.constant_(m.layers[-1].bias, 2.0)

    def graph(self, layer: int) -> torch.Tensor:
        return getattr(self, f"graph_{layer}")

    @property
    def num_gaussians(self) -> int:
        n0 = self.split_vertices.numel()
        return sum(n0 * self.k ** i for i in range(self.levels + 1))

    def _g0(self, raw: torch.Tensor) -> Dict[str, torch.Tensor]:
        s = self.edge * 0.5
        base = torch.tensor([math.log(s), math.log(s), math.log(s * 0.3)], device=raw.device, dtype=raw.dtype)
        return dict(
            offset=torch.tanh(raw[..., ATTR_OFFSET]) * s,
            rotation=raw[..., ATTR_ROT] + raw.new_tensor(IDENTITY_QUAT),
            log_scale=base + torch.tanh(raw[..., ATTR_SCALE]),
            opacity_logit=raw[..., ATTR_OPAC][..., 0] + 1.0,
            features=raw[..., ATTR_BASE:],
        )

    def _embed_input(self, g: Dict[str, torch.Tensor]) -> torch.Tensor:
        rot = F.normalize(g["rotation"], dim=-1)
        return torch.cat([g["offset"] / self.edge, rot, g["log_scale"] - math.log(self.edge),
                          torch.sigmoid(g["opacity_logit"])[..., None], g["features"]], -1)

    def _children(self, g: Dict[str, torch.Tensor], raw: torch.Tensor, layer: int) -> Dict[str, torch.Tensor]:
        """raw [B, n, k, A] -> attributes of the n*k children (child j of parent p at p*k + j)."""
        k = self.k
        rep = {name: t.repeat_interleave(k, dim=1) for name, t in g.items()}
        B, n = raw.shape[:2]
        raw = raw.reshape(B, n * k, -1)
        reach = self.edge * 0.5 / math.sqrt(k) ** (layer + 1)
        return dict(
            offset=rep["offset"] + torch.tanh(raw[..., ATTR_OFFSET]) * reach,
            rotation=F.normalize(rep["rotation"], dim=-1) + raw[..., ATTR_ROT],
            log_scale=rep["log_scale"] - 0.5 * math.log(k) + 0.5 * torch.tanh(raw[..., ATTR_SCALE]),
            opacity_logit=rep["opacity_logit"] + raw[..., ATTR_OPAC][..., 0],
            features=rep["features"] + raw[..., ATTR_BASE:],
        )

    def forward(self, features0: torch.Tensor) -> Dict[str, object]:
        """features0 [B, V0, d_feat] fused LOD-0 features ->

        attrs: dict of [B, Ns, ...] over every layer in order (offset, rotation (wxyz, unit),
            log_scale, opacity_logit, features with RGB in [0, 1]);
        mask_logit [B, Ns] (layer 0: +inf-like 10, always on); soft [B, Ns] m_i (1 on layer 0);
        gate [B, Ns] the straight-through masks M_i of Eq. 13 (1 on layer 0).
        """
        x = features0[:, self.split_vertices] + self.expr_embed(self.expr_basis.to(features0.dtype))[None]
        out = self.g0(x)
        A = attr_dim(self.channels)
        g = self._g0(out[..., :A])
        latent = out[..., A:]
        layers, logits = [g], []
        for i in range(self.levels):
            f = self.embed[i](self._embed_input(g)) + latent
            h = f
            for gat in self.gsn[i]:
                h = gat(h, self.graph(i))
            logits.append(self.mask[i](f).float().reshape(f.shape[0], -1))
            B, n = h.shape[:2]
            g = self._children(g, self.decode[i](h).reshape(B, n, self.k, -1), i)
            latent = (h[:, :, None] + self.sibling[i][None, None].to(h.dtype)).reshape(B, n * self.k, -1)
            layers.append(g)
        attrs = {name: torch.cat([lay[name] for lay in layers], 1) for name in layers[0]}
        attrs["rotation"] = F.normalize(attrs["rotation"], dim=-1)
        feats = attrs["features"]
        attrs["features"] = torch.cat([torch.sigmoid(feats[..., :3]), feats[..., 3:]], -1)
        B, n0 = x.shape[:2]
        ones = torch.ones(B, n0, device=x.device, dtype=torch.float32)
        soft = [torch.sigmoid(lg) for lg in logits]
        gates = ste_masks(soft, self.k) if soft else [ones]
        logit = torch.cat([torch.full_like(ones, 10.0)] + logits, 1)
        return dict(attrs=attrs, mask_logit=logit, soft=torch.cat([ones] + soft, 1), gate=torch.cat(gates, 1))
