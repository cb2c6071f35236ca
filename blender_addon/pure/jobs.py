"""Running long work off Blender's UI thread (no bpy here).

A ``Job`` runs ``fn(progress=..., cancel=...)`` in a daemon thread. The modal operator that
owns it polls ``job.poll()`` from its timer (on the main thread) to read the latest progress,
calls ``job.cancel()`` on Esc, and touches bpy only after ``job.done``. avatar_core's long
functions check the cancel event and raise ``Cancelled``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, Tuple


class Job:
    def __init__(self, fn: Callable[..., Any], *args, name: str = "HeadSplat job", **kwargs):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._progress: Tuple[float, str] = (0.0, "starting")
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.started_at = 0.0
        self.finished_at = 0.0

    # ---------------------------------------------------------------- worker side
    def _report(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self._progress = (float(min(max(fraction, 0.0), 1.0)), str(message))

    def _run(self) -> None:
        try:
            self.result = self._fn(*self._args, progress=self._report, cancel=self.cancel_event, **self._kwargs)
        except BaseException as exc:  # reported on the main thread
            self.error = exc
        finally:
            self.finished_at = time.perf_counter()

    # ---------------------------------------------------------------- main-thread side
    def start(self) -> "Job":
        self.started_at = time.perf_counter()
        self._thread.start()
        return self

    def poll(self) -> Tuple[float, str]:
        with self._lock:
            return self._progress

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        self._thread.join(timeout)
        return self.done

    @property
    def cancelled(self) -> bool:
        from avatar_core.errors import Cancelled
        return isinstance(self.error, Cancelled) or (self.cancel_event.is_set() and self.error is not None)

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.started_at
