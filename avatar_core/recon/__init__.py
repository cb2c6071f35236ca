"""Reconstructors: photo -> avatar.

``reconstruct`` (optimisation, the default; needs no weights) is here; the feed-forward
network reconstructor (needs a checkpoint) lives beside it in ``recon.feedforward``.
"""

from avatar_core.recon.config import QUALITY, ReconConfig, get_config
from avatar_core.recon.pipeline import reconstruct
from avatar_core.recon.report import ReconReport

__all__ = ["reconstruct", "ReconReport", "ReconConfig", "QUALITY", "get_config"]
