"""Avatar file operators: import an avatar, export PLY, relink / pack the avatar data."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from blender_addon import lookup
from operators.common import CORE_MODULES, frame_camera, report_exception, require, use_engine


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
            use_engine(context)
            frame_camera(context, ob)
        self.report({"INFO"}, f"Added {ob.name!r}: {avatar.num_gaussians} Gaussians, "
                              f"{avatar.num_expr} expressions, LODs {avatar.available_lods()}.")
        return {"FINISHED"}


class HEADSPLAT_OT_export_ply(bpy.types.Operator, ExportHelper):
    """Write the avatar's Gaussians at the current frame's expression, pose and LOD as a 3DGS PLY"""

    bl_idname = "headsplat.export_ply"
    bl_label = "Export Gaussian PLY"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    coordinates: EnumProperty(
        name="Coordinates", default="HEAD",
        items=[("HEAD", "Head (Y up)", "avatar_core's head frame, like `python -m avatar_core export-ply`"),
               ("BLENDER", "Blender World (Z up)", "Where the points are in this scene, object transform applied")])

    @classmethod
    def poll(cls, context):
        return _avatar_poll(cls, context)

    def execute(self, context):
        if not require(self, *CORE_MODULES):
            return {"CANCELLED"}
        import numpy as np
        import torch
        from avatar_core.errors import AvatarError
        from avatar_core.io import write_ply

        from blender_addon import convert, params, storage
        ob = lookup.avatar_of(context)
        try:
            avatar = storage.load_for_object(ob)
            p = params.frame_params(ob, lookup.rig_of(ob), avatar)
            hs = ob.headsplat
            layers = lookup.layer_selection(hs)
            frame = avatar.animate(expression=torch.as_tensor(p["expression"])[None],
                                   pose=torch.as_tensor(p["pose"])[None],
                                   translation=torch.as_tensor(p["translation"])[None],
                                   lod=_nearest_lod(avatar, hs.lod), layers=layers,
                                   mask_threshold=hs.mask_threshold)
            if self.coordinates == "BLENDER":
                rigid, s = convert.split_similarity(np.array(ob.matrix_world))
                R = torch.as_tensor(rigid[:3, :3], dtype=frame.means.dtype)
                t = torch.as_tensor(rigid[:3, 3], dtype=frame.means.dtype)
                q = torch.as_tensor(convert.matrix_to_quaternion(rigid[:3, :3]), dtype=frame.means.dtype)
                from avatar_core.head.lbs import quaternion_multiply
                frame.means = s * frame.means @ R.T + t
                frame.quats = quaternion_multiply(q.expand_as(frame.quats), frame.quats)
                frame.scales = frame.scales * s
            write_ply(bpy.path.abspath(self.filepath), frame)
        except AvatarError as exc:
            report_exception(self, exc, "Exporting the PLY")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {frame.num} Gaussians to {self.filepath}")
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


def _nearest_lod(avatar, lod: int) -> int:
    lods = avatar.available_lods()
    return lod if lod in lods else min(lods, key=lambda k: abs(k - lod))


def menu_import(self, context):
    self.layout.operator(HEADSPLAT_OT_import_avatar.bl_idname, text="HeadSplat Avatar (.avatar)")


def menu_export(self, context):
    self.layout.operator(HEADSPLAT_OT_export_ply.bl_idname, text="HeadSplat Gaussians (.ply)")


classes = (HEADSPLAT_OT_import_avatar, HEADSPLAT_OT_export_ply, HEADSPLAT_OT_relink_avatar, HEADSPLAT_OT_pack_avatar)
