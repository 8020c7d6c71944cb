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

**Broken-store modes (tests of the checker only).** ``drop_acked`` makes the next N puts
report success *without writing anything*: a store that loses acknowledged data. No real
store may behave so; it exists so the correctness harness (``ray_stream.testing``) can
prove it notices lost data. Nothing in the product enables it.

``configure(spec)`` sets all of the above from one plain dict, so a Ray actor can forward
a spec it received (``inject_faults``); ``counts_dict()`` is the matching plain report.
A ``key_prefix`` in the spec limits every fault to keys starting with it (e.g. only
``segments/`` objects, leaving metadata journal writes alone).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ray_stream.errors import InvalidConfig, StorageUnavailable
from ray_stream.storage.base import ObjectStore

__all__ = ["SPEC_KEYS", "FaultCounts", "FaultyStore"]

_KINDS = ("put_before", "put_after", "read", "dropped")

# configure() keys -> what they set. Counts (ints) add to the pending faults; rates are
# probabilities in [0, 1]; the rest are plain values.
_COUNT_KEYS = {
    "put_fail_before": "put_before",
    "put_fail_after": "put_after",
    "read_fail": "read",
    "drop_acked": "dropped",
}
_RATE_KEYS = {
    "put_rate_before": "put_before",
    "put_rate_after": "put_after",
    "read_rate": "read",
    "drop_rate": "dropped",
}
SPEC_KEYS = frozenset({*_COUNT_KEYS, *_RATE_KEYS, "latency_s", "jitter_s", "key_prefix", "reset"})


@dataclass(frozen=True, slots=True)
class FaultCounts:
    """How many faults of each kind have fired so far (``delayed``: calls slowed down)."""

    put_before: int = 0
    put_after: int = 0
    read: int = 0
    dropped: int = 0
    delayed: int = 0


class FaultyStore:
    """Wraps ``inner``; with no faults configured it behaves exactly like ``inner``."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        rng: random.Random,
        sleep: Callable[[float], None] = time.sleep,
        url: str | None = None,
    ) -> None:
        self.inner = inner
        self.url = url if url is not None else inner.url
        self._rng = rng
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(_KINDS, 0)
        self._rates = dict.fromkeys(_KINDS, 0.0)
        self._fired = dict.fromkeys((*_KINDS, "delayed"), 0)
        self._calls = {"puts": 0, "reads": 0}
        self._latency_s = 0.0
        self._jitter_s = 0.0
        self._key_prefix = ""

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
            self._rates.update(put_before=put_before, put_after=put_after, read=read)

    def set_latency(self, latency_s: float, *, jitter_s: float = 0.0) -> None:
        """Delay every call by ``latency_s`` plus uniform ``[0, jitter_s)``."""
        with self._lock:
            self._latency_s, self._jitter_s = latency_s, jitter_s

    def configure(self, spec: Mapping[str, Any]) -> None:
        """Apply a fault spec (a plain dict, as sent to an actor's ``inject_faults``).

        Keys: ``put_fail_before``, ``put_fail_after``, ``read_fail``, ``drop_acked``
        (how many of the next calls fail; added to what is pending; ``drop_acked=True``
        means 1), ``put_rate_before``, ``put_rate_after``, ``read_rate``, ``drop_rate``
        (probabilities), ``latency_s``, ``jitter_s``, ``key_prefix`` (faults only hit
        keys starting with it) and ``reset`` (clear every pending fault, rate and
        latency first; counts are kept). Unset keys keep their current value.

        Raises:
            InvalidConfig: an unknown key or a value out of range (the message names it).
        """
        clean = _validate(spec)
        with self._lock:
            if clean.get("reset"):
                self._pending = dict.fromkeys(_KINDS, 0)
                self._rates = dict.fromkeys(_KINDS, 0.0)
                self._latency_s = self._jitter_s = 0.0
                self._key_prefix = ""
            for key, kind in _COUNT_KEYS.items():
                if key in clean:
                    self._pending[kind] += int(clean[key])
            for key, kind in _RATE_KEYS.items():
                if key in clean:
                    self._rates[kind] = float(clean[key])
            if "latency_s" in clean:
                self._latency_s = float(clean["latency_s"])
            if "jitter_s" in clean:
                self._jitter_s = float(clean["jitter_s"])
            if "key_prefix" in clean:
                self._key_prefix = str(clean["key_prefix"])

    def counts(self) -> FaultCounts:
        with self._lock:
            return FaultCounts(**self._fired)

    def counts_dict(self) -> dict[str, int]:
        """Fired faults by kind plus total ``puts``/``reads`` seen (JSON-able)."""
        with self._lock:
            return {**asdict(FaultCounts(**self._fired)), **self._calls}

    # -- fault decisions -----------------------------------------------------------------

    def _fires(self, kind: str, key: str) -> bool:
        with self._lock:
            if not key.startswith(self._key_prefix):
                return False
            if self._pending[kind] > 0:
                self._pending[kind] -= 1
            elif not (self._rates[kind] > 0 and self._rng.random() < self._rates[kind]):
                return False
            self._fired[kind] += 1
            return True

    def _delay(self, key: str) -> None:
        with self._lock:
            if not key.startswith(self._key_prefix):
                return
            delay = self._latency_s + (self._rng.random() * self._jitter_s if self._jitter_s else 0)
            if delay > 0:
                self._fired["delayed"] += 1
        if delay > 0:
            self._sleep(delay)

    def _read(self, what: str, key: str) -> None:
        with self._lock:
            self._calls["reads"] += 1
        self._delay(key)
        if self._fires("read", key):
            raise StorageUnavailable(f"injected fault: {what} failed")

    # -- ObjectStore ---------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        with self._lock:
            self._calls["puts"] += 1
        self._delay(key)
        if self._fires("put_before", key):
            raise StorageUnavailable(f"injected fault: put {key!r} failed before writing")
        if self._fires("dropped", key):
            return  # broken-store mode: claim success, keep nothing
        self.inner.put(key, data, if_none_match=if_none_match)
        if self._fires("put_after", key):
            raise StorageUnavailable(
                f"injected fault: put {key!r} was written but the response was lost"
            )

    def get(self, key: str) -> bytes:
        self._read(f"get {key!r}", key)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._read(f"get_range {key!r}", key)
        return self.inner.get_range(key, start, length)

    def size(self, key: str) -> int:
        self._read(f"size {key!r}", key)
        return self.inner.size(key)

    def list(self, prefix: str = "") -> list[str]:
        self._read(f"list {prefix!r}", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._delay(key)
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def _validate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a fault spec's keys and ranges; returns it as a plain dict.

    Raises:
        InvalidConfig: naming the offending key.
    """
    if not isinstance(spec, Mapping):
        raise InvalidConfig(f"fault spec must be a dict, got {type(spec).__name__}")
    clean = dict(spec)
    for key, value in clean.items():
        if key not in SPEC_KEYS:
            raise InvalidConfig(f"fault spec key {key!r} is unknown; known: {sorted(SPEC_KEYS)}")
        if key in _COUNT_KEYS:
            if isinstance(value, bool):
                clean[key] = int(value)
            elif not isinstance(value, int) or value < 0:
                raise InvalidConfig(f"fault spec {key!r} must be a count >= 0, got {value!r}")
        elif key in _RATE_KEYS:
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise InvalidConfig(
                    f"fault spec {key!r} must be a probability in [0, 1], got {value!r}"
                )
        elif key in ("latency_s", "jitter_s"):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise InvalidConfig(f"fault spec {key!r} must be seconds >= 0, got {value!r}")
        elif key == "key_prefix" and not isinstance(value, str):
            raise InvalidConfig(f"fault spec 'key_prefix' must be a str, got {value!r}")
    return clean
