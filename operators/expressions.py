"""Expression and pose helpers: reset, key everything at the current frame."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty

from blender_addon import lookup


def _poll(cls, context) -> bool:
    if lookup.avatar_of(context) is None:
        cls.poll_message_set("Select a HeadSplat avatar (its points or its FLAME rig)")
        return False
    return True


class HEADSPLAT_OT_reset_expressions(bpy.types.Operator):
    """Set every expression shape key to 0 (and the rig to its rest pose)"""

    bl_idname = "headsplat.reset_expressions"
    bl_label = "Reset Expressions"
    bl_options = {"REGISTER", "UNDO"}

    pose: BoolProperty(name="Reset Pose", default=True, description="Also clear the bones' rotations and location")

    @classmethod
    def poll(cls, context):
        return _poll(cls, context)

    def execute(self, context):
        ob = lookup.avatar_of(context)
        key = ob.data.shape_keys
        if key is not None:
            for kb in key.key_blocks[1:]:
                kb.value = 0.0
        rig = lookup.rig_of(ob)
        if self.pose and rig is not None:
            for pb in rig.pose.bones:
                pb.location = (0.0, 0.0, 0.0)
                pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
                pb.rotation_euler = (0.0, 0.0, 0.0)
                pb.scale = (1.0, 1.0, 1.0)
        return {"FINISHED"}


class HEADSPLAT_OT_keyframe_expressions(bpy.types.Operator):
    """Insert a keyframe on every expression shape key and every bone at the current frame"""

    bl_idname = "headsplat.keyframe_expressions"
    bl_label = "Key All Expressions"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _poll(cls, context)

    def execute(self, context):
        from blender_addon import keyframes
        ob = lookup.avatar_of(context)
        n = keyframes.key_current(ob, lookup.rig_of(ob), context.scene.frame_current)
        self.report({"INFO"}, f"Keyed {n} channels at frame {context.scene.frame_current}.")
        return {"FINISHED"}


classes = (HEADSPLAT_OT_reset_expressions, HEADSPLAT_OT_keyframe_expressions)
