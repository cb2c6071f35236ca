"""Video and frame-folder outputs, published only when complete and verified.

``frame_writer(out, fps, width, height)`` yields ``write(i, rgb)``. A video (``.mp4``, ``.avi``,
``.mov``, ``.m4v``) is written to ``.NAME.XXXXXXXX.tmp.mp4`` beside ``out``, reopened and its
frame count checked, then renamed over ``out``; a folder of ``frame_00000.png``... is written
to a temporary folder and moved into place (existing ``frame_*.png`` replaced). A failure,
a full disk or Ctrl-C leaves the previous output as it was and no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from avatar_core.atomic import (_LIVE, OutputError, _default_mode, _folder, atomic_folder, check_free_space,
                                   check_output, clean_stale, os_error_sentence, temp_name)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v")


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


def video_frame_count(path) -> int:
    """Frames in a video file as decoded by OpenCV (-1 when it cannot be opened)."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


@contextlib.contextmanager
def frame_writer(out, fps: float, width: int, height: int, what: str = "video",
                 total: int = 0) -> Iterator[Callable[[int, np.ndarray], None]]:
    """Yields ``write(i, rgb [H, W, 3] uint8)``; publishes ``out`` only on success (see module doc).
    ``total``: the frame count, when known; a frame folder then checks, after its first frame,
    that the disk has room for all of them."""
    out = Path(out)
    if is_video(out):
        with _video(out, fps, width, height, what) as write:
            yield write
        return
    check_output(out, what="frame folder", folder=True)
    import cv2
    with atomic_folder(out, replace_glob=("frame_*.png",), what="frame folder") as tmpdir:
        def write(i, rgb):
            path = tmpdir / f"frame_{i:05d}.png"
            ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OutputError(f"Cannot encode the frame {str(out / path.name)!r}.")
            try:
                path.write_bytes(buf.tobytes())
            except OSError as exc:
                raise OutputError(os_error_sentence(exc, out / path.name, "frame")) from None
            if i == 0 and total > 1:  # the size is known now: fail before the long work
                check_free_space(tmpdir, int(len(buf) * 1.5) * (total - 1), "frame folder", out)
        yield write


@contextlib.contextmanager
def _video(out: Path, fps: float, width: int, height: int, what: str):
    import cv2
    check_output(out, what=what)
    parent = _folder(out)
    clean_stale(out)
    prefix, suffix = temp_name(out, out.suffix)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
    except OSError as exc:
        raise OutputError(os_error_sentence(exc, out, what)) from None
    os.close(fd)
    _LIVE.add(Path(tmp))
    _default_mode(tmp, 0o666)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    count = 0

    def write(i, rgb):
        nonlocal count
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        count += 1

    try:
        if not writer.isOpened():
            free = _free_bytes(parent)
            reason = (f"the disk is full ({free // 1024} KB free)" if 0 <= free < 1 << 20 else
                      "OpenCV could not open an mp4v writer")
            raise OutputError(f"Cannot write the {what} {str(out)!r}: {reason}.")
        yield write
        writer.release()
        if count == 0:
            raise OutputError(f"Nothing to write to the {what} {str(out)!r}: no frames.")
        got = video_frame_count(tmp)
        if got != count:
            free = _free_bytes(parent)
            reason = (f"the disk is full ({free // 1024} KB free)" if 0 <= free < 1 << 20 else
                      f"the file reads back with {max(got, 0)} of {count} frames")
            raise OutputError(f"Writing the {what} {str(out)!r} failed: {reason}; the previous file was kept.")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        writer.release()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(os_error_sentence(exc, out, what)) from None
    except BaseException:
        writer.release()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        _LIVE.discard(Path(tmp))
