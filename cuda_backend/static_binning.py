"""Tile binning with fixed-size buffers: no host synchronisation, so it can live in a CUDA graph.

gsplat's own ``isect_tiles`` reads the number of intersections back to the host to size its
buffers. For real-time playback we bin into a buffer of fixed ``capacity`` instead:
intersection k belongs to the splat whose running tile count first exceeds k
(``searchsorted``), unused slots get the key -1 so that one sort puts them *before* every
real intersection, and per-tile offsets come from a second ``searchsorted``. gsplat's
rasterizer reads tile t's list as [offsets[t], offsets[t + 1]) (the last tile up to the
buffer's end), so the padding at the front is never read. If the frame needs more than
``capacity`` intersections, the farthest-in-order ones are dropped and ``overflow`` is set
(a device tensor: check it now and then, not every frame).

Pure torch; runs (and is tested) on the CPU too.
"""

from __future__ import annotations

import torch


def tile_grid(width: int, height: int, tile_size: int):
    return (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size


def tile_rects(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int):
    """[..., 2] centres and int radii -> x0, x1, y0, y1 [...] int64 tile rectangle [x0, x1) x [y0, y1).

    Same rule as gsplat's ``isect_tiles``: floor/ceil of (centre -/+ radius) / tile_size, clamped
    to the grid; culled splats (a radius <= 0) get an empty rectangle.
    """
    r = radii.to(means2d.dtype) / tile_size
    m = means2d / tile_size
    x0 = torch.floor(m[..., 0] - r[..., 0]).clamp(0, tiles_x).to(torch.int64)
    x1 = torch.ceil(m[..., 0] + r[..., 0]).clamp(0, tiles_x).to(torch.int64)
    y0 = torch.floor(m[..., 1] - r[..., 1]).clamp(0, tiles_y).to(torch.int64)
    y1 = torch.ceil(m[..., 1] + r[..., 1]).clamp(0, tiles_y).to(torch.int64)
    culled = (radii <= 0).any(-1)
    x1 = torch.where(culled, x0, x1)
    return x0, x1, y0, y1


def count_intersections(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int,
                        tile_size: int = 16) -> torch.Tensor:
    """Total number of (splat, tile) intersections, a 0-d int64 tensor on the input's device."""
    tx, ty = tile_grid(width, height, tile_size)
    x0, x1, y0, y1 = tile_rects(means2d, radii, tile_size, tx, ty)
    return ((x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)).sum()


def bin_static(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int,
               tile_size: int, capacity: int):
    """Sorted per-tile splat lists in gsplat's layout, with fixed-size outputs.

    Args:
        means2d: [I, N, 2] projected centres (gsplat pixel convention); radii [I, N, 2] int32
            (0 = culled); depths [I, N] camera z (> 0 for visible splats). I = number of images.
        capacity: size of the intersection buffer.
    Returns:
        offsets [I, tiles_y, tiles_x] int32, flatten_ids [capacity] int32 (indices into I * N),
        overflow 0-d bool tensor (True if intersections were dropped).
    """
    I, N = depths.shape
    device = means2d.device
    tx, ty = tile_grid(width, height, tile_size)
    n_tiles = tx * ty
    x0, x1, y0, y1 = tile_rects(means2d, radii, tile_size, tx, ty)
    w = (x1 - x0).clamp_min(0).reshape(-1)
    cnt = w * (y1 - y0).clamp_min(0).reshape(-1)  # [I * N]
    cum = torch.cumsum(cnt, 0)  # inclusive
    total = cum[-1]
    k = torch.arange(capacity, device=device, dtype=torch.int64)
    g = torch.searchsorted(cum, k, right=True).clamp_max(I * N - 1)  # splat owning slot k
    valid = k < total
    local = k - (cum[g] - cnt[g])
    wg = w[g].clamp_min(1)
    row = torch.div(local, wg, rounding_mode="floor")
    tile = y0.reshape(-1)[g] + row
    tile = tile * tx + x0.reshape(-1)[g] + (local - row * wg)
    image = torch.div(g, N, rounding_mode="floor")
    depth_bits = depths.contiguous().view(torch.int32).reshape(-1).to(torch.int64) & 0xFFFFFFFF
    key = ((image * n_tiles + tile) << 32) | depth_bits[g]
    key = torch.where(valid, key, torch.full_like(key, -1))
    key_sorted, perm = torch.sort(key)
    flatten_ids = g[perm].to(torch.int32)
    tile_sorted = key_sorted >> 32  # -1 for padding
    bounds = torch.arange(I * n_tiles, device=device, dtype=torch.int64)
    offsets = torch.searchsorted(tile_sorted, bounds).to(torch.int32).reshape(I, ty, tx)
    return offsets, flatten_ids, total > capacity


_COMPILED = None


def compiled_bin_static():
    """``bin_static`` through ``torch.compile`` (its ~30 small element-wise kernels fused); lazy, cached."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(bin_static, dynamic=False)
    return _COMPILED
