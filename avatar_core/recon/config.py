"""Quality presets of the optimisation reconstructor.

A preset fixes the resolutions, the LOD levels, the split configuration and the number of
optimisation steps of each stage. ``fast``, ``default`` and ``best`` are for users (the CPU
budgets are in README); ``test`` is a tiny configuration for the test suite (low resolution,
LOD 0 only, a handful of steps) that still runs every stage.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from avatar_core.errors import ParameterError


@dataclasses.dataclass(frozen=True)
class ReconConfig:
    """Every knob of one reconstruction.

    Sizes are square image sides in pixels. ``crop_size`` is the portrait crop (the source
    camera). Each LOD stage runs ``steps[i]`` Adam steps on every attribute at ``opt_size``,
    then ``colour_iters[i]`` least-squares colour iterations (CGLS) at ``colour_size``;
    metrics are measured at ``eval_size``.
    """

    name: str
    crop_size: int = 512
    opt_size: int = 256
    colour_size: int = 512
    eval_size: int = 512
    fit_steps: int = 300
    lods: Tuple[int, ...] = (0, 1, 2)
    steps: Tuple[int, ...] = (100, 40, 20)      # Adam steps per LOD stage (coarse to fine)
    colour_iters: Tuple[int, ...] = (8, 8, 12)  # CGLS colour iterations per LOD stage
    channels: int = 3                           # feature channels of the Gaussians (first 3 RGB)
    split_levels: int = 2                       # SplitAvatar's L (k = split_k)
    split_k: int = 2
    split_fraction: float = 0.12                # share of LOD-0 vertices (eyes/mouth) that get split layers
    plane_stride: int = 3                       # shoulder/hair plane: one Gaussian per stride^2 crop pixels
    bust: bool = True                           # neck and shoulders on a 3-D bust (recon.bust), else a plane
    refiner: bool = False                       # train the neural refiner jointly and keep it if it helps
    refiner_steps: int = 0
    holdout_fraction: float = 0.0               # share of pixels (in patches) held out to judge the refiner
    threads: int = 0                            # torch threads on CPU (0 = all cores)
    lr_scale: float = 1.0

    def with_(self, **changes) -> "ReconConfig":
        return dataclasses.replace(self, **changes)


QUALITY: Dict[str, ReconConfig] = {
    "test": ReconConfig(name="test", crop_size=256, opt_size=96, colour_size=128, eval_size=128, fit_steps=120,
                        lods=(0,), steps=(4,), colour_iters=(2,), split_levels=1, plane_stride=8),
    "fast": ReconConfig(name="fast", opt_size=192, fit_steps=200, steps=(50, 15, 8), colour_iters=(6, 6, 8),
                        plane_stride=5),
    "default": ReconConfig(name="default"),
    "best": ReconConfig(name="best", fit_steps=400, steps=(200, 80, 40), colour_iters=(12, 12, 20),
                        split_levels=3, plane_stride=2, channels=8, refiner=True, refiner_steps=60,
                        holdout_fraction=0.06),
}


def get_config(quality) -> ReconConfig:
    """A preset by name, or a ``ReconConfig`` passed through."""
    if isinstance(quality, ReconConfig):
        return quality
    if quality not in QUALITY:
        raise ParameterError(f"quality must be one of {', '.join(q for q in QUALITY if q != 'test')}, "
                             f"not {quality!r}.")
    return QUALITY[quality]
