"""What a chaos run did and saw: the history the checker judges.

Every client operation is recorded as a frozen value with times in seconds since the run
began (the driver's monotonic clock). Outcomes follow Jepsen: ``ok`` (the system said it
happened, e.g. a send acknowledged with its offset), ``fail`` (it definitely did not
happen) and ``info`` (unknown: a timeout, a dead actor, a lost response).

Invariants: the recorder only appends; events of one ``process`` are recorded by one
thread in the order that thread issued them (a process is one client incarnation, as in
Jepsen; a crashed and recreated client is a new process). Values sent are unique across
the whole run, so a value identifies its send.

``History.to_dict`` / ``History.from_dict`` round-trip through JSON, so a failing run's
history can be saved and re-checked offline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FAIL",
    "INFO",
    "OK",
    "Assign",
    "Commit",
    "CommittedRead",
    "FaultEvent",
    "FinalRead",
    "History",
    "Poll",
    "Send",
    "StoreAudit",
]

OK = "ok"
FAIL = "fail"
INFO = "info"


@dataclass(frozen=True, slots=True)
class Send:
    """One record sent. ``partition``/``offset`` are the acknowledged place (``ok`` only)."""

    process: str
    value: str
    outcome: str
    invoke_s: float
    complete_s: float | None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Poll:
    """One successful poll. ``reader`` is whose consumption it counts for: ``assign`` or
    ``group:<id>``. ``records`` are ``(partition, offset, value)`` in the order returned."""

    process: str
    reader: str
    records: tuple[tuple[int, int, str], ...]
    invoke_s: float
    complete_s: float


@dataclass(frozen=True, slots=True)
class Assign:
    """A consumer process took these partitions afresh: poll continuity restarts here."""

    process: str
    partitions: tuple[int, ...]
    at_s: float


@dataclass(frozen=True, slots=True)
class Commit:
    """A group offset commit: ``offsets`` are ``(partition, next offset to read)``."""

    process: str
    group: str
    offsets: tuple[tuple[int, int], ...]
    outcome: str
    invoke_s: float
    complete_s: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CommittedRead:
    """Committed offsets read back for ``group`` (partitions with no commit left out)."""

    process: str
    group: str
    partitions: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    invoke_s: float
    complete_s: float


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One nemesis action: did it happen (``fired``) and did the system come back."""

    kind: str
    start_s: float
    end_s: float
    fired: bool
    recovered: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FinalRead:
    """The whole log after healing: ``records[partition]`` = ``((offset, value), ...)``.

    ``unreadable`` lists ``(partition, start, end, error)`` ranges the metadata claims
    but no read could return.
    """

    records: dict[int, tuple[tuple[int, str], ...]]
    high_watermarks: dict[int, int]
    unreadable: tuple[tuple[int, int, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StoreAudit:
    """Metadata references compared with the object store's listing.

    ``missing`` holds ``(segment_key, partition, base_offset)`` for every committed batch
    whose object is absent or shorter than the batch's byte range; ``orphans`` counts
    objects nothing references (allowed: a PUT whose commit never happened).
    """

    checked: bool
    referenced_objects: int = 0
    referenced_batches: int = 0
    missing: tuple[tuple[str, int, int], ...] = ()
    orphans: int = 0
    note: str = ""


_KINDS: dict[str, type[Any]] = {
    "sends": Send,
    "polls": Poll,
    "assigns": Assign,
    "commits": Commit,
    "committed_reads": CommittedRead,
    "faults": FaultEvent,
}


class History:
    """Thread-safe, append-only record of a run (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self.sends: list[Send] = []
        self.polls: list[Poll] = []
        self.assigns: list[Assign] = []
        self.commits: list[Commit] = []
        self.committed_reads: list[CommittedRead] = []
        self.faults: list[FaultEvent] = []

    def now(self) -> float:
        """Seconds since the history began."""
        return self._clock() - self._t0

    def add(self, event: Any) -> None:
        for name, kind in _KINDS.items():
            if isinstance(event, kind):
                with self._lock:
                    getattr(self, name).append(event)
                return
        raise TypeError(f"not a history event: {type(event).__name__}")

    def extend(self, events: Iterable[Any]) -> None:
        for event in events:
            self.add(event)

    def snapshot(self, name: str) -> list[Any]:
        """A copy of one event list, safe to iterate while clients keep recording."""
        with self._lock:
            return list(getattr(self, name))

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {name: [asdict(e) for e in getattr(self, name)] for name in _KINDS}

    @classmethod
    def from_dict(cls, data: dict[str, list[dict[str, Any]]]) -> History:
        history = cls()
        for name, kind in _KINDS.items():
            for raw in data.get(name, []):
                history.add(kind(**_untuple(kind, raw)))
        return history


def _untuple(kind: type[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; turn them back for the tuple-typed fields."""
    out = dict(raw)
    for name in ("records", "offsets"):
        if name in out and out[name] is not None:
            out[name] = tuple(tuple(item) for item in out[name])
    if "partitions" in out and kind is not FinalRead:
        out["partitions"] = tuple(out["partitions"])
    return out
