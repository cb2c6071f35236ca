"""The "Avatar" tab of the 3D viewport sidebar: Create, LOD, Inspect, Expressions, Render."""

from __future__ import annotations

import bpy

from blender_addon import lookup

CATEGORY = "Avatar"


class _AvatarPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY

    @classmethod
    def poll(cls, context):
        return lookup.avatar_of(context) is not None


class VIEW3D_PT_headsplat_create(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Create"

    def draw(self, context):
        from blender_addon import prefs, storage
        from blender_addon.pure import deps
        layout = self.layout
        st = deps.status()
        if not st.ok:
            box = layout.box()
            box.label(text=f"Missing for Python {st.python}:", icon="ERROR")
            for r, why in st.missing:
                box.label(text=f"{deps.pip_spec(r)}: {why}")
            box.operator("headsplat.install_dependencies", icon="IMPORT")
        col = layout.column(align=True)
        col.operator("headsplat.create_from_photo", icon="IMAGE_DATA")
        col.operator("headsplat.import_avatar", icon="IMPORT")
        p = prefs.get()
        layout.label(text=f"Head: {'built-in open head' if p.head_model == 'OPEN' else 'FLAME'}; "
                          f"device {p.device.lower()}", icon="INFO")
        ob = lookup.avatar_of(context)
        if ob is None:
            return
        hs = ob.headsplat
        box = layout.box()
        box.label(text=f"{ob.name}: {hs.num_gaussians:,} Gaussians", icon="POINTCLOUD_DATA")
        if hs.data_missing or not storage.data_available(ob):
            warn = box.column()
            warn.alert = True
            warn.label(text="Avatar data missing: points shown,", icon="ERROR")
            warn.label(text="but HeadSplat cannot render them.")
            box.operator("headsplat.relink_avatar", icon="FILE_REFRESH")
        else:
            packed = storage.is_packed(ob)
            row = box.row()
            row.label(text="Data packed in .blend" if packed else "Data by file path",
                      icon="PACKAGE" if packed else "UGLYPACKAGE")
            op = row.operator("headsplat.pack_avatar", text="Unpack" if packed else "Pack")
            op.pack = not packed
        if hs.avatar_path:
            box.prop(hs, "avatar_path", text="")
        row = layout.row(align=True)
        row.operator("headsplat.import_motion", icon="ACTION")
        row.operator("headsplat.export_ply", icon="EXPORT")


class VIEW3D_PT_headsplat_lod(_AvatarPanel, bpy.types.Panel):
    bl_label = "LOD"

    def draw(self, context):
        ob = lookup.avatar_of(context)
        hs = ob.headsplat
        layout = self.layout
        layout.prop(hs, "lod", slider=True)
        layout.label(text=f"Levels in this avatar: {hs.lod_levels}")
        layout.prop(hs, "point_size")


class VIEW3D_PT_headsplat_inspect(_AvatarPanel, bpy.types.Panel):
    bl_label = "Inspect"

    def draw(self, context):
        ob = lookup.avatar_of(context)
        hs = ob.headsplat
        layout = self.layout
        layout.prop(hs, "colour_mode", expand=False)
        layout.prop(hs, "mask_threshold", slider=True)
        n = min(int(hs.num_layers), len(hs.layers))
        if n:
            layout.label(text="Split layers:")
            grid = layout.grid_flow(row_major=True, columns=4, align=True)
            for i in range(n):
                grid.prop(hs, "layers", index=i, text=str(i), toggle=True)
        else:
            layout.label(text="This avatar has no split layers.")
        layout.label(text="Colours show in Rendered mode (HeadSplat)", icon="INFO")
        layout.label(text="and Material Preview.")


class VIEW3D_PT_headsplat_expressions(_AvatarPanel, bpy.types.Panel):
    bl_label = "Expressions"

    def draw(self, context):
        ob = lookup.avatar_of(context)
        layout = self.layout
        row = layout.row(align=True)
        row.operator("headsplat.keyframe_expressions", icon="KEY_HLT", text="Key All")
        row.operator("headsplat.reset_expressions", icon="LOOP_BACK", text="Reset")
        key = ob.data.shape_keys
        if key is None:
            layout.label(text="No shape keys")
            return
        col = layout.column(align=True)
        col.use_property_split = False
        col.use_property_decorate = True  # the keyframe diamond beside each slider
        for kb in key.key_blocks[1:]:
            col.prop(kb, "value", text=kb.name, slider=True)
        rig = lookup.rig_of(ob)
        if rig is not None:
            layout.separator()
            layout.label(text="Pose (FLAME rig)")
            col = layout.column(align=True)
            col.use_property_decorate = True
            for name in ("jaw", "neck", "eye_L", "eye_R"):
                pb = rig.pose.bones.get(name)
                if pb is not None:
                    col.prop(pb, "rotation_quaternion", text=name)


class VIEW3D_PT_headsplat_render(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Render"

    def draw(self, context):
        from panels.render import draw_render_settings
        layout = self.layout
        scene = context.scene
        if scene.render.engine != "HEADSPLAT":
            layout.label(text=f"Engine: {scene.render.engine.title()}", icon="INFO")
            layout.prop(scene.render, "engine", text="")
        draw_render_settings(layout, scene)
        ob = lookup.avatar_of(context)
        if ob is not None:
            layout.prop(ob.headsplat, "points_in_renders")


classes = (VIEW3D_PT_headsplat_create, VIEW3D_PT_headsplat_lod, VIEW3D_PT_headsplat_inspect,
           VIEW3D_PT_headsplat_expressions, VIEW3D_PT_headsplat_render)
