"""build_addon.py builds an installable extension zip; installing it with
bpy.ops.extensions.package_install_files (fresh process, repository not on sys.path) and
running an operator from it works; disabling it unregisters cleanly."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_zip_layout(tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon
    zpath = build_addon.build(tmp_path)
    names = set(zipfile.ZipFile(zpath).namelist())
    assert {"blender_manifest.toml", "__init__.py", "blender_addon/__init__.py", "operators/__init__.py",
            "panels/__init__.py", "avatar_core/__init__.py", "cuda_backend/__init__.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "blender_addon/pure/convert.py" in names and "blender_addon/testing.py" not in names  # tests' helpers
    manifest = build_addon.read_manifest()
    assert manifest["id"] == "headsplat" and manifest["blender_version_min"] >= "4.2.0"


INSTALL = textwrap.dedent("""
    import sys, os
    assert not any(p.rstrip('/').endswith('main') for p in sys.path), sys.path
    import bpy, addon_utils
    zip_path, avatar_path = sys.argv[1], sys.argv[2]
    assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    mod = "bl_ext.user_default.headsplat"
    assert mod in {a.module for a in bpy.context.preferences.addons}
    import avatar_core, blender_addon
    ext_dir = os.path.dirname(os.path.dirname(blender_addon.__file__))
    assert os.path.dirname(os.path.dirname(avatar_core.__file__)) == ext_dir
    prefs = bpy.context.preferences.addons[mod].preferences
    assert prefs.device == "AUTO" and prefs.head_model == "OPEN"
    assert bpy.ops.headsplat.import_avatar(filepath=avatar_path) == {"FINISHED"}
    ob = bpy.context.active_object
    assert ob.headsplat.is_avatar, ob
    assert bpy.context.scene.render.engine == "HEADSPLAT", bpy.context.scene.render.engine
    addon_utils.disable(mod)
    assert not hasattr(bpy.types.Object, "headsplat")
    assert not hasattr(bpy.types, "HEADSPLAT_OT_import_avatar")
    assert "blender_addon" not in sys.modules and "avatar_core" not in sys.modules
    print("INSTALLED-OK", ext_dir)
""")


def test_install_built_zip_and_run_an_operator(tmp_path, small_avatar):
    sys.path.insert(0, str(ROOT))
    import build_addon
    from avatar_core.io import save_avatar
    zpath = build_addon.build(tmp_path / "dist")
    avatar = tmp_path / "head.avatar"
    save_avatar(small_avatar, avatar)
    script = tmp_path / "install.py"
    script.write_text(INSTALL)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "user")
    r = subprocess.run([sys.executable, str(script), str(zpath), str(avatar)], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-2500:])
    assert "INSTALLED-OK" in r.stdout and str(tmp_path / "user") in r.stdout
