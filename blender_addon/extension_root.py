"""The extension's top-level ``__init__.py`` (build_addon.py copies this file into the zip).

Blender imports an extension as ``bl_ext.<repo>.headsplat``; HeadSplat's packages
(``blender_addon``, ``operators``, ``panels``, ``avatar_core``, ``cuda_backend``) use absolute
imports, so the extension's folder goes on ``sys.path`` while it is enabled. Nothing heavy
is imported here: torch and avatar_core load on first use.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGES = ("blender_addon", "operators", "panels", "avatar_core", "cuda_backend")


def register():
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    import blender_addon
    from blender_addon import prefs
    prefs.ADDON_ID = __package__ or __name__
    blender_addon.register()


def unregister():
    import blender_addon
    blender_addon.unregister()
    # forget our modules so that an update or re-enable imports the new files
    for name in [m for m in sys.modules if m.split(".")[0] in _PACKAGES]:
        mod = sys.modules.get(name)
        if getattr(mod, "__file__", "") and os.path.abspath(mod.__file__).startswith(_HERE):
            del sys.modules[name]
    if _HERE in sys.path:
        sys.path.remove(_HERE)
