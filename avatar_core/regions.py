"""The avatar's Gaussian regions and the inspection palettes, in one place.

Plain tuples (no torch, no numpy): the Blender add-on reads them while it registers. The
preview sheet (``recon.preview``), the add-on's geometry nodes and its render engine colour
split layers, soft masks and regions with these same colours.
"""

REGION_HEAD, REGION_SPLIT, REGION_SHOULDER = 0, 1, 2
REGION_NAMES = ("head", "split", "shoulder")

# split layer l -> LAYER_COLOURS[l + 1] (layers past the last share its colour); [0]: not split
LAYER_COLOURS = (
    (0.55, 0.55, 0.55),
    (0.90, 0.20, 0.15), (0.95, 0.65, 0.10), (0.30, 0.80, 0.25), (0.15, 0.60, 0.95),
    (0.60, 0.30, 0.90), (0.95, 0.35, 0.70), (0.20, 0.85, 0.80), (0.85, 0.85, 0.20),
)
REGION_COLOURS = ((0.85, 0.62, 0.50), (0.95, 0.30, 0.20), (0.25, 0.45, 0.90))   # by region id
MASK_LOW = (0.1, 0.2, 0.9)    # soft mask 0
MASK_HIGH = (1.0, 0.35, 0.1)  # soft mask 1


def layer_colour(split_layer: int):
    """The colour of a split layer (-1: a Gaussian that is not an expression split one)."""
    return LAYER_COLOURS[max(0, min(split_layer + 1, len(LAYER_COLOURS) - 1))]
