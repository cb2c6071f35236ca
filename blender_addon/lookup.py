"""Finding an avatar's objects from the context (cheap; used by polls and panels)."""

from __future__ import annotations

from typing import Optional

import bpy


def is_avatar(ob) -> bool:
    return ob is not None and ob.type == "MESH" and ob.headsplat.is_avatar


def avatar_of(context) -> Optional[bpy.types.Object]:
    """The avatar point object for the context: the active object, or the avatar rigged to
    the active armature."""
    ob = getattr(context, "active_object", None) or getattr(context, "object", None)
    if ob is None:
        return None
    if is_avatar(ob):
        return ob
    if ob.type == "ARMATURE":
        for child in ob.children:
            if is_avatar(child):
                return child
    return None


def rig_of(ob) -> Optional[bpy.types.Object]:
    if ob is None:
        return None
    rig = ob.headsplat.rig
    if rig is None and ob.parent is not None and ob.parent.type == "ARMATURE":
        rig = ob.parent
    return rig


def layer_selection(hs):
    """The split layers to show for ``Object.headsplat`` ``hs``: None when all are on, else the
    list ``Avatar.select`` takes (layers beyond the UI's toggles stay on)."""
    n = int(hs.num_layers)
    flags = [bool(hs.layers[i]) for i in range(min(n, len(hs.layers)))]
    if all(flags):
        return None
    return tuple([i for i, on in enumerate(flags) if on] + list(range(len(hs.layers), n)))
