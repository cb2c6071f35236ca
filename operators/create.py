"""Create Avatar from Photo: reconstruction off the UI thread, then the scene is built."""

from __future__ import annotations

import os
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from operators.common import PHOTO_MODULES, JobOperatorMixin, report_exception, require

IMAGE_GLOB = "*.jpg;*.jpeg;*.png;*.bmp;*.webp;*.tif;*.tiff"


def _reconstruct(photo, out_path, head, quality, device, progress=None, cancel=None):
    """The reconstruction the operator runs (tests replace it with a tiny stand-in)."""
    from avatar_core.recon import reconstruct
    avatar, _report = reconstruct(photo, out_path=out_path, head=head, quality=quality, device=device,
                                  progress=progress, cancel=cancel)
    return avatar


class HEADSPLAT_OT_create_from_photo(JobOperatorMixin, bpy.types.Operator, ImportHelper):
    """Reconstruct an animatable Gaussian head avatar from one portrait photo (runs in the
    background; Esc cancels)"""

    bl_idname = "headsplat.create_from_photo"
    bl_label = "Create Avatar from Photo"
    bl_options = {"REGISTER", "UNDO"}
    job_title = "HeadSplat reconstruction"

    filter_glob: StringProperty(default=IMAGE_GLOB, options={"HIDDEN"})
    quality: EnumProperty(name="Quality", default="PREFS",
                          items=[("PREFS", "From Preferences", ""), ("fast", "Fast", ""),
                                 ("default", "Default", ""), ("best", "Best", ""),
                                 ("test", "Test", "A tiny reconstruction for checking the set-up")])
    save_file: BoolProperty(name="Save Avatar File", default=True,
                            description="Also write PHOTO.avatar next to the photo")
    pack: BoolProperty(name="Pack into .blend", default=True)
    set_engine: BoolProperty(name="Use HeadSplat Engine", default=True)

    _running = False

    @classmethod
    def poll(cls, context):
        if HEADSPLAT_OT_create_from_photo._running:
            cls.poll_message_set("A reconstruction is already running")
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object mode")
            return False
        return True

    def execute(self, context):
        from blender_addon import prefs
        photo = bpy.path.abspath(self.filepath)
        if not photo or not os.path.isfile(photo):
            self.report({"ERROR"}, f"The photo {photo!r} does not exist; choose an image file "
                                   f"(JPEG, PNG, ...).")
            return {"CANCELLED"}
        p = prefs.get()
        modules = PHOTO_MODULES + (("anny",) if p.head_model == "OPEN" else ())
        if not require(self, *modules):
            return {"CANCELLED"}
        head = prefs.head_spec(p)
        if not head:
            self.report({"ERROR"}, "The head model is set to a FLAME file, but no file is chosen "
                                   "(Preferences > Add-ons > HeadSplat).")
            return {"CANCELLED"}
        from avatar_core.devices import resolve_device
        from blender_addon.pure.jobs import Job
        quality = p.quality if self.quality == "PREFS" else self.quality
        self._out_path = os.path.splitext(photo)[0] + ".avatar" if self.save_file else None
        self._photo = photo
        self._job = Job(_reconstruct_hook(), photo, self._out_path, head, quality,
                        resolve_device(p.device, fallback=True),
                        name="HeadSplat reconstruction")
        HEADSPLAT_OT_create_from_photo._running = True
        try:
            return self.run_job(context)
        except BaseException:
            HEADSPLAT_OT_create_from_photo._running = False
            raise

    def finish(self, context):
        HEADSPLAT_OT_create_from_photo._running = False
        job = self._job
        if job.error is not None:
            report_exception(self, job.error, "Creating the avatar")
            return {"CANCELLED"}
        from avatar_core.errors import AvatarError

        from blender_addon import scene
        t0 = time.perf_counter()
        avatar = job.result
        name = os.path.splitext(os.path.basename(self._photo))[0]
        path = self._out_path if self._out_path and os.path.isfile(self._out_path) else ""
        try:
            ob = scene.build_avatar(context, avatar, name=name, source_path=path, pack=self.pack or not path)
        except AvatarError as exc:
            report_exception(self, exc, "Building the avatar")
            return {"CANCELLED"}
        if self.set_engine:
            scene.use_engine(context)
            scene.frame_camera(context, ob)
        build = time.perf_counter() - t0
        ob["_headsplat_timing"] = {"reconstruct_s": round(job.seconds, 3), "build_s": round(build, 3)}
        self.report({"INFO"}, f"Created {ob.name!r} ({avatar.num_gaussians} Gaussians) in {job.seconds:.0f} s "
                              f"+ {build:.1f} s to build the scene.")
        return {"FINISHED"}

    def cancel(self, context):
        HEADSPLAT_OT_create_from_photo._running = False
        super().cancel(context)


def _reconstruct_hook():
    # looked up at call time so tests can monkeypatch ``operators.create._reconstruct``
    import operators.create as mod
    return mod._reconstruct


classes = (HEADSPLAT_OT_create_from_photo,)
