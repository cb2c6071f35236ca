"""Atomic file writes and the output guards every command shares.

* ``atomic_path`` / ``atomic_paths``: write to temporary files beside the targets, fsync,
  then rename; a failure or Ctrl-C leaves the previous outputs as they were.
* ``check_output``: refuse an output that is one of the command's inputs, or cannot be written.
* ``clean_stale``: our own ``.NAME.XXXXXXXX.tmp`` leftovers (kill -9 mid-write) are removed on
  the next write of NAME.
* ``check_free_space`` and ``os_error_sentence``: disk full, read-only folders and permission
  problems become one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from avatar_core.errors import AvatarError

PathLike = Union[str, os.PathLike]
STALE_SECONDS = 120.0          # a temporary file untouched this long is a leftover, not a writer at work
_ENV_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.EIO: "an input/output error occurred",
               errno.EFBIG: "the file is too large for the file system",
               errno.ENAMETOOLONG: "the name is too long", errno.EISDIR: "a folder has that name",
               errno.ENOTDIR: "a part of the path is not a folder", errno.ENOENT: "the folder does not exist"}


_LIVE: set = set()             # temporaries being written now (removed by the CLI's Ctrl-C handler)


def remove_live_temporaries() -> None:
    """Remove the temporaries of writes in progress (for a process about to end at once)."""
    _remove(list(_LIVE))


class OutputError(AvatarError):
    """An output cannot be written (disk full, read-only, permission, it is an input)."""


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def os_error_sentence(exc: OSError, path: PathLike, what: str = "output file") -> str:
    reason = _ENV_ERRNOS.get(getattr(exc, "errno", None)) or (exc.strerror or str(exc)).rstrip(".").lower()
    return f"Cannot write the {what} {str(path)!r}: {reason}."


def temp_name(path: Path, suffix: str = "") -> Tuple[str, str]:
    """(prefix, suffix) for mkstemp/mkdtemp of a temporary file beside ``path`` (``.NAME.XXXXXXXX.tmp``)."""
    return f".{path.name}.", ".tmp" + suffix


def clean_stale(path: PathLike, older_than: float = STALE_SECONDS) -> List[Path]:
    """Remove our own leftover temporaries of ``path`` (files or folders named ``.NAME.XXXXXXXX.tmp[.ext]``)
    not modified for ``older_than`` seconds; returns what was removed. Never raises."""
    path = Path(path)
    folder = _folder(path)
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]{1,12})?$")
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not pattern.match(e.name):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def check_free_space(folder: PathLike, nbytes: int, what: str = "output file", path: Optional[PathLike] = None,
                     margin: int = 64 << 10) -> None:
    """Refuse now, with a sentence, when ``folder`` has less than ``nbytes`` (+ margin) free."""
    folder = Path(folder)
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if free < nbytes + margin:
        raise OutputError(f"Cannot write the {what} {str(path or folder)!r}: it needs about "
                          f"{_size(nbytes)} but only {_size(free)} is free on that disk.")


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _default_mode(path, mode: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _check_folder(path: Path, what: str) -> Path:
    folder = _folder(path)
    if not folder.is_dir():
        raise OutputError(f"Cannot write the {what} {str(path)!r}: the folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"Cannot write the {what} {str(path)!r}: the folder is not writable.")
    if path.is_dir():
        raise OutputError(f"Cannot write the {what} {str(path)!r}: a folder has that name.")
    return folder


def _is_env_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in _ENV_ERRNOS


@contextlib.contextmanager
def atomic_paths(targets: Sequence[Tuple[PathLike, str]], size_hint: int = 0) -> Iterator[List[Path]]:
    """Temporary paths beside each ``(path, what)`` target; on success all replace their targets
    together (after every one was written and synced). On any exception, KeyboardInterrupt
    included, the temporaries are removed and every target is left as it was. Disk-full and
    permission errors while writing become one OutputError sentence."""
    items = [(Path(p), what) for p, what in targets]
    for p, what in items:
        _check_folder(p, what)
    for p, _ in items:
        clean_stale(p)
    if size_hint:
        check_free_space(_folder(items[0][0]), size_hint, items[0][1], items[0][0])
    tmps: List[Path] = []
    current = items[0]
    try:
        for p, what in items:
            current = (p, what)
            prefix, suffix = temp_name(p, p.suffix)
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=_folder(p))
            os.close(fd)
            tmps.append(Path(tmp))
            _LIVE.add(Path(tmp))
        yield list(tmps)
        for (p, what), tmp in zip(items, tmps):
            current = (p, what)
            if not tmp.is_file():
                raise OutputError(f"Writing the {what} {str(p)!r} failed: nothing was written.")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _default_mode(tmp, 0o666)  # mkstemp makes 0600; give the file the usual permissions
        for (p, what), tmp in zip(items, tmps):
            current = (p, what)
            os.replace(tmp, p)
    except OSError as exc:
        _remove(tmps)
        if _is_env_error(exc):
            raise OutputError(os_error_sentence(exc, current[0], current[1])) from None
        raise
    except BaseException:
        _remove(tmps)
        raise
    finally:
        _LIVE.difference_update(tmps)


def _remove(paths: Iterable[Path]) -> None:
    for t in paths:
        with contextlib.suppress(OSError):
            if t.is_dir():
                shutil.rmtree(t)
            else:
                os.unlink(t)


@contextlib.contextmanager
def atomic_path(path: PathLike, what: str = "output file", size_hint: int = 0) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; on success it replaces ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left untouched, so no partial file is ever visible.
    """
    with atomic_paths([(path, what)], size_hint=size_hint) as tmps:
        yield tmps[0]


@contextlib.contextmanager
def atomic_folder(out: PathLike, replace_glob: Sequence[str] = ("frame_*",), what: str = "output folder"
                  ) -> Iterator[Path]:
    """A temporary folder beside ``out``; on success it becomes ``out`` (when absent) or its files
    replace those of ``out`` matching ``replace_glob``. On failure ``out`` is left as it was."""
    out = Path(out)
    parent = _folder(out)
    clean_stale(out)
    prefix, suffix = temp_name(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    except OSError as exc:
        raise OutputError(os_error_sentence(exc, out, what)) from None
    _default_mode(tmp, 0o777)
    _LIVE.add(tmp)
    try:
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        for pat in replace_glob:
            for old in out.glob(pat):
                if old.is_file():
                    old.unlink()
        for new in sorted(tmp.iterdir()):
            os.replace(new, out / new.name)
        tmp.rmdir()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_env_error(exc):
            raise OutputError(os_error_sentence(exc, out, what)) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _LIVE.discard(tmp)


def same_file(a: PathLike, b: PathLike) -> bool:
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output(out: PathLike, inputs: Sequence[Optional[PathLike]] = (), what: str = "output file",
                 folder: bool = False, suffix: Optional[str] = None) -> Path:
    """The guard every command runs before its work: ``out`` is none of ``inputs`` (any file the
    command reads), its folder exists and is writable, it is a file (or, with ``folder``, a
    folder) as expected, and its name ends in ``suffix`` when one is required. Returns ``out``
    as a Path."""
    out = Path(out)
    if suffix is not None and out.suffix != suffix:
        raise OutputError(f"Cannot write the {what} {str(out)!r}: the name must end in {suffix}.")
    for inp in inputs:
        if inp is None or str(inp) in ("", "open"):
            continue
        if same_file(out, inp):
            raise OutputError(f"The output {str(out)!r} is the input {str(inp)!r}; choose another name "
                              "(the input would be overwritten).")
    parent = _folder(out)
    if not parent.is_dir():
        raise OutputError(f"Cannot write the {what} {str(out)!r}: the folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"Cannot write the {what} {str(out)!r}: the folder {str(parent)!r} is not writable.")
    if folder and out.exists() and not out.is_dir():
        raise OutputError(f"Cannot write the {what} {str(out)!r}: it is a file, not a folder.")
    if not folder and out.is_dir():
        raise OutputError(f"Cannot write the {what} {str(out)!r}: a folder has that name.")
    if folder and out.is_dir() and not os.access(out, os.W_OK):
        raise OutputError(f"Cannot write the {what} {str(out)!r}: the folder is not writable.")
    if not folder and out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"Cannot write the {what} {str(out)!r}: permission denied.")
    return out


def check_writable(path: PathLike, what: str = "output file") -> None:
    """Fail early, before hours of work, if ``path`` cannot be written."""
    path = Path(path)
    folder = _folder(path)
    if not folder.is_dir():
        raise OutputError(f"Cannot write the {what} {str(path)!r}: the folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"Cannot write the {what} {str(path)!r}: permission denied.")
    if path.is_dir():
        raise OutputError(f"Cannot write the {what} {str(path)!r}: a folder has that name.")
