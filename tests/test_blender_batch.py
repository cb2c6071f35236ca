"""scripts/batch_render.py under plain Python with the bpy module: N frames written."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "batch_render.py"


def _run(args, tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_avatar):
    from avatar_core.io import save_avatar
    from avatar_core.motion import MotionSequence
    d = tmp_path_factory.mktemp("batch")
    save_avatar(small_avatar, d / "head.avatar")
    T = 3
    expr = np.zeros((T, small_avatar.num_expr), np.float32)
    expr[:, small_avatar.expr_names.index("jawOpen")] = [0.0, 0.5, 1.0]
    pose = np.zeros((T, 5, 3), np.float32)
    pose[:, 1, 1] = [0.0, 0.2, 0.4]
    MotionSequence(fps=24, expr_names=list(small_avatar.expr_names), expression=expr, pose=pose,
                   translation=np.zeros((T, 3), np.float32), source="test").save(d / "take.npz")
    return d


def test_batch_render_writes_frames(files, tmp_path):
    from PIL import Image
    out = tmp_path / "frames"
    r = _run(["--avatar", str(files / "head.avatar"), "--motion", str(files / "take.npz"), "--out", str(out),
              "--res", "32x24", "--lod", "0", "--save-blend", str(tmp_path / "prepared.blend")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    frames = sorted(out.glob("frame_*.png"))
    assert [f.name for f in frames] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    imgs = [np.asarray(Image.open(f)) for f in frames]
    assert imgs[0].shape == (24, 32, 3)
    assert np.abs(imgs[0].astype(int) - imgs[2].astype(int)).max() > 5   # the motion moved the head
    assert "wrote 3 frames" in r.stdout
    # the saved scene renders again from the .blend alone (packed-or-linked avatar, keys kept)
    out2 = tmp_path / "again"
    r2 = _run(["--blend", str(tmp_path / "prepared.blend"), "--out", str(out2), "--frames", "2"], tmp_path)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert len(list(out2.glob("frame_*.png"))) == 2


def test_batch_render_bad_input(files, tmp_path):
    r = _run(["--avatar", str(files / "missing.avatar"), "--out", str(tmp_path / "x")], tmp_path)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = _run(["--out", str(tmp_path / "x")], tmp_path)
    assert r.returncode == 1 and "no avatar" in r.stderr


def _height_fraction(png) -> float:
    """Rows the avatar covers (alpha > 0.1) over the frame's height."""
    from PIL import Image
    a = np.asarray(Image.open(png))[..., 3]
    rows = np.nonzero((a > 25).any(1))[0]
    return 0.0 if rows.size == 0 else (rows[-1] - rows[0] + 1) / a.shape[0]


FAR_CAMERA_SCENE = """
import bpy, sys
bpy.ops.wm.read_factory_settings(use_empty=True)
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
bpy.context.scene.collection.objects.link(cam)
cam.location = (7.36, -6.93, 4.96)             # the startup file's camera, ~11 m away
cam.rotation_euler = (1.109, 0.0, 0.815)
bpy.context.scene.camera = cam
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
"""


@pytest.mark.parametrize("with_blend", [False, True], ids=["no-blend", "far-camera-blend"])
def test_batch_render_frames_the_avatar_unless_the_scene_camera_is_asked_for(files, tmp_path, with_blend):
    args = ["--avatar", str(files / "head.avatar"), "--res", "64x48", "--lod", "0", "--frames", "1",
            "--transparent"]
    if with_blend:
        blend = tmp_path / "far.blend"
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender-user"))
        r = subprocess.run([sys.executable, "-c", FAR_CAMERA_SCENE, str(blend)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        args += ["--blend", str(blend)]
    r = _run(args + ["--out", str(tmp_path / "framed")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    framed = _height_fraction(tmp_path / "framed" / "frame_0001.png")
    assert 1 / 3 <= framed <= 1.0, framed
    if with_blend:
        r = _run(args + ["--camera", "scene", "--out", str(tmp_path / "own")], tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert _height_fraction(tmp_path / "own" / "frame_0001.png") < 0.2   # the user's far camera kept
