"""SplitAvatar's graph over the expression Gaussians of one split layer.

Layer 0 (G0) has one Gaussian per expression-region vertex; each Gaussian of layer i-1 is
split into k children in layer i. The graph of layer i is E_topo ∪ E_conn:

* E_topo: the head mesh's edges, inside each copy. A layer-i Gaussian is identified by its
  G0 root vertex and its copy code (the path of sibling indices from G0); two Gaussians of
  the same copy code are joined when their root vertices share a mesh edge.
* E_conn: full connections among siblings (the k children of one parent).
"""

from __future__ import annotations

import torch

from avatar_core.gaussians.avatar import Avatar
from avatar_core.head.lod import edges_of


def split_lineage(avatar: Avatar):
    """Per Gaussian: G0 ancestor index [N] (-1 for non-split) and copy code [N] (0 for G0)."""
    N = avatar.num_gaussians
    root = torch.full((N,), -1, dtype=torch.long, device=avatar.device)
    code = torch.zeros(N, dtype=torch.long, device=avatar.device)
    g0 = torch.nonzero(avatar.split_layer == 0)[:, 0]
    root[g0] = g0
    for layer in range(1, avatar.split_levels + 1):
        idx = torch.nonzero(avatar.split_layer == layer)[:, 0]
        par = avatar.parent[idx]
        root[idx] = root[par]
        # sibling index = position among the parent's children (children are stored contiguously)
        first = torch.zeros(N, dtype=torch.long, device=avatar.device).fill_(N)
        first.scatter_reduce_(0, par, idx, reduce="amin")
        sib = idx - first[par]
        code[idx] = code[par] * avatar.split_k + sib
    return root, code


def split_graph(avatar: Avatar, layer: int) -> torch.Tensor:
    """Directed edge index [2, M] (both directions) over Gaussian indices of ``layer``."""
    idx = torch.nonzero(avatar.split_layer == layer)[:, 0]
    if idx.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=avatar.device)
    root, code = split_lineage(avatar)
    # root vertex of each layer Gaussian = the LOD-0 vertex its G0 ancestor sits on
    vert = avatar.bind_ids[root[idx], 0]
    # E_topo: mesh edges between Gaussians with equal copy codes
    edges = edges_of(avatar.rig_faces)
    V = avatar.rig_template.shape[0]
    C = int(code[idx].max()) + 1
    key = code[idx] * V + vert  # unique per Gaussian of the layer
    lookup = torch.full((C * V,), -1, dtype=torch.long, device=avatar.device)
    lookup[key] = idx
    topo = []
    for c in range(C):
        a = lookup[c * V + edges[:, 0]]
        b = lookup[c * V + edges[:, 1]]
        ok = (a >= 0) & (b >= 0)
        topo.append(torch.stack([a[ok], b[ok]]))
    topo = torch.cat(topo, 1)
    # E_conn: siblings fully connected (none for layer 0, whose Gaussians have no parent)
    conn = torch.zeros(2, 0, dtype=torch.long, device=avatar.device)
    if layer > 0:
        par = avatar.parent[idx]
        order = torch.argsort(par, stable=True)
        groups = idx[order].reshape(-1, avatar.split_k)  # children stored k at a time
        i, j = torch.meshgrid(torch.arange(avatar.split_k), torch.arange(avatar.split_k), indexing="ij")
        off = i != j
        conn = torch.stack([groups[:, i[off]].reshape(-1), groups[:, j[off]].reshape(-1)])
    e = torch.cat([topo, topo.flip(0), conn], 1)
    return torch.unique(e, dim=1)
