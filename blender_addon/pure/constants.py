"""Constants shared by the add-on's modules (no torch, so registering stays instant)."""

from avatar_core import regions

try:
    import numpy as np
except ImportError:  # a Blender whose Python lacks numpy still registers (and says so)
    np = None


def _array(rows):
    return np.array(rows, dtype=np.float32) if np is not None else tuple(map(tuple, rows))


MAX_LAYERS = 8  # layer toggles shown in the UI (split layers 0..7)
COLOUR_MODES = ("RGB", "LAYER", "MASK", "REGION")

# inspection palettes (sRGB-ish), shared by the geometry nodes and the render engine; defined
# once in avatar_core.regions (plain tuples, cheap to import), here as arrays
LAYER_COLOURS = _array(regions.LAYER_COLOURS)
REGION_COLOURS = _array(regions.REGION_COLOURS)
MASK_LOW = regions.MASK_LOW
MASK_HIGH = regions.MASK_HIGH


def nearest_lod(levels, lod: int) -> int:
    """``lod`` when the avatar has it, else the nearest of its ``levels`` (the lower on a tie):
    a reconstruction may keep only some levels of detail."""
    levels = list(levels)
    return lod if lod in levels else min(levels, key=lambda k: abs(k - lod))
