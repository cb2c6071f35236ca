"""The CPU reference rasterizer: tile binning and front-to-back alpha compositing in torch.

Works on any torch device (it is the parity reference on CUDA too). The image is cut into
square tiles; each splat is listed in every tile its footprint rectangle touches, each
tile's list is sorted front to back, and the lists are composited in chunks of ``K``
splats for a group of tiles at a time, all pixels of a tile at once (tensors
[tiles, K, pixels]). Per pixel, as in 3DGS/gsplat:

    alpha_i = min(0.999, o_i exp(-sigma_i)),   skipped if sigma_i < 0 or alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j);       stop (exclusive) once T_i (1 - alpha_i) <= 1e-4
    out     = sum_i f_i alpha_i T_i + T_final * background

The backward pass is hand-written (:class:`_Composite`): it replays the forward chunks
(so memory stays bounded, nothing per chunk is kept) and uses
dL/dalpha_i = (g.f_i) T_i - (sum_{j>i} (g.f_j) w_j + gT T_final) / (1 - alpha_i),
where the suffix sum is the pixel's total g.out minus a running prefix sum.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch

from avatar_core.render.project import (ALPHA_THRESHOLD, MAX_ALPHA, T_THRESHOLD, Splats, num_tiles,
                                        tile_ranges)

log = logging.getLogger(__name__)

DEFAULT_TILE = 16
DEFAULT_CHUNK = 32
# elements (tiles x K x pixels) of one compositing step; bounds the working memory
# (about 15 float tensors of this size are live: 1M elements ~ 60 MB)
DEFAULT_STEP_ELEMENTS = 1 << 20


@dataclasses.dataclass
class Binning:
    """Tile lists of all images, sorted by (image, tile, depth).

    gauss [M] int64 index into the compact visible list (0..Nv-1) of each intersection;
    starts/counts [I * tiles_y * tiles_x] int64: each tile's slice of ``gauss``.
    """

    gauss: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    tiles_x: int
    tiles_y: int
    tile_size: int
    images: int

    @property
    def max_count(self) -> int:
        return int(self.counts.max()) if self.counts.numel() else 0


@torch.no_grad()
def bin_splats(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, image: torch.Tensor,
               images: int, width: int, height: int, tile_size: int = DEFAULT_TILE) -> Binning:
    """Build the sorted per-tile lists.

    Args:
        means2d: [Nv, 2] visible splats' centres (pixel centres at +0.5).
        radii: [Nv, 2] int footprint half-sizes.
        depths: [Nv] camera z (sort key, nearest first).
        image: [Nv] int64 image index of each splat.
        images: number of images I.
    """
    device = means2d.device
    tx, ty = num_tiles(width, tile_size), num_tiles(height, tile_size)
    n_tiles = tx * ty
    x0, x1, y0, y1 = tile_ranges(means2d, radii, tile_size, tx, ty)
    w = (x1 - x0).clamp_min(0)
    h = (y1 - y0).clamp_min(0)
    cnt = w * h  # [Nv]
    # front to back: expand splats in depth order, then stable-sort by tile
    order = torch.argsort(depths, stable=True)
    cnt_o = cnt[order]
    M = int(cnt_o.sum())
    if M == 0:
        z = torch.zeros(images * n_tiles, dtype=torch.int64, device=device)
        return Binning(torch.zeros(0, dtype=torch.int64, device=device), z, z.clone(), tx, ty, tile_size, images)
    src = torch.repeat_interleave(order, cnt_o, output_size=M)  # [M] splat of each intersection
    first = torch.cumsum(cnt_o, 0) - cnt_o
    local = torch.arange(M, device=device) - torch.repeat_interleave(first, cnt_o, output_size=M)
    ws = w[src]
    tile_y = y0[src] + torch.div(local, ws, rounding_mode="floor")
    tile_x = x0[src] + local % ws
    key = image[src] * n_tiles + tile_y * tx + tile_x
    key_sorted, perm = torch.sort(key, stable=True)
    gauss = src[perm]
    counts = torch.bincount(key_sorted, minlength=images * n_tiles)
    starts = torch.cumsum(counts, 0) - counts
    return Binning(gauss, starts, counts, tx, ty, tile_size, images)


def _tile_pixels(tile_ids: torch.Tensor, b: Binning, dtype) -> tuple:
    """Pixel-centre coordinates of the tiles' pixels: px, py [T, 1, P] (P = tile_size^2)."""
    ts = b.tile_size
    local = tile_ids % (b.tiles_x * b.tiles_y)
    ox = (local % b.tiles_x) * ts
    oy = torch.div(local, b.tiles_x, rounding_mode="floor") * ts
    ar = torch.arange(ts, device=tile_ids.device)
    jj = ar.repeat(ts)  # column within the tile
    ii = ar.repeat_interleave(ts)  # row within the tile
    px = (ox[:, None] + jj[None, :]).to(dtype) + 0.5
    py = (oy[:, None] + ii[None, :]).to(dtype) + 0.5
    return px[:, None, :], py[:, None, :]


def _inside_mask(b: Binning, width: int, height: int, device) -> torch.Tensor:
    """[I * n_tiles, P] bool: tile pixels that lie inside the image."""
    ts = b.tile_size
    tid = torch.arange(b.tiles_x * b.tiles_y, device=device)
    px, py = _tile_pixels(tid, b, torch.float32)
    inside = (px[:, 0] < width) & (py[:, 0] < height)
    return inside.repeat(b.images, 1)


class _Stepper:
    """Iterates over compositing steps: (chunk j, group of tiles); shared by forward and backward."""

    def __init__(self, b: Binning, chunk: int, step_elements: int):
        self.b = b
        self.K = chunk
        P = b.tile_size * b.tile_size
        self.group = max(1, step_elements // (chunk * P))

    def chunks(self):
        mc = self.b.max_count
        return range((mc + self.K - 1) // self.K)


def _alpha_chunk(params: torch.Tensor, idx: torch.Tensor, valid_slot: torch.Tensor, px, py):
    """Recompute the per-pixel alphas of one step.

    params [Nv+1, 6] = (mx, my, a, b, c, o); idx [T, K]; valid_slot [T, K] bool.
    Returns dx, dy, vis (exp(-sigma)), alpha [T, K, P] and the gathered params [T, K, 6].
    """
    g = params[idx]  # [T, K, 6]
    mx, my, ca, cb, cc, op = (g[..., i:i + 1] for i in range(6))
    dx = mx - px  # [T, K, P]  (gsplat's delta = mean - pixel)
    dy = my - py
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    vis = torch.exp(-sigma)
    raw = op * vis
    alpha = raw.clamp_max(MAX_ALPHA)
    skip = (sigma < 0) | (alpha < ALPHA_THRESHOLD) | ~valid_slot[..., None]
    alpha = alpha.masked_fill(skip, 0.0)
    return g, dx, dy, vis, raw, alpha


def _transmittance(alpha: torch.Tensor, T_in: torch.Tensor):
    """T before/after each splat of a step, and which ones are kept (before the stop).

    alpha [T, K, P]; T_in [T, P] (0 for finished pixels).
    Returns Tb [T, K, P], keep [T, K, P] bool, Ta_last [T, P].
    """
    cp = torch.cumprod(1.0 - alpha, dim=1)
    Ta = cp * T_in[:, None, :]
    Tb = torch.cat([T_in[:, None, :], Ta[:, :-1]], 1)
    keep = Ta > T_THRESHOLD
    return Tb, keep, Ta[:, -1]


def _step_indices(b: Binning, tiles: torch.Tensor, j: int, K: int):
    """idx [T, K] into the compact splat list (-1 = the dummy splat) and valid_slot [T, K]."""
    slot = j * K + torch.arange(K, device=tiles.device)  # [K]
    valid = slot[None, :] < b.counts[tiles, None]
    pos = (b.starts[tiles, None] + slot[None, :]).clamp_max(b.gauss.numel() - 1)
    idx = torch.where(valid, b.gauss[pos], torch.full_like(pos, -1))
    return idx, valid


class _Composite(torch.autograd.Function):
    """Differentiable compositing of compact splats into tile-layout buffers.

    Forward inputs: params [Nv, 6] (mx, my, a, b, c, o), feats [Nv, Cf]; non-tensor: the binning.
    Outputs: accum [I * n_tiles, P, Cf] (sum of f w) and T_final [I * n_tiles, P].
    """

    @staticmethod
    def forward(ctx, params, feats, binning: Binning, inside: torch.Tensor, chunk: int, step_elements: int):
        accum, T_final = _composite_forward(params, feats, binning, inside, chunk, step_elements)
        ctx.save_for_backward(params, feats, accum, T_final, inside)
        ctx.binning = binning
        ctx.chunk = chunk
        ctx.step_elements = step_elements
        return accum, T_final

    @staticmethod
    def backward(ctx, g_accum, g_T):
        params, feats, accum, T_final, inside = ctx.saved_tensors
        gp, gf = _composite_backward(params, feats, accum, T_final, inside, ctx.binning, ctx.chunk,
                                     ctx.step_elements, g_accum, g_T)
        return gp, gf, None, None, None, None


def _padded(params: torch.Tensor, feats: torch.Tensor):
    """Append the dummy splat (opacity 0) and the constant-1 channel used to track sum(w)."""
    dummy = torch.zeros(1, params.shape[1], dtype=params.dtype, device=params.device)
    P = torch.cat([params, dummy], 0)
    ones = torch.ones(feats.shape[0], 1, dtype=feats.dtype, device=feats.device)
    F = torch.cat([torch.cat([feats, ones], 1), torch.zeros(1, feats.shape[1] + 1, dtype=feats.dtype,
                                                               device=feats.device)], 0)
    return P, F


def _composite_forward(params, feats, b: Binning, inside, chunk, step_elements):
    device, dtype = params.device, params.dtype
    n_all = b.images * b.tiles_x * b.tiles_y
    P_pix = b.tile_size * b.tile_size
    Cf = feats.shape[1]
    accum = torch.zeros(n_all, P_pix, Cf + 1, dtype=dtype, device=device)
    T_cur = torch.ones(n_all, P_pix, dtype=dtype, device=device)
    done = ~inside.clone()
    tile_done = done.all(-1)
    if b.gauss.numel() == 0:
        return accum[..., :Cf].contiguous(), T_cur
    Pp, Fp = _padded(params, feats)
    st = _Stepper(b, chunk, step_elements)
    K = st.K
    for j in st.chunks():
        active = torch.nonzero((b.counts > j * K) & ~tile_done).flatten()
        if active.numel() == 0:
            break
        for tiles in active.split(st.group):
            idx, valid = _step_indices(b, tiles, j, K)
            _, _, _, _, _, alpha = _alpha_chunk(Pp, idx, valid, *_tile_pixels(tiles, b, dtype))
            d = done[tiles]
            Tc = T_cur[tiles]
            T_in = Tc.masked_fill(d, 0.0)
            Tb, keep, Ta_last = _transmittance(alpha, T_in)
            w = alpha * Tb * keep
            # acc[t, p, c] += sum_k w[t, k, p] * F[idx[t, k], c]
            acc = torch.bmm(w.transpose(1, 2), Fp[idx])
            accum[tiles] += acc
            stop = (Ta_last <= T_THRESHOLD) & ~d
            T_new = torch.where(stop, Tc - acc[..., -1], Ta_last)
            T_cur[tiles] = torch.where(d, Tc, T_new)
            d = d | stop
            done[tiles] = d
            tile_done[tiles] = d.all(-1)
    return accum[..., :Cf].contiguous(), T_cur


def _composite_backward(params, feats, accum, T_final, inside, b: Binning, chunk, step_elements,
                        g_accum, g_T):
    device, dtype = params.device, params.dtype
    n_all = b.images * b.tiles_x * b.tiles_y
    P_pix = b.tile_size * b.tile_size
    Cf = feats.shape[1]
    gp = torch.zeros(params.shape[0] + 1, 6, dtype=dtype, device=device)
    gf = torch.zeros(feats.shape[0] + 1, Cf, dtype=dtype, device=device)
    if b.gauss.numel() == 0:
        return gp[:-1], gf[:-1]
    if g_accum is None:
        g_accum = torch.zeros_like(accum)
    if g_T is None:
        g_T = torch.zeros_like(T_final)
    Pp, Fp = _padded(params, feats)
    Fp = Fp[:, :Cf]
    g_accum = g_accum.contiguous()
    # D = g . out (total), gTT = g_T * T_final: the suffix term of dL/dalpha
    D = (g_accum * accum).sum(-1)  # [n_all, P]
    gTT = g_T * T_final
    prefix = torch.zeros(n_all, P_pix, dtype=dtype, device=device)
    T_cur = torch.ones(n_all, P_pix, dtype=dtype, device=device)
    done = ~inside.clone()
    tile_done = done.all(-1)
    st = _Stepper(b, chunk, step_elements)
    K = st.K
    for j in st.chunks():
        active = torch.nonzero((b.counts > j * K) & ~tile_done).flatten()
        if active.numel() == 0:
            break
        for tiles in active.split(st.group):
            idx, valid = _step_indices(b, tiles, j, K)
            px, py = _tile_pixels(tiles, b, dtype)
            g, dx, dy, vis, raw, alpha = _alpha_chunk(Pp, idx, valid, px, py)
            d = done[tiles]
            Tc = T_cur[tiles]
            T_in = Tc.masked_fill(d, 0.0)
            Tb, keep, Ta_last = _transmittance(alpha, T_in)
            w = alpha * Tb * keep
            Fk = Fp[idx]  # [T, K, Cf]
            ga = g_accum[tiles]  # [T, P, Cf]
            # gdf[t, k, p] = sum_c F[t, k, c] g[t, p, c]
            gdf = torch.bmm(Fk, ga.transpose(1, 2))
            contrib = gdf * w
            pre = torch.cumsum(contrib, 1) + prefix[tiles][:, None, :]
            suffix = D[tiles][:, None, :] - pre + gTT[tiles][:, None, :]
            dA = gdf * Tb - suffix / (1.0 - alpha)
            dA = dA * (keep & (alpha > 0) & (raw <= MAX_ALPHA))
            # colour/feature gradient: gfk[t, k, c] = sum_p w[t, k, p] g[t, p, c]
            gfk = torch.bmm(w, ga)
            dS = -raw * dA  # d/dsigma
            u = dS * dx
            v = dS * dy
            ca, cb, cc = g[..., 2], g[..., 3], g[..., 4]
            su, sv = u.sum(-1), v.sum(-1)
            gpk = torch.stack([
                ca * su + cb * sv,
                cb * su + cc * sv,
                0.5 * (u * dx).sum(-1),
                (u * dy).sum(-1),
                0.5 * (v * dy).sum(-1),
                (vis * dA).sum(-1),
            ], -1)  # [T, K, 6]
            flat = idx.reshape(-1)
            flat = torch.where(flat < 0, torch.full_like(flat, params.shape[0]), flat)
            gp.index_add_(0, flat, gpk.reshape(-1, 6))
            gf.index_add_(0, flat, gfk.reshape(-1, Cf))
            prefix[tiles] = pre[:, -1]
            stop = (Ta_last <= T_THRESHOLD) & ~d
            # a stopped pixel's T is not needed again (its later T_in is 0)
            T_cur[tiles] = torch.where(d | stop, Tc, Ta_last)
            d = d | stop
            done[tiles] = d
            tile_done[tiles] = d.all(-1)
    return gp[:-1], gf[:-1]


def tiles_to_image(buf: torch.Tensor, b: Binning, width: int, height: int) -> torch.Tensor:
    """[I * ty * tx, ts * ts, ...] tile layout -> [I, H, W, ...] image layout."""
    ts = b.tile_size
    rest = buf.shape[2:]
    x = buf.reshape(b.images, b.tiles_y, b.tiles_x, ts, ts, *rest)
    x = x.transpose(2, 3).reshape(b.images, b.tiles_y * ts, b.tiles_x * ts, *rest)
    return x[:, :height, :width]


def rasterize_splats(splats: Splats, features: torch.Tensor, width: int, height: int,
                     background: Optional[torch.Tensor] = None, tile_size: int = DEFAULT_TILE,
                     chunk: int = DEFAULT_CHUNK, step_elements: int = DEFAULT_STEP_ELEMENTS):
    """Composite projected splats of I images.

    Args:
        splats: I images' splats ([I, N, ...], see :class:`Splats`).
        features: [I, N, Cf] per-splat channels to composite (features, then e.g. depth).
        background: [I, Cf] or None (zeros).
    Returns:
        accum [I, H, W, Cf] (background added), alpha [I, H, W, 1].
    """
    I, N = splats.depths.shape
    device, dtype = features.device, features.dtype
    vis = splats.visible
    bi, ni = torch.nonzero(vis, as_tuple=True)
    m2 = splats.means2d[bi, ni]
    params = torch.cat([m2, splats.conics[bi, ni], splats.opacities[bi, ni, None]], -1)
    feats = features[bi, ni]
    binning = bin_splats(m2.detach(), splats.radii[bi, ni], splats.depths[bi, ni].detach(), bi, I,
                         width, height, tile_size)
    inside = _inside_mask(binning, width, height, device)
    accum, T = _Composite.apply(params, feats, binning, inside, chunk, step_elements)
    img = tiles_to_image(accum, binning, width, height)  # [I, H, W, Cf]
    T_img = tiles_to_image(T, binning, width, height)[..., None]  # [I, H, W, 1]
    if background is not None:
        img = img + T_img * background[:, None, None, :].to(dtype)
    return img, 1.0 - T_img


def render_frame_torch(frame, camera, background: torch.Tensor, with_depth: bool = True,
                       near: float = 0.01, far: float = 1e10, eps2d: float = 0.3,
                       tile_size: int = DEFAULT_TILE, chunk: int = DEFAULT_CHUNK,
                       step_elements: int = DEFAULT_STEP_ELEMENTS):
    """The torch backend of :func:`avatar_core.render.render` (inputs already validated).

    Args:
        frame: GaussianFrame, batch Bf; camera: Camera, batch Bc (broadcast to B).
        background: [B, C].
    Returns:
        acc [B, H, W, C (+1 depth)] with the background composited, alpha [B, H, W, 1].
    """
    from avatar_core.render.project import project_gaussians

    B = max(frame.batch, camera.batch)

    def bc(t):  # broadcast the frame's batch to B
        return t.expand(B, *t.shape[1:]) if t.shape[0] != B else t

    cam = camera.expand(B)
    splats = project_gaussians(bc(frame.means), bc(frame.quats), bc(frame.scales), bc(frame.opacities),
                               cam.viewmat, cam.K, cam.width, cam.height, eps2d=eps2d, near=near, far=far)
    feats = bc(frame.features)
    if with_depth:
        feats = torch.cat([feats, splats.depths[..., None]], -1)
        background = torch.cat([background, torch.zeros_like(background[:, :1])], -1)
    return rasterize_splats(splats, feats, cam.width, cam.height, background, tile_size, chunk, step_elements)
