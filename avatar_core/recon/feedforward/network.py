"""The feed-forward reconstructor: one photo (+ its fitted head) -> a multi-LOD Gaussian avatar.

OMG-Avatar's pipeline with SplitAvatar's expression branch, sizes from ``NetworkConfig``:

1. encoder (ViT, DINOv2 layout) -> identity tokens [B, T, D] and patch map [B, D, h, w];
2. global branch: learnable per-vertex queries x tokens (cross-attention) -> F_global^0
   [B, V0, d] and vertex offsets added to the rest template (Eq. 1);
3. the source mesh is posed with the fitted expression/pose and subdivided LOD 0 -> k;
   F_global^{k+1} = subdivide(F^k + Phi_k(F^k)) (Eq. 3);
4. local branch: the local feature map is sampled at the projected LOD-k vertices (Eq. 4);
   a depth buffer gives the visibility mask M (Eq. 5); F = F_global + M * F_local (Eq. 6);
5. Gaussian heads: F -> offset, rotation, scale, opacity, C features per LOD-k vertex (Eq. 7);
6. shoulder branch: convolutions on the local map -> an image-plane grid of Gaussians moved
   along their viewing rays, kept where the portrait matte is and the head's depth mask is
   not (Eq. 9-10);
7. expression branch (SplitAvatar): G0 on the expression-region vertices, L graph splitting
   layers, soft masks with straight-through gates;
8. everything becomes an ``Avatar`` (the type the optimisation path produces), animated with
   the driving frame's parameters, rasterised, and refined by the rendering's U-Net refiner.

``forward(batch, lod)`` does 1-8 for training; ``predict`` + ``to_avatar`` give the avatar
file for inference (every LOD, masked Gaussians dropped).

Batch keys (B samples; H x W = ``image_size``; cameras at that size):
    src_image [B, 3, H, W] RGB in [0, 1] composited over the background; src_alpha [B, 1, H, W];
    src_K [B, 3, 3]; src_viewmat [B, 4, 4]; shape [B, S]; src_expression [B, E];
    src_pose [B, J, 3]; src_translation [B, 3]; and drv_* likewise for the driving frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar_core.camera import Camera
from avatar_core.errors import CheckpointError
from avatar_core.gaussians.avatar import Avatar
from avatar_core.gaussians.build import build_avatar, split_region
from avatar_core.gaussians.frame import GaussianFrame
from avatar_core.gaussians.split import split_graph
from avatar_core.head.model import HeadModel
from avatar_core.recon.feedforward.blocks import (ATTR_BASE, ATTR_OFFSET, ATTR_OPAC, ATTR_ROT, ATTR_SCALE, MLP,
                                              GaussianHead, GlobalBranch, LocalHead, ShoulderBranch)
from avatar_core.recon.feedforward.encoder import EncoderConfig, build_encoder
from avatar_core.recon.feedforward.geometry import (HeadRig, project, resolve_head, sample_map, shoulder_plane,
                                                visibility)
from avatar_core.recon.feedforward.split import ExpressionBranch
from avatar_core.render import render
from avatar_core.render.refiner import Refiner, RefinerConfig

log = logging.getLogger(__name__)

FORMAT_NAME = "headsplat-feedforward"
FORMAT_VERSION = 1


@dataclasses.dataclass
class NetworkConfig:
    """Every size of the network. ``default()`` is the paper-sized model; ``tiny()`` is for CPU tests."""

    head: str = "open"                 # "open", "synthetic:N" (tests) or a FLAME file
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig.vitb14)
    image_size: int = 512              # supervision / render size H = W
    num_shape: int = 50                # identity coefficients used
    dim: int = 256                     # d: query / global feature width (OMG-Avatar: 256)
    global_layers: int = 2
    global_heads: int = 8
    global_self_attention: bool = True
    offset_scale: float = 0.01         # metres, bound of the per-vertex offsets
    local_dim: int = 128               # channels of the local feature map
    local_size: int = 296              # its side (OMG-Avatar: 296)
    local_upsample: int = 3            # x2 stages from the patch grid (37 * 8 = 296)
    max_lod: int = 2
    channels: int = 32                 # Gaussian feature channels, first three RGB
    head_hidden: int = 128
    gaussian_offset: float = 0.5       # per-Gaussian offset bound, in edge lengths of its LOD
    zbuffer_size: int = 128
    visibility_tol: float = 0.01       # relative depth tolerance of the visibility test
    shoulder: bool = True
    shoulder_size: int = 128           # image-plane grid side
    shoulder_offset: float = 0.1       # metres, bound of the offsets along the rays
    split_levels: int = 3              # SplitAvatar L
    split_k: int = 2                   # SplitAvatar k
    split_fraction: float = 0.15       # share of LOD-0 vertices in G0 (most expression-active)
    split_dim: int = 128
    split_gat_heads: int = 4
    split_gat_layers: int = 1
    refiner: bool = True               # the rendering issue's U-Net (avatar_core.render.refiner)
    refiner_widths: tuple = (32, 64, 96)
    background: float = 1.0

    @classmethod
    def default(cls, **kw) -> "NetworkConfig":
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> "NetworkConfig":
        base = dict(head="synthetic:3", encoder=EncoderConfig.tiny(), image_size=64, num_shape=8, dim=32,
                    global_layers=1, global_heads=2, local_dim=16, local_size=32, local_upsample=2,
                    max_lod=2, channels=8, head_hidden=32, zbuffer_size=32, shoulder_size=16,
                    split_levels=2, split_k=2, split_fraction=0.1, split_dim=32, split_gat_heads=2,
                    refiner_widths=(8, 8, 8))
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["refiner_widths"] = list(self.refiner_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"Unknown network configuration keys {unknown}; expected keys among "
                                  f"{sorted(names)}.")
        enc = d.pop("encoder", None)
        if isinstance(enc, dict):
            enames = {f.name for f in dataclasses.fields(EncoderConfig)}
            bad = sorted(set(enc) - enames)
            if bad:
                raise CheckpointError(f"Unknown encoder configuration keys {bad}; expected keys among {sorted(enames)}.")
            enc = EncoderConfig(**enc)
        if "refiner_widths" in d:
            d["refiner_widths"] = tuple(d["refiner_widths"])
        return cls(encoder=enc or EncoderConfig.vitb14(), **d)


class FeedForwardNet(nn.Module):
    """The network. ``head`` overrides ``cfg.head`` (the model must match the head it was built for)."""

    def __init__(self, cfg: NetworkConfig, head: Optional[HeadModel] = None):
        super().__init__()
        self.cfg = cfg
        head = head if head is not None else resolve_head(cfg.head)
        self.head_name = head.name
        self.head_identity = head.identity()
        self.expr_names = list(head.expr_names)
        self.rig = HeadRig(head, cfg.num_shape, cfg.max_lod)
        V0 = self.rig.num_vertices
        # the avatar layout: head LOD 0..K, split layers 0..L, shoulder plane
        sv = split_region(head, cfg.split_fraction) if cfg.split_levels > 0 else torch.zeros(0, dtype=torch.long)
        P2 = cfg.shoulder_size ** 2 if cfg.shoulder else 0
        self._template = build_avatar(head, lods=tuple(range(cfg.max_lod + 1)), channels=cfg.channels,
                                      split_levels=cfg.split_levels, split_k=cfg.split_k, split_vertices=sv,
                                      shoulder_points=torch.zeros(P2, 3) if P2 else None,
                                      num_identity=self.rig.num_shape).to(dtype=torch.float32)
        counts = self.rig.counts
        starts = [sum(counts[:k]) for k in range(len(counts))]
        self.head_slices = [(s, s + c) for s, c in zip(starts, counts)]
        n_head = sum(counts)
        n_split = sum(sv.numel() * cfg.split_k ** i for i in range(cfg.split_levels + 1)) if cfg.split_levels else 0
        self.split_slice = (n_head, n_head + n_split)
        self.shoulder_slice = (n_head + n_split, n_head + n_split + P2)
        assert self._template.num_gaussians == self.shoulder_slice[1]
        self._subsets: Dict = {}

        enc = cfg.encoder
        self.encoder = build_encoder(enc)
        grid = enc.image_size // enc.patch
        if cfg.local_size < grid:
            raise ValueError(f"local_size {cfg.local_size} is smaller than the encoder's patch grid {grid}")
        self.local_head = LocalHead(enc.dim, cfg.local_dim, cfg.local_size, cfg.local_upsample)
        self.global_branch = GlobalBranch(self.rig.v_template, cfg.dim, enc.dim, cfg.global_layers,
                                          cfg.global_heads, cfg.global_self_attention, cfg.offset_scale)
        self.local_proj = nn.Linear(cfg.local_dim, cfg.dim)
        self.levels = nn.ModuleList(MLP([cfg.dim, cfg.dim, cfg.dim], final_scale=0.1) for _ in range(cfg.max_lod))
        self.gaussian_head = GaussianHead(cfg.dim, cfg.head_hidden, cfg.channels)
        self.shoulder = ShoulderBranch(cfg.local_dim, cfg.head_hidden, cfg.channels, cfg.shoulder_size) \
            if cfg.shoulder else None
        if cfg.split_levels > 0:
            graphs = []
            for layer in range(cfg.split_levels):
                e = split_graph(self._template, layer)
                start = self.split_slice[0] + sum(sv.numel() * cfg.split_k ** i for i in range(layer))
                e = e - start
                n = sv.numel() * cfg.split_k ** layer
                loops = torch.arange(n)
                graphs.append(torch.cat([e, torch.stack([loops, loops])], 1))
            self.expression = ExpressionBranch(head.exprdirs, sv, graphs, cfg.dim, cfg.split_dim, cfg.head_hidden,
                                               cfg.channels, cfg.split_levels, cfg.split_k, cfg.split_gat_heads,
                                               cfg.split_gat_layers, self.rig.mean_edge[0])
        else:
            self.expression = None
        self.refiner = Refiner(RefinerConfig(in_channels=cfg.channels, widths=tuple(cfg.refiner_widths))) \
            if cfg.refiner else None
        self.amp_dtype: Optional[torch.dtype] = None  # set by the trainer (bf16 on CUDA)
        self.register_buffer("_background", torch.tensor(float(cfg.background)), persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.rig.v_template.device

    def _autocast(self, enabled: bool = True):
        dev = self.device.type
        on = enabled and self.amp_dtype is not None
        return torch.autocast(device_type=dev, dtype=self.amp_dtype or torch.bfloat16, enabled=on)

    def _head_attrs(self, raw: torch.Tensor, level: int) -> Dict[str, torch.Tensor]:
        raw = raw.float()
        s = self.rig.mean_edge[level] * 0.6
        base = raw.new_tensor([math.log(s), math.log(s), math.log(s * 0.3)])
        feats = raw[..., ATTR_BASE:]
        return dict(
            offset=torch.tanh(raw[..., ATTR_OFFSET]) * (self.cfg.gaussian_offset * self.rig.mean_edge[level]),
            rotation=F.normalize(raw[..., ATTR_ROT] + raw.new_tensor([1.0, 0, 0, 0]), dim=-1),
            log_scale=base + torch.tanh(raw[..., ATTR_SCALE]),
            opacity_logit=raw[..., ATTR_OPAC][..., 0] + 2.0,
            features=torch.cat([torch.sigmoid(feats[..., :3]), feats[..., 3:]], -1),
        )

    # ------------------------------------------------------------------ prediction
    def predict(self, batch: Dict[str, torch.Tensor], lod: int, all_lods: bool = False) -> Dict[str, object]:
        """The avatar's per-sample attributes from the source frame.

        Returns a dict: ``rest`` [B, V0, 3] (template + shape + offsets), ``vertex_offset``
        [B, V0, 3], ``head`` {k: attributes [B, Vk, ...]} for LOD ``lod`` (every LOD 0..lod with
        ``all_lods``), ``split`` (attributes [B, Ns, ...], ``mask_logit``, ``soft``, ``gate``),
        ``shoulder`` (attributes [B, P*P, ...] and ``mask`` [B, P*P] bool), ``visibility``
        {k: [B, Vk]}, ``verts0`` [B, V0, 3] the posed source mesh.
        """
        cfg = self.cfg
        if not 0 <= lod <= cfg.max_lod:
            raise ValueError(f"lod must be 0..{cfg.max_lod}, got {lod}")
        img = batch["src_image"]
        B, _, H, W = img.shape
        K, view = batch["src_K"].float(), batch["src_viewmat"].float()
        with self._autocast():
            if cfg.encoder.trainable:
                enc = self.encoder(img)
            else:
                with torch.no_grad():
                    enc = self.encoder(img)
            F_g0, voff = self.global_branch(enc.tokens)
            local_map = self.local_head(enc.patches, img)
        voff = voff.float()
        rest = self.rig.rest(batch["shape"].float(), voff)
        verts0, transforms = self.rig.pose(rest, batch["src_expression"].float(), batch["src_pose"].float(),
                                           batch["src_translation"].float())
        verts = self.rig.subdivide_to(verts0, lod)
        vis, cover = visibility(verts0.detach(), self.rig.faces, [v.detach() for v in verts], K, view, W, H,
                                cfg.zbuffer_size, cfg.visibility_tol)
        fused, head = {}, {}
        with self._autocast():
            Fg = F_g0
            for k in range(lod + 1):
                uv, _ = project(verts[k].detach(), K, view)
                local = self.local_proj(sample_map(local_map, uv, W, H))
                fused[k] = Fg + vis[k][..., None].to(Fg.dtype) * local.to(Fg.dtype)
                if all_lods or k == lod:
                    head[k] = self._head_attrs(self.gaussian_head(fused[k]), k)
                if k < lod:
                    Fg = self.rig.subdivide(Fg + self.levels[k](Fg), k)
            split = self.expression(fused[0]) if self.expression is not None else None
            raw_sh = self.shoulder(local_map).float() if self.shoulder is not None else None
        if split is not None:
            split["attrs"] = {n: t.float() for n, t in split["attrs"].items()}
        out = dict(lod=lod, rest=rest, vertex_offset=voff, head=head, split=split, visibility=vis,
                   verts0=verts0)
        if raw_sh is not None:
            out["shoulder"] = self._shoulder(raw_sh, batch, verts0, transforms, cover, K, view, W, H)
        return out

    def _shoulder(self, raw, batch, verts0, transforms, cover, K, view, W, H):
        cfg = self.cfg
        P = cfg.shoulder_size
        cam_z = project(verts0.detach(), K, view)[1]
        depth = cam_z.mean(1)
        p_rest, d_rest, footprint = shoulder_plane(K, view, W, H, P, depth, transforms[:, 0].detach())
        along = torch.tanh(raw[..., -1]) * cfg.shoulder_offset
        attrs = self._head_attrs(raw[..., :-1], 0)
        attrs["offset"] = p_rest + along[..., None] * d_rest
        s = (footprint * 0.7).log()[:, None, None]
        attrs["log_scale"] = s + torch.tanh(raw[..., ATTR_SCALE])
        attrs["opacity_logit"] = raw[..., ATTR_OPAC][..., 0] + 1.0
        alpha = F.interpolate(batch["src_alpha"].float(), size=(P, P), mode="area")[:, 0]
        head_mask = F.interpolate(cover.float()[:, None], size=(P, P), mode="area")[:, 0]
        mask = (alpha > 0.5) & (head_mask < 0.5)
        attrs["mask"] = mask.reshape(mask.shape[0], -1)
        return attrs

    # ------------------------------------------------------------------ avatars
    def _subset_template(self, lod: int, device) -> Avatar:
        key = (lod, str(device))
        if key not in self._subsets:
            idx = torch.cat([torch.arange(*self.head_slices[lod]), torch.arange(*self.split_slice),
                             torch.arange(*self.shoulder_slice)])
            self._subsets[key] = self._template.subset(idx).to(device=device)
        return self._subsets[key]

    def _fields(self, pred, b: int, lods: Sequence[int]) -> Dict[str, torch.Tensor]:
        parts = [pred["head"][k] for k in lods]
        if pred["split"] is not None:
            parts.append(pred["split"]["attrs"])
        if pred.get("shoulder") is not None:
            parts.append(pred["shoulder"])
        names = ("offset", "rotation", "log_scale", "opacity_logit", "features")
        return {n: torch.cat([p[n][b] for p in parts], 0) for n in names}

    def _soft_mask(self, pred, b: int, n_head: int) -> torch.Tensor:
        parts = [torch.full((n_head,), 10.0, device=self.device)]
        if pred["split"] is not None:
            parts.append(pred["split"]["mask_logit"][b])
        if pred.get("shoulder") is not None:
            parts.append(torch.full((pred["shoulder"]["offset"].shape[1],), 10.0, device=self.device))
        return torch.cat(parts)

    def gate(self, pred) -> torch.Tensor:
        """Per-Gaussian opacity gate [B, N] of the training avatar (head 1, split STE masks, shoulder mask)."""
        k = pred["lod"]
        B, n = pred["head"][k]["offset"].shape[:2]
        parts = [torch.ones(B, n, device=self.device)]
        if pred["split"] is not None:
            parts.append(pred["split"]["gate"])
        if pred.get("shoulder") is not None:
            parts.append(pred["shoulder"]["mask"].float())
        return torch.cat(parts, 1)

    def training_avatars(self, pred) -> List[Avatar]:
        """One differentiable Avatar per sample with LOD ``pred['lod']``'s head Gaussians, every split
        Gaussian and every shoulder-plane point (masks are applied as opacity gates)."""
        k = pred["lod"]
        sub = self._subset_template(k, self.device)
        out = []
        for b in range(pred["rest"].shape[0]):
            f = self._fields(pred, b, [k])
            out.append(dataclasses.replace(sub, rig_template=pred["rest"][b], **f,
                                           soft_mask=self._soft_mask(pred, b, pred["head"][k]["offset"].shape[1])))
        return out

    def to_avatar(self, pred, b: int = 0, source: Optional[Dict[str, torch.Tensor]] = None,
                  info: Optional[dict] = None) -> Avatar:
        """The avatar of sample b for the file: every LOD predicted, soft-mask logits stored
        (``Avatar.select`` applies them), shoulder points outside the mask dropped; detached."""
        lods = sorted(pred["head"])
        if lods != list(range(self.cfg.max_lod + 1)):
            raise ValueError("to_avatar needs a prediction with every LOD (predict(..., all_lods=True))")
        with torch.no_grad():
            f = self._fields(pred, b, lods)
            n_head = self.head_slices[-1][1]
            key = ("full", str(self.device))
            if key not in self._subsets:
                self._subsets[key] = self._template.to(device=self.device)
            av = dataclasses.replace(self._subsets[key],
                                     rig_template=pred["rest"][b].detach(),
                                     **{n: t.detach() for n, t in f.items()},
                                     soft_mask=self._soft_mask(pred, b, n_head).detach())
            if pred.get("shoulder") is not None:
                keep = torch.ones(av.num_gaussians, dtype=torch.bool, device=self.device)
                keep[self.shoulder_slice[0]:] = pred["shoulder"]["mask"][b]
                av = av.subset(torch.nonzero(keep)[:, 0])
        if self.refiner is not None:
            av.refiner_state = {k: v.detach().cpu().clone() for k, v in self.refiner.state_dict().items()}
            av.refiner_config = self.refiner.config.to_dict()
        av.source = dict(source or {})
        av.info = dict(info or {})
        return av.to(device="cpu")

    # ------------------------------------------------------------------ training forward
    def render_driving(self, pred, batch) -> Dict[str, torch.Tensor]:
        """Animate the predicted avatars with the driving parameters and render them."""
        avatars = self.training_avatars(pred)
        gate = self.gate(pred)
        frames = []
        N = avatars[0].num_gaussians
        index = torch.arange(N, device=self.device)
        for b, av in enumerate(avatars):
            frames.append(av.animate(batch["drv_expression"][b:b + 1].float(), batch["drv_pose"][b:b + 1].float(),
                                     batch["drv_translation"][b:b + 1].float(), lod=pred["lod"], index=index))
        frame = GaussianFrame(*(torch.cat([getattr(f, n.name) for f in frames], 0)
                                for n in dataclasses.fields(GaussianFrame)))
        frame.opacities = frame.opacities * gate
        H, W = batch["drv_image"].shape[-2:]
        cam = Camera(batch["drv_K"].float(), batch["drv_viewmat"].float(), W, H)
        bg = torch.zeros(frame.channels, device=self.device)
        bg[:3] = self._background
        out = render(frame, cam, background=bg, with_depth=False)
        coarse = out.image[..., :3].permute(0, 3, 1, 2)
        refined = None
        if self.refiner is not None:
            with self._autocast():
                refined = self.refiner(out.image).float().permute(0, 3, 1, 2)
        return dict(coarse=coarse, refined=refined, alpha=out.alpha.permute(0, 3, 1, 2), means=frame.means,
                    gate=gate)

    def forward(self, batch: Dict[str, torch.Tensor], lod: int) -> Dict[str, object]:
        pred = self.predict(batch, lod)
        out = self.render_driving(pred, batch)
        out["pred"] = pred
        n_head = pred["head"][lod]["offset"].shape[1]
        n_split = pred["split"]["attrs"]["offset"].shape[1] if pred["split"] is not None else 0
        out["ranges"] = dict(head=(0, n_head), split=(n_head, n_head + n_split))
        return out

    # ------------------------------------------------------------------ metadata
    def describe(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": self.cfg.to_dict(),
                "head": {"name": self.head_name, "identity": self.head_identity},
                "expr_names": self.expr_names}
