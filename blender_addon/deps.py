"""Which Python packages HeadSplat needs in this Blender's Python, and how to install them.

No bpy here (tested with plain pytest). The add-on calls ``set_target(dir)`` at register
time with a folder inside its user data; ``install`` pip-installs there and the folder is
appended to ``sys.path`` (appended, so Blender's own numpy always wins; installs are
constrained to the numpy already present).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from typing import Callable, List, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class Requirement:
    module: str            # import name
    dist: str              # distribution name (for the version)
    pip: str               # what to pass to pip
    needed_for: str        # sentence fragment shown to the user
    optional: bool = False
    exact: Optional[str] = None  # a version that must match exactly


REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", "numpy<2", "everything"),
    Requirement("torch", "torch", "torch>=2.2", "everything (animate, render)"),
    Requirement("safetensors", "safetensors", "safetensors", "avatar files"),
    Requirement("PIL", "pillow", "pillow", "photos"),
    Requirement("cv2", "opencv-python-headless", "opencv-python-headless", "photos and videos"),
    Requirement("scipy", "scipy", "scipy", "reconstruction"),
    Requirement("mediapipe", "mediapipe", "mediapipe==0.10.21", "face detection and landmarks",
                exact="0.10.21"),
    Requirement("anny", "anny", "anny==0.6.2", "the built-in open head"),
    Requirement("gsplat", "gsplat", "gsplat==1.5.3", "fast rendering on NVIDIA GPUs", optional=True),
    Requirement("packaging", "packaging", "packaging", "gsplat", optional=True),
)

_target: str = ""


def set_target(path: str) -> None:
    """The folder dependencies go to; added to sys.path (at the end) when it exists."""
    global _target
    _target = path
    if path and os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)
    importlib.invalidate_caches()


def target() -> str:
    return _target


@dataclasses.dataclass
class Status:
    python: str
    target: str
    missing: List[Tuple[Requirement, str]]
    optional_missing: List[Requirement]

    @property
    def ok(self) -> bool:
        return not self.missing

    def sentence(self) -> str:
        if self.ok:
            return f"All HeadSplat dependencies are present for Python {self.python}."
        names = ", ".join(f"{r.pip} ({why})" for r, why in self.missing)
        return (f"HeadSplat needs these packages in Blender's Python {self.python}: {names}. Use "
                f"Preferences > Add-ons > HeadSplat > Install Dependencies, or run: {' '.join(command())}")

    def missing_for(self, *modules: str) -> List[str]:
        return [r.pip for r, _ in self.missing if r.module in modules]


def check(requirements: Sequence[Requirement] = REQUIREMENTS) -> Status:
    """Look for each requirement without importing it (fast)."""
    importlib.invalidate_caches()
    missing, optional = [], []
    for r in requirements:
        why = _problem(r)
        if why is None:
            continue
        if r.optional:
            optional.append(r)
        else:
            missing.append((r, why))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Status(py, _target, missing, optional)


_status_cache: Optional[Status] = None


def status(refresh: bool = False) -> Status:
    """Cached ``check()`` (panels draw often)."""
    global _status_cache
    if _status_cache is None or refresh:
        _status_cache = check()
    return _status_cache


def _problem(r: Requirement) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(r.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"not installed, needed for {r.needed_for}"
    if r.exact:
        try:
            v = importlib.metadata.version(r.dist)
        except importlib.metadata.PackageNotFoundError:
            return None
        if v != r.exact:
            return f"version {v} installed, {r.exact} needed for {r.needed_for}"
    return None


def command(requirements: Optional[Sequence[Requirement]] = None, target_dir: Optional[str] = None,
            python: Optional[str] = None) -> List[str]:
    """The pip command installing ``requirements`` (default: the missing ones) into the target."""
    if requirements is None:
        requirements = [r for r, _ in check().missing]
    py = python or python_executable()
    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--target", target_dir or _target or "<target>"]
    return cmd + [r.pip for r in requirements]


def python_executable() -> str:
    """Blender's Python interpreter (sys.executable is it since Blender 2.91)."""
    exe = sys.executable
    base = os.path.basename(exe).lower()
    if base.startswith("blender"):
        # very old layouts: look for the bundled python next to the binary
        cand = os.path.join(sys.prefix, "bin", "python3.11")
        return cand if os.path.exists(cand) else exe
    return exe


def install(requirements: Optional[Sequence[Requirement]] = None, target_dir: Optional[str] = None,
            extra_args: Sequence[str] = (), log: Optional[Callable[[str], None]] = None,
            cancel=None) -> None:
    """pip-install into the target folder; raises RuntimeError with pip's last lines on failure."""
    target_dir = target_dir or _target
    if not target_dir:
        raise RuntimeError("No folder to install dependencies into (the add-on sets one when registered).")
    os.makedirs(target_dir, exist_ok=True)
    cmd = command(requirements, target_dir)
    # never let pip replace the numpy Blender ships with
    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        numpy_version = None
    with tempfile.TemporaryDirectory(prefix="headsplat-pip-") as tmp:
        if numpy_version:
            cons = os.path.join(tmp, "constraints.txt")
            with open(cons, "w") as f:
                f.write(f"numpy=={numpy_version}\n")
            cmd += ["-c", cons]
        cmd += list(extra_args)
        if subprocess.run([cmd[0], "-m", "pip", "--version"], capture_output=True).returncode != 0:
            subprocess.run([cmd[0], "-m", "ensurepip", "--upgrade"], capture_output=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if log:
                log(line.rstrip())
            if cancel is not None and cancel.is_set():
                proc.terminate()
                proc.wait()
                raise RuntimeError("Installing dependencies was cancelled.")
        if proc.wait() != 0:
            tail = " | ".join(l for l in lines[-4:] if l)
            raise RuntimeError(f"pip failed (exit {proc.returncode}): {tail}")
    set_target(target_dir)
    status(refresh=True)
