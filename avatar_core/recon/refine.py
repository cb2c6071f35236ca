"""Training the neural refiner jointly with the Gaussians, and keeping it only if it helps.

The refiner (``render.refiner.Refiner``: a small U-Net predicting a residual on the splatted
RGB, zero at the start) is trained together with the top LOD's Gaussians on the photo's
training pixels with

    L = L_photo(coarse) + L_photo(refined) + W_KEEP |refined - sg(coarse)|

so the Gaussians' own RGB stays a good image (the refiner can be switched off) and the
refiner sharpens it without inventing content (the last term). With one photo there are no
held-out views, so a random set of patches is held out of every loss from the start
(``optimise.holdout_grid``); the refiner is kept only if it raises the PSNR on those patches.
"""

from __future__ import annotations

import logging
from typing import Dict

import torch

from avatar_core.metrics import psnr
from avatar_core.recon.config import ReconConfig
from avatar_core.recon.optimise import PhotoFit, Target
from avatar_core.render.refiner import Refiner, RefinerConfig

log = logging.getLogger(__name__)

W_KEEP = 0.1
MIN_GAIN_DB = 0.05
WIDTHS = (16, 32, 48)


class _JointRefiner:
    """The ``extra`` hook of ``PhotoFit.run_stage``: refiner parameters and its loss terms."""

    def __init__(self, refiner: Refiner, fitter: PhotoFit, lr: float = 2e-3):
        self.refiner = refiner
        self.fitter = fitter
        self.lr = lr

    def parameters(self):
        return self.refiner.parameters()

    def loss(self, out, tgt: Target) -> torch.Tensor:
        coarse = out.image
        refined = self.refiner(coarse)
        w = tgt.train
        wsum = w.sum().clamp_min(1.0)
        photo = ((refined - tgt.rgb).abs() * w).sum() / (wsum * 3)
        keep = (refined - coarse[..., :3].detach()).abs().mean()
        return photo + W_KEEP * keep


def holdout_psnr(fitter: PhotoFit, lod: int, size: int, refiner=None) -> float:
    """PSNR over the held-out patches inside the person matte at ``size`` px."""
    tgt = fitter.target(size)
    mask = (tgt.holdout[..., 0] > 0.5) & (tgt.alpha[..., 0] > 0.5)
    if int(mask.sum()) == 0:
        return float("nan")
    with torch.no_grad():
        img = fitter.render(lod, size).image
        rgb = refiner(img) if refiner is not None else img[..., :3]
        return float(psnr(rgb.clamp(0, 1), tgt.rgb, mask=mask)[0])


def train_refiner(fitter: PhotoFit, lod: int, cfg: ReconConfig, progress=None) -> Dict:
    """Train the refiner jointly with LOD ``lod``; store it in the avatar if it helps.

    Returns {"kept", "holdout_psnr_coarse", "holdout_psnr_refined", "steps"}.
    """
    avatar = fitter.avatar
    size = cfg.opt_size
    refiner = Refiner(RefinerConfig(in_channels=avatar.channels, widths=WIDTHS)).to(avatar.device)
    refiner.train()
    joint = _JointRefiner(refiner, fitter)
    fitter.run_stage(lod, cfg.refiner_steps, size, train_shared=False, progress=progress,
                     lr_scale=0.3 * cfg.lr_scale, extra=joint, label="refiner")
    refiner.eval()
    coarse = holdout_psnr(fitter, lod, size)
    refined = holdout_psnr(fitter, lod, size, refiner)
    kept = bool(refined > coarse + MIN_GAIN_DB)
    if kept:
        avatar.refiner_state = {k: v.detach().cpu().clone() for k, v in refiner.state_dict().items()}
        avatar.refiner_config = refiner.config.to_dict()
    else:
        avatar.refiner_state = None
        avatar.refiner_config = {}
    log.info("refiner %s: held-out PSNR %.2f dB coarse, %.2f dB refined", "kept" if kept else "dropped",
             coarse, refined)
    return {"kept": kept, "holdout_psnr_coarse": round(coarse, 3), "holdout_psnr_refined": round(refined, 3),
            "steps": cfg.refiner_steps}
