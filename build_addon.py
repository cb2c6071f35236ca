"""Build the HeadSplat Blender extension: an installable zip (Blender >= 4.2 extension format).

    python build_addon.py [--out dist]

The zip holds ``blender_manifest.toml``, a top-level ``__init__.py`` (from
``blender_addon/extension_root.py``) and the packages ``blender_addon``, ``operators``,
``panels``, ``avatar_core`` and ``cuda_backend``. Install it with Edit > Preferences >
Get Extensions > Install from Disk, or ``bpy.ops.extensions.package_install_files``. The
Python dependencies (torch, ...) are not bundled: the add-on's preferences check them and
pip-install the missing ones on request.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGES = ("blender_addon", "operators", "panels", "avatar_core", "cuda_backend")
REQUIRED_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                 "blender_version_min", "license")
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".avatar", ".blend1")
EXCLUDE_FILES = {"blender_addon/testing.py"}   # the tests' and scripts' helpers: not part of the add-on


def read_manifest(path: Path = ROOT / "blender_manifest.toml") -> dict:
    with open(path, "rb") as f:
        manifest = tomllib.load(f)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise SystemExit(f"{path} lacks the keys {', '.join(missing)}.")
    if manifest["type"] != "add-on":
        raise SystemExit(f"{path}: type must be 'add-on', not {manifest['type']!r}.")
    if len(manifest["tagline"]) > 64:
        raise SystemExit(f"{path}: the tagline is longer than Blender's 64-character limit.")
    return manifest


def package_files():
    """(absolute path, path inside the zip) of every file to ship."""
    out = [(ROOT / "blender_manifest.toml", "blender_manifest.toml"),
           (ROOT / "blender_addon" / "extension_root.py", "__init__.py")]
    for pkg in PACKAGES:
        base = ROOT / pkg
        if not base.is_dir():
            raise SystemExit(f"Package folder {base} is missing.")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
            for fn in sorted(filenames):
                if fn.endswith(EXCLUDE_SUFFIXES) or fn.startswith("."):
                    continue
                p = Path(dirpath) / fn
                if p.relative_to(ROOT).as_posix() in EXCLUDE_FILES:
                    continue
                out.append((p, p.relative_to(ROOT).as_posix()))
    return out


def check_syntax(files) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for p, arc in files:
            if arc.endswith(".py"):
                try:
                    py_compile.compile(str(p), cfile=os.path.join(tmp, "x.pyc"), doraise=True)
                except py_compile.PyCompileError as exc:
                    raise SystemExit(f"Syntax error in {arc}: {exc.msg}") from None


def build(out_dir: Path = ROOT / "dist") -> Path:
    manifest = read_manifest()
    files = package_files()
    check_syntax(files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p, arc in files:
            z.write(p, arc)
    os.replace(tmp, target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    args = ap.parse_args(argv)
    path = build(Path(args.out))
    with zipfile.ZipFile(path) as z:
        n = len(z.namelist())
    print(f"wrote {path} ({n} files, {path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
