"""Native 3D Gaussian splats (Blender 5.3+): with Render > Native Gaussian Splats on, the
avatar's evaluated point cloud is a Gaussian-splat cloud carrying what Blender's own splat
renderer reads (position, scale, rotation, radiance:base, as its PLY importer creates them),
so EEVEE draws the avatar: close to the HeadSplat engine's image of the same frame, hidden by
a cube in front of it, moved by the shape keys. On older Blenders nothing changes (skipped)."""

import numpy as np
import pytest

from blender_addon import testing

RES = 192   # the avatar ~100 px high: its sub-pixel shoulder splats differ most at low resolutions
PSNR_MIN_DB = 25.0


@pytest.fixture(scope="module")
def bpy():
    bpy = testing.ensure_registered()
    from blender_addon import nodes
    if not nodes.supports_gaussian_splats():
        pytest.skip(f"Blender {bpy.app.version_string} has no native Gaussian splats (5.3+)")
    return bpy


@pytest.fixture()
def avatar_ob(bpy, small_avatar):
    testing.fresh_scene()
    ob = testing.add_avatar(small_avatar, name="Splats")
    bpy.context.scene.headsplat.use_refiner = False      # the native splats carry the plain colours
    return ob


def _srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _render(bpy, engine, res=RES):
    bpy.context.scene.render.engine = engine
    img, _ = testing.render_still(res, res)
    return img


def _native(bpy, ob):
    bpy.context.scene.headsplat.native_splats = True
    return _render(bpy, "BLENDER_EEVEE")


def _psnr(a, b, mask):
    mse = float(((_srgb(a[..., :3]) - _srgb(b[..., :3]))[mask] ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def test_toggle_makes_a_splat_cloud_with_the_importers_attributes(bpy, avatar_ob, small_avatar):
    from blender_addon.pure.avatar_data import SH_C0
    ob = avatar_ob
    dg = bpy.context.evaluated_depsgraph_get()
    geo = ob.evaluated_get(dg).evaluated_geometry()
    assert geo.pointcloud.type == "POINTS"
    del geo
    bpy.context.scene.headsplat.native_splats = True
    assert ob.headsplat.native_splats and ob.headsplat.points_in_renders and not ob.hide_render
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    geo = ob.evaluated_get(dg).evaluated_geometry()
    pc = geo.pointcloud
    assert pc.type == "GAUSSIAN_SPLAT"
    names = {a.name: (a.data_type, a.domain) for a in pc.attributes}
    assert names["radiance:base"] == ("FLOAT4", "POINT")
    assert names["scale"] == ("FLOAT_VECTOR", "POINT") and names["rotation"] == ("QUATERNION", "POINT")
    n = len(pc.points)
    rad = np.empty(n * 4, np.float32)
    pc.attributes["radiance:base"].data.foreach_get("vector", rad)
    rad = rad.reshape(n, 4)
    colour = 0.5 + SH_C0 * rad[:, :3]
    assert colour.min() >= -1e-4 and colour.max() <= 1 + 1e-4         # the avatar's colours, 0..1
    assert 0 < rad[:, 3].min() and rad[:, 3].max() <= 1                # opacity after the sigmoid
    del pc, geo
    bpy.context.scene.headsplat.native_splats = False
    assert not ob.headsplat.native_splats and ob.hide_render


def test_native_render_matches_the_headsplat_engine_and_is_occluded_by_a_cube(bpy, avatar_ob):
    ob = avatar_ob
    ref = _render(bpy, "HEADSPLAT")
    img = _native(bpy, ob)
    mask = (ref[..., 3] > 0.5) | (img[..., 3] > 0.5)
    assert mask.sum() > 0.05 * RES * RES
    psnr = _psnr(ref, img, mask)
    print(f"native splats vs HeadSplat engine: masked PSNR {psnr:.1f} dB over {int(mask.sum())} px")
    assert psnr >= PSNR_MIN_DB, psnr
    # a cube between the camera and the avatar hides it
    cam = bpy.context.scene.camera
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    head = np.array(ob.matrix_world.translation)
    cube.location = tuple(head + 0.6 * (np.array(cam.location) - head))
    cube.scale = (0.4, 0.4, 0.4)
    mat = bpy.data.materials.new("Grey")
    mat.diffuse_color = (0.2, 0.2, 0.2, 1.0)
    cube.data.materials.append(mat)
    hidden = _render(bpy, "BLENDER_EEVEE")
    bpy.data.objects.remove(cube)
    head_px = img[..., 3] > 0.5
    assert (hidden[..., 3][head_px] > 0.99).mean() > 0.95                  # the cube covers the head
    assert np.abs(hidden[..., :3] - img[..., :3])[head_px].mean() > 0.05    # and the avatar is not drawn over it


def test_jaw_open_changes_the_native_render_in_the_mouth_box(bpy, avatar_ob):
    ob = avatar_ob
    keys = ob.data.shape_keys.key_blocks
    bpy.context.scene.headsplat.native_splats = True
    closed = _render(bpy, "BLENDER_EEVEE", 96)
    keys["jawOpen"].value = 1.0
    opened = _render(bpy, "BLENDER_EEVEE", 96)
    # the mouth box: where the HeadSplat engine's own images differ between the two
    bpy.context.scene.headsplat.native_splats = False
    ref_open = _render(bpy, "HEADSPLAT", 96)
    keys["jawOpen"].value = 0.0
    ref_closed = _render(bpy, "HEADSPLAT", 96)
    moved = np.abs(ref_open - ref_closed).max(-1) > 0.05
    assert moved.any()
    ys, xs = np.nonzero(moved)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    inside = np.abs(opened - closed)[box].max(-1)
    assert inside.mean() > 0.01 and (inside > 0.05).sum() >= 10, (inside.mean(), (inside > 0.05).sum())
