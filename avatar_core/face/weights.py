"""The face models' weights: fetched once from the mediapipe 0.10.21 wheel, kept as safetensors.

The .tflite files inside mediapipe 0.10.21's wheel (Apache-2.0, The MediaPipe Authors) are
read without TensorFlow (``avatar_core.face.tflite``), turned into an op list plus
constants (``avatar_core.face.graph``) and written as one safetensors file per model
(the op list as JSON in the header) to ``$HEADSPLAT_CACHE_DIR/face_models_v1`` (default
``~/.cache/headsplat/face_models_v1``), next to mediapipe's LICENSE and a NOTICE saying
where they came from. ``fetch_models()`` does it (``python -m avatar_core fetch-models``);
the wheel comes from ``pip download`` unless a wheel or a folder holding the .tflite files
is given (``source``, or the environment variable ``HEADSPLAT_MEDIAPIPE_WHEEL``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from avatar_core.errors import AvatarError

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.21"
FORMAT_VERSION = 1
CACHE_SUBDIR = f"face_models_v{FORMAT_VERSION}"
SOURCE_ENV = "HEADSPLAT_MEDIAPIPE_WHEEL"
FETCH_COMMAND = "python -m avatar_core fetch-models"
# model name -> path of its .tflite inside the wheel
MODELS = {
    "face_detection_short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark_with_attention": "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
    "selfie_segmentation": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "selfie_segmentation_landscape": "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
}
# pip can fetch the wheel for any platform; these are tried in turn
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "macosx_11_0_universal2", "win_amd64")
NOTICE = f"""The files in this folder are converted from the TensorFlow Lite models inside the
mediapipe {MEDIAPIPE_VERSION} Python wheel (https://github.com/google-ai-edge/mediapipe),
Copyright The MediaPipe Authors, licensed under the Apache License, Version 2.0
(the licence text is in LICENSE; also https://www.apache.org/licenses/LICENSE-2.0).
Changes: the models' weights and op lists were converted from .tflite (flatbuffers) to
safetensors by HeadSplat (avatar_core/face/weights.py); the weights' values are unchanged
(fp16 weights widened to fp32, sparse weights made dense).
"""


class FaceModelsMissing(AvatarError):
    """The face models have not been fetched, or their files are corrupt."""


def cache_dir() -> Path:
    """``$HEADSPLAT_CACHE_DIR/face_models_v1`` (default ``~/.cache/headsplat/face_models_v1``)."""
    env = os.environ.get("HEADSPLAT_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "headsplat"
    return root / CACHE_SUBDIR


def model_path(name: str) -> Path:
    return cache_dir() / f"{name}.safetensors"


def models_ready() -> bool:
    """True when every model file is in the cache and reads back."""
    try:
        for name in MODELS:
            _read_header(model_path(name))
        return True
    except (OSError, ValueError):
        return False


# ====================================================================== fetching

def _wheel_from_pip(dest: Path, progress: Callable[[str], None]) -> Path:
    errors = []
    for platform in _PLATFORMS:
        cmd = [sys.executable, "-m", "pip", "download", f"mediapipe=={MEDIAPIPE_VERSION}", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.11", "--platform", platform, "-d", str(dest)]
        progress(f"downloading the mediapipe {MEDIAPIPE_VERSION} wheel ({platform}) with pip")
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
        if res.returncode == 0 and wheels:
            return wheels[0]
        errors.append((res.stderr or res.stdout).strip().splitlines()[-1:] or ["pip failed"])
    raise FaceModelsMissing(
        f"pip could not download mediapipe=={MEDIAPIPE_VERSION} ({errors[-1][0]}); download the wheel on a "
        f"machine with a network and run `{FETCH_COMMAND} --from PATH/TO/mediapipe-{MEDIAPIPE_VERSION}-....whl`.")


def _read_source(source: Path) -> Tuple[Dict[str, bytes], Optional[bytes]]:
    """({model name: .tflite bytes}, LICENSE bytes or None) from a wheel or a folder."""
    files: Dict[str, bytes] = {}
    licence = None
    if source.is_file():
        try:
            with zipfile.ZipFile(source) as z:
                names = z.namelist()
                for name, inner in MODELS.items():
                    if inner in names:
                        files[name] = z.read(inner)
                lic = [n for n in names if n.endswith(".dist-info/LICENSE")]
                if lic:
                    licence = z.read(lic[0])
        except zipfile.BadZipFile:
            raise FaceModelsMissing(f"{str(source)!r} is not a wheel (zip file); expected the mediapipe "
                                    f"{MEDIAPIPE_VERSION} wheel or a folder holding its .tflite files.") from None
    elif source.is_dir():
        wanted = {Path(inner).name: name for name, inner in MODELS.items()}
        for path in sorted(source.rglob("*.tflite")):
            if path.name in wanted and wanted[path.name] not in files:
                files[wanted[path.name]] = path.read_bytes()
        for cand in [source / "LICENSE", *sorted(source.rglob("LICENSE"))]:
            if cand.is_file():
                licence = cand.read_bytes()
                break
    else:
        raise FaceModelsMissing(f"{str(source)!r} does not exist; expected the mediapipe {MEDIAPIPE_VERSION} "
                                "wheel or a folder holding its .tflite files.")
    missing = sorted(set(MODELS) - set(files))
    if missing:
        names = ", ".join(Path(MODELS[m]).name for m in missing)
        raise FaceModelsMissing(f"{str(source)!r} lacks the face models {names}; expected the mediapipe "
                                f"{MEDIAPIPE_VERSION} wheel or a folder holding its .tflite files.")
    return files, licence


def convert_tflite(data: bytes, name: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """.tflite bytes -> (tensors, safetensors metadata) of the converted model."""
    from avatar_core.face.graph import graph_spec
    from avatar_core.face.tflite import read_tflite

    spec, tensors = graph_spec(read_tflite(data))
    meta = {"format": f"headsplat-face-model/{FORMAT_VERSION}", "name": name, "graph": json.dumps(spec),
            "source": f"mediapipe {MEDIAPIPE_VERSION}: {MODELS[name]}",
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "license": "Apache-2.0, Copyright The MediaPipe Authors (see LICENSE and NOTICE in this folder)"}
    return tensors, meta


def fetch_models(source=None, force: bool = False, progress: Optional[Callable[[str], None]] = None) -> Path:
    """Convert the face models into the cache (once); returns the cache folder.

    Args:
        source: a mediapipe 0.10.21 wheel or a folder holding its .tflite files; default
            ``$HEADSPLAT_MEDIAPIPE_WHEEL``, else the wheel is fetched with ``pip download``.
        force: convert again even when the cache is complete.
        progress: called with a short message per step.

    Raises:
        FaceModelsMissing: the source is missing or lacks a model, pip failed, or the
            cache folder cannot be written.
    """
    from safetensors.numpy import save_file

    say = progress or (lambda msg: log.info("%s", msg))
    out = cache_dir()
    if not force and models_ready() and (out / "LICENSE").is_file():
        say(f"face models already in {out}")
        return out
    source = source or os.environ.get(SOURCE_ENV) or None
    with tempfile.TemporaryDirectory(prefix="headsplat-mediapipe-") as tmp:
        src = Path(source).expanduser() if source else _wheel_from_pip(Path(tmp), say)
        say(f"reading the face models from {src}")
        files, licence = _read_source(src)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                say(f"converting {name}")
                tensors, meta = convert_tflite(data, name)
                part = out / f".{name}.safetensors.part"
                save_file(tensors, str(part), metadata=meta)
                os.replace(part, model_path(name))
            (out / "NOTICE").write_text(NOTICE)
            if licence is None:
                licence = b"Apache License, Version 2.0: https://www.apache.org/licenses/LICENSE-2.0\n"
            (out / "LICENSE").write_bytes(licence)
        except OSError as exc:
            raise FaceModelsMissing(f"The face models could not be written to {str(out)!r} ({exc.strerror}); "
                                    "set HEADSPLAT_CACHE_DIR to a writable folder.") from None
    _loaded.clear()
    say(f"face models ready in {out}")
    return out


# ====================================================================== loading

def _read_header(path: Path) -> dict:
    """The safetensors header's metadata; raises OSError/ValueError if unreadable."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("truncated")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError("bad header size")
        header = json.loads(f.read(n))
        size = path.stat().st_size
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError("truncated")
    meta = header.get("__metadata__") or {}
    if meta.get("format") != f"headsplat-face-model/{FORMAT_VERSION}":
        raise ValueError("not a face model file of this version")
    return meta


_loaded: Dict[str, Tuple[dict, Dict[str, np.ndarray]]] = {}
_load_lock = threading.Lock()


def load_model(name: str) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(graph spec, tensors) of a converted model.

    Raises:
        FaceModelsMissing: not fetched yet (the message gives the command), or corrupt.
    """
    with _load_lock:
        if name in _loaded:
            return _loaded[name]
        path = model_path(name)
        if not path.is_file():
            raise FaceModelsMissing(
                f"The face models are not set up yet (no {path.name} in {str(path.parent)!r}); "
                f"run `{FETCH_COMMAND}` once (or `{FETCH_COMMAND} --from WHEEL_OR_FOLDER` offline).")
        try:
            from safetensors.numpy import load_file

            meta = _read_header(path)
            tensors = load_file(str(path))
            spec = json.loads(meta["graph"])
        except (OSError, ValueError, KeyError, Exception) as exc:  # noqa: BLE001 - any unreadable file is corrupt
            raise FaceModelsMissing(f"The face model file {str(path)!r} is corrupt ({exc}); rebuild it with "
                                    f"`{FETCH_COMMAND} --force`.") from None
        _loaded[name] = (spec, tensors)
        return spec, tensors


def build_module(name: str):
    """A ``TfliteGraph`` torch module of the named model (eval mode, CPU)."""
    from avatar_core.face.graph import TfliteGraph

    spec, tensors = load_model(name)
    return TfliteGraph(spec, tensors).eval()
