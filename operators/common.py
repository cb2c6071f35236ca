"""Helpers shared by the operators: dependency gate, error reporting, scene setup, modal jobs."""

from __future__ import annotations

import logging
import math
import traceback

import bpy

log = logging.getLogger("headsplat.operators")

CORE_MODULES = ("numpy", "torch", "safetensors")
PHOTO_MODULES = CORE_MODULES + ("PIL", "cv2", "scipy")


def require(op, *modules) -> bool:
    """Report and return False when a needed package is missing (the panel says how to fix it)."""
    from blender_addon import deps
    st = deps.status()
    missing = st.missing_for(*(modules or CORE_MODULES))
    if any(r.module == "numpy" for r, _ in st.missing):
        op.report({"ERROR"}, deps.numpy_sentence())
        return False
    if missing:
        op.report({"ERROR"}, f"HeadSplat needs {', '.join(missing)} in Blender's Python {st.python}; "
                             f"install them from Preferences > Add-ons > HeadSplat (Install Dependencies).")
        return False
    return True


def report_exception(op, exc: BaseException, what: str) -> None:
    """One sentence for the user; the traceback only for unexpected errors."""
    from avatar_core.errors import AvatarError, Cancelled
    if isinstance(exc, Cancelled):
        op.report({"WARNING"}, f"{what} was cancelled; the scene is unchanged.")
    elif isinstance(exc, AvatarError):
        op.report({"ERROR"}, str(exc))
    else:
        log.error("%s failed:\n%s", what, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        op.report({"ERROR"}, f"{what} failed: {type(exc).__name__}: {exc}")


def use_engine(context) -> None:
    """Switch the scene to the HeadSplat engine with a view transform that shows the avatar's
    colours unchanged, keeping the render's scene data between renders (Persistent Data: an
    F12 then re-evaluates that data instead of copying it again: 5-10% of a CPU frame for the
    open head, whose shape keys alone are 64 MB; Render > HeadSplat turns it off)."""
    scene = context.scene
    scene.render.engine = "HEADSPLAT"
    scene.render.use_persistent_data = True
    try:
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
    except TypeError:
        pass


FRAMING_CAMERA = "HeadSplat Camera"
FRAME_FILL = 1 / 1.2   # the avatar's bounding box fills this much of the frame's tighter side


def frame_camera(context, ob, refit: bool = False) -> bpy.types.Object:
    """The scene camera; when the scene has none, or with ``refit``, a camera facing the avatar
    (Blender's front view, looking along +Y) that frames its bounding box for the scene's
    resolution. A refit reuses the "HeadSplat Camera" it made before and leaves the user's
    cameras as they are (the scene camera becomes the framing one)."""
    scene = context.scene
    if scene.camera is not None and not refit:
        return scene.camera
    from mathutils import Vector
    pts = [ob.matrix_world @ Vector(c) for c in ob.bound_box]
    lo = Vector((min(p.x for p in pts), min(p.y for p in pts), min(p.z for p in pts)))
    hi = Vector((max(p.x for p in pts), max(p.y for p in pts), max(p.z for p in pts)))
    centre = (lo + hi) / 2
    cam = bpy.data.objects.get(FRAMING_CAMERA)
    if cam is None or cam.type != "CAMERA":
        cam = bpy.data.objects.new(FRAMING_CAMERA, bpy.data.cameras.new(FRAMING_CAMERA))
    if cam.name not in scene.objects:
        scene.collection.objects.link(cam)
    cam_data = cam.data
    cam_data.type = "PERSP"
    cam_data.lens = 85.0
    cam_data.clip_start = 0.01
    cam_data.sensor_fit = "AUTO"
    cam_data.shift_x = cam_data.shift_y = 0.0
    # AUTO sensor fit: the sensor width spans the frame's longer side
    r = scene.render
    w = max(1.0, r.resolution_x * r.pixel_aspect_x)
    h = max(1.0, r.resolution_y * r.pixel_aspect_y)
    half = cam_data.sensor_width / (2 * cam_data.lens)          # tan(half field of view), longer side
    tan_h, tan_v = (half, half * h / w) if w >= h else (half * w / h, half)
    size_x, size_z = max(hi.x - lo.x, 0.05), max(hi.z - lo.z, 0.05)
    # distance from the box's front face (the nearest, so the largest on screen)
    dist = max(size_z / (2 * FRAME_FILL * tan_v), size_x / (2 * FRAME_FILL * tan_h))
    cam.location = (centre.x, lo.y - dist, centre.z)
    cam.rotation_mode = "XYZ"
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.camera = cam
    return cam


def tag_redraw(context) -> None:
    screen = getattr(context, "screen", None)
    if screen is None:
        return
    for area in screen.areas:
        area.tag_redraw()


class JobOperatorMixin:
    """Modal plumbing for an operator that runs a ``jobs.Job``.

    Subclasses set ``self._job`` in ``execute`` and call ``self.run_job(context)``; they
    implement ``finish(context)``, called on the main thread once the job is done. Without a
    window (background mode, scripts) the job runs to completion synchronously.
    """

    _timer = None
    _job = None
    job_title = "HeadSplat"

    def run_job(self, context):
        self._job.start()
        wm = context.window_manager
        if context.window is None or bpy.app.background:
            self._job.wait()
            return self.finish(context)
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        self._status(context, 0.0, "starting")
        return {"RUNNING_MODAL"}

    def _status(self, context, fraction, message):
        text = f"{self.job_title}: {int(100 * fraction)}% {message} (Esc to cancel)"
        if context.workspace is not None:
            context.workspace.status_text_set(text)
        context.window_manager.progress_update(int(100 * fraction))

    def _stop_ui(self, context):
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            self._status(context, self._job.poll()[0], "cancelling...")
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            if self._job.done:
                self._stop_ui(context)
                return self.finish(context)
            fraction, message = self._job.poll()
            self._status(context, fraction, message)
        return {"PASS_THROUGH"}

    def cancel(self, context):  # Blender is closing the operator (e.g. file load)
        if self._job is not None:
            self._job.cancel()
        self._stop_ui(context)
