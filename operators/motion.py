"""Import Motion: a FLAME npz, an ARKit CSV, a HeadSplat motion, or a video to track, as
keyframes on the avatar's shape keys and bones."""

from __future__ import annotations

import os
import time

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from blender_addon import lookup
from blender_addon.props import PATH_OPTIONS
from operators.avatar import _avatar_poll
from operators.common import CORE_MODULES, PHOTO_MODULES, JobOperatorMixin, report_exception, require

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")
MOTION_GLOB = "*.npz;*.csv;*.txt;" + ";".join("*" + e for e in VIDEO_EXTS)


def load_for_avatar(path, avatar, motion_head, head_spec, fps, progress=None, cancel=None):
    """Runs off the UI thread: read or track, then made ready for the avatar as the commands do
    (``motion_for_avatar``: its expressions, resampled to the scene's ``fps``; the root
    translation as it is, keyed on the rig)."""
    from avatar_core.motion import load_motion
    from avatar_core.progress import as_progress
    prog = as_progress(progress, cancel)
    if path.lower().endswith(VIDEO_EXTS):
        from avatar_core.fit.track import track_video
        from avatar_core.head import load_head
        from avatar_core.motion import MotionSequence
        head = load_head(head_spec)
        result = track_video(path, head, progress=prog.sub(0.0, 0.95), cancel=cancel)
        motion = MotionSequence.from_track(result, head, source=repr(path))
        motion_head = motion_head or head_spec
    else:
        prog(0.1, "reading")
        motion = load_motion(path)
    prog(0.95, "matching expressions")
    return ready_for_avatar(motion, avatar, motion_head, fps, where=repr(path))


def ready_for_avatar(motion, avatar, motion_head=None, fps=None, where=None):
    """A loaded motion made ready to key on ``avatar`` (``motion_for_avatar``): its expressions,
    resampled to the scene's ``fps`` (None: its own), the root translation as it is."""
    from avatar_core.motion.playback import motion_for_avatar
    if fps and abs(motion.fps - fps) > 1e-6:
        from avatar_core.validate import check_fps
        check_fps(fps, "the scene frame rate")   # the bounds `animate --fps` applies
    else:
        fps = None
    return motion_for_avatar(motion, avatar, motion_head=motion_head or None, fps=fps, translation="on", where=where)


class HEADSPLAT_OT_import_motion(JobOperatorMixin, bpy.types.Operator, ImportHelper):
    """Key a motion (FLAME npz, ARKit-52 CSV, HeadSplat motion, or a video to track) onto the
    avatar's shape keys and bones"""

    bl_idname = "headsplat.import_motion"
    bl_label = "Import Motion"
    bl_options = {"REGISTER", "UNDO"}
    job_title = "HeadSplat motion"

    filter_glob: StringProperty(default=MOTION_GLOB, options={"HIDDEN"})
    start_frame: IntProperty(name="Start Frame", default=1)
    match_fps: BoolProperty(name="Match Scene FPS", default=True,
                            description="Resample the motion to the scene's frame rate")
    set_frame_range: BoolProperty(name="Set Frame Range", default=True)
    motion_head: StringProperty(name="Motion Head Model", subtype="FILE_PATH", default="", options=PATH_OPTIONS,
                                description="For retargeting between head models: the head the motion was "
                                            "captured with ('open' or a FLAME file); empty = guess from names")

    @classmethod
    def poll(cls, context):
        return _avatar_poll(cls, context)

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        video = path.lower().endswith(VIDEO_EXTS)
        if not require(self, *(PHOTO_MODULES if video else CORE_MODULES)):
            return {"CANCELLED"}
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"The motion file {path!r} does not exist.")
            return {"CANCELLED"}
        from blender_addon import prefs, storage
        from blender_addon.pure.jobs import Job
        self._ob_name = lookup.avatar_of(context).name
        try:
            avatar = storage.load_for_object(lookup.avatar_of(context))
        except Exception as exc:
            report_exception(self, exc, "Reading the avatar data")
            return {"CANCELLED"}
        scene = context.scene
        fps = scene.render.fps / scene.render.fps_base if self.match_fps else None
        motion_head = bpy.path.abspath(self.motion_head) if self.motion_head not in ("", "open") else self.motion_head
        self._t0 = time.perf_counter()
        self._job = Job(load_for_avatar, path, avatar, motion_head, prefs.head_spec(), fps, name="HeadSplat motion")
        return self.run_job(context)

    def finish(self, context):
        job = self._job
        if job.error is not None:
            report_exception(self, job.error, "Importing the motion")
            return {"CANCELLED"}
        from blender_addon import keyframes
        ob = bpy.data.objects.get(self._ob_name)
        if ob is None:
            self.report({"ERROR"}, "The avatar was deleted while the motion was loading.")
            return {"CANCELLED"}
        motion = job.result
        t = time.perf_counter()
        name = os.path.splitext(os.path.basename(self.filepath))[0]
        info = keyframes.key_motion(ob, lookup.rig_of(ob), motion, self.start_frame, name=name)
        key_s = time.perf_counter() - t
        if self.set_frame_range:
            context.scene.frame_start = self.start_frame
            context.scene.frame_end = self.start_frame + motion.num_frames - 1
        for w in motion.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"Keyed {info['frames']} frames on {info['shape_keys']} shape keys and "
                              f"{info['bones']} bones ({key_s:.2f} s).")
        ob["_headsplat_last_import_s"] = round(time.perf_counter() - self._t0, 3)
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(HEADSPLAT_OT_import_motion.bl_idname, text="HeadSplat Motion (.npz, .csv, video)")


classes = (HEADSPLAT_OT_import_motion,)
