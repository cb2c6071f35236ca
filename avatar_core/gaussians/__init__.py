"""The Gaussian avatar: bindings, LOD levels, split layers, soft masks, regions."""

from avatar_core.gaussians.frame import GaussianFrame

__all__ = ["GaussianFrame"]
