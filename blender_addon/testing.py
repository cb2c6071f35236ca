"""Helpers for the add-on's tests, benchmark and batch script (bpy module, headless)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_registered = False


def private_user_resources() -> None:
    """Point Blender's user resources (preferences, extensions) at a temporary folder that is
    removed when the process exits, unless the caller already chose one."""
    if os.environ.get("BLENDER_USER_RESOURCES"):
        return
    path = tempfile.mkdtemp(prefix="headsplat-blender-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["BLENDER_USER_RESOURCES"] = path


def ensure_registered():
    """Import bpy and register the add-on once per process (idempotent)."""
    global _registered
    private_user_resources()
    import bpy
    import blender_addon
    if not _registered:
        if not hasattr(bpy.types.Object, "headsplat"):
            blender_addon.register()
        _registered = True
    return bpy


def mark_unregistered():
    global _registered
    _registered = False


def fresh_scene():
    """An empty scene (factory settings, no objects); the add-on stays registered."""
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    from blender_addon import storage
    from blender_addon.pure import render_core
    storage.forget()
    render_core.clear_caches()
    return bpy.context.scene


def add_avatar(avatar, name="Test Avatar", pack=True, source_path="", engine=True, camera=True):
    """build_avatar in the current context (+ HeadSplat engine and a framing camera)."""
    import bpy

    from blender_addon import scene
    ob = scene.build_avatar(bpy.context, avatar, name=name, source_path=source_path, pack=pack)
    if engine:
        scene.use_engine(bpy.context)
    if camera:
        scene.frame_camera(bpy.context, ob)
    return ob


def evaluated_points(ob):
    """[n, 3] positions of the avatar's evaluated point cloud (local = head space)."""
    import bpy
    import numpy as np
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    geo = ob.evaluated_get(dg).evaluated_geometry()
    pc = geo.pointcloud
    if pc is None:
        return np.zeros((0, 3), np.float32)
    out = np.empty(len(pc.points) * 3, np.float32)
    pc.attributes["position"].data.foreach_get("vector", out)
    return out.reshape(-1, 3)


def render_still(width, height, path=None, transparent=True, depth=False):
    """F12 into an OpenEXR file (32-bit, linear) and read it back: ([H, W, 4] top row first, path)."""
    import bpy
    import numpy as np
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = int(width), int(height)
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = transparent
    scene.view_layers[0].use_pass_z = depth
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format = "OPEN_EXR"
    settings.color_depth = "32"
    path = path or os.path.join(tempfile.mkdtemp(prefix="headsplat-f12-"), "f12.exr")
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    return read_exr(path), path


def read_exr(path):
    import bpy
    import numpy as np
    img = bpy.data.images.load(path, check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(h, w, 4)[::-1].copy()
    finally:
        bpy.data.images.remove(img)


def read_exr_channels(path):
    """{channel name: [H, W] float32} of an uncompressed scanline OpenEXR file (top row first).

    A minimal reader for tests (Blender's EXR / multilayer EXR with codec 'NONE', single- or
    multi-part): no OpenImageIO or OpenEXR module is needed.
    """
    import struct

    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x76\x2f\x31\x01":
        raise ValueError(f"{path} is not an OpenEXR file")
    flags = struct.unpack_from("<I", data, 4)[0]
    multipart = bool(flags & 0x1000)
    if flags & 0x200:
        raise ValueError("tiled EXR files are not supported by this reader")
    pos = 8
    headers = []
    while True:
        attrs = {}
        while data[pos] != 0:
            end = data.index(b"\0", pos)
            name = data[pos:end].decode()
            pos = end + 1
            end = data.index(b"\0", pos)
            typ = data[pos:end].decode()
            pos = end + 1
            size = struct.unpack_from("<i", data, pos)[0]
            pos += 4
            attrs[name] = (typ, data[pos:pos + size])
            pos += size
        pos += 1
        headers.append(attrs)
        if not multipart or data[pos] == 0:
            break
    if multipart:
        pos += 1
    parts = []
    for attrs in headers:
        if attrs["compression"][1][0] != 0:
            raise ValueError("only uncompressed EXR files are supported (set exr_codec = 'NONE')")
        xmin, ymin, xmax, ymax = struct.unpack("<4i", attrs["dataWindow"][1])
        chans, raw, p = [], attrs["channels"][1], 0
        while raw[p] != 0:
            end = raw.index(b"\0", p)
            chans.append((raw[p:end].decode(), struct.unpack_from("<i", raw, end + 1)[0]))
            p = end + 1 + 16
        parts.append((xmin, ymin, xmax - xmin + 1, ymax - ymin + 1, chans))
    sizes = {0: 4, 1: 2, 2: 4}  # UINT, HALF, FLOAT
    dtypes = {0: np.uint32, 1: np.float16, 2: np.float32}
    out = {}
    for _, _, w, h, chans in parts:
        for c, _ in chans:
            out[c] = np.zeros((h, w), np.float32)
    pos += 8 * sum(p[3] for p in parts)  # offset tables: one chunk per scanline when uncompressed
    for _ in range(sum(p[3] for p in parts)):
        part = 0
        if multipart:
            part = struct.unpack_from("<i", data, pos)[0]
            pos += 4
        y, _size = struct.unpack_from("<ii", data, pos)
        pos += 8
        xmin, ymin, w, h, chans = parts[part]
        for cname, ptype in chans:
            out[cname][y - ymin] = np.frombuffer(data, dtypes[ptype], w, pos).astype(np.float32)
            pos += sizes[ptype] * w
    return out
