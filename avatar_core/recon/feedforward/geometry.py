"""Geometry for the feed-forward network: the head rig as module buffers, batched
deformation with per-sample template offsets, feature subdivision, depth-buffer
visibility and the shoulder image plane.

Shapes: B batch, V0 LOD-0 vertices, Vk LOD-k vertices, J joints, E expressions,
S identity coefficients, P the shoulder plane's side.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from avatar_core.camera import Camera
from avatar_core.head import lbs
from avatar_core.head.lod import subdivide_once
from avatar_core.head.model import HeadModel


def resolve_head(spec: str) -> HeadModel:
    """``"synthetic:N"`` -> ``make_test_head(N)``; ``"open"`` -> the built-in head; else a FLAME file."""
    if spec.startswith("synthetic"):
        from avatar_core.head.synthetic import make_test_head
        sub = int(spec.split(":", 1)[1]) if ":" in spec else 4
        return make_test_head(subdivisions=sub)
    from avatar_core.head import load_head
    return load_head(spec)


class HeadRig(nn.Module):
    """The head model's arrays as non-persistent buffers, plus the LOD subdivision edges.

    Deformation matches ``Avatar.deform_rig`` exactly (blend shapes, joints regressed after
    the expression, pose correctives, LBS, translation), with a per-sample rest template.
    """

    def __init__(self, head: HeadModel, num_shape: int, max_lod: int):
        super().__init__()
        self.num_shape = min(int(num_shape), head.num_shape)
        self.max_lod = int(max_lod)
        buf = dict(v_template=head.v_template.float(), faces=head.faces.long(),
                   shapedirs=head.shapedirs[..., : self.num_shape].float(), exprdirs=head.exprdirs.float(),
                   posedirs=head.posedirs.float(), lbs_weights=head.lbs_weights.float(),
                   j_regressor=head.j_regressor.float(), parents=head.parents.long())
        for k, v in buf.items():
            self.register_buffer(k, v.clone(), persistent=False)
        faces, V = head.faces.long(), head.num_vertices
        self.counts = [V]
        self.mean_edge = [_mean_edge(head.v_template.float(), faces)]
        for level in range(self.max_lod):
            faces, edges = subdivide_once(faces, V)
            self.register_buffer(f"edges_{level}", edges, persistent=False)
            V = V + edges.shape[0]
            self.counts.append(V)
            self.mean_edge.append(self.mean_edge[-1] / 2.0)

    @property
    def num_vertices(self) -> int:
        return self.counts[0]

    @property
    def num_expr(self) -> int:
        return int(self.exprdirs.shape[-1])

    @property
    def num_joints(self) -> int:
        return int(self.lbs_weights.shape[-1])

    def rest(self, shape: torch.Tensor, offsets: torch.Tensor = None) -> torch.Tensor:
        """Rest template per sample: shape [B, S'] (S' <= S), offsets [B, V0, 3] -> [B, V0, 3]."""
        S = min(shape.shape[-1], self.num_shape)
        v = self.v_template[None] + lbs.blend_shapes(shape[:, :S], self.shapedirs[..., :S])
        return v if offsets is None else v + offsets

    def pose(self, rest: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
             translation: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """rest [B, V0, 3], expression [B, E], pose [B, J, 3], translation [B, 3]
        -> posed vertices [B, V0, 3], rest->posed joint transforms [B, J, 4, 4]."""
        verts, _, transforms = lbs.deform(rest, expression, self.exprdirs, self.j_regressor, self.posedirs,
                                          self.lbs_weights, self.parents, pose, translation)
        return verts, transforms

    def edges(self, level: int) -> torch.Tensor:
        return getattr(self, f"edges_{level}")

    def subdivide(self, values: torch.Tensor, level: int) -> torch.Tensor:
        """Per-vertex values [B, Vk, ...] at LOD ``level`` -> [B, V(k+1), ...] (edge midpoints)."""
        e = self.edges(level)
        mids = 0.5 * (values[:, e[:, 0]] + values[:, e[:, 1]])
        return torch.cat([values, mids], 1)

    def subdivide_to(self, values: torch.Tensor, level: int) -> List[torch.Tensor]:
        """LOD-0 values [B, V0, ...] -> the list of LOD 0..level versions."""
        out = [values]
        for k in range(level):
            out.append(self.subdivide(out[-1], k))
        return out


def _mean_edge(v: torch.Tensor, faces: torch.Tensor) -> float:
    e = v[faces[:, [1, 2, 0]]] - v[faces]
    return float(e.norm(dim=-1).mean())


def project(points: torch.Tensor, K: torch.Tensor, viewmat: torch.Tensor):
    """points [B, N, 3] world, K [B, 3, 3], viewmat [B, 4, 4] -> uv [B, N, 2] pixels, z [B, N]."""
    # cam[b, n, i] = sum_j R[b, i, j] p[b, n, j] + t[b, i]
    cam = torch.einsum("bij,bnj->bni", viewmat[:, :3, :3], points) + viewmat[:, None, :3, 3]
    z = cam[..., 2]
    zs = torch.where(z.abs() > 1e-9, z, torch.full_like(z, 1e-9))
    uv = torch.einsum("bij,bnj->bni", K[:, :2, :], torch.cat([cam[..., :2] / zs[..., None],
                                                              torch.ones_like(z)[..., None]], -1))
    return uv, z


def sample_map(feature_map: torch.Tensor, uv: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear samples of feature_map [B, C, h, w] at pixel coordinates uv [B, N, 2] of a
    width x height image (pixel centres at integers; the map covers the same image) -> [B, N, C]."""
    gx = (uv[..., 0] + 0.5) / width * 2.0 - 1.0
    gy = (uv[..., 1] + 0.5) / height * 2.0 - 1.0
    grid = torch.stack([gx, gy], -1)[:, :, None]  # [B, N, 1, 2]
    out = torch.nn.functional.grid_sample(feature_map, grid.to(feature_map.dtype), mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out[..., 0].transpose(1, 2)


@torch.no_grad()
def visibility(verts0: torch.Tensor, faces0: torch.Tensor, points: List[torch.Tensor], K: torch.Tensor,
               viewmat: torch.Tensor, width: int, height: int, size: int, tolerance: float):
    """OMG-Avatar's depth-buffer visibility (Eq. 5) for each LOD's vertices.

    The LOD-0 mesh verts0 [B, V0, 3] is z-buffered at ``size`` x ``size`` (the camera scaled
    from width x height); a point is visible where its depth is within ``tolerance`` (relative)
    of the buffer. Every LOD-k vertex lies on an LOD-0 face, so one buffer serves every level.
    Returns ([B, Vk] float masks for each entry of ``points``, coverage [B, size, size] bool).
    """
    from avatar_core.render.mesh import rasterize_mesh, visible_vertices
    cams = Camera(K, viewmat, width, height).scaled(size, size)
    masks = [[] for _ in points]
    cover = []
    for b in range(verts0.shape[0]):
        Kb, Vb = cams.K[b].float(), cams.viewmat[b].float()
        raster = rasterize_mesh(verts0[b].float(), faces0, Kb, Vb, size, size)
        cover.append(raster.mask)
        for i, p in enumerate(points):
            vis = visible_vertices(p[b].float(), faces0, Kb, Vb, size, size, raster=raster, tolerance=tolerance)
            masks[i].append(vis)
    return [torch.stack(m).float() for m in masks], torch.stack(cover)


def shoulder_plane(K: torch.Tensor, viewmat: torch.Tensor, width: int, height: int, size: int,
                   depth: torch.Tensor, root_transform: torch.Tensor):
    """Points of an image-aligned plane and their viewing rays, in the head's rest frame.

    A size x size grid of pixel centres covering the width x height image is lifted to
    camera depth ``depth`` [B] and mapped world -> rest through the inverse of the source's
    root transform [B, 4, 4] (shoulder Gaussians are bound to the root joint).
    Returns points [B, P*P, 3], unit ray directions [B, P*P, 3], pixel footprint [B] (metres).
    """
    B = K.shape[0]
    dev, dt = K.device, K.dtype
    step_x, step_y = width / size, height / size
    js = (torch.arange(size, device=dev, dtype=dt) + 0.5) * step_x - 0.5
    is_ = (torch.arange(size, device=dev, dtype=dt) + 0.5) * step_y - 0.5
    v, u = torch.meshgrid(is_, js, indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(size * size, device=dev, dtype=dt)], -1)
    rays_cam = torch.einsum("bij,nj->bni", torch.linalg.inv(K), pix)  # z = 1
    p_cam = rays_cam * depth[:, None, None]
    R, t = viewmat[:, :3, :3], viewmat[:, :3, 3]
    # world = R^T (p_cam - t); rays: R^T d
    p_world = torch.einsum("bji,bnj->bni", R, p_cam - t[:, None])
    d_world = torch.einsum("bji,bnj->bni", R, rays_cam)
    R0, t0 = root_transform[:, :3, :3], root_transform[:, :3, 3]
    p_rest = torch.einsum("bji,bnj->bni", R0, p_world - t0[:, None])
    d_rest = torch.einsum("bji,bnj->bni", R0, d_world)
    d_rest = d_rest / d_rest.norm(dim=-1, keepdim=True)
    footprint = depth * step_x / K[:, 0, 0]
    return p_rest, d_rest, footprint
