"""Progress reporting and cancellation shared by every long function."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from avatar_core.errors import Cancelled

ProgressFn = Callable[[float, str], None]


class Progress:
    """Maps a sub-task's [0, 1] progress into a parent's range and checks for cancel.

    Args:
        callback: ``progress(fraction, message)`` or None.
        cancel: a ``threading.Event``; when set, ``check()`` raises ``Cancelled``.
        start, end: the range of the parent's fraction this object reports into.
    """

    def __init__(self, callback: Optional[ProgressFn] = None,
                 cancel: Optional[threading.Event] = None,
                 start: float = 0.0, end: float = 1.0):
        self.callback = callback
        self.cancel = cancel
        self.start = start
        self.end = end

    def __call__(self, fraction: float, message: str = "") -> None:
        self.check()
        if self.callback is not None:
            f = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
            self.callback(f, message)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("The operation was cancelled.")

    def sub(self, a: float, b: float) -> "Progress":
        """A child reporting into [a, b] of this object's range."""
        span = self.end - self.start
        return Progress(self.callback, self.cancel, self.start + span * a, self.start + span * b)


def as_progress(progress=None, cancel=None) -> Progress:
    if isinstance(progress, Progress):
        return progress
    return Progress(progress, cancel)
