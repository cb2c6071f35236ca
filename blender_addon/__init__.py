"""HeadSplat for Blender: one photo -> an animatable Gaussian head avatar in the scene.

Registration only; the work is in the modules beside this one (see DESIGN.md's layers):
``pure/`` holds the bpy-free helpers (``convert``, ``constants``, ``avatar_data``, ``deps``,
``jobs``, ``render_core``); ``scene``, ``storage``, ``params``, ``keyframes``, ``nodes`` and
``engine`` bridge to Blender;
``operators/`` and ``panels/`` (sibling packages) are the UI. Heavy modules (torch,
avatar_core) are imported inside operators and the engine, so enabling the add-on is instant
and works before the dependencies are installed.
"""

from __future__ import annotations

import os

_modules = None  # bpy is imported only by register(): the bpy-free helpers import without it


def _submodules():
    from blender_addon import engine, prefs, props, storage
    import operators
    import panels
    return (props, prefs, storage, engine, operators, panels)


def deps_target() -> str:
    """Where "Install dependencies" puts packages: the extension's user folder, or a folder
    in the user's scripts directory for a legacy install."""
    import bpy

    from blender_addon import prefs
    if prefs.ADDON_ID.startswith("bl_ext.") and hasattr(bpy.utils, "extension_path_user"):
        try:
            return bpy.utils.extension_path_user(prefs.ADDON_ID, path="site-packages", create=False)
        except (ValueError, RuntimeError):
            pass
    return os.path.join(bpy.utils.user_resource("SCRIPTS"), "headsplat_deps")


def register():
    global _modules
    from blender_addon.pure import deps
    deps.set_target(deps_target())
    _modules = _submodules()
    for m in _modules:
        m.register()


def unregister():
    global _modules
    for m in reversed(_modules or _submodules()):
        m.unregister()
    _modules = None
