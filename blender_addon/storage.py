"""Keeping an avatar's data with the .blend, and loading it back.

The avatar file (safetensors bytes, exactly what ``save_avatar`` writes) is kept two ways:

* **packed**: the bytes are stored in byte-string ID properties (``"_headsplat_avatar_0"``,
  ...) of a hidden Text datablock (``".HeadSplat avatar <data key>"``; names starting with
  ``.`` are left out of Blender's ID menus) that the object points to
  (``Object.headsplat.packed``). The pointer is a real user: the data is saved, undone,
  appended and linked with the object, shared by its duplicates and dropped with the last
  of them. ID properties hold arbitrary bytes (NULs included); large avatars are split into
  parts of ``PART_BYTES``.

  Not on the point mesh: Blender copies a mesh's ID properties every time it evaluates the
  object (``mesh_calc_modifiers`` copies the mesh ID), so the ~60 MB of a FLAME-sized avatar
  were copied on every frame, slider drag and LOD switch (about half the cost of a switch).
  Files saved that way are moved over when they are opened (``migrate``).
* **by path**: ``Object.headsplat.avatar_path`` (made relative to the .blend on save).

Loading prefers the packed bytes (they match the mesh), then the path. When neither is
there on reload, the points are still in the mesh (shown and animated natively); the
object is flagged ``data_missing``, a warning is logged and shown in the panel, and the
render engine skips it with a warning until the file is relinked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Dict, Optional, Tuple

import bpy

log = logging.getLogger(__name__)

PACK_PREFIX = "_headsplat_avatar_"
PACK_PARTS = "_headsplat_avatar_parts"
KEY_PROP = "_headsplat_data_key"
PART_BYTES = 512 * 1024 * 1024

_cache: Dict[Tuple[str, str], object] = {}


def data_key(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def avatar_bytes(avatar) -> bytes:
    """The avatar file's bytes (written through avatar_core's own writer)."""
    from avatar_core.io import save_avatar
    with tempfile.TemporaryDirectory(prefix="headsplat-") as d:
        path = os.path.join(d, "avatar.avatar")
        save_avatar(avatar, path)
        with open(path, "rb") as f:
            return f.read()


STORE_PREFIX = ".HeadSplat avatar "
STORE_NOTE = ("HeadSplat keeps the packed avatar data of the objects that point here in this "
              "datablock's custom properties. Unpack it from the Avatar panel instead of deleting it.\n")


def pack(ob: bpy.types.Object, data: bytes) -> None:
    """Pack ``data`` for ``ob`` (replacing what it had); objects with the same data share one store."""
    unpack_remove(ob)
    key = data_key(data)
    store = next((t for t in bpy.data.texts if t.library is None and t.name.startswith(STORE_PREFIX)
                  and t.get(KEY_PROP) == key and _has_parts(t)), None)
    if store is None:
        store = bpy.data.texts.new(f"{STORE_PREFIX}{key}")
        store.use_fake_user = False   # texts start with one; the objects' pointers are its users
        store.write(STORE_NOTE)
        _write_parts(store, data)
        store[KEY_PROP] = key
    ob.headsplat.packed = store


def packed_bytes(ob: bpy.types.Object) -> Optional[bytes]:
    """The packed avatar file of ``ob`` (None when it is not packed)."""
    for holder in _holders(ob):
        data = _read_parts(holder)
        if data is not None:
            return data
    return None


def is_packed(ob: bpy.types.Object) -> bool:
    return any(_has_parts(h) for h in _holders(ob))


def unpack_remove(ob: bpy.types.Object) -> None:
    """Forget ``ob``'s packed data; the store goes once no object uses it."""
    store = ob.headsplat.packed
    ob.headsplat.packed = None
    if store is not None and store.users == 0 and store.library is None:
        bpy.data.texts.remove(store)
    if ob.type == "MESH" and ob.data.library is None:
        _remove_parts(ob.data)


def migrate(ob: bpy.types.Object) -> bool:
    """Move data packed on the point mesh (files saved before the store) to a store; True if moved."""
    if ob.library or ob.type != "MESH" or ob.data.library or not _has_parts(ob.data):
        return False
    data = _read_parts(ob.data)
    if data is None:
        return False
    pack(ob, data)   # also removes the mesh's copy
    return True


def _holders(ob):
    out = []
    if ob.headsplat.packed is not None:
        out.append(ob.headsplat.packed)
    if ob.type == "MESH":
        out.append(ob.data)   # files saved before the store existed
    return out


def _write_parts(holder, data: bytes) -> None:
    parts = max(1, (len(data) + PART_BYTES - 1) // PART_BYTES)
    for i in range(parts):
        holder[f"{PACK_PREFIX}{i}"] = data[i * PART_BYTES:(i + 1) * PART_BYTES]
    holder[PACK_PARTS] = parts


def _read_parts(holder) -> Optional[bytes]:
    parts = holder.get(PACK_PARTS)
    if not parts:
        return None
    chunks = []
    for i in range(int(parts)):
        c = holder.get(f"{PACK_PREFIX}{i}")
        if c is None:
            return None
        chunks.append(bytes(c))
    return b"".join(chunks)


def _has_parts(holder) -> bool:
    return bool(holder.get(PACK_PARTS))


def _remove_parts(holder) -> None:
    for k in [k for k in holder.keys() if k.startswith(PACK_PREFIX) or k == PACK_PARTS]:
        del holder[k]


def absolute_path(ob: bpy.types.Object) -> str:
    p = ob.headsplat.avatar_path
    if not p:
        return ""
    return os.path.normpath(bpy.path.abspath(p, library=ob.library))


def data_available(ob: bpy.types.Object) -> bool:
    ob = ob.original if getattr(ob, "is_evaluated", False) else ob
    if ob.type == "MESH" and is_packed(ob):
        return True
    p = absolute_path(ob)
    return bool(p) and os.path.isfile(p)


def set_source(ob: bpy.types.Object, avatar=None, path: str = "", pack_data: bool = True,
               data: Optional[bytes] = None) -> None:
    """Record where the avatar data of ``ob`` lives (and pack it when asked)."""
    if path:
        path = os.path.abspath(path)
        ob.headsplat.avatar_path = relative_if_possible(path)
    if data is None and (pack_data or not path):
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
        elif avatar is not None:
            data = avatar_bytes(avatar)
    if data is not None:
        ob.headsplat.data_key = data_key(data)
        if pack_data or not path:
            pack(ob, data)
    if avatar is not None and data is not None:
        _cache[(ob.headsplat.data_key, "cpu")] = avatar.to("cpu")
    ob.headsplat.data_missing = False


def relative_if_possible(path: str) -> str:
    if not bpy.data.filepath:
        return path
    try:
        return bpy.path.relpath(path)
    except ValueError:  # another drive
        return path


def load_for_object(ob: bpy.types.Object, device: str = "cpu"):
    """The Avatar behind an avatar object (cached), or raise AvatarFileError."""
    from avatar_core.errors import AvatarFileError
    ob = ob.original if getattr(ob, "is_evaluated", False) else ob
    key = ob.headsplat.data_key or ob.name_full
    hit = _cache.get((key, str(device)))
    if hit is not None:
        return hit
    cpu = _cache.get((key, "cpu"))
    if cpu is None:
        cpu = _load_cpu(ob)
        _cache[(key, "cpu")] = cpu
    if cpu.num_gaussians != len(ob.data.vertices):
        raise AvatarFileError(f"The avatar data of {ob.name!r} has {cpu.num_gaussians} Gaussians but the object "
                              f"has {len(ob.data.vertices)} points; relink the avatar file it was built from.")
    av = cpu if str(device) == "cpu" else cpu.to(device)
    _cache[(key, str(device))] = av
    return av


def _load_cpu(ob):
    from avatar_core.errors import AvatarFileError
    from avatar_core.io import load_avatar
    data = packed_bytes(ob) if ob.type == "MESH" else None
    if data is not None:
        with tempfile.TemporaryDirectory(prefix="headsplat-") as d:
            path = os.path.join(d, "packed.avatar")
            with open(path, "wb") as f:
                f.write(data)
            return load_avatar(path)
    path = absolute_path(ob)
    if not path:
        raise AvatarFileError(f"The avatar {ob.name!r} has no avatar data (not packed, no file path); "
                              f"relink its avatar file.")
    if not os.path.isfile(path):
        raise AvatarFileError(f"The avatar file {path!r} of {ob.name!r} is missing; relink it or pack it.")
    return load_avatar(path)


def forget(ob=None) -> None:
    """Drop cached avatars (all, or those of one object)."""
    if ob is None:
        _cache.clear()
        return
    key = ob.headsplat.data_key or ob.name_full
    for k in [k for k in _cache if k[0] == key]:
        del _cache[k]


def avatar_objects(scene_or_objects=None):
    objs = bpy.data.objects if scene_or_objects is None else scene_or_objects
    return [ob for ob in objs if ob.type == "MESH" and ob.headsplat.is_avatar]


def check_all() -> list:
    """Flag avatars whose data is gone; returns their warnings."""
    warnings = []
    for ob in avatar_objects():
        missing = not data_available(ob)
        if ob.headsplat.data_missing != missing and not ob.library:
            ob.headsplat.data_missing = missing
        if missing:
            where = absolute_path(ob) or "no path"
            msg = (f"HeadSplat: the avatar data of {ob.name!r} is missing ({where}); its points are shown, "
                   f"but it cannot be rendered by HeadSplat until you relink the avatar file.")
            log.warning(msg)
            warnings.append(msg)
    return warnings


# --------------------------------------------------------------------------------- handlers
@bpy.app.handlers.persistent
def on_load_post(*_args):
    _cache.clear()
    for ob in avatar_objects():
        if migrate(ob):
            log.info("HeadSplat: moved the packed avatar data of %r off its mesh", ob.name)
    for msg in check_all():
        print(msg)


@bpy.app.handlers.persistent
def on_save_pre(*args):
    new_path = args[0] if args and isinstance(args[0], str) else bpy.data.filepath
    if not new_path:
        return
    start = os.path.dirname(os.path.abspath(new_path))
    for ob in avatar_objects():
        if ob.library or not ob.headsplat.avatar_path:
            continue
        p = absolute_path(ob)
        try:
            rel = "//" + os.path.relpath(p, start).replace(os.sep, "/")
        except ValueError:
            continue
        if ob.headsplat.avatar_path != rel:
            ob.headsplat.avatar_path = rel


def register():
    bpy.app.handlers.load_post.append(on_load_post)
    bpy.app.handlers.save_pre.append(on_save_pre)


def unregister():
    for lst, fn in ((bpy.app.handlers.load_post, on_load_post), (bpy.app.handlers.save_pre, on_save_pre)):
        for h in [h for h in lst if getattr(h, "__name__", "") == fn.__name__
                  and getattr(h, "__module__", "") == fn.__module__]:
            lst.remove(h)
    _cache.clear()
