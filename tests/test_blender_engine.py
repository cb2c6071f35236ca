"""The HeadSplat render engine: F12 equals avatar_core's own render of the same parameters,
the camera convention (a Gaussian lands on Blender's projected pixel), the depth pass, the
opaque/transparent film, and animation renders reading keyframes."""

import math

import numpy as np
import pytest
import torch

from blender_addon import testing
from blender_addon.pure import convert


@pytest.fixture(scope="module")
def bpy():
    return testing.ensure_registered()


def core_render(av, K, viewmat_head, W, H, scale=1.0, lod=0, background=None, refiner=None, **params):
    """avatar_core alone: animate -> render (-> refine), in Blender's terms: scene-linear RGBA,
    premultiplied for a transparent film, avatar_core's image over the background otherwise."""
    from avatar_core.render import Camera, render
    from avatar_core.render.refiner import refine
    with torch.no_grad():
        frame = av.animate(lod=lod, **{k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]
                                       for k, v in params.items()})
        frame.means = frame.means * scale
        frame.scales = frame.scales * scale
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)
        out = render(frame, Camera(torch.tensor(K, dtype=torch.float32), torch.tensor(viewmat_head, dtype=torch.float32),
                                   W, H), background=bg)
        rgb = refine(out.image, refiner)[0].clamp(0, 1).numpy()
    a = out.alpha[0, ..., 0].numpy()
    if background is not None:
        rgba = np.concatenate([convert.srgb_to_linear(rgb), np.ones_like(a)[..., None]], -1)
    else:
        rgb = np.minimum(rgb, a[..., None]) if refiner is not None else rgb
        rgba = np.concatenate([convert.premultiplied_srgb_to_linear(rgb, a), a[..., None]], -1)
    return rgba, out.depth[0, ..., 0].numpy(), a


def camera_of(scene):
    cam = scene.camera
    r = scene.render
    W = r.resolution_x * r.resolution_percentage // 100
    H = r.resolution_y * r.resolution_percentage // 100
    d = cam.data
    K = convert.camera_intrinsics(d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y, W, H)
    return K, convert.opencv_viewmat(np.array(cam.matrix_world)), W, H


def posed_scene(bpy, av):
    """An avatar with an expression, a jaw/neck pose, a root offset and a moved, scaled rig."""
    from blender_addon import params
    testing.fresh_scene()
    ob = testing.add_avatar(av, name="Posed")
    rig = ob.headsplat.rig
    rig.location = (0.05, 0.1, -0.02)
    rig.rotation_euler = (math.radians(90), 0.0, math.radians(20))
    rig.scale = (1.3, 1.3, 1.3)
    ob.data.shape_keys.key_blocks["jawOpen"].value = 0.8
    ob.data.shape_keys.key_blocks["browInnerUp"].value = 0.5
    pose = np.zeros((5, 3), np.float32)
    pose[2] = (0.25, 0.0, 0.0)
    pose[1] = (0.0, 0.3, 0.05)
    trans = np.array([0.0, 0.01, 0.0], np.float32)
    params.set_pose(rig, av.joint_names, pose, trans)
    ob.headsplat.lod = 0
    cam = bpy.context.scene.camera
    cam.location = (0.25, -1.5, 0.1)
    cam.rotation_euler = (math.radians(88), 0.0, math.radians(10))
    cam.data.shift_x, cam.data.shift_y = 0.05, -0.03
    bpy.context.view_layer.update()
    expr = np.zeros(len(av.expr_names), np.float32)
    expr[av.expr_names.index("jawOpen")] = 0.8
    expr[av.expr_names.index("browInnerUp")] = 0.5
    return ob, dict(expression=expr, pose=pose, translation=trans)


@pytest.mark.parametrize("points_in_renders", [False, True])
def test_f12_equals_avatar_core_render(bpy, small_avatar, points_in_renders):
    """Both routes: the point object skipped in final renders (the default; keys reach the
    engine through the rig) and evaluated (for Cycles/EEVEE users)."""
    ob, p = posed_scene(bpy, small_avatar)
    ob.headsplat.points_in_renders = points_in_renders
    assert ob.hide_render == (not points_in_renders)
    assert all(m.show_render == points_in_renders for m in ob.modifiers)
    img, _ = testing.render_still(48, 40, transparent=True)
    K, view, W, H = camera_of(bpy.context.scene)
    vh, s = convert.head_camera(view, np.array(ob.matrix_world))
    assert s == pytest.approx(1.3, abs=1e-5)
    ref, _, alpha = core_render(small_avatar, K, vh, W, H, scale=s, lod=0, **p)
    assert alpha.max() > 0.9 and (alpha > 0.5).mean() > 0.1      # the head is in view
    assert np.abs(img - ref).max() < 1e-4


def test_repeated_f12_with_persistent_data_follows_edits(bpy, small_avatar):
    """Create/Import keep the render's scene data between renders (Persistent Data): a second
    F12 after editing a shape key, a bone and the camera still equals avatar_core's render."""
    from blender_addon import params
    ob, p = posed_scene(bpy, small_avatar)
    scene = bpy.context.scene
    assert scene.render.use_persistent_data
    first, _ = testing.render_still(48, 40)
    ob.data.shape_keys.key_blocks["jawOpen"].value = 0.2
    pose = p["pose"].copy()
    pose[2] = (0.1, 0.0, 0.0)
    params.set_pose(ob.headsplat.rig, small_avatar.joint_names, pose, p["translation"])
    scene.camera.location.x += 0.05
    bpy.context.view_layer.update()
    img, _ = testing.render_still(48, 40)
    K, view, W, H = camera_of(scene)
    vh, s = convert.head_camera(view, np.array(ob.matrix_world))
    expr = p["expression"].copy()
    expr[small_avatar.expr_names.index("jawOpen")] = 0.2
    ref, _, _ = core_render(small_avatar, K, vh, W, H, scale=s, lod=0, expression=expr, pose=pose,
                            translation=p["translation"])
    assert np.abs(img - ref).max() < 1e-4
    assert np.abs(img - first).max() > 1e-2


def test_opaque_film_and_depth_pass(bpy, small_avatar, tmp_path):
    ob, p = posed_scene(bpy, small_avatar)
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("W")
    scene.world.color = (0.2, 0.05, 0.02)
    scene.render.film_transparent = False
    scene.view_layers[0].use_pass_z = True
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 40, 32, 100
    st = scene.render.image_settings
    st.media_type = "MULTI_LAYER_IMAGE"
    st.exr_codec, st.color_depth = "NONE", "32"
    scene.render.filepath = str(tmp_path / "layers.exr")
    bpy.ops.render.render(write_still=True)
    ch = testing.read_exr_channels(str(tmp_path / "layers.exr"))
    rgba = np.stack([ch[f"ViewLayer.Combined.{c}"] for c in "RGBA"], -1)
    depth = ch["ViewLayer.Depth.Z"]
    K, view, W, H = camera_of(scene)
    vh, s = convert.head_camera(view, np.array(ob.matrix_world))
    bg = convert.linear_to_srgb(np.array(scene.world.color[:3], np.float32))
    ref, ref_depth, alpha = core_render(small_avatar, K, vh, W, H, scale=s, lod=0, background=bg, **p)
    assert np.abs(rgba - ref).max() < 1e-4
    assert (rgba[..., 3] == 1.0).all()
    hit = alpha > 1e-4
    assert np.allclose(depth[hit], ref_depth[hit], rtol=1e-5)
    assert (depth[~hit] == 1e10).all()
    assert 1.0 < depth[hit].min() < 2.5          # metres from the camera, world scale


def test_camera_convention_single_gaussian(bpy, small_avatar):
    """One small Gaussian at a known point lands on the pixel Blender projects it to."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    i = int(torch.nonzero((small_avatar.lod == -1) & (small_avatar.region == 1))[0, 0])
    one = small_avatar.subset(torch.tensor([i]))
    one.log_scale = torch.full_like(one.log_scale, math.log(0.0015))
    one.opacity_logit = torch.full_like(one.opacity_logit, 6.0)
    testing.fresh_scene()
    ob = testing.add_avatar(one, name="One")
    rig = ob.headsplat.rig
    rig.location = (0.02, 0.0, 0.03)
    rig.rotation_euler = (math.radians(90), math.radians(10), math.radians(-15))
    scene = bpy.context.scene
    cam = scene.camera
    cam.location = (0.0, -0.8, 0.05)
    cam.rotation_euler = (math.radians(90), 0.0, 0.0)
    cam.data.lens = 120.0
    cam.data.shift_x, cam.data.shift_y = 0.08, 0.05
    bpy.context.view_layer.update()
    W, H = 64, 48
    img, _ = testing.render_still(W, H)
    a = img[..., 3]
    assert a.max() > 0.5
    ys, xs = np.mgrid[0:H, 0:W]
    u, v = (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()
    world = ob.matrix_world @ Vector(ob.data.vertices[0].co)
    ndc = world_to_camera_view(scene, cam, world)
    assert u == pytest.approx(ndc.x * W - 0.5, abs=0.25)
    assert v == pytest.approx((1 - ndc.y) * H - 0.5, abs=0.25)


def test_animation_render_reads_keyframes(bpy, small_avatar, tmp_path):
    testing.fresh_scene()
    ob = testing.add_avatar(small_avatar, name="Anim")
    ob.headsplat.lod = 0
    kb = ob.data.shape_keys.key_blocks["jawOpen"]
    kb.value = 0.0
    kb.keyframe_insert("value", frame=1)
    kb.value = 1.0
    kb.keyframe_insert("value", frame=3)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 3
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 32, 100
    scene.render.film_transparent = True
    st = scene.render.image_settings
    st.media_type = "IMAGE"
    st.file_format, st.color_depth = "OPEN_EXR", "32"
    scene.render.filepath = str(tmp_path / "frame_")
    bpy.ops.render.render(animation=True)
    frames = [testing.read_exr(str(tmp_path / f"frame_{f:04d}.exr")) for f in (1, 2, 3)]
    K, view, W, H = camera_of(scene)
    vh, s = convert.head_camera(view, np.array(ob.matrix_world))
    for value, img in zip((0.0, 0.5, 1.0), frames):
        ref, _, _ = core_render(small_avatar, K, vh, W, H, scale=s, lod=0, expression=_expr(small_avatar, jawOpen=value))
        assert np.abs(img - ref).max() < 1e-4, value
    assert np.abs(frames[0] - frames[2]).max() > 0.01


def _expr(av, **values):
    e = np.zeros(len(av.expr_names), np.float32)
    for k, v in values.items():
        e[av.expr_names.index(k)] = v
    return e


def test_viewport_inspection_colours(bpy, small_avatar):
    """The Rendered viewport path shows inspection colours (region palette here)."""
    from blender_addon import engine
    from blender_addon.pure import render_core
    from blender_addon.pure.constants import REGION_COLOURS
    testing.fresh_scene()
    ob = testing.add_avatar(small_avatar, name="Inspect")
    ob.headsplat.lod = 0
    ob.headsplat.colour_mode = "REGION"
    dg = bpy.context.evaluated_depsgraph_get()
    K, view, W, H = camera_of(bpy.context.scene)
    (v,) = engine.collect_views(dg, view, final=False, device="cpu")
    assert v.colour_mode == "REGION"
    frame = render_core.gaussians(v)
    idx = small_avatar.select(0)
    assert torch.allclose(frame.features[0, :, :3], torch.as_tensor(REGION_COLOURS)[small_avatar.region[idx].long()])
    (vf,) = engine.collect_views(dg, view, final=True, device="cpu")
    assert vf.colour_mode == "RGB"


@pytest.mark.parametrize("transparent", [False, True])
def test_f12_with_the_neural_refiner(bpy, small_avatar, transparent):
    """With refiner weights in the avatar, F12 = avatar_core render -> refiner."""
    from avatar_core.render.refiner import Refiner, RefinerConfig
    cfg = RefinerConfig(in_channels=small_avatar.channels, widths=(8, 8, 8))
    torch.manual_seed(0)
    net = Refiner(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():           # an untrained refiner is the identity: perturb it
            p.add_(torch.randn_like(p) * 0.05)
    av = small_avatar.subset(torch.arange(small_avatar.num_gaussians))
    av.refiner_state = {k: v.clone() for k, v in net.state_dict().items()}
    av.refiner_config = cfg.to_dict()
    testing.fresh_scene()
    ob = testing.add_avatar(av, name="Refined")
    ob.headsplat.lod = 0
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("W")
    scene.world.color = (0.05, 0.1, 0.3)
    bpy.context.view_layer.update()
    img, _ = testing.render_still(40, 32, transparent=transparent)
    K, view, W, H = camera_of(scene)
    vh, s = convert.head_camera(view, np.array(ob.matrix_world))
    bg = None if transparent else convert.linear_to_srgb(np.array(scene.world.color[:3], np.float32))
    ref, _, _ = core_render(av, K, vh, W, H, scale=s, lod=0, background=bg, refiner=net)
    plain, _, _ = core_render(av, K, vh, W, H, scale=s, lod=0, background=bg)
    assert np.abs(ref - plain).max() > 1e-3             # the refiner changes the picture
    assert np.abs(img - ref).max() < 1e-4
    scene.headsplat.use_refiner = False
    img_off, _ = testing.render_still(40, 32, transparent=transparent)
    assert np.abs(img_off - plain).max() < 1e-4
