"""Export Gaussians: the avatar's splats at the current frame, or over the scene's frame range, as
PLY, glTF (KHR_gaussian_splatting) or SPZ. Thin: Blender gives each frame's expression, pose and
LOD; ``avatar_core.io.export`` writes the files."""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from blender_addon import lookup
from blender_addon.pure.constants import nearest_lod
from operators.avatar import _avatar_poll
from operators.common import CORE_MODULES, report_exception, require

SUFFIXES = (".ply", ".glb", ".spz")


class HEADSPLAT_OT_export_ply(bpy.types.Operator, ExportHelper):
    """Write the avatar's Gaussians (its own colours, without the neural refiner) at the current
    frame, or a numbered file per frame of the scene's range, as PLY, glTF or SPZ"""

    bl_idname = "headsplat.export_ply"  # the name panels and scripts already call
    bl_label = "Export Gaussians"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply;*.glb;*.spz", options={"HIDDEN"})
    file_format: EnumProperty(
        name="Format", default="PLY",
        items=[("PLY", "PLY (3DGS)", "The INRIA 3D Gaussian Splatting PLY most splat tools read"),
               ("GLB", "glTF Binary (KHR_gaussian_splatting)", "glTF with the ratified Gaussian splatting "
                                                               "extension (three.js, Babylon.js, Cesium...)"),
               ("SPZ", "SPZ", "Niantic's compressed splat format, about ten times smaller than PLY")])
    frames: EnumProperty(
        name="Frames", default="CURRENT",
        items=[("CURRENT", "Current Frame", "One file at the scene's current frame"),
               ("RANGE", "Frame Range", "A folder named like the file, with frame_00000... and sequence.json "
                                        "(fps, frame count) for the scene's frame range")])
    coordinates: EnumProperty(
        name="Coordinates", default="HEAD",
        items=[("HEAD", "Head (Y up)",
                "avatar_core's head frame, which is glTF's: like `python -m avatar_core export`"),
               ("BLENDER", "Blender World (Z up)", "Where the points are in this scene, object transform applied")])

    @classmethod
    def poll(cls, context):
        return _avatar_poll(cls, context)

    def _suffix(self) -> str:
        return "." + self.file_format.lower()

    def check(self, context):
        """Keep the file name's suffix in step with the format."""
        path = self.filepath
        stem, ext = os.path.splitext(path)
        want = stem + self._suffix() if ext.lower() in SUFFIXES else bpy.path.ensure_ext(path, self._suffix())
        if want != path:
            self.filepath = want
            return True
        return False

    def execute(self, context):
        if not require(self, *CORE_MODULES):
            return {"CANCELLED"}
        from avatar_core.errors import AvatarError
        from avatar_core.io import export

        from blender_addon import storage
        self.check(context)
        path = bpy.path.abspath(self.filepath)
        fmt = self.file_format.lower()
        ob = lookup.avatar_of(context)
        scene = context.scene
        try:
            avatar = storage.load_for_object(ob)
            if self.frames == "CURRENT":
                frame = self._frame(ob, avatar)
                export.write_frame(path, frame, fmt, extras={"blender_frame": scene.frame_current})
                self.report({"INFO"}, f"Wrote {frame.num} Gaussians to {self.filepath}")
                return {"FINISHED"}
            folder = os.path.splitext(path)[0]
            start, end, current = scene.frame_start, scene.frame_end, scene.frame_current
            wm = context.window_manager
            wm.progress_begin(0, end - start + 1)

            def frames():
                for i, f in enumerate(range(start, end + 1)):
                    scene.frame_set(f)
                    wm.progress_update(i)
                    yield self._frame(ob, avatar)

            try:
                index = export.export_sequence(folder, frames(), fmt, fps=scene.render.fps / scene.render.fps_base,
                                               total=end - start + 1, first_frame=start)
            finally:
                scene.frame_set(current)
                wm.progress_end()
        except AvatarError as exc:
            report_exception(self, exc, "Exporting the Gaussians")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {index['frame_count']} frames to {folder}")
        return {"FINISHED"}

    def _frame(self, ob, avatar):
        """The avatar's Gaussians at the scene's current state (B = 1)."""
        import numpy as np
        import torch

        from blender_addon import params
        from blender_addon.pure import convert
        p = params.frame_params(ob, lookup.rig_of(ob), avatar)
        hs = ob.headsplat
        with torch.no_grad():
            frame = avatar.animate(expression=torch.as_tensor(p["expression"])[None],
                                   pose=torch.as_tensor(p["pose"])[None],
                                   translation=torch.as_tensor(p["translation"])[None],
                                   lod=nearest_lod(avatar.available_lods(), hs.lod), layers=lookup.layer_selection(hs),
                                   mask_threshold=hs.mask_threshold)
        if self.coordinates == "BLENDER":
            rigid, s = convert.split_similarity(np.array(ob.matrix_world))
            frame = frame.transformed(rigid[:3, :3], s, rigid[:3, 3])
        return frame


def menu_export(self, context):
    self.layout.operator(HEADSPLAT_OT_export_ply.bl_idname, text="HeadSplat Gaussians (.ply, .glb, .spz)")


classes = (HEADSPLAT_OT_export_ply,)
