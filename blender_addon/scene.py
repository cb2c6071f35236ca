"""Building the Blender scene representation of an avatar.

``build_avatar(context, avatar)`` adds:

* an armature object "FLAME rig" (bones root, neck, jaw, eye_L, eye_R, heads at the rig's
  rest joints) whose object rotation is ``convert.HEAD_TO_BLENDER``, so its data is head space;
* a point mesh parented to it: one vertex per Gaussian at its neutral rest position, with
  the attributes opacity, scale, rotation, color, lod, split_layer, soft_mask, mask_chain,
  region; a vertex group per joint holding the Gaussians' skin weights; one shape key per
  expression; an Armature modifier and the geometry-nodes points modifier (LOD / mask /
  layer filter and display colour, driven by ``Object.headsplat``).

Points therefore move natively (Solid mode, no HeadSplat code running) when shape keys or
bones change. The maths is in the bpy-free ``avatar_data`` and ``convert`` modules.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import bpy
import numpy as np
from mathutils import Matrix

from blender_addon import lookup, nodes, storage
from blender_addon.props import set_points_in_renders
from blender_addon.pure import convert
from blender_addon.pure.avatar_data import expression_deltas, quantise_weights, scene_arrays, slider_range, bone_tails

log = logging.getLogger(__name__)

RIG_NAME = "FLAME rig"


def leave_edit_modes(context) -> None:
    """Back to Object mode (the builder needs it for the armature's edit bones)."""
    active = context.view_layer.objects.active
    if active is not None and active.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")


@contextlib.contextmanager
def single_thread():
    """Run torch single-threaded: the build is many small gathers, for which thread start-up
    costs more than it saves (10-20x slower with 2 threads on a busy 2-core machine)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def build_avatar(context, avatar, name: str = "HeadSplat Avatar", source_path: str = "",
                 pack: bool = True, collection: Optional[bpy.types.Collection] = None,
                 data: Optional[bytes] = None, progress=None) -> bpy.types.Object:
    """Add ``avatar`` to the scene; returns the point object (its ``headsplat.rig`` is the armature).

    Args:
        avatar: avatar_core Avatar (any device; read only).
        source_path: the avatar file it came from ("" = none).
        pack: keep the avatar data inside the .blend (see ``storage``).
        data: the avatar file's bytes, when already at hand (saves re-serialising).
        progress: optional ``progress(fraction, message)``.
    """
    before = _datablock_ids()
    try:
        return _build_avatar(context, avatar, name, source_path, pack, collection, data, progress)
    except BaseException:
        _undo_build(before)  # a failed build leaves the scene as it was
        raise


_BUILT = ("objects", "meshes", "armatures", "materials", "node_groups", "texts", "actions")


def _datablock_ids() -> dict:
    return {k: {id_.as_pointer() for id_ in getattr(bpy.data, k)} for k in _BUILT}


def _undo_build(before: dict) -> None:
    """Remove every datablock added since ``before`` (objects first, through ``remove_avatar``)."""
    new_objects = [o for o in bpy.data.objects if o.as_pointer() not in before["objects"]]
    for ob in new_objects:
        with contextlib.suppress(Exception):  # ReferenceError: already removed with its point object
            if ob.type == "MESH":
                storage.unpack_remove(ob)
                remove_avatar(ob)
    for k in _BUILT:
        coll = getattr(bpy.data, k)
        for id_ in [i for i in coll if i.as_pointer() not in before[k]]:
            with contextlib.suppress(Exception):
                coll.remove(id_)


def _build_avatar(context, avatar, name, source_path, pack, collection, data, progress) -> bpy.types.Object:
    report = progress or (lambda f, m: None)
    collection = collection or context.collection or context.scene.collection
    avatar = avatar.to("cpu")
    report(0.0, "computing point data")
    with single_thread():
        arr = scene_arrays(avatar)
        leave_edit_modes(context)
        rig = _build_rig(context, collection, arr, avatar)
        report(0.2, "building the point mesh")
        ob = _build_points(collection, name, arr, rig)
        report(0.4, "adding shape keys")
        _add_shape_keys(ob, avatar, arr, lambda f: report(0.4 + 0.5 * f, "adding shape keys"))
    mod_arm = ob.modifiers.new(nodes.ARMATURE_MODIFIER_NAME, "ARMATURE")
    mod_arm.object = rig
    mod_arm.use_vertex_groups = True
    mod_arm.use_deform_preserve_volume = False
    hs = ob.headsplat
    hs.is_avatar = True
    hs.rig = rig
    hs.num_gaussians = avatar.num_gaussians
    hs.num_layers = int(avatar.split_levels) + 1 if int((avatar.split_layer >= 0).sum()) else 0
    levels = avatar.available_lods()
    hs.lod_levels = ",".join(str(k) for k in levels)
    hs.lod = max(levels)
    hs.head_name = avatar.head_name
    nodes.add_modifier(ob)
    # the HeadSplat engine reads keys and bones, not the deformed points: final renders skip the
    # point object; the rig keeps its shape keys in the render depsgraph
    rig.headsplat.shape_keys = ob.data.shape_keys
    set_points_in_renders(ob, False)
    if getattr(context.scene.headsplat, "native_splats", False):
        hs.native_splats = True     # (update: splat attribute, points in final renders)
    report(0.92, "storing the avatar data")
    storage.set_source(ob, avatar=avatar, path=source_path, pack_data=pack, data=data)
    # active (the panels and operators find it) but not selected: a selected point object paints
    # its outline, one orange dot per Gaussian, over the avatar in every viewport
    for o in context.view_layer.objects:
        o.select_set(False)
    context.view_layer.objects.active = ob
    report(1.0, "done")
    return ob


def _build_rig(context, collection, arr, avatar) -> bpy.types.Object:
    arm = bpy.data.armatures.new(RIG_NAME)
    arm.display_type = "STICK"
    rig = bpy.data.objects.new(RIG_NAME, arm)
    collection.objects.link(rig)
    rig.matrix_world = Matrix(convert.head_to_blender_matrix().tolist())
    rig.show_in_front = True
    tails = bone_tails(arr.joints, arr.joint_names, avatar.rig_template.cpu().numpy())
    view_layer = context.view_layer
    view_layer.objects.active = rig
    with context.temp_override(active_object=rig, object=rig, selected_objects=[rig], edit_object=rig):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            bones = []
            for j, jname in enumerate(arr.joint_names):
                eb = arm.edit_bones.new(jname)
                eb.head = arr.joints[j].tolist()
                eb.tail = tails[j].tolist()
                eb.roll = 0.0
                eb.use_deform = True
                bones.append(eb)
            for j, p in enumerate(arr.parents):
                if p >= 0:
                    bones[j].parent = bones[p]
                    bones[j].use_connect = False
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    for pb in rig.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return rig


def _build_points(collection, name, arr, rig) -> bpy.types.Object:
    n = arr.rest.shape[0]
    me = bpy.data.meshes.new(name)
    me.vertices.add(n)
    me.vertices.foreach_set("co", arr.rest.astype(np.float32).ravel())
    _attr(me, "opacity", "FLOAT", "value", arr.opacity)
    _attr(me, "scale", "FLOAT_VECTOR", "vector", arr.scales)
    _attr(me, "rotation", "QUATERNION", "value", arr.quats)
    rgba = np.concatenate([arr.rgb, arr.opacity[:, None]], 1)
    _attr(me, "color", "FLOAT_COLOR", "color", rgba)
    # 32-bit: the geometry-nodes LOD filter reads it on every evaluation (no int8 conversion)
    _attr(me, "lod", "INT", "value", arr.lod.astype(np.int32))
    _attr(me, "split_layer", "INT8", "value", arr.split_layer.astype(np.int8))
    _attr(me, "region", "INT8", "value", arr.region.astype(np.int8))
    _attr(me, "soft_mask", "FLOAT", "value", arr.soft_mask)
    _attr(me, "mask_chain", "FLOAT", "value", arr.mask_chain)
    me.color_attributes.active_color_name = "color"
    me.update()
    ob = bpy.data.objects.new(name, me)
    collection.objects.link(ob)
    ob.parent = rig
    ob.matrix_parent_inverse = Matrix.Identity(4)
    ob.matrix_basis = Matrix.Identity(4)
    me.materials.append(nodes.ensure_material())
    groups = quantise_weights(arr.weights)
    for j, jname in enumerate(arr.joint_names):
        vg = ob.vertex_groups.new(name=jname)
        for w, idx in groups[j]:
            vg.add(idx.tolist(), w, "REPLACE")
    return ob


def _attr(me, name, data_type, key, values):
    a = me.attributes.new(name, data_type, "POINT")
    a = me.attributes[name]  # references go stale once another attribute is added
    a.data.foreach_set(key, np.ascontiguousarray(values).ravel())


def _add_shape_keys(ob, avatar, arr, report) -> None:
    basis = ob.shape_key_add(name="Basis", from_mix=False)
    basis.interpolation = "KEY_LINEAR"
    lo, hi = slider_range(arr.expr_names)
    E = len(arr.expr_names)
    for i, delta in expression_deltas(avatar, arr.rest):
        kb = ob.shape_key_add(name=arr.expr_names[i], from_mix=False)
        kb.slider_min, kb.slider_max = lo, hi
        kb.data.foreach_set("co", (arr.rest + delta).astype(np.float32).ravel())
        kb.value = 0.0
        report((i + 1) / max(E, 1))
    ob.data.shape_keys.use_relative = True
    ob.active_shape_key_index = 0


# --------------------------------------------------------------------------------- helpers
SPLAT_RGB_LINEAR = False   # Blender 5.3 takes the splats' SH colour as display (sRGB) values


def ensure_splat_attribute(ob) -> None:
    """Give an avatar's point mesh the ``radiance:base`` attribute Blender's splat renderer
    reads (degree-0 SH colour and opacity, from its ``color``); position, ``scale`` (linear)
    and ``rotation`` (w, x, y, z) are already there in that renderer's conventions."""
    me = ob.data
    if nodes.SPLAT_ATTRIBUTE in me.attributes or "color" not in me.attributes:
        return
    from blender_addon.pure.avatar_data import splat_radiance
    n = len(me.vertices)
    rgba = np.empty(n * 4, np.float32)
    me.attributes["color"].data.foreach_get("color", rgba)
    values = splat_radiance(rgba.reshape(n, 4), linear=SPLAT_RGB_LINEAR)
    me.attributes.new(nodes.SPLAT_ATTRIBUTE, "FLOAT4", "POINT")
    me.attributes[nodes.SPLAT_ATTRIBUTE].data.foreach_set("vector", values.ravel())
    me.update()


def remove_avatar(ob) -> None:
    """Delete an avatar's objects and their data (used to undo a failed build)."""
    rig = lookup.rig_of(ob)
    me = ob.data
    bpy.data.objects.remove(ob)
    if me is not None and me.users == 0:
        bpy.data.meshes.remove(me)
    if rig is not None:
        arm = rig.data
        bpy.data.objects.remove(rig)
        if arm.users == 0:
            bpy.data.armatures.remove(arm)


# ------------------------------------------------------------------ scene set-up
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
