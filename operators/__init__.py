"""HeadSplat's operators (thin: the work is in blender_addon's helpers and avatar_core)."""

from __future__ import annotations

import bpy

from operators import avatar, create, dependencies, export, expressions, motion

classes = (*avatar.classes, *export.classes, *create.classes, *motion.classes, *expressions.classes, *dependencies.classes)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def _menu_import(self, context):
    self.layout.operator(create.HEADSPLAT_OT_create_from_photo.bl_idname, text="HeadSplat Avatar from Photo")
    avatar.menu_import(self, context)
    motion.menu_import(self, context)


def register():
    _register_classes()
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.TOPBAR_MT_file_export.append(export.menu_export)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(export.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    _unregister_classes()
