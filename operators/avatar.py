"""Avatar file operators: import an avatar, relink / pack the avatar data (export: ``operators.export``)."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from blender_addon import lookup
from operators.common import CORE_MODULES, report_exception, require


def _avatar_poll(cls, context) -> bool:
    if lookup.avatar_of(context) is None:
        cls.poll_message_set("Select a HeadSplat avatar (its points or its FLAME rig)")
        return False
    if context.mode not in ("OBJECT", "POSE"):
        cls.poll_message_set("Switch to Object or Pose mode")
        return False
    return True


class HEADSPLAT_OT_import_avatar(bpy.types.Operator, ImportHelper):
    """Add a HeadSplat avatar file to the scene as a FLAME rig with Gaussian points"""

    bl_idname = "headsplat.import_avatar"
    bl_label = "Import HeadSplat Avatar"
    bl_options = {"REGISTER", "UNDO", "PRESET"}

    filename_ext = ".avatar"
    filter_glob: StringProperty(default="*.avatar;*.safetensors", options={"HIDDEN"})
    pack: BoolProperty(name="Pack into .blend", default=True,
                       description="Keep the avatar data inside the .blend as well as by path")
    set_engine: BoolProperty(name="Use HeadSplat Engine", default=True,
                             description="Switch the scene to the HeadSplat renderer and add a camera if needed")

    @classmethod
    def poll(cls, context):
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object mode")
            return False
        return True

    def execute(self, context):
        if not require(self, *CORE_MODULES):
            return {"CANCELLED"}
        from avatar_core.errors import AvatarError
        from avatar_core.io import load_avatar

        from blender_addon import scene
        path = bpy.path.abspath(self.filepath)
        try:
            avatar = load_avatar(path)
            ob = scene.build_avatar(context, avatar, name=_stem(path), source_path=path, pack=self.pack)
        except AvatarError as exc:
            report_exception(self, exc, "Importing the avatar")
            return {"CANCELLED"}
        if self.set_engine:
            scene.use_engine(context)
            scene.frame_camera(context, ob)
        self.report({"INFO"}, f"Added {ob.name!r}: {avatar.num_gaussians} Gaussians, "
                              f"{avatar.num_expr} expressions, LODs {avatar.available_lods()}.")
        return {"FINISHED"}


class HEADSPLAT_OT_relink_avatar(bpy.types.Operator, ImportHelper):
    """Point the avatar at its avatar file again (when the .blend was moved without it)"""

    bl_idname = "headsplat.relink_avatar"
    bl_label = "Relink Avatar File"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".avatar"
    filter_glob: StringProperty(default="*.avatar;*.safetensors", options={"HIDDEN"})
    pack: BoolProperty(name="Pack into .blend", default=True)

    @classmethod
    def poll(cls, context):
        return _avatar_poll(cls, context)

    def execute(self, context):
        if not require(self, *CORE_MODULES):
            return {"CANCELLED"}
        from avatar_core.errors import AvatarError
        from avatar_core.io import read_metadata

        from blender_addon import storage
        ob = lookup.avatar_of(context)
        path = bpy.path.abspath(self.filepath)
        try:
            meta = read_metadata(path)
        except AvatarError as exc:
            report_exception(self, exc, "Relinking")
            return {"CANCELLED"}
        n = int(meta.get("num_gaussians", -1))
        if n != len(ob.data.vertices):
            self.report({"ERROR"}, f"{path!r} holds {n} Gaussians but {ob.name!r} has {len(ob.data.vertices)} "
                                   f"points; choose the avatar file this object was built from.")
            return {"CANCELLED"}
        storage.forget(ob)
        if not self.pack:
            storage.unpack_remove(ob)
        storage.set_source(ob, path=path, pack_data=self.pack)
        self.report({"INFO"}, f"Relinked {ob.name!r} to {path}")
        return {"FINISHED"}


class HEADSPLAT_OT_pack_avatar(bpy.types.Operator):
    """Pack the avatar data into the .blend, or unpack it (keep only the file path)"""

    bl_idname = "headsplat.pack_avatar"
    bl_label = "Pack Avatar Data"
    bl_options = {"REGISTER", "UNDO"}

    pack: BoolProperty(name="Pack", default=True)

    @classmethod
    def poll(cls, context):
        return _avatar_poll(cls, context)

    def execute(self, context):
        from blender_addon import storage
        ob = lookup.avatar_of(context)
        if self.pack:
            path = storage.absolute_path(ob)
            if storage.is_packed(ob):
                self.report({"INFO"}, "Already packed.")
                return {"CANCELLED"}
            if not path or not os.path.isfile(path):
                self.report({"ERROR"}, f"Nothing to pack: the avatar file {path or '(none)'} is missing.")
                return {"CANCELLED"}
            storage.set_source(ob, path=path, pack_data=True)
        else:
            path = storage.absolute_path(ob)
            if not path or not os.path.isfile(path):
                self.report({"ERROR"}, "Unpacking would lose the avatar data: its file is missing. "
                                       "Relink or keep it packed.")
                return {"CANCELLED"}
            storage.unpack_remove(ob)
        return {"FINISHED"}


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or "HeadSplat Avatar"


def menu_import(self, context):
    self.layout.operator(HEADSPLAT_OT_import_avatar.bl_idname, text="HeadSplat Avatar (.avatar)")


classes = (HEADSPLAT_OT_import_avatar, HEADSPLAT_OT_relink_avatar, HEADSPLAT_OT_pack_avatar)
