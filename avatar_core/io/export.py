"""Exporting Gaussians for other tools: one frame, or a sequence of frames, as PLY, GLB or SPZ.

    write_frame("face.glb", frame, "glb")
    export_sequence("take/", frames, "ply", fps=30)      # frames: iterable of GaussianFrame

A sequence is a folder of ``frame_00000.<ext>``, ``frame_00001.<ext>``... plus ``sequence.json``
(``SEQUENCE_FORMAT``: fps, frame count, file names, Gaussian count and what the colours are),
the layout 4-D splat tools read frame by frame. It is written to a temporary folder beside the
target and moved into place at the end; frames of an earlier export in that folder are
replaced. Nothing is left half-written on an error or Ctrl-C.

Colours are the avatar's own RGB channels (``features[..., :3]``); the neural refiner is not
part of them. Coordinates are avatar_core's head frame (metres, +Y up, face toward +Z), which
is also glTF's and SPZ's; ``GaussianFrame.transformed`` moves Gaussians by a similarity (e.g. an
object's world matrix) when another frame is wanted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch

from avatar_core.errors import AvatarError
from avatar_core.gaussians.frame import GaussianFrame

FORMATS = ("ply", "glb", "spz")
SUFFIX = {"ply": ".ply", "glb": ".glb", "spz": ".spz"}
SEQUENCE_FORMAT = "headsplat-gaussian-sequence"
SEQUENCE_VERSION = 1
INDEX_NAME = "sequence.json"
COLOUR_NOTE = "the avatar's own RGB channels (features 0-2); the neural refiner is not part of them"


def format_for(path: Union[str, Path], fmt: Optional[str] = None) -> str:
    """``fmt`` checked, or the format named by the file's suffix."""
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = {v: k for k, v in SUFFIX.items()}.get(suffix)
        if fmt is None:
            raise AvatarError(f"Cannot tell the export format of {str(path)!r}: name it .ply, .glb or .spz, "
                              f"or give the format.")
    if fmt not in FORMATS:
        raise AvatarError(f"Unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    return fmt


def write_frame(path: Union[str, Path], frame: GaussianFrame, fmt: Optional[str] = None, b: int = 0,
                extras: Optional[dict] = None) -> Path:
    """Write frame ``b`` of ``frame`` to ``path`` as ``fmt`` (default: from the suffix), atomically."""
    fmt = format_for(path, fmt)
    if not 0 <= b < frame.batch:
        raise AvatarError(f"Frame {b} is outside the batch of {frame.batch}.")
    for name in ("means", "scales", "quats", "opacities", "features"):
        t = getattr(frame, name, None)
        if t is not None and not bool(torch.isfinite(t[b]).all()):
            raise AvatarError(f"Cannot write {str(path)!r}: the Gaussian {name} contain NaN or infinite values "
                              "(check the expression values and the avatar).")
    if fmt == "ply":
        from avatar_core.io.ply import write_ply
        return write_ply(path, frame.index(b) if b else frame)
    if fmt == "glb":
        from avatar_core.io.gltf_splat import write_glb
        return write_glb(path, frame, b, extras=extras)
    from avatar_core.io.spz import write_spz
    return write_spz(path, frame, b)


def read_frame(path: Union[str, Path]) -> GaussianFrame:
    """Read a .ply, .glb or .spz written by ``write_frame`` (or a peer tool) as a GaussianFrame (B = 1)."""
    fmt = format_for(path)
    if fmt == "ply":
        from avatar_core.io.ply import read_ply
        return read_ply(path)
    if fmt == "glb":
        from avatar_core.io.gltf_splat import read_glb
        return read_glb(path)
    from avatar_core.io.spz import read_spz
    return read_spz(path)


def frame_name(i: int, fmt: str) -> str:
    return f"frame_{i:05d}{SUFFIX[fmt]}"


def check_output(out: Union[str, Path], inputs: Sequence[Union[str, Path]] = (), folder: bool = False) -> Path:
    """Refuse an output that is one of the inputs, or cannot be written; returns it as a Path
    (the shared guard, ``atomic.check_output``)."""
    from avatar_core.atomic import check_output as guard
    return guard(out, inputs, what="sequence folder" if folder else "output file", folder=folder)


def export_sequence(out: Union[str, Path], frames: Iterable[GaussianFrame], fmt: str, fps: float,
                    total: Optional[int] = None, first_frame: int = 0, extras: Optional[dict] = None,
                    progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> Dict:
    """Write every frame of ``frames`` (GaussianFrames of any batch size, in order) into the
    folder ``out`` as ``frame_00000.<ext>``... and ``sequence.json``; returns the index.

    Args:
        fmt: "ply" | "glb" | "spz". fps: the frames' rate (> 0). total: expected frame count
            (for progress). first_frame: the source frame of file 0 (recorded in the index).
        extras: more JSON-able facts for the index (and each GLB's metadata).
        progress, cancel: ``progress(fraction, message)`` and a ``threading.Event``.
    """
    from avatar_core.progress import as_progress

    fmt = format_for("x", fmt)
    if not fps > 0:
        raise AvatarError(f"fps must be positive, not {fps}.")
    out = check_output(out, folder=True)
    prog = as_progress(progress, cancel)
    names: List[str] = []
    num = None
    with _staging_folder(out) as tmp:
        for frame in frames:
            for b in range(frame.batch):
                prog.check()
                name = frame_name(len(names), fmt)
                write_frame(tmp / name, frame, fmt, b=b, extras=extras)
                names.append(name)
                if len(names) == 1 and total and total > 1:  # the size is known now: fail before the long work
                    from avatar_core.atomic import check_free_space
                    check_free_space(tmp, (tmp / name).stat().st_size * (total - 1), "sequence folder", out)
                num = frame.num if num is None else num
                if total:
                    prog(min(1.0, len(names) / total), f"frame {len(names)}/{total}")
        if not names:
            raise AvatarError(f"Nothing to export into {str(out)!r}: the sequence has no frames.")
        index = {"format": SEQUENCE_FORMAT, "version": SEQUENCE_VERSION, "fps": float(fps),
                 "frame_count": len(names), "first_frame": int(first_frame), "file_format": fmt,
                 "num_gaussians": int(num), "files": names, "colours": COLOUR_NOTE,
                 "coordinates": "metres, +Y up, face toward +Z"}
        index.update(extras or {})
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _staging_folder(out: Path):
    """A temporary folder beside ``out``; on success its files replace out's frames and index."""
    from avatar_core.atomic import atomic_folder
    return atomic_folder(out, replace_glob=[f"frame_*{sfx}" for sfx in SUFFIX.values()] + [INDEX_NAME],
                         what="sequence folder")


def read_index(folder: Union[str, Path]) -> Dict:
    """The ``sequence.json`` of an exported sequence, checked."""
    p = Path(folder) / INDEX_NAME
    try:
        index = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise AvatarError(f"{str(p)!r} is not a readable sequence index ({exc}).") from None
    if index.get("format") != SEQUENCE_FORMAT:
        raise AvatarError(f"{str(p)!r} is not a HeadSplat sequence index.")
    return index


# ----------------------------------------------------------------------------- frames
def motion_frames(avatar, motion, lod: int, mask_threshold: float = 0.5,
                  layers: Optional[Sequence[int]] = None, batch: int = 16) -> Iterator[GaussianFrame]:
    """GaussianFrames of ``avatar`` driven by ``motion`` (already in its expression space, e.g.
    ``motion.playback.bring_to_avatar``), ``batch`` frames at a time, in order."""
    index = avatar.select(lod, layers, mask_threshold)
    T = motion.num_frames
    for start in range(0, T, batch):
        stop = min(T, start + batch)
        with torch.no_grad():
            yield avatar.animate(index=index, **motion.frames(start, stop, device=avatar.device))


def parse_frames(spec: Optional[str], num_frames: int) -> slice:
    """``A:B`` (either side may be empty, B exclusive, negatives count from the end) -> slice."""
    if not spec:
        return slice(0, num_frames)
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a = int(parts[0]) if parts[0].strip() else 0
        b = int(parts[1]) if parts[1].strip() else num_frames
    except ValueError:
        raise AvatarError(f"--frames {spec!r} must look like A:B (e.g. 0:100, 50:, :-10).") from None
    a, b, _ = slice(a, b).indices(num_frames)
    if b <= a:
        raise AvatarError(f"--frames {spec!r} selects no frame of the motion's {num_frames}.")
    return slice(a, b)
