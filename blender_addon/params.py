"""Reading an avatar's animation parameters back from Blender (shape keys, pose bones).

``frame_params(ob)`` returns what ``Avatar.animate`` takes, as numpy arrays in the avatar's
own order: expression [E] (each shape key's value, missing keys 0), pose [J, 3] (axis-angle
about each joint in head space, from the pose bones through ``convert.bone_basis_to_pose``)
and translation [3] (from the root bone's location). Pass evaluated objects (from the
render depsgraph) to get animated values at that frame.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from blender_addon.pure import convert


def expression_values(ob, expr_names: Sequence[str]) -> np.ndarray:
    """[E] shape-key values of ``ob`` (evaluated or original) in ``expr_names`` order."""
    out = np.zeros(len(expr_names), dtype=np.float32)
    key = ob.data.shape_keys if ob.data is not None else None
    if key is None:
        return out
    blocks = key.key_blocks
    for i, name in enumerate(expr_names):
        kb = blocks.get(name)
        if kb is not None and not kb.mute:
            out[i] = kb.value
    return out


def rest_rotations(rig, joint_names: Sequence[str]) -> np.ndarray:
    """[J, 3, 3] each bone's rest rotation in armature (= head) space; identity for a missing bone."""
    out = np.tile(np.eye(3), (len(joint_names), 1, 1))
    bones = rig.data.bones
    for j, name in enumerate(joint_names):
        b = bones.get(name)
        if b is not None:
            out[j] = np.array(b.matrix_local.to_3x3())
    return out


def pose_params(rig, joint_names: Sequence[str]):
    """(pose [J, 3] axis-angle, translation [3]) from the rig's pose bones (``matrix_basis``)."""
    J = len(joint_names)
    if rig is None or rig.pose is None:
        return np.zeros((J, 3), np.float32), np.zeros(3, np.float32)
    rest = rest_rotations(rig, joint_names)
    basis = np.tile(np.eye(3), (J, 1, 1))
    loc = np.zeros(3)
    for j, name in enumerate(joint_names):
        pb = rig.pose.bones.get(name)
        if pb is None:
            continue
        m = pb.matrix_basis
        basis[j] = np.array(m.to_3x3().normalized())
        if j == 0:
            loc = np.array(m.translation)
    pose = convert.bone_basis_to_pose(rest, basis).astype(np.float32)
    trans = convert.root_location_to_translation(rest[0], loc).astype(np.float32)
    return pose, trans


def frame_params(ob, rig=None, avatar=None) -> Dict[str, np.ndarray]:
    """{"expression": [E], "pose": [J, 3], "translation": [3]} for the avatar object ``ob``.

    ``rig`` defaults to ``ob.headsplat.rig`` (for an evaluated ``ob`` pass the evaluated rig).
    Names come from ``avatar`` when given, else from the shape keys / the FLAME joint order.
    """
    if avatar is not None:
        expr_names = list(avatar.expr_names)
        joint_names = list(avatar.joint_names)
    else:
        key = ob.data.shape_keys
        expr_names = [kb.name for kb in key.key_blocks[1:]] if key else []
        joint_names = ["root", "neck", "jaw", "eye_L", "eye_R"]
    if rig is None:
        rig = ob.headsplat.rig
    pose, trans = pose_params(rig, joint_names)
    return {"expression": expression_values(ob, expr_names), "pose": pose, "translation": trans}


def set_pose(rig, joint_names: Sequence[str], pose: np.ndarray, translation: Optional[np.ndarray] = None) -> None:
    """Set pose bones from avatar_core parameters (pose [J, 3], translation [3])."""
    rest = rest_rotations(rig, joint_names)
    quats = convert.pose_to_bone_basis(rest, np.asarray(pose, dtype=np.float64))
    for j, name in enumerate(joint_names):
        pb = rig.pose.bones.get(name)
        if pb is None:
            continue
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = quats[j].tolist()
    if translation is not None:
        pb = rig.pose.bones.get(joint_names[0])
        if pb is not None:
            pb.location = convert.translation_to_root_location(rest[0], translation).tolist()
