"""Atomic file writes: write to a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from avatar_core.errors import AvatarError


@contextlib.contextmanager
def atomic_path(path, what: str = "output file"):
    """Yields a temporary path in the target's folder; on success it replaces ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left untouched, so no partial file is ever visible.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AvatarError(f"Cannot write the {what} {str(path)!r}: the folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK):
        raise AvatarError(f"Cannot write the {what} {str(path)!r}: the folder is not writable.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path, what: str = "output file") -> None:
    """Fail early, before hours of work, if ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AvatarError(f"Cannot write the {what} {str(path)!r}: the folder {str(folder)!r} does not exist.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise AvatarError(f"Cannot write the {what} {str(path)!r}: permission denied.")
