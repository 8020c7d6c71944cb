"""``FaultyStore``: an ``ObjectStore`` wrapper that injects the failures real stores have.

Faults (all raise ``StorageUnavailable``, as a real store's 5xx or timeout would):

* **put fails before writing** — the object is not written.
* **put fails after writing** — the object *is* written but the caller sees an error: the
  lost-response case every writer must survive (SlateDB's
  ``put_succeeds_but_returns_already_exists``). A create-only put that loses its
  precondition is not a success, so it raises ``PreconditionFailed`` and consumes no fault.
* **read fails** — ``get``/``get_range``/``size``/``list`` raise without answering.
* **latency** — every call sleeps ``latency_s`` plus up to ``jitter_s`` first.

Faults fire either for the next N calls (deterministic: ``fail_next_puts``) or with a
probability drawn from the injected ``rng`` (reproducible with a seed). ``counts()``
reports how many of each fired. Deletes and ``close`` pass straight through.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray_stream.errors import StorageUnavailable
from ray_stream.storage.base import ObjectStore

__all__ = ["FaultCounts", "FaultyStore"]


@dataclass(frozen=True, slots=True)
class FaultCounts:
    """How many faults of each kind have fired so far."""

    put_before: int = 0
    put_after: int = 0
    read: int = 0


class FaultyStore:
    """Wraps ``inner``; with no faults configured it behaves exactly like ``inner``."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self._rng = rng
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pending = {"put_before": 0, "put_after": 0, "read": 0}
        self._rates = {"put_before": 0.0, "put_after": 0.0, "read": 0.0}
        self._fired = {"put_before": 0, "put_after": 0, "read": 0}
        self._latency_s = 0.0
        self._jitter_s = 0.0

    # -- configuration -------------------------------------------------------------------

    def fail_next_puts(self, n: int, *, after_write: bool = False) -> None:
        """Make the next ``n`` puts fail, before writing or (``after_write``) after it."""
        with self._lock:
            self._pending["put_after" if after_write else "put_before"] += n

    def fail_next_reads(self, n: int) -> None:
        """Make the next ``n`` reads (get, get_range, size, list) fail."""
        with self._lock:
            self._pending["read"] += n

    def set_failure_rates(
        self, *, put_before: float = 0.0, put_after: float = 0.0, read: float = 0.0
    ) -> None:
        """Fail each call of a kind with the given probability (drawn from ``rng``)."""
        with self._lock:
            self._rates = {"put_before": put_before, "put_after": put_after, "read": read}

    def set_latency(self, latency_s: float, *, jitter_s: float = 0.0) -> None:
        """Delay every call by ``latency_s`` plus uniform ``[0, jitter_s)``."""
        with self._lock:
            self._latency_s, self._jitter_s = latency_s, jitter_s

    def counts(self) -> FaultCounts:
        with self._lock:
            return FaultCounts(**self._fired)

    # -- fault decisions -----------------------------------------------------------------

    def _fires(self, kind: str) -> bool:
        with self._lock:
            if self._pending[kind] > 0:
                self._pending[kind] -= 1
            elif not (self._rates[kind] > 0 and self._rng.random() < self._rates[kind]):
                return False
            self._fired[kind] += 1
            return True

    def _delay(self) -> None:
        with self._lock:
            delay = self._latency_s + (self._rng.random() * self._jitter_s if self._jitter_s else 0)
        if delay > 0:
            self._sleep(delay)

    def _read(self, what: str) -> None:
        self._delay()
        if self._fires("read"):
            raise StorageUnavailable(f"injected fault: {what} failed")

    # -- ObjectStore ---------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        self._delay()
        if self._fires("put_before"):
            raise StorageUnavailable(f"injected fault: put {key!r} failed before writing")
        self.inner.put(key, data, if_none_match=if_none_match)
        if self._fires("put_after"):
            raise StorageUnavailable(
                f"injected fault: put {key!r} was written but the response was lost"
            )

    def get(self, key: str) -> bytes:
        self._read(f"get {key!r}")
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._read(f"get_range {key!r}")
        return self.inner.get_range(key, start, length)

    def size(self, key: str) -> int:
        self._read(f"size {key!r}")
        return self.inner.size(key)

    def list(self, prefix: str = "") -> list[str]:
        self._read(f"list {prefix!r}")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._delay()
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
