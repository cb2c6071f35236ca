"""``ReconReport``: what a reconstruction measured and how long each stage took."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import numpy as np


@dataclasses.dataclass
class ReconReport:
    """Metrics, timings and warnings of one reconstruction.

    psnr / ssim: LOD -> masked PSNR (dB) / SSIM at the source camera, over the person matte
        (alpha > 0.5), against the photo matted onto the render background.
    landmark_error_px / landmark_error_frac: median landmark reprojection error of the head
        fit, in crop pixels and as a fraction of the face box.
    refiner: None when not tried, else {"kept": bool, "holdout_psnr_coarse": dB,
        "holdout_psnr_refined": dB} (held-out patches of the photo).
    timings: stage -> seconds; warnings: one sentence each, for the user.
    source_image / source_alpha: the portrait crop [S, S, 3] / [S, S] (for the preview sheet).
    """

    quality: str
    device: str
    psnr: Dict[int, float] = dataclasses.field(default_factory=dict)
    ssim: Dict[int, float] = dataclasses.field(default_factory=dict)
    landmark_error_px: float = float("nan")
    landmark_error_frac: float = float("nan")
    face_size_px: float = float("nan")
    num_gaussians: Dict[int, int] = dataclasses.field(default_factory=dict)
    refiner: Optional[Dict] = None
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)
    source_image: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    source_alpha: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.timings.values()))

    def as_dict(self) -> dict:
        """JSON-friendly summary (stored in ``avatar.info``)."""
        return {
            "quality": self.quality,
            "device": self.device,
            "psnr_masked_source": {str(k): round(v, 3) for k, v in self.psnr.items()},
            "ssim_masked_source": {str(k): round(v, 4) for k, v in self.ssim.items()},
            "landmark_error_px": round(self.landmark_error_px, 3),
            "landmark_error_frac": round(self.landmark_error_frac, 5),
            "face_size_px": round(self.face_size_px, 1),
            "num_gaussians": {str(k): v for k, v in self.num_gaussians.items()},
            "refiner": self.refiner,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        """A few human-readable lines (the CLI prints them)."""
        lods = sorted(self.psnr)
        psnr = ", ".join(f"LOD {k} {self.psnr[k]:.2f} dB" for k in lods)
        lines = [
            f"PSNR (masked, source view): {psnr}",
            f"landmark error: {self.landmark_error_px:.2f} px ({100 * self.landmark_error_frac:.2f}% of the face box)",
        ]
        if self.refiner is not None:
            r = self.refiner
            verdict = "kept" if r.get("kept") else "not kept"
            lines.append(f"refiner {verdict}: held-out PSNR {r.get('holdout_psnr_coarse', float('nan')):.2f} dB coarse, "
                         f"{r.get('holdout_psnr_refined', float('nan')):.2f} dB refined")
        t = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines.append(f"time: {self.total_seconds:.1f}s ({t})")
        return "\n".join(lines)
