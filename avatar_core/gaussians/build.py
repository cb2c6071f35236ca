"""Building an avatar's Gaussians on a head model: LOD levels, split layers, shoulders.

The reconstructors (optimisation and feed-forward) start from ``build_avatar`` and then
set the Gaussians' attributes; ``synthetic_avatar`` uses it for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from avatar_core.gaussians.avatar import ALL_LODS, Avatar
from avatar_core.head.lod import lod_binding
from avatar_core.head.model import HeadModel
from avatar_core.regions import REGION_HEAD, REGION_SHOULDER, REGION_SPLIT

RGB_SKIN = (0.78, 0.60, 0.50)


def mean_edge_length(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    e = vertices[faces[:, [1, 2, 0]]] - vertices[faces]
    return float(e.norm(dim=-1).mean())


def expression_activity(head: HeadModel) -> torch.Tensor:
    """How much each LOD-0 vertex moves under the expression basis: [V] (metres)."""
    return head.exprdirs.norm(dim=1).sum(-1)


def split_region(head: HeadModel, fraction: float = 0.15) -> torch.Tensor:
    """LOD-0 vertex ids of the expression-active region (eyes, mouth, brows): the top
    ``fraction`` of vertices by expression activity."""
    act = expression_activity(head)
    k = max(1, int(round(fraction * head.num_vertices)))
    return torch.topk(act, k).indices.sort().values


def build_avatar(head: HeadModel, shape: Optional[torch.Tensor] = None, lods: Sequence[int] = (0, 1, 2),
                 channels: int = 32, split_levels: int = 2, split_k: int = 2,
                 split_vertices: Optional[torch.Tensor] = None,
                 shoulder_points: Optional[torch.Tensor] = None, shoulder_scale: float = 0.006,
                 num_identity: int = 20, seed: int = 0) -> Avatar:
    """An avatar with default attributes (flat discs on the surface, skin colour).

    Args:
        head: the head model at LOD 0.
        shape: [S'] identity coefficients baked into the rig template (None = mean head).
        lods: which LOD levels get their own head Gaussians (one per LOD-k vertex).
        channels: C feature channels (>= 3, first three RGB).
        split_levels, split_k: SplitAvatar's L and k; G0 is one Gaussian per vertex of
            ``split_vertices`` (default: ``split_region(head)``), shared by every LOD.
        shoulder_points: [M, 3] rest-space positions of shoulder/hair Gaussians bound to the
            root joint (None = no shoulder region).
        num_identity: identity components kept in the rig for later tweaks.
    """
    if channels < 3:
        raise ValueError("an avatar needs at least 3 feature channels (RGB)")
    g = torch.Generator().manual_seed(seed)
    dev = head.v_template.device
    template = head.v_template
    if shape is not None:
        shape = torch.as_tensor(shape, dtype=template.dtype, device=dev).reshape(-1)
        template = template + torch.einsum("k,vik->vi", shape, head.shapedirs[..., : shape.numel()])
    parts = []

    def add(ids, bary, face, lod, layer, parent, region, log_scale, offset=None):
        n = ids.shape[0]
        parts.append(dict(
            bind_ids=ids, bind_bary=bary, frame_face=face,
            offset=offset if offset is not None else torch.zeros(n, 3),
            rotation=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
            log_scale=log_scale, opacity_logit=torch.full((n,), 2.0),
            features=_default_features(n, channels, g),
            lod=torch.full((n,), lod, dtype=torch.int8), split_layer=torch.full((n,), layer, dtype=torch.int8),
            parent=parent, soft_mask=torch.full((n,), 2.0), region=torch.full((n,), region, dtype=torch.int8)))

    base_edge = mean_edge_length(template, head.faces)
    for k in lods:
        b = lod_binding(head.faces.cpu(), head.num_vertices, k)
        n = b.vertex_ids.shape[0]
        s = base_edge / (2 ** k) * 0.6
        log_scale = torch.tensor([math.log(s), math.log(s), math.log(s * 0.3)]).expand(n, 3).clone()
        add(b.vertex_ids, b.bary, b.face0, k, -1, torch.full((n,), -1, dtype=torch.long), REGION_HEAD, log_scale)

    if split_levels > 0:
        b0 = lod_binding(head.faces.cpu(), head.num_vertices, 0)
        verts = split_vertices if split_vertices is not None else split_region(head)
        verts = verts.cpu()
        start = sum(p["offset"].shape[0] for p in parts)
        n0 = verts.numel()
        s = base_edge * 0.5
        add(b0.vertex_ids[verts], b0.bary[verts], b0.face0[verts], ALL_LODS, 0,
            torch.full((n0,), -1, dtype=torch.long), REGION_SPLIT,
            torch.tensor([math.log(s), math.log(s), math.log(s * 0.3)]).expand(n0, 3).clone())
        prev = torch.arange(start, start + n0)
        prev_part = parts[-1]
        for layer in range(1, split_levels + 1):
            n = prev.numel() * split_k
            src = {key: v.repeat_interleave(split_k, 0) for key, v in prev_part.items()}
            s = s / split_k ** 0.5
            jitter = torch.randn(n, 3, generator=g) * s * 0.5
            jitter[:, 2] = 0.0
            start = sum(p["offset"].shape[0] for p in parts)
            add(src["bind_ids"], src["bind_bary"], src["frame_face"], ALL_LODS, layer,
                prev.repeat_interleave(split_k), REGION_SPLIT,
                torch.tensor([math.log(s), math.log(s), math.log(s * 0.3)]).expand(n, 3).clone(),
                offset=src["offset"] + jitter)
            prev = torch.arange(start, start + n)
            prev_part = parts[-1]

    if shoulder_points is not None and shoulder_points.numel() > 0:
        m = shoulder_points.shape[0]
        add(torch.zeros(m, 3, dtype=torch.long), torch.tensor([1.0, 0, 0]).expand(m, 3).clone(),
            torch.full((m,), -1, dtype=torch.long), ALL_LODS, -1, torch.full((m,), -1, dtype=torch.long),
            REGION_SHOULDER, torch.full((m, 3), math.log(shoulder_scale)), offset=shoulder_points.cpu().float())

    fields = {key: torch.cat([p[key] for p in parts], 0).to(dev) for key in parts[0]}
    S_keep = min(num_identity, head.num_shape)
    return Avatar(
        rig_template=template.clone(), rig_faces=head.faces.clone(), rig_exprdirs=head.exprdirs.clone(),
        rig_shapedirs=head.shapedirs[..., :S_keep].clone(), rig_posedirs=head.posedirs.clone(),
        rig_weights=head.lbs_weights.clone(), rig_j_regressor=head.j_regressor.clone(),
        rig_parents=head.parents.clone(), **fields,
        expr_names=list(head.expr_names), joint_names=list(head.joint_names),
        head_name=head.name, head_identity=head.identity(),
        split_k=split_k, split_levels=split_levels if split_levels > 0 else 0,
    )


def _default_features(n: int, channels: int, g: torch.Generator) -> torch.Tensor:
    f = torch.randn(n, channels, generator=g) * 0.05
    f[:, :3] = torch.tensor(RGB_SKIN) + f[:, :3] * 0.5
    return f


def synthetic_avatar(head: HeadModel, channels: int = 32, lods: Sequence[int] = (0, 1, 2),
                     split_levels: int = 2, shoulders: bool = True, seed: int = 0) -> Avatar:
    """A plausible avatar from a head model alone (tests, benchmarks, the pre-photo demo):
    skin-coloured discs shaded by height, darker 'hair' on top, and a shoulder plane."""
    shoulder = None
    if shoulders:
        xs = torch.linspace(-0.2, 0.2, 24)
        ys = torch.linspace(-0.32, -0.1, 12)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        shoulder = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.full((gx.numel(),), -0.02)], -1)
    av = build_avatar(head, lods=lods, channels=channels, split_levels=split_levels,
                      shoulder_points=shoulder, shoulder_scale=0.012, seed=seed)
    # colour by height and facing direction so the picture reads as a head
    with torch.no_grad():
        frame = av.animate(lod=max(lods), training=True, index=torch.arange(av.num_gaussians, device=av.device))
        p = frame.means[0]
        top = torch.sigmoid((p[:, 1] - 0.06) / 0.01) * torch.sigmoid((0.06 - p[:, 2]) / 0.02)
        hair = torch.tensor([0.25, 0.17, 0.12], device=p.device)
        skin = torch.tensor(RGB_SKIN, device=p.device)
        rgb = skin * (1 - top[:, None]) + hair * top[:, None]
        rgb = rgb * (0.75 + 0.25 * torch.tanh(p[:, 2] / 0.05))[:, None]
        shirt = av.region == REGION_SHOULDER
        rgb[shirt] = torch.tensor([0.2, 0.3, 0.55], device=p.device)
        av.features[:, :3] = rgb
    return av
