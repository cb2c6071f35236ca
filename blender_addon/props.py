"""Properties HeadSplat adds to objects and scenes (registered by ``blender_addon.register``).

``Object.headsplat`` lives on the avatar's point object: LOD, inspection settings and where
its avatar data is. The geometry-nodes modifier reads LOD / threshold / layers / colour mode
through drivers, so changing them (or keying them) never rebuilds the mesh.
``Scene.headsplat`` holds the render engine's settings (final and viewport separately).
"""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, BoolVectorProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from blender_addon.pure.constants import MAX_LAYERS, nearest_lod

COLOUR_MODE_ITEMS = [
    ("RGB", "Colour", "The Gaussians' own colours", 0),
    ("LAYER", "Split Layer", "One colour per split layer (grey: not a split Gaussian)", 1),
    ("MASK", "Soft Mask", "Soft-mask value, blue (0) to orange (1)", 2),
    ("REGION", "Region", "Head, split expression Gaussians, shoulders/hair", 3),
]


def _path_options() -> set:
    """{"PATH_SUPPORTS_BLEND_RELATIVE"} where this Blender knows the option (newer Blenders warn
    unless a path property declares that it takes "//" paths), else none: Blender 4.2 to 4.3
    reject the name. A Blender that has the option exposes it as ``Property.is_path_supports_blend_relative``."""
    has = "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties.keys()
    return {"PATH_SUPPORTS_BLEND_RELATIVE"} if has else set()


PATH_OPTIONS = _path_options()


def _redraw(self, context):
    # drivers re-evaluate by themselves; redraw so the viewport engine picks the change up
    screen = getattr(context, "screen", None)
    if screen is not None:
        for area in screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def set_points_in_renders(ob, on: bool) -> None:
    """Final renders either evaluate the point object (for Cycles/EEVEE), or skip it entirely:
    the HeadSplat engine then reads the shape keys through the rig (``rig.headsplat.shape_keys``
    keeps them in the render depsgraph) and saves Blender copying and mixing every key over
    every point for each frame."""
    ob.hide_render = not on
    for m in ob.modifiers:
        if m.type in {"ARMATURE", "NODES"}:
            m.show_render = on


def _points_in_renders(self, context):
    set_points_in_renders(self.id_data, self.points_in_renders)


def _native_splats(self, context):
    """An avatar drawn by Blender's own renderers as Gaussian splats must be evaluated in
    final renders, and its mesh needs the splat colour attribute."""
    ob = self.id_data
    if self.native_splats:
        from blender_addon import nodes, scene
        if nodes.supports_gaussian_splats():
            scene.ensure_splat_attribute(ob)
    if self.points_in_renders != self.native_splats:
        self.points_in_renders = self.native_splats
    _redraw(self, context)


def _scene_native_splats(self, context):
    scene = self.id_data
    for ob in scene.objects:
        if ob.type == "MESH" and ob.headsplat.is_avatar and ob.headsplat.native_splats != self.native_splats:
            ob.headsplat.native_splats = self.native_splats


def _lod_update(self, context):
    """Snap to the nearest level this avatar has (a reconstruction may keep only LOD 0)."""
    levels = [int(x) for x in self.lod_levels.split(",") if x.strip().lstrip("-").isdigit()]
    if levels and self.lod not in levels:
        self.lod = nearest_lod(levels, self.lod)
    _redraw(self, context)


class HeadSplatObjectProps(bpy.types.PropertyGroup):
    is_avatar: BoolProperty(name="Is HeadSplat Avatar", default=False, options={"HIDDEN"})
    rig: PointerProperty(name="Rig", type=bpy.types.Object, description="The avatar's FLAME armature")
    shape_keys: PointerProperty(name="Avatar Shape Keys", type=bpy.types.Key, options={"HIDDEN"},
                                description="On a rig: its avatar's shape keys (keeps them evaluated in final "
                                            "renders while the point object itself is skipped)")
    lod: IntProperty(name="LOD", min=0, max=2, default=2, update=_lod_update,
                     description="Level of detail shown (0 coarse .. 2 fine); switching does not rebuild the mesh")
    mask_threshold: FloatProperty(name="Mask Threshold", min=0.0, max=1.0, default=0.5, update=_redraw,
                                  description="Split Gaussians whose soft mask (ANDed with their parents') is below "
                                              "this are hidden")
    layers: BoolVectorProperty(name="Layers", size=MAX_LAYERS, default=(True,) * MAX_LAYERS, update=_redraw,
                               description="Show or hide each split layer")
    colour_mode: EnumProperty(name="Colour By", items=COLOUR_MODE_ITEMS, default="RGB", update=_redraw)
    point_size: FloatProperty(name="Point Size", min=0.01, max=10.0, default=1.0, update=_redraw,
                              description="Display radius of the points relative to the Gaussians' size")
    points_in_renders: BoolProperty(
        name="Points in Final Renders", default=False, update=_points_in_renders,
        description="Evaluate the point object (shape keys, Armature and point modifiers) in final renders. "
                    "HeadSplat's engine does not need it (it animates the Gaussians itself from the keys and "
                    "bones), so it is skipped to save time; turn on to render the points with Cycles or EEVEE")
    native_splats: BoolProperty(
        name="Gaussian Splats", default=False, update=_native_splats,
        description="Blender 5.3+: the avatar's points become 3D Gaussian splats that Blender's own renderers "
                    "(EEVEE, Cycles) draw with the rest of the scene, deformed by the shape keys and bones "
                    "(turns on Points in Final Renders)")
    # bookkeeping (set by the scene builder)
    num_layers: IntProperty(name="Split Layers", default=0, options={"HIDDEN"})
    lod_levels: StringProperty(name="LOD Levels", default="0,1,2", options={"HIDDEN"})
    num_gaussians: IntProperty(name="Gaussians", default=0, options={"HIDDEN"})
    head_name: StringProperty(name="Head Model", default="", options={"HIDDEN"})
    avatar_path: StringProperty(name="Avatar File", subtype="FILE_PATH", default="", options=PATH_OPTIONS,
                                description="The avatar file (relative to the .blend when saved)")
    data_key: StringProperty(name="Data Key", default="", options={"HIDDEN"},
                             description="Content hash of the avatar data this object was built from")
    data_missing: BoolProperty(name="Avatar Data Missing", default=False, options={"HIDDEN"})
    packed: PointerProperty(name="Packed Avatar Data", type=bpy.types.Text, options={"HIDDEN"},
                            description="The hidden datablock holding this avatar's packed data (see storage)")


class HeadSplatSceneProps(bpy.types.PropertyGroup):
    use_refiner: BoolProperty(name="Neural Refiner", default=True,
                              description="Pass the rasterised features through the avatar's refiner (when it has one)")
    viewport_use_refiner: BoolProperty(name="Viewport Refiner", default=False,
                                       description="Use the refiner in the viewport too (slower)")
    viewport_scale: IntProperty(name="Viewport Resolution", min=5, max=100, default=50, subtype="PERCENTAGE",
                                description="Viewport rendering resolution in percent of the region")
    navigate_divider: IntProperty(name="Navigation Divider", min=1, max=16, default=4,
                                  description="While navigating on CPU, render at 1/N of the viewport resolution")
    inspect_in_viewport: BoolProperty(name="Inspection Colours in Viewport", default=True,
                                      description="Rendered viewport shows each avatar's inspection colours")
    native_splats: BoolProperty(
        name="Native Gaussian Splats", default=False, update=_scene_native_splats,
        description="Blender 5.3+: the scene's avatars are drawn by Blender's own renderers (EEVEE, Cycles) as "
                    "3D Gaussian splats, composited with other objects; the HeadSplat engine (neural refiner, exact "
                    "deformation) still renders them when it is the render engine")
    render_lod: EnumProperty(name="Render LOD", default="OBJECT",
                             items=[("OBJECT", "Per Object", "Each avatar's LOD property"),
                                    ("0", "0", ""), ("1", "1", ""), ("2", "2", "")],
                             description="LOD used for final renders")


classes = (HeadSplatObjectProps, HeadSplatSceneProps)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.Object.headsplat = PointerProperty(type=HeadSplatObjectProps)
    bpy.types.Scene.headsplat = PointerProperty(type=HeadSplatSceneProps)


def unregister():
    del bpy.types.Scene.headsplat
    del bpy.types.Object.headsplat
    _unregister_classes()
