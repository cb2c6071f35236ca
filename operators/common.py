"""Helpers shared by the operators: dependency gate, error reporting, scene setup, modal jobs."""

from __future__ import annotations

import logging
import traceback

import bpy

log = logging.getLogger("headsplat.operators")

CORE_MODULES = ("numpy", "torch", "safetensors")
PHOTO_MODULES = CORE_MODULES + ("PIL", "cv2", "scipy")


def require(op, *modules) -> bool:
    """Report and return False when a needed package is missing (the panel says how to fix it)."""
    from blender_addon.pure import deps
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
