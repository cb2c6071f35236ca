"""Export Gaussians in Blender (bpy module, background): the current frame in each format, the
scene's frame range as a sequence that follows the keyed expression, Blender-world coordinates."""

import json

import numpy as np
import pytest

from blender_addon import testing


@pytest.fixture(scope="module")
def bpy():
    return testing.ensure_registered()


@pytest.fixture()
def scene(bpy):
    return testing.fresh_scene()


@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory, small_avatar):
    from avatar_core.io import save_avatar
    path = tmp_path_factory.mktemp("av") / "small.avatar"
    save_avatar(small_avatar, path)
    return path


@pytest.mark.parametrize("fmt", ["PLY", "GLB", "SPZ"])
def test_export_current_frame_in_each_format(bpy, scene, avatar_file, small_avatar, tmp_path, fmt):
    from avatar_core.io.export import read_frame
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    ob.headsplat.lod = 1
    ob.data.shape_keys.key_blocks["jawOpen"].value = 0.6
    # the suffix follows the format
    assert bpy.ops.headsplat.export_ply(filepath=str(tmp_path / "face.ply"), file_format=fmt) == {"FINISHED"}
    out = tmp_path / f"face.{fmt.lower()}"
    got = read_frame(out)
    ref = small_avatar.animate(expression={"jawOpen": 0.6}, lod=1)
    assert got.num == ref.num and (got.means - ref.means).abs().max().item() < 1e-3


def test_export_frame_range_as_sequence(bpy, scene, avatar_file, small_avatar, tmp_path):
    from avatar_core.io.export import read_frame, read_index
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    ob.headsplat.lod = 0
    kb = ob.data.shape_keys.key_blocks["jawOpen"]
    sc = bpy.context.scene
    sc.frame_start, sc.frame_end, sc.render.fps, sc.render.fps_base = 3, 6, 25, 1.0
    for f, v in ((3, 0.0), (6, 0.9)):
        kb.value = v
        kb.keyframe_insert("value", frame=f)
    sc.frame_set(4)
    assert bpy.ops.headsplat.export_ply(filepath=str(tmp_path / "take.glb"), file_format="GLB",
                                        frames="RANGE") == {"FINISHED"}
    assert sc.frame_current == 4                                           # restored
    idx = read_index(tmp_path / "take")
    assert idx["frame_count"] == 4 and idx["fps"] == 25 and idx["first_frame"] == 3
    assert json.loads((tmp_path / "take" / "sequence.json").read_text())["files"][0] == "frame_00000.glb"
    first, last = read_frame(tmp_path / "take" / "frame_00000.glb"), read_frame(tmp_path / "take" / "frame_00003.glb")
    for got, v in ((first, 0.0), (last, 0.9)):
        ref = small_avatar.animate(expression={"jawOpen": v}, lod=0)
        assert (got.means - ref.means).abs().max().item() < 1e-4


def test_export_in_blender_world_coordinates(bpy, scene, avatar_file, small_avatar, tmp_path):
    from avatar_core.io.export import read_frame
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    ob.headsplat.lod = 2
    out = tmp_path / "world.spz"
    assert bpy.ops.headsplat.export_ply(filepath=str(out), file_format="SPZ", coordinates="BLENDER") == {"FINISHED"}
    M = np.array(ob.matrix_world)
    ref = small_avatar.animate(lod=2).means[0].numpy()
    assert np.abs(read_frame(out).means[0].numpy() - (ref @ M[:3, :3].T + M[:3, 3])).max() < 1e-3


def test_export_refusal_is_reported_and_writes_nothing(bpy, scene, avatar_file, tmp_path):
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.headsplat.export_ply(filepath=str(tmp_path / "no" / "x.glb"), file_format="GLB")
    assert list(tmp_path.iterdir()) == []


def test_export_is_unavailable_without_an_avatar(bpy, scene):
    assert not bpy.ops.headsplat.export_ply.poll()
