"""Fetcher: the positions and fetched records of the partitions one consumer reads.

Responsibility: for the consumer's current partitions, keep Kafka's two offsets per
partition (``position``: the next record ``poll`` hands out; the fetch position: the
next record to ask an agent for), fetch every partition in one agent call, decode the
RecordBatches into ``ConsumerRecord``s, and look offsets up (log start, high watermark)
in one metadata call per batch of partitions.

Rules this module keeps:

1. Buffered records only ever belong to current partitions: changing the partitions or
   seeking drops the records fetched for what was dropped or moved.
2. One agent call per fetch and one metadata call per offset lookup, whatever the number
   of partitions.
3. Where a partition without a position starts is the consumer's decision (committed
   offsets, ``auto_offset_reset``): ``fetch`` needs every position set (``start_at``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ray_stream.actors import handles
from ray_stream.core.types import TopicPartition
from ray_stream.errors import OffsetOutOfRange, Unavailable
from ray_stream.kafka.records import decode_batch, split_batches

__all__ = ["EARLIEST", "LATEST", "ConsumerRecord", "Fetcher"]

EARLIEST = -2
LATEST = -1
MAX_FETCH_BYTES = 64 * 1024 * 1024  # one fetch's bound over all partitions


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Fetcher:
    """Positions, buffer and fetches for one consumer (see the module doc).

    Args:
        cluster: the Cluster handle (agents, metadata actor).
        agent_index: which live agent to read through (modulo their number).
        zone: the client's zone: read through an agent of it when one is alive.
        auto_offset_reset: "earliest", "latest" or "none": where a position that fell
            out of the log (OffsetOutOfRange) moves to; "none" raises instead.
        max_partition_fetch_bytes: per-partition bound of one fetch.
    """

    def __init__(
        self,
        cluster: Any,
        *,
        agent_index: int,
        zone: str | None,
        auto_offset_reset: str,
        max_partition_fetch_bytes: int,
    ) -> None:
        self._cluster = cluster
        self._agent_index = agent_index
        self._zone = zone
        self._reset = auto_offset_reset
        self._partition_bytes = max_partition_fetch_bytes
        self._agent = cluster.agent(agent_index, zone=zone, role="consume")
        self._meta = cluster.metadata
        self.partitions: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self._fetch_pos: dict[TopicPartition, int] = {}
        self._buffer: deque[ConsumerRecord] = deque()

    def set_partitions(self, tps: list[TopicPartition]) -> None:
        """Read ``tps`` from now on; the kept ones keep their positions (rule 1)."""
        self.partitions = tps
        keep = set(tps)
        self.positions = {tp: o for tp, o in self.positions.items() if tp in keep}
        self._fetch_pos = {tp: o for tp, o in self._fetch_pos.items() if tp in keep}
        self._buffer = deque(
            r for r in self._buffer if TopicPartition(r.topic, r.partition) in keep
        )

    def unpositioned(self) -> list[TopicPartition]:
        """The current partitions that have no position yet."""
        return [tp for tp in self.partitions if tp not in self.positions]

    def start_at(self, offsets: dict[TopicPartition, int]) -> None:
        """Set positions (``seek`` without dropping anything: nothing was fetched)."""
        for tp, offset in offsets.items():
            self.positions[tp] = self._fetch_pos[tp] = offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make ``offset`` the next record handed out for ``tp`` (a current partition)."""
        self.positions[tp] = self._fetch_pos[tp] = offset
        self._buffer = deque(
            r for r in self._buffer if (r.topic, r.partition) != (tp.topic, tp.partition)
        )

    @property
    def buffered(self) -> bool:
        return bool(self._buffer)

    def take(self, limit: int) -> list[ConsumerRecord]:
        """Up to ``limit`` buffered records; each moves its partition's position past it."""
        out: list[ConsumerRecord] = []
        while self._buffer and len(out) < limit:
            rec = self._buffer.popleft()
            out.append(rec)
            self.positions[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
        return out

    def fetch(self, *, max_wait_ms: int) -> None:
        """One agent fetch of every current partition from its fetch position (rule 2).

        Raises:
            Unavailable: the agent is gone (the next fetch picks another).
            OffsetOutOfRange: a position fell out of the log and auto_offset_reset="none".
            UnknownTopicOrPartition: a partition no longer exists.
        """
        tps = list(self.partitions)
        requests = [
            (tp.topic, tp.partition, self._fetch_pos[tp], self._partition_bytes) for tp in tps
        ]
        try:
            results = handles.get(
                self._agent.fetch.remote(
                    requests, max_wait_ms, 1, MAX_FETCH_BYTES, client_zone=self._zone
                )
            )
        except Unavailable:  # retired (scaled down, its node left) or restarting
            self._agent = self._cluster.agent(self._agent_index, zone=self._zone, role="consume")
            raise
        for tp, result in zip(tps, results, strict=True):
            if isinstance(result.error, OffsetOutOfRange):
                if self._reset == "none":
                    raise result.error
                target = EARLIEST if self._reset == "earliest" else LATEST
                self.start_at(self.list_offsets([tp], target))
                continue
            if result.error is not None:
                raise result.error
            if result.records:
                self._absorb(tp, result.records)

    def _absorb(self, tp: TopicPartition, records: bytes) -> None:
        start = self._fetch_pos[tp]
        last = start - 1
        for batch in split_batches(records):
            for rec in decode_batch(batch):
                if rec.offset < start:
                    continue
                self._buffer.append(
                    ConsumerRecord(
                        tp.topic,
                        tp.partition,
                        rec.offset,
                        rec.timestamp_ms,
                        rec.key,
                        rec.value,
                        rec.headers,
                    )
                )
                last = rec.offset
        self._fetch_pos[tp] = max(start, last + 1)

    def list_offsets(self, tps: list[TopicPartition], spec: int) -> dict[TopicPartition, int]:
        """``spec`` (EARLIEST: log start, LATEST: high watermark) of each partition, in
        one metadata call.

        Raises:
            UnknownTopicOrPartition: a partition does not exist.
        """
        if not tps:
            return {}
        queries = [(tp.topic, tp.partition, spec) for tp in tps]
        answers = handles.get(self._meta.list_offsets.remote(queries))
        out: dict[TopicPartition, int] = {}
        for tp, answer in zip(tps, answers, strict=True):
            if answer.error is not None:
                raise answer.error
            out[tp] = int(answer.offset)
        return out
