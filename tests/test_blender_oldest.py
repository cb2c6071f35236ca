"""The oldest Blender the manifest claims (blender_version_min) installs the built extension,
registers it, imports an avatar (rig, points, geometry nodes) and renders an F12 with the
HeadSplat engine.

That Blender runs as the bpy module of its version in a separate interpreter, named by
HEADSPLAT_BPY_OLDEST (``make test`` builds .venv-bpy42 with bpy 4.2.0 and sets it)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys
    import bpy, addon_utils
    zip_path, avatar_path, want = sys.argv[1], sys.argv[2], sys.argv[3]
    have = ".".join(map(str, bpy.app.version))
    assert have == want, (have, want)
    assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    mod = "bl_ext.user_default.headsplat"
    assert mod in {a.module for a in bpy.context.preferences.addons}, "the extension did not register"
    assert hasattr(bpy.types.Object, "headsplat")
    assert bpy.ops.headsplat.import_avatar(filepath=avatar_path) == {"FINISHED"}
    ob = bpy.context.active_object
    assert ob.headsplat.is_avatar and ob.headsplat.rig is not None
    assert [m.type for m in ob.modifiers] == ["ARMATURE", "NODES"]
    # the geometry-nodes filter evaluates to the points of the shown LOD
    dg = bpy.context.evaluated_depsgraph_get()
    clouds = [inst.object for inst in dg.object_instances
              if inst.object.original == ob and inst.object.type == "POINTCLOUD"]
    n = len(clouds[0].data.points) if clouds else len(ob.evaluated_get(dg).data.vertices)
    assert 0 < n <= ob.headsplat.num_gaussians, n
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 48
    scene.render.resolution_percentage = 100
    scene.render.filepath = os.path.join(os.path.dirname(avatar_path), "f12.png")
    bpy.ops.render.render(write_still=True)
    print("OLDEST-OK", have, n)
""")


def test_oldest_blender_installs_registers_builds_and_renders(tmp_path, small_avatar):
    python = os.environ.get("HEADSPLAT_BPY_OLDEST")
    if not python:
        pytest.skip("HEADSPLAT_BPY_OLDEST (an interpreter with the oldest claimed bpy) is not set: "
                    "`make test-py311` sets it")
    sys.path.insert(0, str(ROOT))
    import build_addon
    from avatar_core.io import save_avatar
    want = build_addon.read_manifest()["blender_version_min"]
    zpath = build_addon.build(tmp_path / "dist")
    avatar = tmp_path / "head.avatar"
    save_avatar(small_avatar, avatar)
    script = tmp_path / "oldest.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "user")
    r = subprocess.run([python, str(script), str(zpath), str(avatar), want], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    assert f"OLDEST-OK {want}" in r.stdout
    from PIL import Image
    import numpy as np
    img = np.asarray(Image.open(tmp_path / "f12.png"))
    assert img.shape[:2] == (48, 48) and np.ptp(img[..., :3]) > 10   # the avatar was drawn
