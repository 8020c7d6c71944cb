"""Values shared by the core, the actors and the Kafka layer.

All are frozen, slotted dataclasses: picklable across Ray processes, never mutated.
Offsets are Kafka offsets (int64); timestamps are milliseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    topic: str
    partition: int


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


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """All batches of one segment object (one agent flush), committed in one step."""

    segment_key: str
    segment_bytes: int
    batches: tuple[BatchEntry, ...]


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


@dataclass(frozen=True, slots=True)
class LocateResult:
    """Answer to ``locate``: the batches holding offsets from the asked offset on."""

    high_watermark: int
    log_start_offset: int
    batches: tuple[BatchRef, ...]


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str  # 32 hex chars (a UUID), as Kafka's topic ids
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    partition_info: tuple[PartitionInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int
    metadata: str = ""
    leader_epoch: int = -1


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One partition's answer to an agent fetch.

    ``records`` are RecordBatch v2 bytes with base offsets rewritten (CRC untouched);
    ``error`` is a ray_stream error (UnknownTopicOrPartition, OffsetOutOfRange) or None.
    """

    topic: str
    partition: int
    error: Exception | None
    high_watermark: int
    log_start_offset: int
    records: bytes = b""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """An agent as Kafka clients see it."""

    node_id: int
    host: str
    port: int
    rack: str | None = None
