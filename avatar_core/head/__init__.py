"""Head models: the FLAME-shaped interface, the FLAME loader, the built-in open head, LOD."""

from avatar_core.head.model import JOINT_NAMES, HeadModel, HeadOutput
from avatar_core.head.lod import lod_binding, lod_counts, subdivide_head

__all__ = ["JOINT_NAMES", "HeadModel", "HeadOutput", "lod_binding", "lod_counts", "subdivide_head", "load_head"]


def load_head(spec: str = "open", device=None):
    """``"open"`` -> the built-in open head; anything else is a path to a FLAME file."""
    if spec in (None, "", "open"):
        from avatar_core.head.open_head import load_open_head
        head = load_open_head()
    else:
        from avatar_core.head.flame import load_flame
        head = load_flame(spec)
    return head.to(device) if device is not None else head
