"""``load_motion(path)``: any supported motion file -> ``MotionSequence``.

The format is chosen by content first, then by extension:

* a zip archive (``.npz``): our motion file if it has a ``headsplat_motion`` key, else a
  FLAME parameter sequence (``flame_npz``);
* text (``.csv``, ``.txt``): an ARKit-52 blendshape CSV (``arkit_csv``).

Anything else is refused with a ``MotionError`` saying what is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from avatar_core.errors import MotionError
from avatar_core.motion.sequence import MotionSequence

ACCEPTED = ".npz (FLAME parameters or a HeadSplat motion) or .csv (ARKit-52 blendshapes, e.g. Live Link Face)"


def load_motion(path, fps: Optional[float] = None, head_joint: str = "neck",
                euler_signs: Sequence[float] = (1.0, 1.0, 1.0)) -> MotionSequence:
    """Read a motion file.

    Args:
        path: a ``.npz`` (FLAME parameters, or our own motion file) or ``.csv`` (ARKit-52).
        fps: the frames' rate, overriding what the file says or the reader estimates.
        head_joint, euler_signs: for CSV head/eye angles (see ``arkit_csv``).
    Returns:
        MotionSequence; its ``warnings`` list what was repaired or ignored.
    Raises:
        MotionError with one sentence naming the file and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise MotionError(f"The motion file {str(path)!r} does not exist.")
    if path.is_dir():
        raise MotionError(f"The motion path {str(path)!r} is a folder; expected a {ACCEPTED} file.")
    if not path.is_file():
        raise MotionError(f"The motion path {str(path)!r} is not a regular file (a device, pipe or socket); "
                          f"expected a {ACCEPTED} file.")
    if fps is not None and not fps > 0:
        raise MotionError(f"fps must be a positive number, not {fps}.")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise MotionError(f"Cannot read the motion file {str(path)!r}: {exc.strerror}.") from None
    ext = path.suffix.lower()
    if head.startswith(b"PK\x03\x04") or (ext == ".npz" and not head):
        from avatar_core.motion.flame_npz import read_npz
        return _checked(read_npz(path, fps=fps), path)
    if ext == ".npz" or head.startswith(b"\x93NUMPY"):
        raise MotionError(f"{str(path)!r} is not an .npz archive; expected a {ACCEPTED} file.")
    if ext in (".csv", ".txt") or _looks_like_text(head):
        from avatar_core.motion.arkit_csv import read_csv
        return _checked(read_csv(path, fps=fps, head_joint=head_joint, euler_signs=euler_signs), path)
    raise MotionError(f"{str(path)!r} is not a motion file HeadSplat reads; expected a {ACCEPTED} file.")


def _checked(seq: MotionSequence, path: Path) -> MotionSequence:
    """The shared bounds (finite, sane magnitudes, frame count) the CLI and Import Motion apply."""
    from avatar_core.validate import check_motion_values
    check_motion_values(seq, repr(str(path)))
    return seq


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    lines = head.decode("utf-8-sig", errors="ignore").splitlines()
    return bool(lines) and "," in lines[0]
