"""The layering rule: avatar_core never imports bpy (nor mathutils)."""

import re
import subprocess
import sys

from conftest import ROOT


def test_avatar_core_sources_never_import_bpy():
    pattern = re.compile(r"^\s*(import|from)\s+(bpy|mathutils|bmesh)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "avatar_core").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_using_the_core_loads_no_blender_module():
    code = ("import sys, avatar_core.gaussians.avatar, avatar_core.io, avatar_core.render, avatar_core.recon.pipeline, "
            "avatar_core.motion, avatar_core.eval.novelview; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('bpy', 'mathutils', 'bmesh')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
