"""Values shared by the core, the actors and the Kafka layer.

All are frozen, slotted dataclasses: picklable across Ray processes, never mutated.
Offsets are Kafka offsets (int64); timestamps are milliseconds since the epoch.
Values that cross a Ray call are decorated with ``@wire``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, TypeVar

T = TypeVar("T")


def wire(cls: type[T]) -> type[T]:
    """Pickle a frozen dataclass as a call of its constructor with its field values.

    The default pickling of a frozen, slotted dataclass goes through
    ``dataclasses._dataclass_setstate``, which calls ``fields()`` for every object
    unpickled: measured ~5x slower than a constructor call (12 ms against 2.3 ms per
    1000 objects here), and the metadata actor's largest hot spot. Fields must all be
    ``init`` fields, in order (no ``kw_only``).
    """
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if len(names) == 1:
        one = attrgetter(names[0])
        values: Callable[[Any], tuple[Any, ...]] = lambda obj: (one(obj),)  # noqa: E731
    else:
        values = attrgetter(*names)

    def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


@wire
@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@wire
@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One producer RecordBatch inside a segment object, proposed for commit by an agent.

    ``record_count`` is the number of offsets the batch spans (``last_offset_delta + 1``).
    ``position``/``length`` locate the RecordBatch v2 bytes inside the segment object.
    """

    topic: str
    partition: int
    position: int
    length: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1


@wire
@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome for one BatchEntry, in request order.

    On success ``error`` is None and ``base_offset`` is the first offset of the batch.
    A retried idempotent batch already committed comes back with its original base
    offset and ``duplicate=True``. On failure ``base_offset`` is -1 and ``error`` is a
    ray_stream error (UnknownTopicOrPartition, OutOfOrderSequence, InvalidProducerEpoch).
    """

    base_offset: int
    error: Exception | None = None
    duplicate: bool = False
    log_start_offset: int = 0


@wire
@dataclass(frozen=True, slots=True)
class BatchRef:
    """Where a committed batch lives and which offsets it holds."""

    segment_key: str
    position: int
    length: int
    base_offset: int
    record_count: int
    max_timestamp: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


@wire
@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    high_watermark: int


@wire
@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str  # 32 hex chars (a UUID), as Kafka's topic ids
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    partition_info: tuple[PartitionInfo, ...] = ()


@wire
@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int
    metadata: str = ""
    leader_epoch: int = -1


@wire
@dataclass(frozen=True, slots=True)
class FetchResult:
    """One partition's answer to an agent fetch.

    ``records`` are RecordBatch v2 bytes with base offsets rewritten (CRC untouched), in
    the buffer the agent assembled them in (a bytearray: no further copy);
    ``error`` is a ray_stream error (UnknownTopicOrPartition, OffsetOutOfRange) or None.
    """

    topic: str
    partition: int
    error: Exception | None
    high_watermark: int
    log_start_offset: int
    records: bytes | bytearray = b""


@wire
@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """An agent as Kafka clients see it."""

    node_id: int
    host: str
    port: int
    rack: str | None = None
