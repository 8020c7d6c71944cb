"""Consumer: assign partitions, poll records, commit offsets under a group id.

Positions follow Kafka's: ``position(tp)`` is the offset of the next record ``poll``
returns. A partition without a position starts from the group's committed offset (when
a ``group_id`` is set) or from ``auto_offset_reset``. Fetches cover every assigned
partition in one agent call and long-poll up to ``fetch_max_wait_ms``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ray_stream.actors import handles
from ray_stream.core.metadata_api import OffsetCommitRequest
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import InvalidConfig, InvalidRequest, OffsetOutOfRange, Unavailable
from ray_stream.kafka.records import decode_batch, split_batches

EARLIEST = -2
LATEST = -1


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


def _tp(value: TopicPartition | tuple[str, int]) -> TopicPartition:
    if isinstance(value, TopicPartition):
        return value
    try:
        topic, partition = value
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"expected (topic, partition), got {value!r}") from exc
    if not isinstance(topic, str) or not isinstance(partition, int):
        raise InvalidRequest(f"expected (topic: str, partition: int), got {value!r}")
    return TopicPartition(topic, partition)


class Consumer:
    """Reads records from assigned partitions.

    Args:
        cluster: the Cluster handle.
        group_id: commit and resume offsets under this consumer group.
        auto_offset_reset: "earliest", "latest" or "none" (raise OffsetOutOfRange).
        max_poll_records: at most this many records per ``poll``.
        fetch_max_wait_ms: how long an agent holds a fetch open waiting for data.
        max_partition_fetch_bytes: per-partition bound of one fetch.
        agent: which agent to read through (default: spread consumers over the agents).
        zone: this client's availability zone: it reads through an agent of that zone
            when one is alive (no cross-zone traffic), else through any agent.
    """

    def __init__(
        self,
        cluster: Any,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
        fetch_max_wait_ms: int = 500,
        max_partition_fetch_bytes: int = 4 * 1024 * 1024,
        agent: int | None = None,
        zone: str | None = None,
    ) -> None:
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise InvalidConfig(
                f"auto_offset_reset must be 'earliest', 'latest' or 'none', got {auto_offset_reset!r}"
            )
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise InvalidConfig("group_id must be a non-empty str")
        self._cluster = cluster
        self.group_id = group_id
        self._reset = auto_offset_reset
        self._max_poll_records = max_poll_records
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._partition_bytes = max_partition_fetch_bytes
        self.zone = zone
        self._agent_index = agent if agent is not None else id(self) // 16
        self._agent = cluster.agent(self._agent_index, zone=zone, role="consume")
        self._meta = cluster.metadata
        self._assigned: list[TopicPartition] = []
        self._position: dict[TopicPartition, int] = {}
        self._fetch_pos: dict[TopicPartition, int] = {}
        self._buffer: deque[ConsumerRecord] = deque()
        self._closed = False

    # -------------------------------------------------------------- assignment

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any earlier assignment).

        Raises:
            UnknownTopicOrPartition: a topic or partition does not exist.
        """
        tps = [_tp(p) for p in partitions]
        counts: dict[str, int] = {}
        for tp in tps:
            if tp.topic not in counts:
                counts[tp.topic] = self._cluster.describe_topic(tp.topic).partitions
            if not 0 <= tp.partition < counts[tp.topic]:
                from ray_stream.errors import UnknownTopicOrPartition

                raise UnknownTopicOrPartition(
                    f"partition {tp.partition} does not exist in topic {tp.topic!r} "
                    f"(0..{counts[tp.topic] - 1})"
                )
        self._assigned = tps
        keep = set(tps)
        self._position = {tp: o for tp, o in self._position.items() if tp in keep}
        self._fetch_pos = {tp: o for tp, o in self._fetch_pos.items() if tp in keep}
        self._buffer = deque(
            r for r in self._buffer if TopicPartition(r.topic, r.partition) in keep
        )

    def assign_topic(self, topic: str) -> None:
        """Assign every partition of ``topic``."""
        count = self._cluster.describe_topic(topic).partitions
        self.assign([TopicPartition(topic, p) for p in range(count)])

    def assignment(self) -> list[TopicPartition]:
        return list(self._assigned)

    def seek(self, partition: TopicPartition | tuple[str, int], offset: int) -> None:
        """Make ``offset`` the next record ``poll`` returns for this partition."""
        tp = _tp(partition)
        if tp not in self._assigned:
            raise InvalidRequest(f"{tp.topic}[{tp.partition}] is not assigned to this consumer")
        if not isinstance(offset, int) or offset < 0:
            raise InvalidRequest(f"offset must be a non-negative int, got {offset!r}")
        self._position[tp] = self._fetch_pos[tp] = offset
        self._buffer = deque(
            r for r in self._buffer if (r.topic, r.partition) != (tp.topic, tp.partition)
        )

    def seek_to_beginning(
        self, partitions: Iterable[TopicPartition | tuple[str, int]] | None = None
    ) -> None:
        for tp in [_tp(p) for p in partitions] if partitions is not None else self._assigned:
            self.seek(tp, self._list_offset(tp, EARLIEST))

    def seek_to_end(
        self, partitions: Iterable[TopicPartition | tuple[str, int]] | None = None
    ) -> None:
        for tp in [_tp(p) for p in partitions] if partitions is not None else self._assigned:
            self.seek(tp, self._list_offset(tp, LATEST))

    def position(self, partition: TopicPartition | tuple[str, int]) -> int:
        tp = _tp(partition)
        self._init_positions()
        return self._position[tp]

    # ------------------------------------------------------------------ poll

    def poll(self, timeout: float = 1.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records from the assigned partitions, waiting up to ``timeout`` seconds for some."""
        if self._closed:
            raise InvalidRequest("consumer is closed")
        if not self._assigned:
            raise InvalidRequest("no partitions assigned: call assign() first")
        limit = max_records or self._max_poll_records
        deadline = time.monotonic() + timeout
        while not self._buffer:
            remaining = deadline - time.monotonic()
            self._fetch(max_wait_ms=max(0, min(int(remaining * 1000), self._fetch_max_wait_ms)))
            if self._buffer or time.monotonic() >= deadline:
                break
        out: list[ConsumerRecord] = []
        while self._buffer and len(out) < limit:
            rec = self._buffer.popleft()
            out.append(rec)
            self._position[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
        return out

    def __iter__(self) -> Iterator[ConsumerRecord]:
        while not self._closed:
            yield from self.poll(timeout=1.0)

    def _fetch(self, *, max_wait_ms: int) -> None:
        self._init_positions()
        tps = list(self._assigned)
        requests = [
            (tp.topic, tp.partition, self._fetch_pos[tp], self._partition_bytes) for tp in tps
        ]
        try:
            results = handles.get(
                self._agent.fetch.remote(
                    requests, max_wait_ms, 1, 64 * 1024 * 1024, client_zone=self.zone
                )
            )
        except Unavailable:  # retired (scaled down, its node left) or restarting
            self._agent = self._cluster.agent(self._agent_index, zone=self.zone, role="consume")
            raise
        for tp, result in zip(tps, results, strict=True):
            if isinstance(result.error, OffsetOutOfRange):
                if self._reset == "none":
                    raise result.error
                target = EARLIEST if self._reset == "earliest" else LATEST
                self._position[tp] = self._fetch_pos[tp] = self._list_offset(tp, target)
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

    def _init_positions(self) -> None:
        missing = [tp for tp in self._assigned if tp not in self._position]
        if not missing:
            return
        committed = self._committed(missing) if self.group_id else {}
        for tp in missing:
            offset = committed.get(tp)
            if offset is None:
                if self._reset == "none":
                    raise OffsetOutOfRange(
                        f"no committed offset for {tp.topic}[{tp.partition}] and auto_offset_reset='none'"
                    )
                offset = self._list_offset(tp, EARLIEST if self._reset == "earliest" else LATEST)
            self._position[tp] = self._fetch_pos[tp] = offset

    def _list_offset(self, tp: TopicPartition, spec: int) -> int:
        (answer,) = handles.get(self._meta.list_offsets.remote([(tp.topic, tp.partition, spec)]))
        if answer.error is not None:
            raise answer.error
        return int(answer.offset)

    # ---------------------------------------------------------------- commits

    def commit(self, offsets: dict[TopicPartition | tuple[str, int], int] | None = None) -> None:
        """Commit the current positions (or the given ``{partition: next offset}``) for the group.

        Raises:
            InvalidRequest: the consumer has no group_id.
        """
        if not self.group_id:
            raise InvalidRequest("commit needs a group_id: create the consumer with group_id=...")
        if offsets is None:
            chosen = {tp: self._position[tp] for tp in self._assigned if tp in self._position}
        else:
            chosen = {_tp(tp): int(o) for tp, o in offsets.items()}
        payload = {tp: CommittedOffset(offset=o) for tp, o in chosen.items()}
        if payload:
            request = OffsetCommitRequest(self.group_id, payload)
            handles.get(self._meta.commit_offsets.remote(request))

    def committed(self, partition: TopicPartition | tuple[str, int]) -> int | None:
        tp = _tp(partition)
        if not self.group_id:
            raise InvalidRequest("committed needs a group_id")
        return self._committed([tp]).get(tp)

    def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        got = handles.get(self._meta.fetch_offsets.remote(self.group_id, tps))
        return {tp: c.offset for tp, c in got.items() if c is not None and c.offset >= 0}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
