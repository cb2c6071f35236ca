"""The commands' progress bar: ``progress(fraction, message)`` as one updating line on stderr."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """``progress(fraction, message)`` drawn as one updating line on stderr."""

    def __init__(self, label: str = "", width: int = 30, stream=None):
        self.label = label
        self.width = width
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._last = -1.0

    def __call__(self, fraction: float, message: str = "") -> None:
        now = time.perf_counter()
        if fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        n = int(round(self.width * fraction))
        bar = "#" * n + "-" * (self.width - n)
        line = f"\r{self.label} [{bar}] {100 * fraction:5.1f}% {now - self.t0:6.1f}s {message[:40]:<40}"
        self.stream.write(line)
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

