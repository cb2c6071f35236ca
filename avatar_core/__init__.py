"""HeadSplat core: one photo -> an animatable multi-LOD Gaussian head avatar.

This package never imports bpy. Dimension letters used in shapes throughout:
B batch, N Gaussians, V vertices, F faces, J joints, E expressions, S identity
components, P pose-corrective features, C channels, H/W image size.
"""

from avatar_core.errors import AvatarError

__version__ = "0.1.0"
__all__ = ["AvatarError", "__version__"]
