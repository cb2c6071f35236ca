"""Add-on preferences: device, head model, and the dependency check.

``get()`` returns the preferences when the add-on is enabled through Blender (as an
extension or a legacy add-on) and a defaults object otherwise (tests and scripts that call
``blender_addon.register()`` directly).
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from blender_addon.props import PATH_OPTIONS
from blender_addon.pure import deps

# set by the extension's root __init__ (e.g. "bl_ext.user_default.headsplat"); a legacy
# add-on install keeps the package name
ADDON_ID = __package__ or "blender_addon"

DEVICE_ITEMS = [
    ("AUTO", "Auto", "CUDA when torch sees a GPU, else CPU"),
    ("CUDA", "CUDA", "NVIDIA GPU (gsplat rasteriser)"),
    ("CPU", "CPU", "The torch rasteriser on the CPU"),
]
HEAD_ITEMS = [
    ("OPEN", "Built-in Open Head", "The CC0 MakeHuman head (ARKit-52 expressions); no download needed"),
    ("FLAME", "FLAME File", "A FLAME 2020/2023 model file you downloaded (MPI licence)"),
]


class _Defaults:
    device = "AUTO"
    head_model = "OPEN"
    flame_path = ""
    deps_dir = ""
    quality = "default"
    cpu_threads = 0


_DEFAULTS = _Defaults()  # one instance, so scripts can change it (batch_render --device)


def _prefs_class():
    class HeadSplatPreferences(bpy.types.AddonPreferences):
        bl_idname = ADDON_ID

        device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="AUTO")
        head_model: EnumProperty(name="Head Model", items=HEAD_ITEMS, default="OPEN")
        flame_path: StringProperty(name="FLAME File", subtype="FILE_PATH", default="", options=PATH_OPTIONS,
                                   description="generic_model.pkl / flame2023*.pkl / .npz")
        cpu_threads: IntProperty(name="CPU Threads", default=0, min=0, max=256,
                                 description="Threads torch may use on the CPU (0 = torch's default). Blender "
                                             "renders in its own thread, so this is applied there too")
        quality: EnumProperty(name="Reconstruction Quality", default="default",
                              items=[("fast", "Fast", "Fewer optimisation steps"),
                                     ("default", "Default", ""),
                                     ("best", "Best", "More steps, the neural refiner (slow on CPU)")])

        def draw(self, context):
            layout = self.layout
            col = layout.column()
            col.prop(self, "device")
            col.prop(self, "cpu_threads")
            col.prop(self, "head_model")
            if self.head_model == "FLAME":
                col.prop(self, "flame_path")
            col.prop(self, "quality")
            draw_dependencies(layout)

    return HeadSplatPreferences


def draw_dependencies(layout) -> None:
    status = deps.status()
    box = layout.box()
    if status.ok:
        box.label(text=f"Dependencies: all present for Python {status.python}", icon="CHECKMARK")
        if status.optional_missing:
            box.label(text="Optional, not installed: " + ", ".join(deps.pip_spec(r) for r in status.optional_missing),
                      icon="INFO")
    else:
        box.label(text=f"Missing for Blender's Python {status.python}:", icon="ERROR")
        for r, why in status.missing:
            box.label(text=f"{deps.pip_spec(r)}  ({why})")
        box.label(text=f"They will be installed into {status.target}")
        box.operator("headsplat.install_dependencies", icon="IMPORT")
    box.operator("headsplat.check_dependencies", icon="FILE_REFRESH")


def get():
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    if addon is not None and addon.preferences is not None:
        return addon.preferences
    return _DEFAULTS


def head_spec(p=None) -> str:
    p = p or get()
    if p.head_model == "FLAME":
        return bpy.path.abspath(p.flame_path) if p.flame_path else ""
    return "open"


_cls = None


def register():
    global _cls
    _cls = _prefs_class()
    bpy.utils.register_class(_cls)


def unregister():
    global _cls
    if _cls is not None:
        bpy.utils.unregister_class(_cls)
        _cls = None
