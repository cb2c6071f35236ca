"""Fitting the Gaussians to the photo by differentiable rendering, coarse to fine over LODs.

Stage k renders LOD k (its head Gaussians plus the shared split and shoulder/hair ones)
from the source camera and minimises

    L = 0.8 L1 + 0.2 (1 - SSIM)                       photometric, against the matted photo
      + 0.5 L1(alpha, matte)                          silhouette
      + w_off  mean (|offset| / size)^2               stay near the surface
      + w_scl  mean relu(log s - log s0 - log 3)^2    no Gaussian grows past 3x its start
      + w_opa  mean softplus(-opacity logit) (head)   a solid head, not a haze
      + w_spa  mean sigmoid(soft mask) (split >= 1)   SplitAvatar's sparsity on the soft masks

over the photo's pixels not held out (see ``holdout_grid``; the padding where the photo ends
inside the crop is left out). Soft masks act through the straight-through estimator
(``Avatar.animate(training=True)``). Stage 0 trains the LOD-0 head and the shared Gaussians;
later stages train only their own head Gaussians, so every LOD stays a good avatar on its own
(the shared ones were made for all of them). Each finer LOD starts from the coarser one's
optimised geometry and opacity (``transfer_lod``), and from the photo's colours. Plane
(shoulder/hair) Gaussians keep their place on their viewing rays.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from avatar_core.gaussians.avatar import ALL_LODS, Avatar, face_frames
from avatar_core.metrics import ssim_map
from avatar_core.recon.init import LodChain, SourceView
from avatar_core.recon.threads import ThreadGovernor
from avatar_core.regions import REGION_HEAD, REGION_SHOULDER
from avatar_core.render import render

log = logging.getLogger(__name__)

BACKGROUND = 1.0
W_SSIM = 0.2
W_ALPHA = 0.5
W_OFFSET = 0.02
W_SCALE = 1.0
W_OPACITY = 0.002
W_SPARSE = 0.002
GRAZING = 0.15
# CGLS colour solve: a Gaussian whose unbounded solution leaves [0, 1] by more than this keeps its
# initial colour (see solve_colours)
OUT_OF_RANGE = 0.1
LR = {"features": 0.02, "opacity_logit": 0.05, "log_scale": 0.01, "offset": 0.0002,
      "rotation": 0.003, "soft_mask": 0.01}


def holdout_grid(fraction: float, cells: int = 32, seed: int = 0) -> torch.Tensor:
    """A [cells, cells] bool pattern of held-out patches (about ``fraction`` of them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(cells, cells, generator=g) < fraction


def grid_mask(grid: torch.Tensor, size: int) -> torch.Tensor:
    """The patch pattern at an image size: [size, size] bool (nearest-neighbour upsampling)."""
    return F.interpolate(grid[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5


@dataclasses.dataclass
class Target:
    """The photo at one resolution: rgb [1, s, s, 3] matted onto the background, alpha
    [1, s, s, 1] matte, train [1, s, s, 1] weights (0 on held-out patches), camera."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    train: torch.Tensor
    holdout: torch.Tensor
    camera: object


class PhotoFit:
    """Holds the avatar's optimisable tensors and runs the stages."""

    def __init__(self, avatar: Avatar, view: SourceView, holdout: torch.Tensor, facing: torch.Tensor,
                 device: torch.device, governor: Optional[ThreadGovernor] = None):
        self.avatar = avatar
        self.governor = governor or ThreadGovernor(enabled=False)
        self.view = view
        self.holdout = holdout
        self.device = device
        self._targets: Dict[int, Target] = {}
        self.log_scale0 = avatar.log_scale.detach().clone()
        self.size0 = self.log_scale0[:, :2].exp().mean(-1).clamp_min(1e-5)
        # Gaussians facing well away from the source camera cannot be seen; leaving them out of
        # the source renders changes nothing there and saves time (they keep their initial values)
        self.front = (facing > -0.3) | (avatar.frame_face < 0) | (avatar.region != REGION_HEAD)
        # the photo says little about surfaces it sees edge-on: their colours would be bent to
        # fix a few silhouette pixels and show as streaks in turned views, so they keep their
        # initial (mirrored / filled) colour
        self.colour_free = (facing > GRAZING) | (avatar.region == REGION_SHOULDER)
        self.opacity_free = torch.ones_like(self.colour_free)
        self.shape_free = torch.ones_like(self.colour_free)   # offset and scale
        self.plane = avatar.region == REGION_SHOULDER
        self.head = avatar.region == REGION_HEAD
        self.split_gated = avatar.split_layer >= 1
        self.history = []

    # ------------------------------------------------------------------ targets
    def target(self, size: int) -> Target:
        if size not in self._targets:
            img, alpha, cam = self.view.resized(size)
            bg = torch.full_like(img, BACKGROUND)
            rgb = img * alpha[..., None] + bg * (1 - alpha[..., None])
            hold = grid_mask(self.holdout, size).to(img)
            # pixels outside the photo (padding where it ends inside the crop) are no evidence:
            # the body that goes on past the photo's edge must not be faded there
            photo = self.view.inside_at(size).to(img)
            dev = self.device
            self._targets[size] = Target(rgb[None].to(dev), alpha[None, ..., None].to(dev),
                                         ((1 - hold) * photo)[None, ..., None].to(dev),
                                         (hold * photo)[None, ..., None].to(dev), cam.to(device=dev))
        return self._targets[size]

    def index(self, lod: int) -> torch.Tensor:
        """Gaussians rendered in the source view at ``lod`` during training (masks gate opacity)."""
        a = self.avatar
        keep = ((a.lod == lod) | (a.lod == ALL_LODS)) & self.front
        return torch.nonzero(keep)[:, 0]

    def render(self, lod: int, size: int, training: bool = False, index=None, background=BACKGROUND,
               camera=None):
        a = self.avatar
        if index is None:
            index = self.index(lod) if training else a.select(lod)
        frame = a.animate(**self.view.params, lod=lod, index=index, training=training)
        cam = camera if camera is not None else self.target(size).camera
        return render(frame, cam, background=background, with_depth=False)

    # ------------------------------------------------------------------ optimisation
    def _leaves(self):
        a = self.avatar
        for name in LR:
            t = getattr(a, name).detach().clone().requires_grad_(True)
            setattr(a, name, t)
        return {name: getattr(a, name) for name in LR}

    def _freeze(self):
        a = self.avatar
        for name in LR:
            setattr(a, name, getattr(a, name).detach())

    def loss(self, out, tgt: Target, trainable_idx: Optional[torch.Tensor] = None):
        img = out.image[..., :3]
        w = tgt.train
        wsum = w.sum().clamp_min(1.0)
        l1 = ((img - tgt.rgb).abs() * w).sum() / (wsum * 3)
        ssim = ssim_map(img, tgt.rgb)[..., None]
        l_ssim = ((1 - ssim) * w).sum() / wsum
        l_alpha = ((out.alpha - tgt.alpha).abs() * w).sum() / wsum
        # l1 stays a tensor: reading it every step would wait for the GPU
        return (1 - W_SSIM) * l1 + W_SSIM * l_ssim + W_ALPHA * l_alpha, l1.detach()

    def regulariser_groups(self, trainable: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The Gaussians each regulariser acts on (computed once per stage, not per step)."""
        groups = {"offset": trainable & ~self.plane, "scale": trainable, "opacity": trainable & self.head,
                  "sparse": trainable & self.split_gated}
        return {k: torch.nonzero(m)[:, 0] for k, m in groups.items() if bool(m.any())}

    def regularisers(self, groups: Dict[str, torch.Tensor]):
        a = self.avatar
        reg = torch.zeros((), device=a.device)
        if "offset" in groups:
            idx = groups["offset"]
            reg = reg + W_OFFSET * ((a.offset[idx] / self.size0[idx, None]) ** 2).mean()
        if "scale" in groups:
            idx = groups["scale"]
            grow = F.relu(a.log_scale[idx] - self.log_scale0[idx] - math.log(3.0))
            reg = reg + W_SCALE * (grow ** 2).mean()
        if "opacity" in groups:
            reg = reg + W_OPACITY * F.softplus(-a.opacity_logit[groups["opacity"]]).mean()
        if "sparse" in groups:
            reg = reg + W_SPARSE * torch.sigmoid(a.soft_mask[groups["sparse"]]).mean()
        return reg

    def run_stage(self, lod: int, steps: int, size: int, train_shared: bool, progress=None,
                  lr_scale: float = 1.0, extra=None, label: str = "") -> Dict[str, float]:
        """Optimise LOD ``lod`` at ``size`` px for ``steps`` Adam steps.

        Args:
            train_shared: also train the shared (split, shoulder/hair) Gaussians.
            extra: optional object with ``parameters()``, ``__call__(rgb_features [B,H,W,C]) ->
                rgb`` and ``loss(coarse, refined, target)``: the refiner, trained jointly.
        Returns:
            {"loss": last photometric L1, "seconds": wall time, "steps": steps}.
        """
        a = self.avatar
        t0 = time.perf_counter()
        if steps <= 0:
            return {"l1": float("nan"), "seconds": 0.0, "steps": 0}
        tgt = self.target(size)
        own = (a.lod == lod) & self.head
        shared = a.lod == ALL_LODS
        trainable = own | (shared if train_shared else torch.zeros_like(shared))
        trainable = trainable & self.front
        index = self.index(lod)
        leaves = self._leaves()
        groups = [{"params": [leaves[n]], "lr": LR[n] * lr_scale, "name": n} for n in LR]
        if extra is not None:
            groups.append({"params": list(extra.parameters()), "lr": extra.lr, "name": "refiner"})
        # on CUDA one fused kernel per group updates every tensor (fewer launches per step)
        opt = torch.optim.Adam(groups, fused=self.device.type == "cuda")
        base = [g["lr"] for g in opt.param_groups]
        # gradients of frozen Gaussians are zeroed by multiplying with 0/1 masks (no host sync)
        free = {"offset": trainable & ~self.plane & self.shape_free, "log_scale": trainable & self.shape_free,
                "features": trainable & self.colour_free, "opacity_logit": trainable & self.opacity_free}
        keep = {n: free.get(n, trainable).to(p.dtype).view(-1, *[1] * (p.dim() - 1)) for n, p in leaves.items()}
        reg_groups = self.regulariser_groups(trainable)
        l1 = torch.tensor(float("nan"))
        self.governor.begin()
        try:
            for it in range(steps):
                if progress is not None:
                    progress(it / steps, f"{label} step {it + 1}/{steps}")
                # exponential decay to 0.2x over the stage
                decay = 0.2 ** (it / max(steps - 1, 1))
                for g, b in zip(opt.param_groups, base):
                    g["lr"] = b * decay
                opt.zero_grad(set_to_none=False)
                out = self.render(lod, size, training=True, index=index)
                loss, l1 = self.loss(out, tgt)
                if extra is not None:
                    loss = loss + extra.loss(out, tgt)
                loss = loss + self.regularisers(reg_groups)
                loss.backward()
                with torch.no_grad():
                    for n, p in leaves.items():
                        if p.grad is not None:
                            p.grad.mul_(keep[n])
                opt.step()
                self.governor.tick()
        finally:
            self._freeze()
        l1 = float(l1)
        secs = time.perf_counter() - t0
        self.history.append({"lod": lod, "size": size, "steps": steps, "l1": l1, "seconds": secs})
        log.debug("stage LOD %d at %d px: %d steps, L1 %.4f, %.1f s", lod, size, steps, l1, secs)
        return {"l1": l1, "seconds": secs, "steps": steps}

    def solve_colours(self, lod: int, size: int, iterations: int, trainable: torch.Tensor,
                      damping: float = 1e-3, progress=None, label: str = "") -> Dict[str, float]:
        """Least-squares RGB of the ``trainable`` Gaussians for the current geometry (CGLS).

        With geometry fixed, the rendered image is linear in the colours: I = A c + T bg. This
        solves  min ||sqrt(m) (A c + T bg - target)||^2 + damping ||c - c0||^2  over the RGB of
        the trainable Gaussians (m: training pixels) by conjugate gradients on the normal
        equations. Each iteration costs one render and one backward pass, like an Adam step,
        but converges in tens of iterations where Adam needs hundreds: it is how the photo's
        detail gets into the Gaussians cheaply. Colours are clamped to [0, 1] at the end.
        """
        a = self.avatar
        t0 = time.perf_counter()
        if iterations <= 0:
            return {"seconds": 0.0, "iterations": 0}
        tgt = self.target(size)
        index = self.index(lod)
        with torch.no_grad():
            frame = a.animate(**self.view.params, lod=lod, index=index, training=True)
            base = render(frame, tgt.camera, background=BACKGROUND, with_depth=False)
        frame = dataclasses.replace(frame, means=frame.means.detach(), quats=frame.quats.detach(),
                                    scales=frame.scales.detach(), opacities=frame.opacities.detach())
        sm = tgt.train.sqrt()
        b = sm * (tgt.rgb - (1.0 - base.alpha) * BACKGROUND)  # [1, s, s, 3]
        C = a.channels
        x0 = a.features[index].detach().clone()  # [n, C]
        free = torch.zeros_like(x0)
        free[:, :3] = trainable[index].to(x0.dtype)[:, None]

        def A(features):
            f = dataclasses.replace(frame, features=features[None])
            return sm * render(f, tgt.camera, background=0.0, with_depth=False).image[..., :3]

        def AT(q, leaf, r):
            return torch.autograd.grad(q, leaf, grad_outputs=r)[0] * free

        self.governor.begin()
        leaf = x0.clone().requires_grad_(True)
        q = A(leaf)
        r = (b - q).detach()
        x = x0.clone()
        s_ = AT(q, leaf, r)
        p = s_.clone()
        gamma = (s_ * s_).sum(0)
        for it in range(iterations):
            if progress is not None:
                progress(it / iterations, f"{label} colours {it + 1}/{iterations}")
            leaf = p.clone().requires_grad_(True)
            q = A(leaf)
            qd = q.detach()
            qq = torch.cat([(qd * qd).sum((0, 1, 2)), torch.zeros(C - 3, dtype=qd.dtype, device=qd.device)])
            step = gamma / (qq + damping * (p * p).sum(0)).clamp_min(1e-20)
            x = x + step * p
            r = r - step[:3] * qd
            s_ = AT(q, leaf, r) - damping * (x - x0) * free
            g_new = (s_ * s_).sum(0)
            beta = g_new / gamma.clamp_min(1e-20)
            gamma = g_new
            p = s_ + beta * p
            self.governor.tick()
        with torch.no_grad():
            # overlapping layers make the problem ill-posed where they overlap: there the
            # unbounded solution trades a colour far below 0 in one layer against one above 1
            # in another, and clamping would leave black or white speckles that show once the
            # head turns; such Gaussians keep their initial colour and leave later solves
            rgb = x[:, :3]
            wild = ((rgb < -OUT_OF_RANGE) | (rgb > 1.0 + OUT_OF_RANGE)).any(1) & (free[:, 0] > 0)
            rgb = torch.where(wild[:, None], x0[:, :3], rgb)
            self.colour_free[index[wild]] = False
            feats = a.features.clone()
            feats[index, :3] = rgb.clamp(0.0, 1.0)
            a.features = feats
        secs = time.perf_counter() - t0
        self.history.append({"lod": lod, "size": size, "cgls": iterations, "seconds": secs})
        log.debug("colours LOD %d at %d px: %d CGLS iterations, %.1f s", lod, size, iterations, secs)
        return {"seconds": secs, "iterations": iterations}

    def trainable_mask(self, lod: int, shared: bool, plane: bool = True) -> torch.Tensor:
        """[N] bool: LOD ``lod``'s head Gaussians, plus the shared ones (split and plane) when
        ``shared``, or just the plane ones when ``plane``."""
        a = self.avatar
        own = (a.lod == lod) & self.head
        if shared:
            own = own | (a.lod == ALL_LODS)
        elif plane:
            own = own | self.plane
        return own & self.front & self.colour_free


def transfer_lod(avatar: Avatar, view: SourceView, chain: LodChain, coarse: int, fine: int) -> None:
    """Start LOD ``fine``'s head Gaussians from LOD ``coarse``'s optimised offsets and opacities.

    LOD k+1 keeps LOD k's vertices first; each new vertex is an edge midpoint, so values are
    carried by the same edge averaging as the mesh. Offsets live in per-face frames, so they
    are carried in world space at the source pose and turned back into the fine Gaussians'
    frames.
    """
    a = avatar
    ci = torch.nonzero((a.lod == coarse) & (a.region == REGION_HEAD))[:, 0]
    fi = torch.nonzero((a.lod == fine) & (a.region == REGION_HEAD))[:, 0]
    if ci.numel() == 0 or fi.numel() == 0:
        return
    with torch.no_grad():
        verts, _ = a.deform_rig(**view.params)
        frames = face_frames(verts, a.rig_faces)[0]  # [F0, 3, 3]
        world = (frames[a.frame_face[ci]] @ a.offset[ci, :, None])[..., 0]
        opac = a.opacity_logit[ci]
        for k in range(coarse, fine):
            edges = chain.edges[k].to(world.device)
            world = torch.cat([world, 0.5 * (world[edges[:, 0]] + world[edges[:, 1]])], 0)
            opac = torch.cat([opac, torch.minimum(opac[edges[:, 0]], opac[edges[:, 1]])], 0)
        assert world.shape[0] == fi.numel()
        Rf = frames[a.frame_face[fi]]
        a.offset[fi] = (Rf.transpose(1, 2) @ world[:, :, None])[..., 0]
        # keep the photo-initialised opacity where it was lower (mesh outside the matte)
        a.opacity_logit[fi] = torch.minimum(opac, a.opacity_logit[fi])
