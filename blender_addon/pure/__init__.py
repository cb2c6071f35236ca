"""The add-on's helpers that never import bpy (tested with plain pytest, importable before
Blender's modules are): ``convert`` (head space <-> Blender, cameras, pose bones), ``constants``
(UI limits, inspection palettes, the nearest LOD), ``deps`` (the dependency check and pip
install), ``jobs`` (long work off Blender's UI thread), ``avatar_data`` (what the scene
builder writes, as arrays) and ``render_core`` (the render engine's per-frame work on typed
``AvatarView``s). The modules beside this folder bridge them to Blender."""
