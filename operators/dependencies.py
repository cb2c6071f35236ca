"""Dependency operators: check, and pip-install into the add-on's own folder."""

from __future__ import annotations

import bpy

from operators.common import JobOperatorMixin


class HEADSPLAT_OT_check_dependencies(bpy.types.Operator):
    """Look again for HeadSplat's Python packages"""

    bl_idname = "headsplat.check_dependencies"
    bl_label = "Check Dependencies"

    def execute(self, context):
        from blender_addon.pure import deps
        st = deps.status(refresh=True)
        self.report({"INFO"} if st.ok else {"WARNING"}, st.sentence())
        return {"FINISHED"}


def _install(progress=None, cancel=None):
    from blender_addon.pure import deps
    lines = []

    def log(line):
        lines.append(line)
        if progress is not None:
            progress(min(0.95, 0.02 * len(lines)), line[:80])

    deps.install(log=log, cancel=cancel)
    return deps.status(refresh=True)


class HEADSPLAT_OT_install_dependencies(JobOperatorMixin, bpy.types.Operator):
    """Install the missing packages with pip into a folder of the add-on (needs internet access)"""

    bl_idname = "headsplat.install_dependencies"
    bl_label = "Install Dependencies"
    job_title = "HeadSplat dependencies"

    @classmethod
    def poll(cls, context):
        from blender_addon.pure import deps
        if deps.status().ok:
            cls.poll_message_set("Everything is installed")
            return False
        if not bpy.app.online_access:
            cls.poll_message_set("Allow online access in Preferences > System > Network first")
            return False
        return True

    def execute(self, context):
        from blender_addon.pure.jobs import Job
        self._job = Job(_install, name="HeadSplat pip")
        return self.run_job(context)

    def finish(self, context):
        err = self._job.error
        if err is not None:
            self.report({"ERROR"}, f"Installing dependencies failed: {err}")
            return {"CANCELLED"}
        st = self._job.result
        self.report({"INFO"} if st.ok else {"WARNING"}, st.sentence())
        return {"FINISHED"}


classes = (HEADSPLAT_OT_check_dependencies, HEADSPLAT_OT_install_dependencies)
