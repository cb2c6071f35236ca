"""The CPU reference rasterizer: tile binning and front-to-back alpha compositing in torch.

Works on any torch device (it is the parity reference on CUDA too). The image is cut into
square tiles; each splat is listed in every tile its footprint rectangle touches, each
tile's list is sorted front to back, and the lists are composited in chunks of ``K``
splats for a group of tiles at a time, all pixels of a tile at once (tensors
[tiles, K, pixels]). Per pixel, as in 3DGS/gsplat:

    alpha_i = min(0.999, o_i exp(-sigma_i)),   skipped if alpha_i < 1/255
    T_i     = prod_{j<i} (1 - alpha_j);       stop (exclusive) once T_i (1 - alpha_i) <= 1e-4
    out     = sum_i f_i alpha_i T_i + T_final * background

(gsplat also skips sigma_i < 0, which a positive-definite conic only produces by rounding at
the very centre; we keep those.) Which tiles a splat is listed in does not change the result
(its footprint rectangle covers every pixel where alpha >= 1/255), so the tile size is a speed
knob only: 8x8 is fastest on CPUs, gsplat uses 16x16.

Performance notes (one CPU thread, 512x512, 24k-Gaussian avatar: forward ~0.4 s, backward ~0.6 s
of CPU time): sigma is evaluated as two broadcast [K, ts] terms plus one product per pixel;
w_k = T_before - T_after avoids a multiply; pixel reductions in the backward are separable in
rows and columns; everything per step is O(tiles x K x pixels), bounded by ``step_elements``.

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

DEFAULT_TILE = 8
DEFAULT_CHUNK = 16  # splats per tile per step, at least
MAX_CHUNK = 256
# elements (tiles x K x pixels) of one compositing step; bounds the working memory
# (about 10 float tensors of this size are live: 1M elements ~ 40 MB)
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


def _tile_origins(tile_ids: torch.Tensor, b: Binning):
    """Top-left pixel (x, y) of each tile: two [T] int64 tensors."""
    local = tile_ids % (b.tiles_x * b.tiles_y)
    ox = (local % b.tiles_x) * b.tile_size
    oy = torch.div(local, b.tiles_x, rounding_mode="floor") * b.tile_size
    return ox, oy


def _inside_mask(b: Binning, width: int, height: int, device) -> torch.Tensor:
    """[I * n_tiles, P] bool: tile pixels that lie inside the image (P = tile_size^2, row-major)."""
    ts = b.tile_size
    ox, oy = _tile_origins(torch.arange(b.tiles_x * b.tiles_y, device=device), b)
    ar = torch.arange(ts, device=device)
    inside = ((oy[:, None, None] + ar[None, :, None]) < height) & ((ox[:, None, None] + ar[None, None, :]) < width)
    return inside.reshape(-1, ts * ts).repeat(b.images, 1)


def _step_indices(b: Binning, tiles: torch.Tensor, start: int, K: int) -> torch.Tensor:
    """idx [T, K]: slots start .. start+K-1 of each tile's list, as indices into the padded splat
    table (-1 = the dummy splat, which has opacity 0)."""
    slot = start + torch.arange(K, device=tiles.device)  # [K]
    valid = slot[None, :] < b.counts[tiles, None]
    pos = (b.starts[tiles, None] + slot[None, :]).clamp_max(b.gauss.numel() - 1)
    return torch.where(valid, b.gauss[pos], torch.full_like(pos, -1))


def _splat_values(table: torch.Tensor, idx: torch.Tensor, tiles: torch.Tensor, b: Binning):
    """o * exp(-sigma) of one step, using that the tile grid is separable.

    table [Nv+1, 6] rows (mx, my, a, b, c, log o); idx [T, K]. With dx = mx - x_col,
    dy = my - y_row: log(o exp(-sigma)) = (log o - c dy^2 / 2) + (-a dx^2 / 2) - (b dx) dy,
    i.e. two small [T, K, ts] terms broadcast plus one product: three passes over [T, K, ts, ts].
    Returns g [T, K, 6], dx [T, K, ts] (per column), dy [T, K, ts] (per row), raw [T, K, P].
    """
    ts = b.tile_size
    T, K = idx.shape
    g = table.index_select(0, idx.reshape(-1) % table.shape[0]).view(T, K, 6)
    ox, oy = _tile_origins(tiles, b)
    ar = torch.arange(ts, device=idx.device, dtype=table.dtype) + 0.5
    xs = ox.to(table.dtype)[:, None] + ar[None, :]  # [T, ts] column centres
    ys = oy.to(table.dtype)[:, None] + ar[None, :]  # [T, ts] row centres
    dx = g[..., 0:1] - xs[:, None, :]  # [T, K, ts]  (gsplat's delta = mean - pixel)
    dy = g[..., 1:2] - ys[:, None, :]
    row_term = g[..., 5:6] - 0.5 * g[..., 4:5] * dy * dy  # [T, K, ts]
    col_term = -0.5 * g[..., 2:3] * dx * dx
    bdx = g[..., 3:4] * dx
    logv = row_term[..., :, None] + col_term[..., None, :]  # [T, K, ts, ts]
    logv.addcmul_(dy[..., :, None], bdx[..., None, :], value=-1.0)
    raw = logv.exp_().view(T, K, ts * ts)
    return g, dx, dy, raw


def _rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for a [T, K] index with -1 meaning the last row, as one row-wise copy."""
    return table.index_select(0, idx.reshape(-1) % table.shape[0]).view(*idx.shape, table.shape[1])


def _weights(Ta: torch.Tensor, T_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """w_k = T_before_k - T_after_k for [T, K, P] transmittances (T_before_0 = T_in [T, P]), into ``out``."""
    torch.sub(Ta[:, :-1], Ta[:, 1:], out=out[:, 1:])
    torch.sub(T_in, Ta[:, 0], out=out[:, 0])
    return out


def _stop_columns(Ta: torch.Tensor, stop: torch.Tensor):
    """Pixels that reach T <= 1e-4 inside this step: (t, p) indices and keep [S, K] (a prefix)."""
    st, sp = torch.nonzero(stop, as_tuple=True)
    keep = Ta[st, :, sp] > T_THRESHOLD  # [S, K]
    return st, sp, keep


class _Composite(torch.autograd.Function):
    """Differentiable compositing of compact splats into tile-layout buffers.

    Inputs: params [Nv, 6] (mx, my, a, b, c, opacity), feats [Nv, Cf]; non-tensor: the binning.
    Outputs: accum [I * n_tiles, P, Cf] (sum_i f_i w_i, no background) and T_final [I * n_tiles, P].
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


def _tables(params: torch.Tensor, feats: torch.Tensor):
    """Splat table with log-opacity and a final dummy row (log o = -inf) for padded slots."""
    table = torch.cat([params[:, :5], torch.log(params[:, 5:6])], 1)
    dummy = torch.zeros(1, 6, dtype=params.dtype, device=params.device)
    dummy[0, 5] = float("-inf")
    F = torch.cat([feats, feats.new_zeros(1, feats.shape[1])], 0)
    return torch.cat([table, dummy], 0), F


def _steps(b: Binning, chunk: int, step_elements: int, tile_done: torch.Tensor):
    """Yield (start, K, tiles): slots start .. start+K-1 of the lists of a group of tiles.

    K adapts to the work left: at least ``chunk``, larger (up to MAX_CHUNK) when few tiles are
    still active, so that each step has about ``step_elements`` elements (few big steps rather
    than many tiny ones for small images or the long lists of dense tiles). Finished tiles drop
    out. Forward and backward replay exactly the same sequence.
    """
    P = b.tile_size * b.tile_size
    start, max_count = 0, b.max_count
    while start < max_count:
        active = torch.nonzero((b.counts > start) & ~tile_done).flatten()
        if active.numel() == 0:
            return
        K = max(chunk, min(MAX_CHUNK, step_elements // (active.numel() * P)))
        group = max(1, step_elements // (K * P))
        for tiles in active.split(group):
            yield start, K, tiles
        start += K


def _composite_forward(params, feats, b: Binning, inside, chunk, step_elements):
    device, dtype = params.device, params.dtype
    n_all = b.images * b.tiles_x * b.tiles_y
    P = b.tile_size * b.tile_size
    Cf = feats.shape[1]
    accum = torch.zeros(n_all, P, Cf, dtype=dtype, device=device)
    T_cur = torch.ones(n_all, P, dtype=dtype, device=device)
    done = ~inside
    tile_done = done.all(-1)
    if b.gauss.numel() == 0:
        return accum, T_cur
    table, F = _tables(params, feats)
    for start, K, tiles in _steps(b, chunk, step_elements, tile_done):
        idx = _step_indices(b, tiles, start, K)
        _, _, _, raw = _splat_values(table, idx, tiles, b)
        d = done[tiles]
        Tc = T_cur[tiles]
        T_in = Tc.masked_fill(d, 0.0)
        alpha = torch.nn.functional.threshold_(raw, ALPHA_THRESHOLD, 0.0).clamp_max_(MAX_ALPHA)
        Ta = torch.rsub(alpha, 1.0).cumprod_(1).mul_(T_in[:, None, :])  # T after each splat
        w = _weights(Ta, T_in, out=alpha)  # alpha_k T_k = T_before - T_after (alpha is not needed again)
        Fk = _rows(F, idx)  # [T, K, Cf]
        # acc[t, p, c] = sum_k w[t, k, p] F[t, k, c]
        acc = torch.bmm(w.transpose(1, 2), Fk)
        T_new = Ta[:, -1].clone()
        stop = (T_new <= T_THRESHOLD) & ~d
        if bool(stop.any()):
            st, sp, keep = _stop_columns(Ta, stop)
            wk = w[st, :, sp] * keep  # [S, K]
            acc[st, sp] = torch.bmm(wk[:, None, :], Fk[st])[:, 0]
            n_keep = keep.sum(1)
            last = Ta[st, :, sp].gather(1, (n_keep - 1).clamp_min(0)[:, None])[:, 0]
            T_new[st, sp] = torch.where(n_keep > 0, last, T_in[st, sp])
        accum.index_copy_(0, tiles, accum.index_select(0, tiles).add_(acc))
        T_cur[tiles] = torch.where(d, Tc, T_new)
        d = d | stop
        done[tiles] = d
        tile_done[tiles] = d.all(-1)
    return accum, T_cur


def _composite_backward(params, feats, accum, T_final, inside, b: Binning, chunk, step_elements,
                        g_accum, g_T):
    device, dtype = params.device, params.dtype
    n_all = b.images * b.tiles_x * b.tiles_y
    P = b.tile_size * b.tile_size
    ts = b.tile_size
    Cf = feats.shape[1]
    Nv = params.shape[0]
    gp = torch.zeros(Nv + 1, 6, dtype=dtype, device=device)
    gf = torch.zeros(Nv + 1, Cf, dtype=dtype, device=device)
    if b.gauss.numel() == 0:
        return gp[:-1], gf[:-1]
    g_accum = torch.zeros_like(accum) if g_accum is None else g_accum.contiguous()
    g_T = torch.zeros_like(T_final) if g_T is None else g_T
    table, F = _tables(params, feats)
    # suffix term of dL/dalpha: sum_{j>i} (g.f_j) w_j + gT T_final = (g.out + gT T_final) - prefix_i
    total = (g_accum * accum).sum(-1) + g_T * T_final  # [n_all, P]
    prefix = torch.zeros(n_all, P, dtype=dtype, device=device)
    T_cur = torch.ones(n_all, P, dtype=dtype, device=device)
    done = ~inside
    tile_done = done.all(-1)
    for start, K, tiles in _steps(b, chunk, step_elements, tile_done):
        idx = _step_indices(b, tiles, start, K)
        T, K = idx.shape
        g, dx, dy, raw = _splat_values(table, idx, tiles, b)
        d = done[tiles]
        Tc = T_cur[tiles]
        T_in = Tc.masked_fill(d, 0.0)
        a_t = torch.nn.functional.threshold_(raw, ALPHA_THRESHOLD, 0.0)  # 0 where skipped
        alpha = a_t.clamp_max(MAX_ALPHA)
        a_u = a_t.masked_fill_(a_t > MAX_ALPHA, 0.0)  # o exp(-sigma) where alpha is not clamped, else 0
        om = torch.rsub(alpha, 1.0)  # 1 - alpha
        Ta = om.cumprod(1).mul_(T_in[:, None, :])
        w = _weights(Ta, T_in, out=alpha)
        T_last = Ta[:, -1]
        stop = (T_last <= T_THRESHOLD) & ~d
        if bool(stop.any()):
            st, sp, keep = _stop_columns(Ta, stop)
            kf = keep.to(dtype)
            w[st, :, sp] = w[st, :, sp] * kf
            a_u[st, :, sp] = a_u[st, :, sp] * kf  # no gradient past the stop
        Fk = _rows(F, idx)  # [T, K, Cf]
        ga = g_accum.index_select(0, tiles)  # [T, P, Cf]
        # gdf[t, k, p] = sum_c F[t, k, c] g[t, p, c]
        gdf = torch.bmm(Fk, ga.transpose(1, 2))
        # feature gradient: gfk[t, k, c] = sum_p w[t, k, p] g[t, p, c]
        gfk = torch.bmm(w, ga)
        pre_in = prefix[tiles]
        pre = (gdf * w).cumsum_(1).add_(pre_in[:, None, :])
        prefix[tiles] = pre[:, -1]
        # finished pixels get suffix 0 (and w = T = 0), hence no gradient
        tot = torch.where(d, pre_in, total[tiles])
        suffix = pre.neg_().add_(tot[:, None, :])
        gdf[:, 1:].mul_(Ta[:, :-1])  # (g.f) T_before
        gdf[:, 0].mul_(T_in)
        dA = gdf.sub_(suffix.div_(om))  # dL/dalpha per (splat, pixel)
        q = a_u.mul_(dA).view(T, K, ts, ts)  # = -dL/dsigma where alpha is live and unclamped
        # reductions over the tile's pixels, separable in rows (dy) and columns (dx):
        # row/rdx/rdxx[t, k, r] = sum_c q[t, k, r, c] * (1, dx_c, dx_c^2)
        row = q.sum(-1)
        rdx = torch.einsum("tkrc,tkc->tkr", q, dx)
        rdxx = torch.einsum("tkrc,tkc->tkr", q, dx * dx)
        S0, Sx, Sxx = row.sum(-1), rdx.sum(-1), rdxx.sum(-1)
        Sy, Sxy, Syy = (row * dy).sum(-1), (rdx * dy).sum(-1), (row * dy * dy).sum(-1)
        ca, cb, cc = g[..., 2], g[..., 3], g[..., 4]
        o = torch.exp(g[..., 5]).clamp_min(1e-30)
        gpk = torch.stack([-(ca * Sx + cb * Sy), -(cb * Sx + cc * Sy), -0.5 * Sxx, -Sxy, -0.5 * Syy, S0 / o], -1)
        flat = torch.where(idx < 0, torch.full_like(idx, Nv), idx).reshape(-1)
        gp.index_add_(0, flat, gpk.reshape(-1, 6))
        gf.index_add_(0, flat, gfk.reshape(-1, Cf))
        T_cur[tiles] = torch.where(d | stop, Tc, T_last)
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
