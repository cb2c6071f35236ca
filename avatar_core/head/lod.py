"""Nested level of detail by midpoint subdivision (OMG-Avatar / HIGH-Avatar).

Every triangle is split into four with a new vertex on each edge. LOD k+1 keeps LOD k's
vertices first, so a lower LOD is an index prefix of a higher one, and every per-vertex
array (blend shapes, pose correctives, skin weights, features) is carried through by the
same edge averaging. With FLAME's 5,023 vertices this gives 20,018 and 79,936.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch

from avatar_core.head.model import HeadModel

MAX_LOD = 2


def edges_of(faces: torch.Tensor) -> torch.Tensor:
    """Unique undirected edges of a triangle mesh: faces [F, 3] -> edges [E, 2] (rows sorted,
    lexicographic order). A 1-D unique on a packed key: ~30x faster than ``unique(dim=0)``."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 0)
    e = torch.sort(e, dim=1).values
    n = int(faces.max()) + 1 if faces.numel() else 1
    key = torch.unique(e[:, 0] * n + e[:, 1])
    return torch.stack([torch.div(key, n, rounding_mode="floor"), key % n], 1)


def subdivide_once(faces: torch.Tensor, num_vertices: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One midpoint subdivision step.

    Returns:
        new_faces [4F, 3]: child faces, four per parent, in parent order (child 4f+c of face f);
        edges [E, 2]: new vertex ``num_vertices + e`` is the midpoint of ``edges[e]``.
    """
    F = faces.shape[0]
    edges = edges_of(faces)
    V = num_vertices
    # map each directed face edge to the index of its midpoint vertex
    key = edges[:, 0] * (V + 1) + edges[:, 1]  # sorted: edges are in lexicographic order

    def mid(a, b):
        k = torch.minimum(a, b) * (V + 1) + torch.maximum(a, b)
        return V + torch.searchsorted(key, k)

    a, b, c = faces.unbind(1)
    ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
    new_faces = torch.stack([
        torch.stack([a, ab, ca], 1),
        torch.stack([ab, b, bc], 1),
        torch.stack([ca, bc, c], 1),
        torch.stack([ab, bc, ca], 1),
    ], 1).reshape(4 * F, 3)
    return new_faces, edges


def subdivide_array(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Carry a per-vertex array [V, ...] through one step: append edge averages -> [V + E, ...]."""
    mids = 0.5 * (values[edges[:, 0]] + values[edges[:, 1]])
    return torch.cat([values, mids], 0)


def lod_counts(faces: torch.Tensor, num_vertices: int, max_lod: int = MAX_LOD) -> List[int]:
    counts = [num_vertices]
    f, v = faces, num_vertices
    for _ in range(max_lod):
        f, e = subdivide_once(f, v)
        v = v + e.shape[0]
        counts.append(v)
    return counts


def subdivide_head(head: HeadModel, level: int) -> HeadModel:
    """The head model at LOD ``level`` (0..2), every per-vertex array carried through."""
    if not 0 <= level <= MAX_LOD:
        raise ValueError(f"LOD must be 0..{MAX_LOD}, got {level}.")
    out = head
    for _ in range(level - head.lod):
        faces, edges = subdivide_once(out.faces, out.num_vertices)
        J = out.j_regressor.shape[0]
        out = dataclasses.replace(
            out,
            v_template=subdivide_array(out.v_template, edges),
            faces=faces,
            shapedirs=subdivide_array(out.shapedirs, edges),
            exprdirs=subdivide_array(out.exprdirs, edges),
            posedirs=subdivide_array(out.posedirs, edges),
            lbs_weights=subdivide_array(out.lbs_weights, edges),
            # joints stay regressed from the LOD-0 prefix
            j_regressor=torch.cat([out.j_regressor, out.j_regressor.new_zeros(J, edges.shape[0])], 1),
            lod=out.lod + 1,
        )
    return out


@dataclasses.dataclass
class LodBinding:
    """Where each vertex of LOD k sits on the LOD-0 mesh.

    vertex_ids [Vk, 3]: the LOD-0 corners of its ancestor face; bary [Vk, 3]: its barycentric
    coordinates there; face0 [Vk]: the ancestor LOD-0 face; faces [Fk, 3]: LOD-k faces.
    Any per-vertex LOD-0 array A gives its LOD-k version as sum_i bary[:, i] * A[vertex_ids[:, i]].
    """

    vertex_ids: torch.Tensor
    bary: torch.Tensor
    face0: torch.Tensor
    faces: torch.Tensor


def lod_binding(faces0: torch.Tensor, num_vertices0: int, level: int) -> LodBinding:
    """Track every LOD-k vertex back to an LOD-0 face with barycentric coordinates."""
    F0 = faces0.shape[0]
    faces = faces0
    V = num_vertices0
    face_anc = torch.arange(F0)
    eye = torch.eye(3, dtype=torch.float64)
    corner_bary = eye.expand(F0, 3, 3).clone()  # [F, corner, bary over ancestor corners]
    for _ in range(level):
        new_faces, edges = subdivide_once(faces, V)
        b0, b1, b2 = corner_bary.unbind(1)
        m01, m12, m20 = 0.5 * (b0 + b1), 0.5 * (b1 + b2), 0.5 * (b2 + b0)
        corner_bary = torch.stack([
            torch.stack([b0, m01, m20], 1),
            torch.stack([m01, b1, m12], 1),
            torch.stack([m20, m12, b2], 1),
            torch.stack([m01, m12, m20], 1),
        ], 1).reshape(-1, 3, 3)
        face_anc = face_anc.repeat_interleave(4)
        faces = new_faces
        V = V + edges.shape[0]
    # pick, for each vertex, the first (face, corner) that holds it
    flat_v = faces.reshape(-1)
    slot = torch.full((V,), -1, dtype=torch.long)
    positions = torch.arange(flat_v.numel())
    slot.scatter_reduce_(0, flat_v, positions, reduce="amin", include_self=False)
    f_idx, c_idx = slot // 3, slot % 3
    face0 = face_anc[f_idx.clamp_min(0)]
    bary = corner_bary[f_idx.clamp_min(0), c_idx.clamp_min(0)].to(torch.float32)
    vertex_ids = faces0[face0]
    lonely = slot < 0  # vertices in no face bind to themselves with weight 1
    if lonely.any():
        ids = torch.nonzero(lonely)[:, 0]
        vertex_ids[ids] = ids[:, None].expand(-1, 3)
        bary[ids] = torch.tensor([1.0, 0.0, 0.0])
        face0[ids] = -1
    return LodBinding(vertex_ids, bary, face0, faces)
