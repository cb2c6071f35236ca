"""Constants shared by the add-on's modules (no torch, so registering stays instant)."""

try:
    import numpy as np
except ImportError:  # a Blender whose Python lacks numpy still registers (and says so)
    np = None


def _array(rows):
    return np.array(rows, dtype=np.float32) if np is not None else tuple(map(tuple, rows))


MAX_LAYERS = 8  # layer toggles shown in the UI (split layers 0..7)
COLOUR_MODES = ("RGB", "LAYER", "MASK", "REGION")
REGION_NAMES = ("head", "split", "shoulder")

# inspection palettes (sRGB-ish), shared by the geometry nodes and the render engine
LAYER_COLOURS = _array([
    [0.55, 0.55, 0.55],  # -1: not a split Gaussian
    [0.90, 0.20, 0.15], [0.95, 0.65, 0.10], [0.30, 0.80, 0.25], [0.15, 0.60, 0.95],
    [0.60, 0.30, 0.90], [0.95, 0.35, 0.70], [0.20, 0.85, 0.80], [0.85, 0.85, 0.20],
])
REGION_COLOURS = _array([[0.85, 0.62, 0.50], [0.95, 0.30, 0.20], [0.25, 0.45, 0.90]])
MASK_LOW = (0.1, 0.2, 0.9)
MASK_HIGH = (1.0, 0.35, 0.1)
