"""A brute-force per-pixel compositor used as ground truth by the render tests (tiny scenes only)."""

import torch

from avatar_core.render.project import ALPHA_THRESHOLD, MAX_ALPHA, T_THRESHOLD, project_gaussians


def brute_force_render(frame, camera, background, with_depth=True):
    """Every splat against every pixel, front to back, one splat at a time (autograd-differentiable).

    Returns image [B, H, W, C], alpha [B, H, W, 1], accumulated depth [B, H, W, 1].
    """
    B = max(frame.batch, camera.batch)
    cam = camera.expand(B)

    def bc(t):
        return t.expand(B, *t.shape[1:]) if t.shape[0] != B else t

    sp = project_gaussians(bc(frame.means), bc(frame.quats), bc(frame.scales), bc(frame.opacities),
                           cam.viewmat, cam.K, cam.width, cam.height)
    W, H = cam.width, cam.height
    feats = bc(frame.features)
    dtype = feats.dtype
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    images, alphas, depths = [], [], []
    for b in range(B):
        order = torch.argsort(sp.depths[b].detach(), stable=True)
        T = torch.ones(H, W, dtype=dtype)
        done = torch.zeros(H, W, dtype=torch.bool)
        acc = torch.zeros(H, W, feats.shape[-1], dtype=dtype)
        dacc = torch.zeros(H, W, dtype=dtype)
        for n in order.tolist():
            if not bool((sp.radii[b, n] > 0).all()):
                continue
            mx, my = sp.means2d[b, n]
            ca, cb, cc = sp.conics[b, n]
            dx, dy = mx - xs, my - ys
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            alpha = torch.clamp(sp.opacities[b, n] * torch.exp(-sigma), max=MAX_ALPHA)
            use = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
            nextT = T * (1 - alpha)
            stop = use & (nextT <= T_THRESHOLD)
            done = done | stop
            use = use & ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            acc = acc + w[..., None] * feats[b, n]
            dacc = dacc + w * sp.depths[b, n]
            T = torch.where(use, nextT, T)
        images.append(acc + T[..., None] * background[b])
        alphas.append(1 - T)
        depths.append(dacc)
    return torch.stack(images), torch.stack(alphas)[..., None], torch.stack(depths)[..., None]
