"""The scene representation built from an avatar: rig, points, attributes, vertex groups,
shape keys, the geometry-nodes LOD/inspection filter, native deformation vs avatar_core,
and the avatar data surviving save and reload."""

import os
import time

import numpy as np
import pytest
import torch

from blender_addon import testing

# Blender's native deformation (linear shape keys + Armature LBS on the points) approximates
# avatar_core's deform-then-interpolate; measured on the synthetic test head:
KEY_AT_ONE_TOL_M = 1e-6      # a single key at 1.0 is exact (it was computed there)
KEY_AT_HALF_TOL_M = 2e-3     # jawOpen at 0.5: ~1.0 mm max, others < 0.05 mm
BONE_MAX_TOL_M = 4e-3        # jaw 0.3 rad: ~2.5 mm max on points far from their binding
BONE_MEAN_TOL_M = 1e-4       # ... and ~0.04 mm on average


@pytest.fixture(scope="module")
def bpy():
    return testing.ensure_registered()


@pytest.fixture()
def avatar_ob(bpy, small_avatar):
    testing.fresh_scene()
    return testing.add_avatar(small_avatar, name="Test")


def test_build_from_avatar(bpy, small_avatar, avatar_ob):
    ob, av = avatar_ob, small_avatar
    rig = ob.headsplat.rig
    assert rig.name.startswith("FLAME rig") and rig.type == "ARMATURE"
    assert [b.name for b in rig.data.bones] == ["root", "neck", "jaw", "eye_L", "eye_R"]
    assert rig.data.bones["jaw"].parent.name == "neck" and rig.data.bones["neck"].parent.name == "root"
    joints = (av.rig_j_regressor @ av.rig_template).numpy()
    for j, b in enumerate(rig.data.bones):
        assert np.allclose(b.head_local, joints[j], atol=1e-6)
    assert ob.parent == rig and len(ob.data.vertices) == av.num_gaussians
    names = {a.name for a in ob.data.attributes}
    for n in ("opacity", "scale", "rotation", "color", "lod", "split_layer", "soft_mask", "mask_chain", "region"):
        assert n in names, n
    lod = np.empty(av.num_gaussians, np.int32)
    ob.data.attributes["lod"].data.foreach_get("value", lod)
    assert np.array_equal(lod, av.lod.numpy())
    assert [vg.name for vg in ob.vertex_groups] == list(av.joint_names)
    # shoulder Gaussians are weighted to the root only
    shoulder = int(torch.nonzero(av.region == 2)[0, 0])
    groups = {ob.vertex_groups[g.group].name: g.weight for g in ob.data.vertices[shoulder].groups}
    assert groups == {"root": pytest.approx(1.0)}
    keys = [kb.name for kb in ob.data.shape_keys.key_blocks]
    assert keys == ["Basis"] + list(av.expr_names)
    assert [m.type for m in ob.modifiers] == ["ARMATURE", "NODES"]
    # rest positions are avatar_core's neutral means at every LOD
    co = np.empty(av.num_gaussians * 3, np.float32)
    ob.data.vertices.foreach_get("co", co)
    ref = av.animate(index=torch.arange(av.num_gaussians)).means[0].numpy()
    assert np.abs(co.reshape(-1, 3) - ref).max() < 1e-6
    # the face looks toward Blender's -Y: the nose tip (max head z) has the smallest world y
    bpy.context.view_layer.update()
    world = np.array(ob.matrix_world)
    nose = ref[np.argmax(np.where(av.region.numpy() == 0, ref[:, 2], -1))]
    assert (world[:3, :3] @ nose)[1] < -0.05


def test_lod_switch_is_a_filter(bpy, small_avatar, avatar_ob):
    ob, av = avatar_ob, small_avatar
    mesh_before = ob.data.as_pointer()
    for lod in (0, 1, 2):
        ob.headsplat.lod = lod
        t = time.perf_counter()
        pts = testing.evaluated_points(ob)
        dt = time.perf_counter() - t
        assert len(pts) == len(av.select(lod)), lod
        assert dt < 0.5
    assert ob.data.as_pointer() == mesh_before  # no rebuild


def test_inspect_filters_match_avatar_select(bpy, small_avatar, avatar_ob):
    ob, av = avatar_ob, small_avatar
    hs = ob.headsplat
    hs.lod = 1
    hs.layers[1] = False
    assert len(testing.evaluated_points(ob)) == len(av.select(1, layers=[0, 2]))
    hs.layers[1] = True
    # soft-mask threshold with parents ANDed in (delayed filtering)
    soft = torch.linspace(-4, 4, av.num_gaussians)[torch.randperm(av.num_gaussians, generator=torch.Generator().manual_seed(0))]
    av2 = av.subset(torch.arange(av.num_gaussians))
    av2.soft_mask = soft
    testing.fresh_scene()
    ob2 = testing.add_avatar(av2, name="Masked")
    for t in (0.3, 0.5, 0.8):
        ob2.headsplat.mask_threshold = t
        assert len(testing.evaluated_points(ob2)) == len(av2.select(2, mask_threshold=t)), t
    # colour modes write display_color from the palettes
    ob2.headsplat.colour_mode = "REGION"
    bpy.context.evaluated_depsgraph_get().update()
    geo = ob2.evaluated_get(bpy.context.evaluated_depsgraph_get()).evaluated_geometry()
    col = np.empty(len(geo.pointcloud.points) * 4, np.float32)
    geo.pointcloud.attributes["display_color"].data.foreach_get("color", col)
    from blender_addon.pure.constants import REGION_COLOURS
    idx = av2.select(2, mask_threshold=0.8)
    assert np.allclose(col.reshape(-1, 4)[:, :3], REGION_COLOURS[av2.region[idx].numpy()], atol=1e-5)


def _means(av, **kw):
    with torch.no_grad():
        return av.animate(lod=2, **kw).means[0].numpy()


def test_shape_keys_move_points_like_avatar_core(bpy, small_avatar, avatar_ob):
    ob, av = avatar_ob, small_avatar
    ob.headsplat.lod = 2
    blocks = ob.data.shape_keys.key_blocks
    for name in av.expr_names:
        blocks[name].value = 1.0
        err = np.abs(testing.evaluated_points(ob) - _means(av, expression={name: 1.0})).max()
        assert err < KEY_AT_ONE_TOL_M, (name, err)
        blocks[name].value = 0.5
        err = np.abs(testing.evaluated_points(ob) - _means(av, expression={name: 0.5})).max()
        assert err < KEY_AT_HALF_TOL_M, (name, err)
        blocks[name].value = 0.0


@pytest.mark.parametrize("bone,aa", [("jaw", (0.3, 0.0, 0.0)), ("neck", (0.1, 0.4, 0.0)),
                                     ("root", (0.0, 0.3, 0.2)), ("eye_L", (0.2, 0.1, 0.0))])
def test_bone_rotation_round_trip(bpy, small_avatar, avatar_ob, bone, aa):
    """Set a bone -> the engine's pose -> animate matches the points Blender deforms."""
    from blender_addon import params
    ob, av = avatar_ob, small_avatar
    rig = ob.headsplat.rig
    pose = np.zeros((5, 3), np.float32)
    pose[av.joint_names.index(bone)] = aa
    params.set_pose(rig, av.joint_names, pose, np.array([0.01, -0.02, 0.005]))
    bpy.context.view_layer.update()
    back = params.frame_params(ob, rig, av)
    assert np.allclose(back["pose"], pose, atol=1e-6)
    assert np.allclose(back["translation"], [0.01, -0.02, 0.005], atol=1e-7)
    ref = _means(av, pose=torch.tensor(back["pose"])[None], translation=torch.tensor(back["translation"])[None])
    d = np.linalg.norm(testing.evaluated_points(ob) - ref, axis=1)
    assert d.max() < BONE_MAX_TOL_M and d.mean() < BONE_MEAN_TOL_M, (bone, d.max(), d.mean())


def test_save_and_reload_keeps_avatar_data(bpy, small_avatar, avatar_ob, tmp_path):
    from blender_addon import storage
    ob = avatar_ob
    ob.data.shape_keys.key_blocks["jawOpen"].value = 0.4
    key = ob.headsplat.data_key
    path = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    ob = bpy.data.objects["Test"]
    assert ob.headsplat.is_avatar and ob.headsplat.rig.name.startswith("FLAME rig")
    assert not ob.headsplat.data_missing and storage.is_packed(ob)
    assert ob.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.4)
    storage.forget()
    av = storage.load_for_object(ob)
    assert ob.headsplat.data_key == key
    for name in ("offset", "features", "lod", "soft_mask"):
        assert torch.equal(getattr(av, name), getattr(small_avatar, name))
    # the geometry-nodes filter and drivers still work after reload
    ob.headsplat.lod = 0
    assert len(testing.evaluated_points(ob)) == len(small_avatar.select(0))


def test_packed_data_is_kept_off_the_point_mesh(bpy, small_avatar, avatar_ob, tmp_path):
    """Blender copies a mesh's ID properties on every evaluation of its object, so the packed
    avatar lives in a hidden store the object points to; duplicates share it, the last one
    to let go removes it, and files that packed it on the mesh are moved over on open."""
    from blender_addon import storage
    ob = avatar_ob
    store = ob.headsplat.packed
    assert store is not None and store.name.startswith(".") and store.users == 1
    assert not any(k.startswith(storage.PACK_PREFIX) for k in ob.data.keys())
    data = storage.packed_bytes(ob)
    assert storage.data_key(data) == ob.headsplat.data_key
    twin = ob.copy()
    bpy.context.scene.collection.objects.link(twin)
    assert twin.headsplat.packed == store and store.users == 2
    storage.unpack_remove(twin)
    assert storage.is_packed(ob) and not storage.is_packed(twin)
    bpy.data.objects.remove(twin)
    # a file from before the store: the bytes on the mesh, no pointer
    storage.unpack_remove(ob)
    assert not any(t.name.startswith(storage.STORE_PREFIX) for t in bpy.data.texts)
    storage._write_parts(ob.data, data)
    assert storage.is_packed(ob)
    path = str(tmp_path / "old.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    ob = bpy.data.objects["Test"]
    assert ob.headsplat.packed is not None and storage.packed_bytes(ob) == data
    assert not any(k.startswith(storage.PACK_PREFIX) for k in ob.data.keys())
    storage.forget()
    assert storage.load_for_object(ob).num_gaussians == small_avatar.num_gaussians


def test_reopen_with_avatar_file_missing_warns_but_shows_points(bpy, small_avatar, tmp_path, capsys):
    from avatar_core.io import save_avatar

    from blender_addon import storage
    testing.fresh_scene()
    avatar_path = tmp_path / "head.avatar"
    save_avatar(small_avatar, avatar_path)
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))   # so the path is stored relative
    ob = testing.add_avatar(small_avatar, name="Linked", pack=False, source_path=str(avatar_path))
    assert not storage.is_packed(ob) and ob.headsplat.avatar_path == "//head.avatar"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    os.remove(avatar_path)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    ob = bpy.data.objects["Linked"]
    assert ob.headsplat.data_missing
    assert "avatar data of 'Linked' is missing" in capsys.readouterr().out
    assert len(testing.evaluated_points(ob)) == len(small_avatar.select(2))  # points still shown
    # the engine skips it with a warning instead of failing
    img, _ = testing.render_still(16, 16)
    assert img[..., 3].max() == 0.0
    # relinking brings it back
    save_avatar(small_avatar, avatar_path)
    with bpy.context.temp_override(active_object=ob, object=ob):
        assert bpy.ops.headsplat.relink_avatar(filepath=str(avatar_path), pack=False) == {"FINISHED"}
    assert not ob.headsplat.data_missing and storage.load_for_object(ob).num_gaussians == small_avatar.num_gaussians


def test_mask_chain_equals_effective_mask(small_avatar):
    from blender_addon.pure.avatar_data import mask_chain
    av = small_avatar.subset(torch.arange(small_avatar.num_gaussians))
    av.soft_mask = torch.randn(av.num_gaussians, generator=torch.Generator().manual_seed(1)) * 2
    chain = mask_chain(av)
    for t in (0.2, 0.5, 0.7):
        assert torch.equal(chain >= t, av.effective_mask(hard=True, threshold=t) > 0.5)


def test_unregister_removes_everything(bpy):
    import blender_addon
    from operators import _menu_import
    blender_addon.unregister()
    testing.mark_unregistered()
    try:
        assert not hasattr(bpy.types.Object, "headsplat") and not hasattr(bpy.types.Scene, "headsplat")
        assert not hasattr(bpy.types, "HEADSPLAT_OT_import_avatar")
        from blender_addon.engine import HeadSplatRenderEngine
        assert not HeadSplatRenderEngine.is_registered
        assert not any(getattr(h, "__module__", "").startswith("blender_addon")
                       for h in bpy.app.handlers.load_post)
        assert _menu_import not in getattr(bpy.types.TOPBAR_MT_file_import.draw, "_draw_funcs", [])
    finally:
        testing.ensure_registered()
    assert hasattr(bpy.types.Object, "headsplat")


def test_lod_snaps_to_the_levels_an_avatar_has(bpy, test_head):
    from avatar_core.gaussians.build import synthetic_avatar
    av = synthetic_avatar(test_head, channels=4, lods=(0,), split_levels=1, shoulders=False)
    testing.fresh_scene()
    ob = testing.add_avatar(av, name="Coarse", camera=False)
    assert ob.headsplat.lod == 0 and ob.headsplat.lod_levels == "0"
    ob.headsplat.lod = 2
    assert ob.headsplat.lod == 0
    assert len(testing.evaluated_points(ob)) == len(av.select(0))
