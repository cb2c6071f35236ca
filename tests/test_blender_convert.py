"""The one conversion module (blender_addon/pure/convert.py): head space <-> Blender, Blender cameras
-> OpenCV K/viewmat, pose bones <-> avatar_core pose. Checked against Blender's own maths."""

import math
import sys

import numpy as np
import pytest

from avatar_core import rotation
from blender_addon.pure import convert


def test_the_pure_helpers_import_without_bpy():
    """Every module of blender_addon/pure/ (convert, deps, jobs, ...) imports without Blender's."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    modules = sorted(p.stem for p in (root / "blender_addon" / "pure").glob("*.py") if p.stem != "__init__")
    assert {"convert", "deps", "jobs", "avatar_data", "render_core", "constants"} <= set(modules)
    code = ("import sys, importlib\n" + "".join(f"importlib.import_module('blender_addon.pure.{m}')\n" for m in modules)
            + "assert not {'bpy', 'mathutils', 'bmesh'} & set(sys.modules), 'bpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_head_to_blender_axes():
    up_head, face_head = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    assert np.allclose(convert.head_to_blender_points(up_head), [0, 0, 1])       # Y up -> Z up
    assert np.allclose(convert.head_to_blender_points(face_head), [0, -1, 0])   # face -> -Y (front view)
    p = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(convert.blender_to_head_points(convert.head_to_blender_points(p)), p)
    assert np.isclose(np.linalg.det(convert.HEAD_TO_BLENDER), 1.0)


def test_rotation_round_trips():
    rng = np.random.default_rng(1)
    aa = rng.normal(size=(50, 3))
    aa *= rng.uniform(0, 3.1, size=(50, 1)) / np.linalg.norm(aa, axis=1, keepdims=True)  # angles < pi
    aa[0] = 0.0
    aa[1] = [1e-9, 0, 0]
    R = rotation.axis_angle_to_matrix_np(aa)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(rotation.matrix_to_axis_angle_np(R), aa, atol=1e-7)
    q = rotation.axis_angle_to_quaternion_np(aa)
    assert np.allclose(rotation.quaternion_to_matrix_np(q), R, atol=1e-9)
    assert np.allclose(rotation.quaternion_to_axis_angle_np(q), aa, atol=1e-7)
    # agrees with avatar_core's Rodrigues
    import torch
    from avatar_core.rotation import axis_angle_to_matrix
    assert np.allclose(axis_angle_to_matrix(torch.tensor(aa)).numpy(), R, atol=1e-7)


def test_bone_basis_pose_round_trip():
    rng = np.random.default_rng(2)
    rest = rotation.axis_angle_to_matrix_np(rng.normal(size=(5, 3)))      # arbitrary bone rest frames
    pose = rng.normal(size=(7, 5, 3)) * 0.5
    q = convert.pose_to_bone_basis(rest[None], pose)
    back = convert.bone_basis_to_pose(rest[None], rotation.quaternion_to_matrix_np(q))
    assert np.allclose(back, pose, atol=1e-7)
    t = rng.normal(size=(7, 3))
    loc = convert.translation_to_root_location(rest[0], t)
    assert np.allclose(convert.root_location_to_translation(rest[0], loc), t)


def test_srgb_round_trip():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(convert.linear_to_srgb(convert.srgb_to_linear(x)), x, atol=1e-5)
    assert np.isclose(convert.srgb_to_linear(np.float32(0.5)), 0.21404, atol=1e-4)


CAMERAS = [
    # lens, sensor w, sensor h, fit, shift x, shift y, W, H, pixel aspect x, y
    (50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 64, 48, 1.0, 1.0),
    (85.0, 36.0, 24.0, "AUTO", 0.1, -0.05, 40, 64, 1.0, 1.0),
    (35.0, 36.0, 24.0, "HORIZONTAL", -0.2, 0.15, 80, 60, 1.0, 1.0),
    (35.0, 30.0, 20.0, "VERTICAL", 0.05, 0.1, 80, 60, 1.0, 1.0),
    (60.0, 36.0, 24.0, "AUTO", 0.1, 0.1, 64, 64, 2.0, 1.0),
    (60.0, 36.0, 24.0, "VERTICAL", 0.0, 0.2, 50, 70, 1.0, 1.5),
]


@pytest.fixture(scope="module")
def bpy_scene():
    from blender_addon import testing
    bpy = testing.ensure_registered()
    testing.fresh_scene()
    return bpy


@pytest.mark.parametrize("cam", CAMERAS)
def test_camera_matches_blender(bpy_scene, cam):
    """K/viewmat from lens/sensor/shift/resolution project points where Blender's own
    world_to_camera_view and its projection matrix put them."""
    bpy = bpy_scene
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Euler, Vector
    lens, sw, sh, fit, sx, sy, W, H, ax, ay = cam
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = ax, ay
    data = bpy.data.cameras.new("c")
    data.lens, data.sensor_width, data.sensor_height, data.sensor_fit = lens, sw, sh, fit
    data.shift_x, data.shift_y = sx, sy
    ob = bpy.data.objects.new("c", data)
    scene.collection.objects.link(ob)
    scene.camera = ob
    ob.location = (0.3, -2.0, 0.4)
    ob.rotation_euler = Euler((math.radians(80), math.radians(5), math.radians(10)))
    bpy.context.view_layer.update()
    K = convert.camera_intrinsics(lens, sw, sh, fit, sx, sy, W, H, ax, ay)
    view = convert.opencv_viewmat(np.array(ob.matrix_world))
    rng = np.random.default_rng(3)
    pts = rng.uniform([-0.3, -0.3, 0.0], [0.6, 0.4, 0.8], size=(20, 3))
    uv, z = convert.project(K, view, pts)
    assert (z > 0).all()
    for p, (u, v), d in zip(pts, uv, z):
        ndc = world_to_camera_view(scene, ob, Vector(p))   # (0, 0) bottom-left, (1, 1) top-right
        assert u == pytest.approx(ndc.x * W - 0.5, abs=1e-3)
        assert v == pytest.approx((1.0 - ndc.y) * H - 0.5, abs=1e-3)
        assert d == pytest.approx(ndc.z, abs=1e-5)
    # the same intrinsics from Blender's projection matrix (the viewport's path)
    P = np.array(ob.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=W, y=H, scale_x=ax, scale_y=ay))
    assert np.allclose(convert.projection_intrinsics(P, W, H), K, atol=1e-3)
    bpy.data.objects.remove(ob)
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0


def test_head_camera_moves_with_the_avatar():
    """A head-space point seen through head_camera projects like its Blender world position."""
    rng = np.random.default_rng(4)
    R = rotation.axis_angle_to_matrix_np(rng.normal(size=3))
    M = np.eye(4)
    M[:3, :3] = 1.7 * R @ convert.HEAD_TO_BLENDER
    M[:3, 3] = [0.2, -0.5, 1.0]
    cam = np.eye(4)
    cam[:3, :3] = rotation.axis_angle_to_matrix_np(np.array([math.pi / 2, 0, 0]))
    cam[:3, 3] = [0.0, -3.0, 1.0]
    view = convert.opencv_viewmat(cam)
    vh, s = convert.head_camera(view, M)
    assert s == pytest.approx(1.7)
    p_head = rng.normal(size=(8, 3)) * 0.1
    p_world = p_head @ M[:3, :3].T + M[:3, 3]
    K = convert.camera_intrinsics(50, 36, 24, "AUTO", 0, 0, 64, 64)
    uv1, z1 = convert.project(K, vh, s * p_head)
    uv2, z2 = convert.project(K, view, p_world)
    assert np.allclose(uv1, uv2) and np.allclose(z1, z2)


def test_orthographic_viewport_approximation():
    W, H = 100, 80
    P = np.array([[0.5, 0, 0, 0.1], [0, 0.625, 0, -0.05], [0, 0, -0.1, -1.0], [0, 0, 0, 1.0]])
    view_gl = np.eye(4)
    K, view = convert.orthographic_as_perspective(P, view_gl, W, H, view_distance=1.0)
    pts = np.array([[0.3, 0.2, -1.0], [-0.5, -0.1, -1.2]])  # GL camera space = world here
    uv, _ = convert.project(K, view, pts)
    ndc = pts @ P[:3, :3].T + P[:3, 3]
    u_ref = (ndc[:, 0] + 1) * W / 2 - 0.5
    v_ref = (1 - ndc[:, 1]) * H / 2 - 0.5
    assert np.allclose(uv[:, 0], u_ref, atol=0.2) and np.allclose(uv[:, 1], v_ref, atol=0.2)
    with pytest.raises(ValueError):
        convert.projection_intrinsics(P, W, H)


def test_torch_and_numpy_srgb_agree():
    import torch
    from blender_addon.pure.render_core import srgb_to_linear_t
    x = np.linspace(-0.1, 1.2, 1001, dtype=np.float32)
    assert np.allclose(srgb_to_linear_t(torch.from_numpy(x)).numpy(), convert.srgb_to_linear(x), atol=1e-6)


@pytest.mark.parametrize("background", [None, (0.2, 0.5, 0.9)])
def test_render_views_composite_formula(monkeypatch, background):
    """render_views converts only the drawn pixels; the image equals the whole-frame formulas
    (convert's numpy twins), with or without the depth map."""
    import torch
    from blender_addon.pure import render_core
    H, W = 24, 32
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(H, W, generator=g) * (torch.rand(H, W, generator=g) > 0.5)   # half the pixels empty
    alpha[0, :4] = torch.tensor([1e-7, 1e-6, 2e-6, 1.0])
    rgb = torch.rand(H, W, 3, generator=g) * alpha[..., None]
    depth = 1 + torch.rand(H, W, generator=g)
    monkeypatch.setattr(render_core, "render_view",
                        lambda view, K, w, h, bg, with_depth: (rgb, alpha, depth if with_depth else None))
    img = render_core.render_views([object()], np.eye(3), W, H, background)
    a, c = alpha.numpy(), rgb.numpy()
    if background is None:
        ref = np.concatenate([convert.premultiplied_srgb_to_linear(c, a), a[..., None]], -1)
    else:
        bg = np.asarray(background, np.float32)
        over = np.clip(c + (1 - a[..., None]) * bg, 0, 1)
        ref = np.concatenate([convert.srgb_to_linear(over), np.ones_like(a)[..., None]], -1)
    assert np.abs(img.rgba - ref).max() < 1e-5
    assert np.array_equal(img.depth, np.where(a > 1e-4, depth.numpy(), render_core.FAR_DEPTH))
    no_depth = render_core.render_views([object()], np.eye(3), W, H, background, with_depth=False)
    assert no_depth.depth is None and np.array_equal(no_depth.rgba, img.rgba)
