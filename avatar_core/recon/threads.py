"""CPU thread count for the optimisation loops, robust to a busy machine.

On an idle 2-core machine two torch threads run the rasterizer 1.2-2x faster than one. On a
busy one they are a disaster: every parallel region waits for a thread the scheduler has not
run, and a step measured 15x slower with two threads than with one while other jobs ran.
``ThreadGovernor`` starts a loop with all cores only when other processes leave them idle
(sampled from /proc/stat just before the loop), and drops to one thread as soon as a step
shows that the extra threads are not running (process CPU time barely above wall time).
"""

from __future__ import annotations

import logging
import os
import time

import torch

log = logging.getLogger(__name__)

# CPU seconds per wall second below which a multi-threaded step counts as starved
MIN_PARALLEL_RATIO = 1.15


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields), idle


def free_cores(window: float = 0.2) -> float:
    """How many cores other processes leave idle right now (sampled over ``window`` seconds
    while this process sleeps); falls back to cores minus the 1-minute load average."""
    cores = os.cpu_count() or 1
    try:
        t0, i0 = _cpu_times()
        time.sleep(window)
        t1, i1 = _cpu_times()
        if t1 > t0:
            return cores * (i1 - i0) / (t1 - t0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return cores - os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover
        return float(cores)


class ThreadGovernor:
    """Sets ``torch.set_num_threads`` for one optimisation loop at a time.

    Usage: ``gov.begin()`` before a loop, ``gov.tick()`` after each iteration. ``max_threads``
    0 means all cores. A governor for a CUDA run does nothing.
    """

    def __init__(self, max_threads: int = 0, enabled: bool = True):
        self.cores = os.cpu_count() or 1
        self.max_threads = max(1, min(max_threads or self.cores, self.cores))
        self.enabled = enabled and self.max_threads > 1
        self.threads = torch.get_num_threads()
        self._mark = None

    def _set(self, n: int) -> None:
        if n != self.threads:
            torch.set_num_threads(n)
            log.debug("torch threads: %d -> %d", self.threads, n)
            self.threads = n

    def begin(self) -> None:
        if not self.enabled:
            return
        free = free_cores()
        self._set(self.max_threads if free >= self.max_threads - 0.5 else 1)
        self._mark = (time.perf_counter(), time.process_time())

    def tick(self) -> None:
        if not self.enabled or self._mark is None:
            return
        wall, cpu = time.perf_counter(), time.process_time()
        dw, dc = wall - self._mark[0], cpu - self._mark[1]
        self._mark = (wall, cpu)
        if self.threads > 1 and dw > 0.05 and dc / dw < MIN_PARALLEL_RATIO:
            log.debug("threads starved (%.2f CPU s per s); using one", dc / dw)
            self._set(1)
