"""Writing a motion as keyframes on an avatar's shape keys and bones, fast.

Each channel gets one F-curve filled in a single ``keyframe_points.add(T)`` +
``foreach_set("co", ...)`` (no per-key Python), linear interpolation. Works with Blender
4.4+ slotted actions (``Action.fcurves`` is gone in 5.0) and falls back to ``Action.fcurves``
on 4.2/4.3.
"""

from __future__ import annotations

from typing import Optional, Sequence

import bpy
import numpy as np

from blender_addon import params
from blender_addon.pure import convert

INTERP_LINEAR = 1  # Keyframe.interpolation enum: CONSTANT 0, LINEAR 1, BEZIER 2


def _channels(id_block, action_name: str):
    """A fresh action assigned to ``id_block``; returns an object with ``fcurves.new``."""
    ad = id_block.animation_data or id_block.animation_data_create()
    action = bpy.data.actions.new(action_name)
    ad.action = action
    if hasattr(action, "slots"):
        from bpy_extras.anim_utils import action_ensure_channelbag_for_slot
        slot = ad.action_slot
        if slot is None:
            slot = action.slots.new(id_type=id_block.id_type, name=id_block.name)
            ad.action_slot = slot
        return action, action_ensure_channelbag_for_slot(action, slot)
    return action, action


def _fill(channels, data_path: str, index: int, frames: np.ndarray, values: np.ndarray, group: str = ""):
    fc = channels.fcurves.new(data_path, index=index, **({"group_name": group} if group and _has_group_arg(channels) else {}))
    n = frames.shape[0]
    fc.keyframe_points.add(n)
    co = np.empty(2 * n, dtype=np.float32)
    co[0::2] = frames
    co[1::2] = values
    fc.keyframe_points.foreach_set("co", co)
    fc.keyframe_points.foreach_set("interpolation", np.full(n, INTERP_LINEAR, dtype=np.int32))
    fc.update()
    return fc


def _has_group_arg(channels) -> bool:
    try:
        return "group_name" in channels.fcurves.bl_rna.functions["new"].parameters.keys()
    except (KeyError, AttributeError):
        return False


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """[T, 4] -> the same rotations with signs flipped so consecutive keys interpolate the short way."""
    q = np.array(q, dtype=np.float64)
    for t in range(1, q.shape[0]):
        if np.dot(q[t], q[t - 1]) < 0:
            q[t] = -q[t]
    return q


def key_motion(ob, rig, motion, start_frame: int = 1, name: str = "HeadSplat motion",
               joint_names: Sequence[str] = ("root", "neck", "jaw", "eye_L", "eye_R")) -> dict:
    """Keyframe ``motion`` (a MotionSequence already in the avatar's expression space).

    Returns {"frames": T, "shape_keys": n, "bones": m}. Expression names the avatar's
    shape keys lack are skipped (``bring_to_avatar`` makes this not happen).
    """
    T = motion.num_frames
    frames = start_frame + np.arange(T, dtype=np.float64)
    n_keys = 0
    key = ob.data.shape_keys
    if key is not None and motion.num_expr:
        _, ch = _channels(key, f"{name} (expressions)")
        blocks = key.key_blocks
        for i, en in enumerate(motion.expr_names):
            if blocks.get(en) is None:
                continue
            _fill(ch, f'key_blocks["{en}"].value', 0, frames, motion.expression[:, i], "Expressions")
            n_keys += 1
    n_bones = 0
    if rig is not None:
        rest = params.rest_rotations(rig, joint_names)
        quats = convert.pose_to_bone_basis(rest[None], motion.pose.astype(np.float64))  # [T, J, 4]
        loc = convert.translation_to_root_location(rest[0], motion.translation.astype(np.float64))  # [T, 3]
        _, ch = _channels(rig, f"{name} (pose)")
        for j, jn in enumerate(joint_names):
            pb = rig.pose.bones.get(jn)
            if pb is None:
                continue
            pb.rotation_mode = "QUATERNION"
            q = continuous_quaternions(quats[:, j])
            for c in range(4):
                _fill(ch, f'pose.bones["{jn}"].rotation_quaternion', c, frames, q[:, c], jn)
            if j == 0:
                for c in range(3):
                    _fill(ch, f'pose.bones["{jn}"].location', c, frames, loc[:, c], jn)
            n_bones += 1
    return {"frames": T, "shape_keys": n_keys, "bones": n_bones}


def key_current(ob, rig, frame: Optional[int] = None) -> int:
    """Insert keys for every shape key value and pose bone of the avatar at ``frame``."""
    scene = bpy.context.scene
    frame = scene.frame_current if frame is None else frame
    n = 0
    key = ob.data.shape_keys
    if key is not None:
        for kb in key.key_blocks[1:]:
            kb.keyframe_insert("value", frame=frame, group="Expressions")
            n += 1
    if rig is not None:
        for pb in rig.pose.bones:
            pb.keyframe_insert("rotation_quaternion" if pb.rotation_mode == "QUATERNION" else "rotation_euler",
                               frame=frame, group=pb.name)
            if pb.parent is None:
                pb.keyframe_insert("location", frame=frame, group=pb.name)
            n += 1
    return n
