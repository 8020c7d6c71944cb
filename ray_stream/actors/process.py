"""Tuning of the processes ray_stream's actors own (garbage collector, niceness).

An agent or metadata actor is the only tenant of its worker process and keeps a large,
long-lived heap (kio's schemas, pyarrow, Ray, the metadata state). CPython's full
collections scan every tracked object: measured here, 183k objects after start cost
100-190 ms per full collection, which showed as produce-latency outliers (p99 358 ms at
linger 250). ``settle_heap`` moves what exists after start-up into the permanent
generation (``gc.freeze``), so later full collections scan only what came after, and
collects young objects less often.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any

from ray_stream.core.percentile import percentile

__all__ = ["YOUNG_GC_THRESHOLD", "PauseMonitor", "settle_heap"]

# Objects allocated between young collections (CPython's default is 700): request
# objects die young, so fewer, larger young collections cost less in total.
YOUNG_GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect once, freeze what survived, raise the young-collection threshold.

    Call when the process's long-lived state is built (after start-up or recovery).
    Objects frozen are never collected again, so call it once, not per request.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


class PauseMonitor:
    """Where produce-latency tails come from, besides the write stages: how late the
    event loop wakes up (``loop_lag_ms``: a 10 ms timer's overshoot, which any stall of
    the loop shows as) and how long garbage collections take (``gc_pause_ms``, per
    generation), over the latest samples. Started once per process."""

    TICK_S = 0.01
    WINDOW = 4096
    STALL_MS = 50.0  # lags this long are kept with their wall time, to line up with logs

    def __init__(self) -> None:
        self.loop_lag_ms: deque[tuple[float, float]] = deque(maxlen=self.WINDOW)
        self.gc_pause_ms: dict[int, deque[tuple[float, float]]] = {
            gen: deque(maxlen=self.WINDOW) for gen in range(3)
        }
        self.stalls: deque[tuple[float, float]] = deque(maxlen=64)  # (wall time, lag ms)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            gc.callbacks.append(self._on_gc)
            self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    def report(self, window_s: float | None = None) -> dict[str, Any]:
        since = -1.0 if window_s is None else time.monotonic() - window_s
        return {
            "loop_lag_ms": _summary(self.loop_lag_ms, since),
            "gc_pause_ms": {f"gen{g}": _summary(v, since) for g, v in self.gc_pause_ms.items()},
            "loop_stalls": [(at, round(ms, 1)) for at, ms in self.stalls],
        }

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_started = now
        else:
            self.gc_pause_ms[info["generation"]].append((now, (now - self._gc_started) * 1000))

    async def _watch_loop(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            late = max(time.monotonic() - before - self.TICK_S, 0.0) * 1000
            self.loop_lag_ms.append((time.monotonic(), late))
            if late >= self.STALL_MS:
                self.stalls.append((time.time(), late))


def _summary(samples: deque[tuple[float, float]], since: float) -> dict[str, float | int | None]:
    values = [v for at, v in samples if at >= since]
    return {"count": len(values), "p99": percentile(values, 99), "max": max(values, default=None)}
