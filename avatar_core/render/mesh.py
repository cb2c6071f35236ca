"""A small triangle rasteriser with a z-buffer, in torch (no pytorch3d).

Used for the head preview, depth-buffer visibility (which vertices does the photo see) and
pixel -> surface look-ups (landmark correspondences). Cameras follow
:mod:`avatar_core.camera`: OpenCV axes (x right, y down, z forward), ``K`` in pixels
with integer coordinates at pixel centres (``image[i, j]`` is centred on u = j, v = i),
``viewmat`` world -> camera.

The search is vectorised over faces: every face's screen bounding box is enumerated into
(face, pixel) pairs, chunk by chunk, the pairs inside the triangle are kept, and a
scatter-min over depth keeps the nearest per pixel. No per-pixel Python loop. Faces with a
vertex nearer than ``near`` are skipped (there is no clipping); both windings are drawn
unless ``cull_backfaces``. ``bary`` and ``depth`` are recomputed for the winning faces with
plain tensor ops, so they carry gradients to the vertices (``face_id`` of course does not).

Shapes: V vertices, F faces, H x W image.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import torch

from avatar_core.errors import ParameterError

# (face, pixel) candidate pairs handled at once; bounds the memory of one step (~40 B a pair)
CHUNK_PAIRS = 1 << 21


@dataclasses.dataclass
class MeshRaster:
    """What covers each pixel.

    face_id [H, W] int64: the nearest face, -1 for background.
    bary [H, W, 3]: perspective-correct barycentric coordinates of the pixel centre's surface
        point on that face (sum to 1; zeros on background). sum_k bary[..., k] * X[face[k]]
        is the 3D point seen, for any per-vertex attribute X.
    depth [H, W]: camera-space z of that point (inf on background).
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:  # [H, W] bool
        return self.face_id >= 0


# ---------------------------------------------------------------------------------- helpers
def _check(vertices, faces, K, viewmat, width, height):
    if vertices.dim() != 2 or vertices.shape[-1] != 3:
        raise ParameterError(f"vertices must have shape [V, 3], got {list(vertices.shape)}.")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ParameterError(f"faces must have shape [F, 3], got {list(faces.shape)}.")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ParameterError(f"faces index vertices 0..{vertices.shape[0] - 1}, but hold "
                             f"{int(faces.min())}..{int(faces.max())}.")
    if tuple(K.shape) != (3, 3):
        raise ParameterError(f"K must have shape [3, 3], got {list(K.shape)}.")
    if tuple(viewmat.shape) != (4, 4):
        raise ParameterError(f"viewmat must have shape [4, 4], got {list(viewmat.shape)}.")
    if int(width) <= 0 or int(height) <= 0:
        raise ParameterError(f"image size must be positive, got {width} x {height}.")


def project_points(points: torch.Tensor, K: torch.Tensor, viewmat: torch.Tensor):
    """points [N, 3] world -> (uv [N, 2] pixels, z [N] camera depth)."""
    cam = points @ viewmat[:3, :3].T.to(points.dtype) + viewmat[:3, 3].to(points.dtype)  # [N, 3]
    z = cam[:, 2]
    zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    K = K.to(points.dtype)
    u = K[0, 0] * cam[:, 0] / zs + K[0, 1] * cam[:, 1] / zs + K[0, 2]
    v = K[1, 1] * cam[:, 1] / zs + K[1, 2]
    return torch.stack([u, v], -1), z


def _edge(ax, ay, bx, by, px, py):
    """Twice the signed area of (a, b, p): positive when p is left of a->b in pixel axes."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


# ---------------------------------------------------------------------------------- raster
def rasterize_mesh(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                   viewmat: torch.Tensor, width: int, height: int, *, near: float = 1e-3,
                   cull_backfaces: bool = False, chunk_pairs: int = CHUNK_PAIRS) -> MeshRaster:
    """Z-buffer rasterisation of a triangle mesh.

    Args:
        vertices: [V, 3] world positions.
        faces: [F, 3] int64 vertex indices.
        K: [3, 3] OpenCV intrinsics (pixels; integer coordinates are pixel centres).
        viewmat: [4, 4] world-to-camera (OpenCV axes).
        width, height: image size in pixels.
        near: faces with a vertex at camera z <= near are skipped.
        cull_backfaces: skip faces seen from behind (a face is front-facing when its
            vertices run counter-clockwise as seen by the camera, i.e. the normal
            (b - a) x (c - a) points toward the camera).
    Returns:
        MeshRaster with face_id [H, W], bary [H, W, 3], depth [H, W].
    """
    _check(vertices, faces, K, viewmat, width, height)
    W, H = int(width), int(height)
    device = vertices.device
    faces = faces.long().to(device)
    face_id = torch.full((H * W,), -1, dtype=torch.long, device=device)
    zbuf = torch.full((H * W,), float("inf"), dtype=torch.float32, device=device)

    with torch.no_grad():
        uv, z = project_points(vertices.detach().float(), K.float().to(device), viewmat.float().to(device))
        fu, fv, fz = uv[faces, 0], uv[faces, 1], z[faces]  # [F, 3] each
        area = _edge(fu[:, 0], fv[:, 0], fu[:, 1], fv[:, 1], fu[:, 2], fv[:, 2])  # [F]
        ok = (fz > near).all(1) & (area.abs() > 1e-12)
        if cull_backfaces:
            # image y points down, so a camera-facing counter-clockwise triangle has area < 0 here
            ok &= area < 0
        # candidate pixel columns j with umin <= j <= umax (pixel centres at integers)
        x0 = torch.ceil(fu.amin(1)).clamp(0, W).long()
        x1 = torch.floor(fu.amax(1)).clamp(-1, W - 1).long()
        y0 = torch.ceil(fv.amin(1)).clamp(0, H).long()
        y1 = torch.floor(fv.amax(1)).clamp(-1, H - 1).long()
        bw, bh = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
        count = torch.where(ok, bw * bh, torch.zeros_like(bw))
        live = torch.nonzero(count > 0)[:, 0]
        if live.numel():
            # chunks of whole faces with at most ~chunk_pairs pairs each (one face may exceed it)
            csum = torch.cumsum(count[live], 0)
            start, n_live = 0, live.numel()
            while start < n_live:
                base = int(csum[start - 1]) if start > 0 else 0
                stop = int(torch.searchsorted(csum, torch.tensor(base + chunk_pairs, device=device), right=True))
                stop = max(stop, start + 1)
                _raster_chunk(live[start:stop], count, x0, y0, bw, fu, fv, fz, area, W, zbuf, face_id)
                start = stop

    face_id = face_id.view(H, W)
    hit = face_id >= 0
    bary = torch.zeros(H, W, 3, dtype=vertices.dtype, device=device)
    depth = torch.full((H, W), float("inf"), dtype=vertices.dtype, device=device)
    if hit.any():
        ii, jj = torch.nonzero(hit, as_tuple=True)
        b, d = _pixel_bary(vertices, faces[face_id[ii, jj]], K, viewmat, jj, ii)
        bary[ii, jj] = b
        depth[ii, jj] = d
    return MeshRaster(face_id, bary, depth)


def _raster_chunk(fids, count, x0, y0, bw, fu, fv, fz, area, W, zbuf, face_id):
    """Enumerate the (face, pixel) pairs of faces ``fids``; update zbuf / face_id in place."""
    n = count[fids]
    pair_face = torch.repeat_interleave(fids, n)  # [P]
    first = torch.cumsum(n, 0) - n
    k = torch.arange(pair_face.numel(), device=fids.device) - torch.repeat_interleave(first, n)
    w = bw[pair_face]
    px = x0[pair_face] + k % w
    py = y0[pair_face] + k // w
    u, v = fu[pair_face], fv[pair_face]
    pxf, pyf = px.float(), py.float()
    # screen-space barycentrics: l_i = area(p, next, next-next) / area
    a = area[pair_face]
    l0 = _edge(u[:, 1], v[:, 1], u[:, 2], v[:, 2], pxf, pyf) / a
    l1 = _edge(u[:, 2], v[:, 2], u[:, 0], v[:, 0], pxf, pyf) / a
    l2 = 1.0 - l0 - l1
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    if not inside.any():
        return
    zf = fz[pair_face]
    # perspective-correct depth: 1/z interpolates linearly in screen space
    inv_z = l0 / zf[:, 0] + l1 / zf[:, 1] + l2 / zf[:, 2]
    depth = 1.0 / inv_z
    sel = inside & (inv_z > 0)
    pix = (py * W + px)[sel]
    depth, pair_face = depth[sel], pair_face[sel]
    new = zbuf.scatter_reduce(0, pix, depth, reduce="amin", include_self=True)
    # winners: pairs at their pixel's new minimum that beat the old buffer; ties -> lowest face
    win = (depth == new[pix]) & (depth < zbuf[pix])
    if win.any():
        best = torch.full_like(face_id, torch.iinfo(torch.long).max)
        best.scatter_reduce_(0, pix[win], pair_face[win], reduce="amin", include_self=True)
        changed = best < torch.iinfo(torch.long).max
        face_id[changed] = best[changed]
    zbuf.copy_(new)


def _pixel_bary(vertices, tri, K, viewmat, px, py):
    """Perspective-correct barycentrics and depth of pixel centres (px, py) on faces ``tri``.

    tri [P, 3] vertex ids; px, py [P] pixel column / row. Differentiable in ``vertices``.
    """
    uv, z = project_points(vertices, K.to(vertices.device), viewmat.to(vertices.device))
    u, v, zf = uv[tri, 0], uv[tri, 1], z[tri]  # [P, 3]
    pxf, pyf = px.to(u.dtype), py.to(u.dtype)
    a = _edge(u[:, 0], v[:, 0], u[:, 1], v[:, 1], u[:, 2], v[:, 2])
    l0 = _edge(u[:, 1], v[:, 1], u[:, 2], v[:, 2], pxf, pyf) / a
    l1 = _edge(u[:, 2], v[:, 2], u[:, 0], v[:, 0], pxf, pyf) / a
    l2 = 1.0 - l0 - l1
    w = torch.stack([l0 / zf[:, 0], l1 / zf[:, 1], l2 / zf[:, 2]], -1)  # [P, 3]
    inv_z = w.sum(-1)
    return w / inv_z[:, None], 1.0 / inv_z


# ---------------------------------------------------------------------------------- attributes
def interpolate(raster: MeshRaster, attributes: torch.Tensor, faces: torch.Tensor,
                background: Union[float, Sequence[float]] = 0.0) -> torch.Tensor:
    """Per-vertex attributes [V, C] -> per-pixel [H, W, C] through ``raster``."""
    H, W = raster.face_id.shape
    C = attributes.shape[-1]
    out = torch.zeros(H, W, C, dtype=attributes.dtype, device=attributes.device)
    out[:] = torch.as_tensor(background, dtype=attributes.dtype, device=attributes.device)
    hit = raster.face_id >= 0
    if hit.any():
        tri = faces.long()[raster.face_id[hit]]  # [P, 3]
        b = raster.bary[hit].to(attributes.dtype)  # [P, 3]
        # out[p, c] = sum_k b[p, k] * attributes[tri[p, k], c]
        out[hit] = torch.einsum("pk,pkc->pc", b, attributes[tri])
    return out


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[F, 3] unit normals, (b - a) x (c - a) (outward for counter-clockwise outward winding)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V, 3] unit normals: area-weighted sums of the adjacent faces' normals."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)  # length = 2 * area
    acc = torch.zeros_like(vertices)
    for k in range(3):
        acc.index_add_(0, faces[:, k], n)
    return acc / acc.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def shade(raster: MeshRaster, vertices: torch.Tensor, faces: torch.Tensor,
          light: Optional[Union[Sequence[float], torch.Tensor]] = (0.3, 0.4, 1.0), *,
          albedo: Union[float, Sequence[float], torch.Tensor] = (0.8, 0.8, 0.8),
          ambient: float = 0.25, smooth: bool = True,
          background: Union[float, Sequence[float]] = 1.0) -> torch.Tensor:
    """Lambertian shading of a raster: [H, W, 3] in [0, 1].

    Args:
        light: world-space direction from the surface toward the light (normalised here);
            None shows the normals instead, mapped from [-1, 1] to [0, 1].
        albedo: a grey level, an RGB triple, or per-vertex colours [V, 3].
        ambient: the light a surface facing away from the light still gets.
        smooth: interpolate vertex normals (True) or use flat face normals.
    Surfaces are one-sided: one whose normal faces away from the light gets only ambient,
    so inverted normals show up dark.
    """
    H, W = raster.face_id.shape
    dt, dev = vertices.dtype, vertices.device
    faces = faces.long().to(dev)
    hit = raster.face_id >= 0
    img = torch.empty(H, W, 3, dtype=dt, device=dev)
    img[:] = torch.as_tensor(background, dtype=dt, device=dev)
    if not hit.any():
        return img
    fid = raster.face_id[hit]
    if smooth:
        vn = vertex_normals(vertices, faces)
        n = torch.einsum("pk,pkc->pc", raster.bary[hit].to(dt), vn[faces[fid]])
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    else:
        n = face_normals(vertices, faces)[fid]
    if light is None:
        img[hit] = 0.5 * (n + 1.0)
        return img
    albedo = torch.as_tensor(albedo, dtype=dt, device=dev)
    if albedo.dim() == 2:  # per-vertex colours
        col = torch.einsum("pk,pkc->pc", raster.bary[hit].to(dt), albedo[faces[fid]])
    else:
        col = albedo.expand(3) if albedo.dim() else albedo.repeat(3)
        col = col[None].expand(n.shape[0], 3)
    l = torch.as_tensor(light, dtype=dt, device=dev)
    l = l / l.norm().clamp_min(1e-20)
    lam = (n @ l).clamp_min(0.0)
    img[hit] = (col * (ambient + (1.0 - ambient) * lam)[:, None]).clamp(0.0, 1.0)
    return img


# ---------------------------------------------------------------------------------- visibility
def visible_vertices(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                     viewmat: torch.Tensor, width: int, height: int, *,
                     raster: Optional[MeshRaster] = None, tolerance: float = 0.01,
                     relative: bool = True, near: float = 1e-3) -> torch.Tensor:
    """Which vertices the camera sees: bool [V].

    A vertex is visible when it projects inside the image, in front of ``near``, and its
    depth is at most the z-buffer's at its (nearest) pixel plus a tolerance (``tolerance * z``
    when ``relative``, else ``tolerance`` in world units). A vertex on the silhouette may round
    to a background pixel; it is then compared with the nearest depth among the 3 x 3 pixels
    around it (so a vertex just behind a rim stays hidden), and is visible if they are all
    background. ``raster`` may be passed to reuse a rasterisation of the same mesh and camera.
    """
    if raster is None:
        raster = rasterize_mesh(vertices, faces, K, viewmat, width, height, near=near)
    H, W = raster.face_id.shape
    with torch.no_grad():
        uv, z = project_points(vertices.detach().float(), K.float().to(vertices.device),
                               viewmat.float().to(vertices.device))
        j = torch.round(uv[:, 0]).long()
        i = torch.round(uv[:, 1]).long()
        inside = (j >= 0) & (j < W) & (i >= 0) & (i < H) & (z > near)
        depth = raster.depth.detach().float()
        # nearest depth of each 3 x 3 neighbourhood, for vertices that land on background
        near3 = -torch.nn.functional.max_pool2d(-depth[None, None], 3, stride=1, padding=1)[0, 0]
        zb = torch.full_like(z, float("inf"))
        at = depth[i[inside], j[inside]]
        zb[inside] = torch.where(torch.isinf(at), near3[i[inside], j[inside]], at)
        tol = tolerance * z if relative else torch.full_like(z, tolerance)
        return inside & (z <= zb + tol)
