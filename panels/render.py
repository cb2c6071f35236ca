"""The HeadSplat engine's own panels in the Render properties (shown only for that engine)."""

from __future__ import annotations

import bpy


def draw_render_settings(layout, scene) -> None:
    from blender_addon import prefs
    hs = scene.headsplat
    col = layout.column()
    col.use_property_split = True
    col.use_property_decorate = False
    p = prefs.get()
    if hasattr(p, "bl_rna"):
        col.prop(p, "device")
    else:
        col.label(text=f"Device: {p.device.lower()}")
    col.prop(hs, "render_lod")
    col.prop(hs, "use_refiner")
    col.prop(scene.render, "film_transparent", text="Transparent Film")
    col.prop(bpy.context.view_layer, "use_pass_z", text="Depth Pass")
    col.prop(scene.render, "use_persistent_data", text="Persistent Data")
    from blender_addon import nodes
    if nodes.supports_gaussian_splats():
        col.prop(hs, "native_splats")
    col.separator()
    col.label(text="Viewport")
    col.prop(hs, "viewport_scale")
    col.prop(hs, "navigate_divider")
    col.prop(hs, "viewport_use_refiner")
    col.prop(hs, "inspect_in_viewport")


class RENDER_PT_headsplat(bpy.types.Panel):
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_label = "HeadSplat"
    COMPAT_ENGINES = {"HEADSPLAT"}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        draw_render_settings(self.layout, context.scene)


class RENDER_PT_headsplat_splats(bpy.types.Panel):
    """Blender 5.3+: the avatars as Blender's own Gaussian splats, for every other engine."""
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_label = "HeadSplat Avatars"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        from blender_addon import nodes
        return context.engine != "HEADSPLAT" and nodes.supports_gaussian_splats()

    def draw(self, context):
        col = self.layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(context.scene.headsplat, "native_splats")


classes = (RENDER_PT_headsplat, RENDER_PT_headsplat_splats)
