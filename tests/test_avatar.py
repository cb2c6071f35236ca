"""The Gaussian avatar: animate, LOD selection, split layers and soft masks, files, PLY."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from avatar_core.errors import AvatarFileError, ParameterError
from avatar_core.gaussians.avatar import ALL_LODS, Avatar
from avatar_core.gaussians.split import split_graph, split_lineage
from avatar_core.head.lod import subdivide_head
from avatar_core.io import load_avatar, read_ply, save_avatar, write_ply
from avatar_core.io.ply import read_ply_vertices
from avatar_core.regions import REGION_SHOULDER
from avatar_core.rotation import quaternion_to_matrix


def test_lod_counts_follow_the_subdivided_mesh(test_head, small_avatar):
    counts = small_avatar.lod_counts()
    shared = int((small_avatar.lod == ALL_LODS).sum())
    V = [subdivide_head(test_head, k).num_vertices for k in range(3)]
    assert [counts[k] - shared for k in range(3)] == V


def test_animate_places_head_gaussians_on_the_deformed_subdivided_mesh(test_head, small_avatar):
    """Deform-then-subdivide: LOD-2 Gaussians with zero offset sit on the LOD-2 vertices of the
    subdivided deformed LOD-0 mesh, for any expression, shape and articulated pose."""
    g = torch.Generator().manual_seed(0)
    expr = torch.rand(2, test_head.num_expr, generator=g)
    pose = torch.randn(2, 5, 3, generator=g) * 0.2
    trans = torch.randn(2, 3, generator=g) * 0.05
    idx = torch.nonzero(small_avatar.lod == 2)[:, 0]
    frame = small_avatar.animate(expr, pose, trans, index=idx)
    verts, _ = small_avatar.deform_rig(expr, pose, trans)
    h2 = subdivide_head(test_head, 2)
    from avatar_core.head.lod import subdivide_array, subdivide_once
    f1, e1 = subdivide_once(test_head.faces, test_head.num_vertices)
    _, e2 = subdivide_once(f1, test_head.num_vertices + e1.shape[0])
    for b in range(2):
        ref = subdivide_array(subdivide_array(verts[b], e1), e2)
        assert torch.allclose(frame.means[b], ref, atol=1e-6)
    assert frame.means.shape == (2, h2.num_vertices, 3)


def test_rotations_follow_the_surface(small_avatar):
    """A Gaussian's orientation turns with the surface: rotating the root by R rotates every
    Gaussian's frame by R (means and quaternions)."""
    pose = torch.zeros(1, 5, 3)
    pose[0, 0, 1] = 0.7
    a = small_avatar.animate(lod=1)
    b = small_avatar.animate(pose=pose, lod=1)
    from avatar_core.rotation import axis_angle_to_matrix
    R = axis_angle_to_matrix(pose[0, 0])
    Ra, Rb = quaternion_to_matrix(a.quats[0]), quaternion_to_matrix(b.quats[0])
    assert torch.allclose(R @ Ra, Rb, atol=1e-4)
    # opening the jaw rotates jaw-region Gaussians but not the forehead's
    jaw = torch.zeros(1, 5, 3)
    jaw[0, 2, 0] = 0.4
    c = small_avatar.animate(pose=jaw, lod=1)
    turned = (quaternion_to_matrix(c.quats[0]) - Ra).abs().amax((1, 2))
    assert turned.max() > 0.1
    top = a.means[0, :, 1] > 0.1
    assert turned[top].max() < 1e-4


def test_animate_is_differentiable_in_every_attribute(small_avatar):
    av = dataclasses.replace(small_avatar, **{k: v.clone().requires_grad_() for k, v in small_avatar.parameters_dict().items()})
    expr = torch.zeros(1, av.num_expr, requires_grad=True)
    frame = av.animate(expression=expr, lod=0, training=True)
    loss = frame.means.sum() + frame.quats.sum() + frame.scales.sum() + frame.opacities.sum() + frame.features.sum()
    loss.backward()
    for k in ("offset", "rotation", "log_scale", "opacity_logit", "features", "soft_mask"):
        assert getattr(av, k).grad is not None and getattr(av, k).grad.abs().sum() > 0, k
    assert expr.grad.abs().sum() > 0


def test_soft_masks_straight_through_and_delayed_filtering(small_avatar):
    av = dataclasses.replace(small_avatar, soft_mask=small_avatar.soft_mask.clone())
    layer1 = torch.nonzero(av.split_layer == 1)[:, 0]
    layer2 = torch.nonzero(av.split_layer == 2)[:, 0]
    # switch one layer-1 Gaussian off: its layer-2 children vanish although their own masks are on
    off = layer1[0]
    av.soft_mask[off] = -5.0
    children = layer2[av.parent[layer2] == off]
    assert children.numel() == av.split_k
    m = av.effective_mask(hard=True)
    assert m[off] == 0 and (m[children] == 0).all() and m[layer2[av.parent[layer2] != off]].min() == 1
    sel = av.select(lod=0)
    assert off not in sel and not torch.isin(children, sel).any()
    # straight-through: forward is binary, gradient is sigmoid'
    s = av.soft_mask.clone().requires_grad_()
    av2 = dataclasses.replace(av, soft_mask=s)
    ste = av2.effective_mask(hard=False)
    assert torch.equal(ste.detach(), m)
    ste[layer1[1]].backward()
    sig = torch.sigmoid(s[layer1[1]].detach())
    assert torch.allclose(s.grad[layer1[1]], sig * (1 - sig))
    # layer selection
    only0 = av.select(lod=0, layers=[0])
    assert not torch.isin(layer1, only0).any()


def test_split_graph_is_topology_plus_sibling_connections(small_avatar):
    av = small_avatar
    root, code = split_lineage(av)
    e1 = split_graph(av, 1)
    src, dst = e1
    assert (av.split_layer[src] == 1).all() and (av.split_layer[dst] == 1).all()
    siblings = av.parent[src] == av.parent[dst]
    # E_conn: every pair of siblings is present in both directions
    n_sib_pairs = int((av.split_layer == 1).sum()) // av.split_k * av.split_k * (av.split_k - 1)
    assert int(siblings.sum()) >= n_sib_pairs
    # E_topo: non-sibling edges join Gaussians of the same copy whose root vertices share a mesh edge
    topo = ~siblings
    assert (code[src[topo]] == code[dst[topo]]).all()
    from avatar_core.head.lod import edges_of
    edges = {tuple(e) for e in edges_of(av.rig_faces).tolist()}
    va, vb = av.bind_ids[root[src[topo]], 0], av.bind_ids[root[dst[topo]], 0]
    assert all((min(a, b), max(a, b)) in edges for a, b in zip(va.tolist(), vb.tolist()))


def test_shoulders_follow_the_root_not_the_neck(small_avatar):
    sh = small_avatar.region == REGION_SHOULDER
    idx = torch.arange(small_avatar.num_gaussians)
    neck = torch.zeros(1, 5, 3)
    neck[0, 1, 1] = 0.5
    a = small_avatar.animate(index=idx)
    b = small_avatar.animate(pose=neck, index=idx)
    assert torch.allclose(a.means[0, sh], b.means[0, sh], atol=1e-6)
    assert (a.means[0, ~sh] - b.means[0, ~sh]).norm(dim=1).max() > 0.01


def test_animate_rejects_bad_parameters(small_avatar):
    with pytest.raises(ParameterError, match="Unknown expression name"):
        small_avatar.animate(expression={"nope": 1.0})
    with pytest.raises(ParameterError, match="expected \\[B, 5, 3\\]"):
        small_avatar.animate(pose=torch.zeros(2, 3))
    with pytest.raises(ParameterError, match="lod 3 is not in this avatar"):
        small_avatar.animate(lod=3)


def test_avatar_file_round_trip(tmp_path, small_avatar):
    av = dataclasses.replace(small_avatar, source={"K": torch.eye(3)}, info={"psnr": 30.5},
                             refiner_state={"w": torch.randn(4, 4)}, refiner_config={"channels": 8})
    p = save_avatar(av, tmp_path / "a.avatar")
    assert not list(tmp_path.glob(".*tmp"))
    back = load_avatar(p)
    for k, v in av.tensors().items():
        assert torch.equal(getattr(back, k), v), k
    assert back.expr_names == av.expr_names and back.split_levels == av.split_levels
    assert back.info == {"psnr": 30.5} and torch.equal(back.refiner_state["w"], av.refiner_state["w"])
    f1, f2 = av.animate(expression={"jawOpen": 1.0}, lod=1), back.animate(expression={"jawOpen": 1.0}, lod=1)
    assert torch.equal(f1.means, f2.means)


def test_avatar_file_refuses_truncated_foreign_and_newer(tmp_path, small_avatar):
    p = save_avatar(small_avatar, tmp_path / "a.avatar")
    raw = p.read_bytes()
    (tmp_path / "t.avatar").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AvatarFileError, match="truncated"):
        load_avatar(tmp_path / "t.avatar")
    (tmp_path / "f.avatar").write_bytes(b"GIF89a not an avatar at all")
    with pytest.raises(AvatarFileError, match="not a readable avatar file"):
        load_avatar(tmp_path / "f.avatar")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AvatarFileError, match="not a HeadSplat avatar"):
        load_avatar(tmp_path / "other.safetensors")
    import json
    from avatar_core.io import avatar_file
    meta = avatar_file.read_metadata(p)
    meta["version"] = avatar_file.FORMAT_VERSION + 1
    t = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(p)).items()}
    save_file(t, str(tmp_path / "new.avatar"), metadata={"headsplat": json.dumps(meta)})
    with pytest.raises(AvatarFileError, match="newer HeadSplat"):
        load_avatar(tmp_path / "new.avatar")
    with pytest.raises(AvatarFileError, match="does not exist"):
        load_avatar(tmp_path / "missing.avatar")


def test_save_never_leaves_a_partial_file(tmp_path, small_avatar, monkeypatch):
    from avatar_core.io import avatar_file
    target = tmp_path / "x.avatar"

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(avatar_file, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_avatar(small_avatar, target)
    assert list(tmp_path.iterdir()) == []


def test_ply_round_trip(tmp_path, small_avatar):
    frame = small_avatar.animate(expression={"jawOpen": 0.5}, lod=1)
    p = write_ply(tmp_path / "a.ply", frame)
    back = read_ply(p)
    assert torch.allclose(back.means, frame.means, atol=1e-6)
    assert torch.allclose(back.features, frame.features[..., :3], atol=1e-5)
    assert torch.allclose(back.opacities, frame.opacities, atol=1e-5)
    assert torch.allclose(back.scales, frame.scales, rtol=1e-5)
    assert torch.allclose(back.quats.abs(), frame.quats.abs(), atol=1e-5)
    names = list(read_ply_vertices(p))
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def test_peer_ply_with_sh_rest_loads(tmp_path):
    """A PLY in the layout peer tools write (degree-3 SH: 45 f_rest, extra properties)."""
    n = 50
    g = np.random.default_rng(0)
    names = ["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)] + \
        [f"f_rest_{i}" for i in range(45)] + ["opacity"] + [f"scale_{i}" for i in range(3)] + \
        [f"rot_{i}" for i in range(4)]
    data = g.standard_normal((n, len(names))).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n + \
        "".join(f"property float {nm}\n" for nm in names) + "end_header\n"
    p = tmp_path / "peer.ply"
    p.write_bytes(header.encode() + data.tobytes())
    frame = read_ply(p)
    assert frame.means.shape == (1, n, 3)
    assert np.allclose(frame.means[0].numpy(), data[:, :3])
    assert np.allclose(frame.opacities[0].numpy(), 1 / (1 + np.exp(-data[:, names.index("opacity")])), atol=1e-6)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(AvatarFileError, match="truncated"):
        read_ply(p)


def test_blender_reads_the_exported_ply(tmp_path, small_avatar):
    """Blender's own PLY importer (bpy 5.0.1, in a subprocess) reads the file and its attributes."""
    frame = small_avatar.animate(lod=0)
    p = write_ply(tmp_path / "a.ply", frame)
    script = f"""
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.ply_import(filepath={str(p)!r})
obj = bpy.context.selected_objects[0]
me = obj.data
# Blender 5.3+ imports 3DGS PLYs as a Gaussian-splat point cloud (position, radiance:base, scale,
# rotation); older Blenders as a mesh with the file's properties as attributes
pts = me.points if obj.type == "POINTCLOUD" else me.vertices
print("VERTS", len(pts))
print("ATTRS", sorted(a.name for a in me.attributes))
print("X0", me.attributes["position"].data[0].vector[0])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(l.split(" ", 1) for l in out.stdout.splitlines() if l.split(" ")[0] in ("VERTS", "ATTRS", "X0"))
    assert int(lines["VERTS"]) == frame.num
    attrs = lines["ATTRS"]
    splat_names, ply_names = ("radiance:base", "scale", "rotation"), ("f_dc_0", "opacity", "scale_0", "rot_0")
    assert all(n in attrs for n in ply_names) or all(n in attrs for n in splat_names), attrs
    assert abs(float(lines["X0"]) - float(frame.means[0, 0, 0])) < 1e-5


def test_source_camera_is_read_from_the_avatar_files_source_tensors(tmp_path, small_avatar):
    """The one reader of the fitted source camera: the tensors an avatar file keeps (K, viewmat,
    width, height, as every version wrote them) -> a batch-1 Camera, scaled to a longer side."""
    from avatar_core.camera import Camera, orbit_camera
    view = orbit_camera(distance=0.6, yaw_deg=10.0, width=96, height=64)
    av = dataclasses.replace(small_avatar, source={"K": view.K[0].double(), "viewmat": view.viewmat[0].double(),
                                                   "width": torch.tensor(96), "height": torch.tensor(64),
                                                   "expression": torch.zeros(small_avatar.num_expr)})
    save_avatar(av, tmp_path / "a.avatar")
    loaded = load_avatar(tmp_path / "a.avatar")
    cam = loaded.source_camera()
    assert isinstance(cam, Camera) and cam.batch == 1 and (cam.width, cam.height) == (96, 64)
    assert cam.K.dtype == torch.float32 and torch.equal(cam.K, view.K.float())
    half = loaded.source_camera(48)
    assert (half.width, half.height) == (48, 32)
    assert torch.equal(half.K, view.scaled(48, 32).K.float())
    assert not dataclasses.replace(av, source={}).has_source_camera
    with pytest.raises(AvatarFileError, match="no fitted source camera"):
        dataclasses.replace(av, source={}).source_camera(64)


def test_the_rig_model_deforms_exactly_like_the_avatar(small_avatar):
    """Avatar.rig_model() (what retargeting uses) and Avatar.deform_rig are one rig: the same
    vertices and joint transforms, to the bit."""
    g = torch.Generator().manual_seed(0)
    e = torch.rand(2, small_avatar.num_expr, generator=g)
    pose = 0.2 * torch.randn(2, small_avatar.rig_weights.shape[1], 3, generator=g)
    t = 0.01 * torch.randn(2, 3, generator=g)
    verts, transforms = small_avatar.deform_rig(expression=e, pose=pose, translation=t)
    out = small_avatar.rig_model()(expression=e, pose=pose, translation=t)
    assert torch.equal(out.vertices, verts) and torch.equal(out.transforms, transforms)
