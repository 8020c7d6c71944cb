"""The metadata sequencer: the in-memory source of truth for offsets (pure, no I/O).

It holds topics (``TopicInfo`` + ``topic_id``), each partition's ordered batch references
with their base offsets (for bisect), high watermark and log start offset, idempotent
producer state, transactional-id epochs, consumer-group committed offsets, the next
producer id and a reference count per segment key.

Every change happens in two steps, so the shell can make it durable in between:

1. ``plan_*`` validates a command against the current state and returns a ``Changes``
   value: exactly the rows to persist (new batch rows, partition watermarks, producer
   state, topic rows, ...). Planning never mutates anything.
2. ``apply(changes)`` makes those rows the current state. It is infallible for a
   ``Changes`` planned against the current state.

The metadata actor plans, persists in one SQLite transaction, and only then applies, so
readers (``locate``, ``list_offset``) never see a change that is not durable, and a failed
write needs no rollback. ``apply_commits`` (plan + apply) serves tests and replays.

Invariants:
- within a partition, base offsets are contiguous: each batch starts at the previous
  batch's last offset + 1; the high watermark is the last batch's last offset + 1;
- offsets are assigned in commit order (request order, then entry order);
- a retried idempotent batch (same producer id, epoch and base sequence as one of the
  last ``REMEMBERED_BATCHES``, or lying inside one of them: a remembered entry may be a
  run of batches contiguous in sequences and offsets) gets its original offset back and
  adds nothing;
- a request marked as a possible resend (``plan_commits(retries=...)``) whose batch is
  already committed from the same segment key and position gets its original offset
  back and adds nothing (segment objects are immutable, so key + position is identity);
- the reference count of a segment key is the number of batch refs naming it.

Never: do I/O, read clocks, or generate ids (the shell passes ``topic_id`` in).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ray_stream.core.acl import AclBinding, AclFilter
from ray_stream.core.metadata_api import (
    CommitRequest,
    LocateAnswer,
    OffsetAnswer,
    RefColumns,
    SegmentResult,
)
from ray_stream.core.scram import ScramCredential
from ray_stream.core.topic_name import collision_key, validate_topic_name
from ray_stream.core.types import (
    BatchEntry,
    BatchRef,
    BatchResult,
    CommittedOffset,
    PartitionInfo,
    TopicInfo,
)
from ray_stream.errors import (
    DuplicateSequence,
    InternalError,
    InvalidConfig,
    InvalidPartitions,
    InvalidProducerEpoch,
    InvalidRequest,
    InvalidTopic,
    OffsetOutOfRange,
    OutOfOrderSequence,
    RayStreamError,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)

MAX_PARTITIONS = 10_000
REMEMBERED_BATCHES = 5  # Kafka's ProducerStateEntry.NUM_BATCHES_TO_RETAIN
SEQUENCE_LIMIT = 2**31  # sequences wrap from Int.MAX to 0 (DefaultRecordBatch.incrementSequence)
MAX_EPOCH = 32767  # producer epochs are int16
EARLIEST = -2
LATEST = -1
MAX_TIMESTAMP = -3  # KIP-734: the newest batch's last offset and max timestamp
_TOPIC_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class LocateResult:
    """One partition's ``locate`` answer: its watermarks and the batches found."""

    high_watermark: int
    log_start_offset: int
    batches: tuple[BatchRef, ...]


@dataclass(frozen=True, slots=True)
class PartitionRow:
    topic: str
    partition: int
    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class BatchRow:
    topic: str
    partition: int
    ref: BatchRef


@dataclass(frozen=True, slots=True)
class ProducerState:
    """Per (producer_id, topic, partition): the epoch and the last committed batches.

    ``batches`` holds ``(base_sequence, last_sequence, base_offset)``, oldest first, at
    most ``REMEMBERED_BATCHES`` of them, never empty. One entry may stand for a run of
    batches whose sequences and offsets are both contiguous (offset = base_offset +
    sequence - base_sequence inside it), so a producer that pipelines many batches per
    call can still have any of its last calls' batches recognised as resends.
    """

    epoch: int
    batches: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ProducerRow:
    producer_id: int
    topic: str
    partition: int
    state: ProducerState


@dataclass(frozen=True, slots=True)
class TransactionalRow:
    """The producer id and current epoch handed to a transactional id."""

    transactional_id: str
    producer_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class GroupOffsetRow:
    group: str
    topic: str
    partition: int
    offset: CommittedOffset


@dataclass(frozen=True, slots=True)
class Changes:
    """Rows to persist, in one transaction, then ``apply``.

    Deletions come first: a deleted topic takes its partitions, batches, producer
    states and group offsets with it; a deleted group takes its offsets. ``topics``
    and the other row tuples are upserts; ``batches`` are appends in offset order.
    """

    deleted_topics: tuple[str, ...] = ()
    deleted_groups: tuple[str, ...] = ()
    topics: tuple[TopicInfo, ...] = ()
    partitions: tuple[PartitionRow, ...] = ()
    batches: tuple[BatchRow, ...] = ()
    producers: tuple[ProducerRow, ...] = ()
    transactional: tuple[TransactionalRow, ...] = ()
    group_offsets: tuple[GroupOffsetRow, ...] = ()
    next_producer_id: int | None = None
    # ACLs (core/acl.py): deletions, then additions; both exact bindings.
    deleted_acls: tuple[AclBinding, ...] = ()
    acls: tuple[AclBinding, ...] = ()
    # SCRAM credentials (core/scram.py): (user, mechanism) deletions, then upserts.
    deleted_scram: tuple[tuple[str, str], ...] = ()
    scram: tuple[ScramCredential, ...] = ()

    @property
    def empty(self) -> bool:
        return self == _NO_CHANGES


_NO_CHANGES = Changes()


class _Partition:
    __slots__ = ("bases", "high_watermark", "log_start_offset", "refs", "ts_prefix")

    def __init__(self) -> None:
        self.refs: list[BatchRef] = []
        self.bases: list[int] = []  # refs[i].base_offset, for bisect
        self.ts_prefix: list[int] = []  # running max of max_timestamp, for bisect
        self.log_start_offset = 0
        self.high_watermark = 0

    def info(self, index: int) -> PartitionInfo:
        return PartitionInfo(index, self.log_start_offset, self.high_watermark)


class _Topic:
    __slots__ = ("info", "partitions")

    def __init__(self, info: TopicInfo) -> None:
        self.info = info
        self.partitions: list[_Partition] = []


class Sequencer:
    """The sequencer state. See the module docstring for the plan/apply protocol."""

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._collisions: dict[str, str] = {}  # collision_key(name) -> name
        self._producers: dict[tuple[int, str, int], ProducerState] = {}
        self._transactional: dict[str, TransactionalRow] = {}
        self._min_epoch: dict[int, int] = {}  # producer_id -> epoch from init_producer_id
        self._next_producer_id = 0
        self._groups: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        self._segments: dict[str, int] = {}  # segment key -> number of batch refs
        self._acls: dict[AclBinding, None] = {}  # insertion-ordered set
        self._scram: dict[tuple[str, str], ScramCredential] = {}  # by (user, mechanism)

    # ----------------------------------------------------------------- reads
    def scram_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """The stored SCRAM credential of ``user`` for ``mechanism``, if any."""
        return self._scram.get((user, mechanism))

    def scram_credentials(self) -> list[ScramCredential]:
        """Every stored SCRAM credential, sorted by user then mechanism."""
        return [self._scram[key] for key in sorted(self._scram)]

    def acls(self) -> list[AclBinding]:
        """Every ACL binding, in the order they were created."""
        return list(self._acls)

    @property
    def next_producer_id(self) -> int:
        return self._next_producer_id

    def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name, with ``partition_info``."""
        return [self.describe_topic(name) for name in sorted(self._topics)]

    def describe_topic(self, name: str) -> TopicInfo:
        """Raises UnknownTopicOrPartition."""
        topic = self._topic(name)
        infos = tuple(p.info(i) for i, p in enumerate(topic.partitions))
        return replace(topic.info, partition_info=infos)

    def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        """Raises UnknownTopicOrPartition."""
        return self._partition(topic, partition).info(partition)

    def locate(self, topic: str, partition: int, offset: int, max_bytes: int) -> LocateResult:
        """The batches whose last offset >= ``offset``, in order: at least one, then more
        while their total length stays within ``max_bytes``.

        Raises:
            UnknownTopicOrPartition: no such topic or partition.
            OffsetOutOfRange: ``offset`` is outside [log_start_offset, high_watermark].
        """
        part = self._partition(topic, partition)
        start, end = part.log_start_offset, part.high_watermark
        if not start <= offset <= end:
            raise OffsetOutOfRange(
                f"offset {offset} is outside [{start}, {end}] for {topic}-{partition}"
            )
        if offset == end:
            return LocateResult(end, start, ())
        i = max(bisect_right(part.bases, offset) - 1, 0)
        refs = part.refs
        total = refs[i].length
        stop = i + 1
        while stop < len(refs) and total + refs[stop].length <= max_bytes:
            total += refs[stop].length
            stop += 1
        return LocateResult(end, start, tuple(refs[i:stop]))

    def list_offset(self, topic: str, partition: int, timestamp: int) -> tuple[int, int]:
        """Kafka ListOffsets for one partition, at batch granularity.

        Returns:
            ``(log_start_offset, -1)`` for -2 (earliest), ``(high_watermark, -1)`` for -1
            (latest); for -3 (KIP-734 max timestamp) the largest timestamp of the
            partition and the last offset of the first batch holding it (the exact record
            when timestamps grow within a batch, as CreateTime from one producer does);
            otherwise the base offset and max timestamp of the first batch with
            ``max_timestamp >= timestamp``. ``(-1, -1)`` when there is none.

        Raises:
            UnknownTopicOrPartition: no such topic or partition.
            InvalidRequest: any other negative timestamp.
        """
        part = self._partition(topic, partition)
        if timestamp == EARLIEST:
            return part.log_start_offset, -1
        if timestamp == LATEST:
            return part.high_watermark, -1
        if timestamp == MAX_TIMESTAMP:
            if part.high_watermark <= part.log_start_offset or not part.refs:
                return -1, -1
            # Not simply the newest batch: timestamps need not grow with offsets (a
            # producer's own CreateTime), and the answer must carry the largest one.
            ref = part.refs[bisect_left(part.ts_prefix, part.ts_prefix[-1])]
            return max(ref.last_offset, part.log_start_offset), ref.max_timestamp
        if timestamp < 0:
            raise InvalidRequest(f"list_offset timestamp {timestamp} is not -3, -2, -1 or >= 0")
        i = bisect_left(part.ts_prefix, timestamp)
        if i == len(part.refs):
            return -1, -1
        ref = part.refs[i]
        return max(ref.base_offset, part.log_start_offset), ref.max_timestamp

    def list_offsets(self, queries: Sequence[tuple[str, int, int]]) -> list[OffsetAnswer]:
        """``list_offset`` for each ``(topic, partition, timestamp)``, errors per query."""
        answers = []
        for topic, partition, timestamp in queries:
            try:
                offset, found = self.list_offset(topic, partition, timestamp)
            except (UnknownTopicOrPartition, InvalidRequest) as exc:
                answers.append(OffsetAnswer(-1, -1, exc))
            else:
                answers.append(OffsetAnswer(offset, found))
        return answers

    def locate_many(
        self, positions: Sequence[tuple[str, int, int, int]], *, catalog_version: int
    ) -> LocateAnswer:
        """``locate`` for each ``(topic, partition, offset, max_bytes)`` as one columnar
        answer; UnknownTopicOrPartition and OffsetOutOfRange are per-position errors."""
        hwms, starts, ends = array("q"), array("q"), array("i")
        errors: dict[int, RayStreamError] = {}
        refs: list[BatchRef] = []
        for i, (topic, partition, offset, max_bytes) in enumerate(positions):
            try:
                found = self.locate(topic, partition, offset, max_bytes)
            except (UnknownTopicOrPartition, OffsetOutOfRange) as exc:
                errors[i] = exc
                hwms.append(-1)
                starts.append(-1)
            else:
                hwms.append(found.high_watermark)
                starts.append(found.log_start_offset)
                refs.extend(found.batches)
            ends.append(len(refs))
        return LocateAnswer(hwms, starts, ends, RefColumns.from_refs(refs), errors, catalog_version)

    def producer_state(self, producer_id: int, topic: str, partition: int) -> ProducerState | None:
        return self._producers.get((producer_id, topic, partition))

    def fetch_offsets(
        self, group: str, partitions: Sequence[tuple[str, int]] | None = None
    ) -> dict[tuple[str, int], CommittedOffset]:
        """Committed offsets of ``group`` (all, or those of ``partitions`` that exist)."""
        offsets = self._groups.get(group, {})
        if partitions is None:
            return dict(offsets)
        return {tp: offsets[tp] for tp in partitions if tp in offsets}

    def find_batch(
        self, topic: str, partition: int, segment_key: str, position: int
    ) -> BatchRef | None:
        """The committed batch read from ``segment_key`` at ``position`` in a partition.

        Scans the partition backwards (a retry names a recent batch), and only when the
        segment is referenced at all, so unknown keys cost one dict lookup.
        """
        part = self._find_partition(topic, partition)
        if part is None or segment_key not in self._segments:
            return None
        for ref in reversed(part.refs):
            if ref.segment_key == segment_key and ref.position == position:
                return ref
        return None

    def is_referenced(self, segment_key: str) -> bool:
        """Whether some committed batch ref names ``segment_key``."""
        return segment_key in self._segments

    def referenced_segments(self) -> frozenset[str]:
        """Segment keys named by at least one batch ref (anything else is an orphan)."""
        return frozenset(self._segments)

    def group_ids(self) -> list[str]:
        """Groups that have committed offsets."""
        return sorted(self._groups)

    def counts(self) -> dict[str, int]:
        return {
            "topics": len(self._topics),
            "partitions": sum(len(t.partitions) for t in self._topics.values()),
            "batches": sum(len(p.refs) for t in self._topics.values() for p in t.partitions),
            "segments": len(self._segments),
            "producers": len(self._producers),
            "transactional_ids": len(self._transactional),
            "groups": len(self._groups),
            "next_producer_id": self._next_producer_id,
        }

    # -------------------------------------------------------------- planning
    def plan_create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None = None,
        *,
        topic_id: str,
    ) -> Changes:
        """Raises InvalidTopic, InvalidPartitions, InvalidConfig, TopicAlreadyExists."""
        validate_topic_name(name)
        _check_partition_count(partitions, low=1)
        clean = _check_config(config)
        if name in self._topics:
            raise TopicAlreadyExists(f"topic {name!r} already exists")
        other = self._collisions.get(collision_key(name))
        if other is not None:
            raise InvalidTopic(f"topic {name!r} collides with existing topic {other!r}")
        if _TOPIC_ID.fullmatch(topic_id) is None or int(topic_id, 16) == 0:
            raise InternalError(f"topic_id {topic_id!r} is not 32 lowercase hex digits")
        if any(t.info.topic_id == topic_id for t in self._topics.values()):
            raise InternalError(f"topic_id {topic_id} is already in use")
        return Changes(
            topics=(TopicInfo(name, topic_id, partitions, clean),),
            partitions=tuple(PartitionRow(name, p, 0, 0) for p in range(partitions)),
        )

    def plan_delete_topic(self, name: str) -> Changes:
        """Raises UnknownTopicOrPartition."""
        self._topic(name)
        return Changes(deleted_topics=(name,))

    def plan_create_partitions(self, name: str, total: int) -> Changes:
        """Grow a topic. Raises UnknownTopicOrPartition, InvalidPartitions."""
        topic = self._topic(name)
        current = topic.info.partitions
        _check_partition_count(total, low=current + 1)
        return Changes(
            topics=(replace(topic.info, partitions=total),),
            partitions=tuple(PartitionRow(name, p, 0, 0) for p in range(current, total)),
        )

    def plan_commits(
        self, requests: Sequence[CommitRequest], *, retries: Sequence[bool] | None = None
    ) -> tuple[list[SegmentResult], Changes]:
        """Assign offsets to every batch of a group-commit round.

        Returns one ``SegmentResult`` per request (its batches in entry order) and the
        rows to persist. Failed or duplicate entries produce no rows.

        ``retries[i]`` marks request ``i`` as possibly resent after an ambiguous failure:
        its segment key names one immutable object, so an entry already committed from
        that key (same partition and position, earlier or in this round) is answered
        with its original offset and ``duplicate=True`` instead of being appended twice.
        """
        flags = list(retries) if retries is not None else [False] * len(requests)
        if len(flags) != len(requests):
            raise InternalError(f"{len(flags)} retry flags for {len(requests)} requests")
        round_ = _Round(self)
        results = [
            SegmentResult.of(
                [round_.add(r.segment_key, e, retry=flag) for e in r.batches.entries()]
            )
            for r, flag in zip(requests, flags, strict=True)
        ]
        return results, round_.changes()

    def plan_commit_offsets(
        self, group: str, offsets: Mapping[tuple[str, int], CommittedOffset]
    ) -> Changes:
        """Raises InvalidRequest (bad group or value), UnknownTopicOrPartition."""
        _check_group(group)
        rows = []
        for (topic, partition), committed in offsets.items():
            self._partition(topic, partition)
            if not isinstance(committed, CommittedOffset):
                raise InvalidRequest(
                    f"offset for {topic}-{partition} must be a CommittedOffset, "
                    f"got {type(committed).__name__}"
                )
            rows.append(GroupOffsetRow(group, topic, partition, committed))
        return Changes(group_offsets=tuple(rows))

    def plan_delete_group_offsets(self, group: str) -> Changes:
        """Forget every committed offset of ``group`` (no-op when it has none)."""
        return Changes(deleted_groups=(group,)) if group in self._groups else _NO_CHANGES

    def plan_alter_scram(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> Changes:
        """Store credentials (already derived and checked by core/scram.py) and forget
        ``(user, mechanism)`` pairs; deleting one that does not exist is a no-op."""
        doomed = tuple(key for key in dict.fromkeys(deletions) if key in self._scram)
        if not upserts and not doomed:
            return _NO_CHANGES
        return Changes(deleted_scram=doomed, scram=tuple(upserts))

    def plan_create_acls(self, bindings: Sequence[AclBinding]) -> Changes:
        """Add bindings (already checked by ``acl.check_binding``); ones that exist are
        no-ops, as in Kafka."""
        fresh = dict.fromkeys(b for b in bindings if b not in self._acls)
        return Changes(acls=tuple(fresh)) if fresh else _NO_CHANGES

    def plan_delete_acls(
        self, filters: Sequence[AclFilter]
    ) -> tuple[list[list[AclBinding]], Changes]:
        """The bindings each filter matches (``AclFilter.matches``), all deleted."""
        matched = [[b for b in self._acls if f.matches(b)] for f in filters]
        doomed = dict.fromkeys(b for found in matched for b in found)
        return matched, (Changes(deleted_acls=tuple(doomed)) if doomed else _NO_CHANGES)

    def plan_init_producer_id(
        self, transactional_id: str | None = None
    ) -> tuple[tuple[int, int], Changes]:
        """A new producer id with epoch 0; a known transactional id keeps its producer id
        and gets the next epoch (fencing the older one), or a new id once int16 runs out.

        Raises:
            InvalidRequest: ``transactional_id`` is an empty string.
        """
        if transactional_id is not None and (
            not isinstance(transactional_id, str) or not transactional_id
        ):
            raise InvalidRequest("transactional_id must be a non-empty string or None")
        known = self._transactional.get(transactional_id) if transactional_id else None
        if known is not None and known.epoch < MAX_EPOCH:
            row = replace(known, epoch=known.epoch + 1)
            return (row.producer_id, row.epoch), Changes(transactional=(row,))
        pid = self._next_producer_id
        rows = (TransactionalRow(transactional_id, pid, 0),) if transactional_id else ()
        return (pid, 0), Changes(transactional=rows, next_producer_id=pid + 1)

    # -------------------------------------------------------------- applying
    def apply(self, changes: Changes) -> None:
        """Make planned rows the current state (see ``Changes`` for the order)."""
        for name in changes.deleted_topics:
            self._drop_topic(name)
        for group in changes.deleted_groups:
            self._groups.pop(group, None)
        for info in changes.topics:
            self._put_topic(info)
        for row in changes.partitions:
            part = self._topics[row.topic].partitions[row.partition]
            part.log_start_offset = row.log_start_offset
            part.high_watermark = row.high_watermark
        for batch in changes.batches:
            self._append(batch)
        for prow in changes.producers:
            self._producers[(prow.producer_id, prow.topic, prow.partition)] = prow.state
        for trow in changes.transactional:
            self._transactional[trow.transactional_id] = trow
            self._min_epoch[trow.producer_id] = trow.epoch
        for grow in changes.group_offsets:
            self._groups.setdefault(grow.group, {})[(grow.topic, grow.partition)] = grow.offset
        if changes.next_producer_id is not None:
            self._next_producer_id = changes.next_producer_id
        for binding in changes.deleted_acls:
            self._acls.pop(binding, None)
        self._acls.update(dict.fromkeys(changes.acls))
        for key in changes.deleted_scram:
            self._scram.pop(key, None)
        for credential in changes.scram:
            self._scram[(credential.user, credential.mechanism)] = credential

    def apply_commits(
        self, requests: Sequence[CommitRequest]
    ) -> tuple[list[list[BatchResult]], Changes]:
        """``plan_commits`` then ``apply``: for callers that persist afterwards or never.

        Returns the results of each request's batches and the rows applied."""
        results, changes = self.plan_commits(requests)
        self.apply(changes)
        return [r.results() for r in results], changes

    # ------------------------------------------------------------- internals
    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartition(f"unknown topic {name!r}")
        return topic

    def _partition(self, topic: str, partition: int) -> _Partition:
        parts = self._topic(topic).partitions
        if not isinstance(partition, int) or not 0 <= partition < len(parts):
            raise UnknownTopicOrPartition(
                f"topic {topic!r} has no partition {partition!r} (it has {len(parts)})"
            )
        return parts[partition]

    def _find_partition(self, topic: str, partition: int) -> _Partition | None:
        t = self._topics.get(topic)
        if t is None or not isinstance(partition, int) or not 0 <= partition < len(t.partitions):
            return None
        return t.partitions[partition]

    def _put_topic(self, info: TopicInfo) -> None:
        topic = self._topics.get(info.name)
        if topic is None:
            topic = self._topics[info.name] = _Topic(info)
            self._collisions[collision_key(info.name)] = info.name
        topic.info = replace(info, partition_info=())
        while len(topic.partitions) < info.partitions:
            topic.partitions.append(_Partition())

    def _drop_topic(self, name: str) -> None:
        topic = self._topics.pop(name)
        del self._collisions[collision_key(name)]
        for part in topic.partitions:
            for ref in part.refs:
                self._unref(ref.segment_key)
        for key in [k for k in self._producers if k[1] == name]:
            del self._producers[key]
        for group, offsets in list(self._groups.items()):
            for tp in [tp for tp in offsets if tp[0] == name]:
                del offsets[tp]
            if not offsets:
                del self._groups[group]

    def _append(self, row: BatchRow) -> None:
        part = self._topics[row.topic].partitions[row.partition]
        ref = row.ref
        if part.refs and part.refs[-1].last_offset + 1 != ref.base_offset:
            raise InternalError(
                f"batch at {ref.base_offset} does not follow offset "
                f"{part.refs[-1].last_offset} in {row.topic}-{row.partition}"
            )
        prev_ts = part.ts_prefix[-1] if part.ts_prefix else ref.max_timestamp
        part.refs.append(ref)
        part.bases.append(ref.base_offset)
        part.ts_prefix.append(max(prev_ts, ref.max_timestamp))
        self._segments[ref.segment_key] = self._segments.get(ref.segment_key, 0) + 1

    def _unref(self, key: str) -> None:
        left = self._segments[key] - 1
        if left:
            self._segments[key] = left
        else:
            del self._segments[key]


class _Round:
    """One group-commit round being planned: offsets and producer states so far."""

    def __init__(self, seq: Sequencer) -> None:
        self._seq = seq
        self._ends: dict[tuple[str, int], int] = {}
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._producers: dict[tuple[int, str, int], ProducerState] = {}
        self._batches: list[BatchRow] = []
        self._placed: dict[tuple[str, str, int, int], int] = {}  # (key, t, p, pos) -> base

    def add(self, segment_key: str, entry: BatchEntry, *, retry: bool = False) -> BatchResult:
        part = self._seq._find_partition(entry.topic, entry.partition)
        if part is None:
            error = UnknownTopicOrPartition(
                f"unknown topic or partition {entry.topic!r}-{entry.partition!r}"
            )
            return BatchResult(-1, error)
        if retry:
            base = self._already_committed(segment_key, entry)
            if base is not None:
                return BatchResult(base, None, True, part.log_start_offset)
        tp = (entry.topic, entry.partition)
        base = self._ends.get(tp, part.high_watermark)
        try:
            _check_entry(entry)
            if entry.producer_id >= 0 and entry.base_sequence >= 0:
                duplicate = self._sequence(entry, base)
                if duplicate is not None:
                    return BatchResult(duplicate, None, True, part.log_start_offset)
        except RayStreamError as exc:
            return BatchResult(-1, exc, False, part.log_start_offset)
        self._ends[tp] = base + entry.record_count
        self._parts[tp] = part
        ref = BatchRef(
            segment_key,
            entry.position,
            entry.length,
            base,
            entry.record_count,
            entry.max_timestamp,
        )
        self._batches.append(BatchRow(entry.topic, entry.partition, ref))
        self._placed[(segment_key, entry.topic, entry.partition, entry.position)] = base
        return BatchResult(base, None, False, part.log_start_offset)

    def _already_committed(self, segment_key: str, entry: BatchEntry) -> int | None:
        placed = self._placed.get((segment_key, entry.topic, entry.partition, entry.position))
        if placed is not None:
            return placed
        ref = self._seq.find_batch(entry.topic, entry.partition, segment_key, entry.position)
        return None if ref is None else ref.base_offset

    def _sequence(self, entry: BatchEntry, base: int) -> int | None:
        """Check an idempotent batch; returns the original offset of a duplicate."""
        key = (entry.producer_id, entry.topic, entry.partition)
        state = self._producers[key] if key in self._producers else self._seq._producers.get(key)
        min_epoch = self._seq._min_epoch.get(entry.producer_id, 0)
        new_state, duplicate = _next_producer_state(
            state, entry, base_offset=base, min_epoch=min_epoch
        )
        if duplicate is None:
            self._producers[key] = new_state
        return duplicate

    def changes(self) -> Changes:
        parts = tuple(
            PartitionRow(t, p, self._parts[(t, p)].log_start_offset, end)
            for (t, p), end in self._ends.items()
        )
        producers = tuple(ProducerRow(k[0], k[1], k[2], s) for k, s in self._producers.items())
        return Changes(partitions=parts, batches=tuple(self._batches), producers=producers)


def merge_changes(parts: Sequence[Changes]) -> Changes:
    """Concatenate the rows of several ``Changes`` planned against the same state.

    For rounds that combine independent plans (batch commits and group-offset commits):
    upserts keep their order, so a later row for the same key wins, as it would had the
    parts been applied one after another. Deletions are only allowed in the first part
    (``apply`` runs them before any upsert).

    Raises:
        InternalError: a part after the first carries deletions.
    """
    if len(parts) == 1:
        return parts[0]
    if any(p.deleted_topics or p.deleted_groups for p in parts[1:]):
        raise InternalError("merge_changes: only the first part may delete topics or groups")
    next_pid = [p.next_producer_id for p in parts if p.next_producer_id is not None]
    return Changes(
        deleted_topics=parts[0].deleted_topics if parts else (),
        deleted_groups=parts[0].deleted_groups if parts else (),
        topics=tuple(r for p in parts for r in p.topics),
        partitions=tuple(r for p in parts for r in p.partitions),
        batches=tuple(r for p in parts for r in p.batches),
        producers=tuple(r for p in parts for r in p.producers),
        transactional=tuple(r for p in parts for r in p.transactional),
        group_offsets=tuple(r for p in parts for r in p.group_offsets),
        next_producer_id=next_pid[-1] if next_pid else None,
        deleted_acls=tuple(r for p in parts for r in p.deleted_acls),
        acls=tuple(r for p in parts for r in p.acls),
        deleted_scram=tuple(r for p in parts for r in p.deleted_scram),
        scram=tuple(r for p in parts for r in p.scram),
    )


def _next_producer_state(
    state: ProducerState | None, entry: BatchEntry, *, base_offset: int, min_epoch: int
) -> tuple[ProducerState, int | None]:
    """Kafka's ProducerStateManager checks, reduced to what the contract states.

    Returns the producer state after the batch and, for a duplicate, its original base
    offset. An unknown producer may start at any sequence (its state may have expired);
    a newer epoch must start at sequence 0.

    Raises:
        InvalidProducerEpoch: the epoch is older than the current one.
        OutOfOrderSequence: the base sequence does not follow the last one.
        DuplicateSequence: a resend of a batch older than every remembered one.
    """
    epoch, seq = entry.producer_epoch, entry.base_sequence
    last_seq = (seq + entry.record_count - 1) % SEQUENCE_LIMIT
    current = state.epoch if state is not None else -1
    if epoch < max(min_epoch, current, 0):
        raise InvalidProducerEpoch(
            f"producer {entry.producer_id} epoch {epoch} is older than "
            f"{max(min_epoch, current)} on {entry.topic}-{entry.partition}"
        )
    if state is None or epoch > state.epoch:
        if state is not None and seq != 0:
            raise OutOfOrderSequence(
                f"producer {entry.producer_id} new epoch {epoch} must start at sequence 0, "
                f"got {seq} on {entry.topic}-{entry.partition}"
            )
        return ProducerState(epoch, ((seq, last_seq, base_offset),)), None
    for first, last, offset in state.batches:
        if first == seq or (first < seq and last_seq <= last and first <= last):
            return state, offset + (seq - first)
    expected = (state.batches[-1][1] + 1) % SEQUENCE_LIMIT
    if 0 < (state.batches[0][0] - seq) % SEQUENCE_LIMIT < SEQUENCE_LIMIT // 2:
        # Behind every remembered batch: sequences are contiguous, so it was committed.
        raise DuplicateSequence(
            f"producer {entry.producer_id} epoch {epoch} resent sequence {seq}, committed "
            f"before the oldest remembered ({state.batches[0][0]}) on "
            f"{entry.topic}-{entry.partition}: written once, at an offset no longer known"
        )
    if seq != expected:
        raise OutOfOrderSequence(
            f"producer {entry.producer_id} epoch {epoch} sent sequence {seq}, expected "
            f"{expected} on {entry.topic}-{entry.partition}"
        )
    first, last, offset = state.batches[-1]
    if seq > first and base_offset == offset + (seq - first):
        # Contiguous in sequences and in offsets (one caller's batches of one call, or
        # of calls no other producer came between): one run stands for them all.
        return ProducerState(epoch, (*state.batches[:-1], (first, last_seq, offset))), None
    kept = state.batches[-(REMEMBERED_BATCHES - 1) :]
    return ProducerState(epoch, (*kept, (seq, last_seq, base_offset))), None


def _check_entry(entry: BatchEntry) -> None:
    if entry.record_count < 1 or entry.position < 0 or entry.length < 1:
        raise InvalidRequest(
            f"batch for {entry.topic}-{entry.partition} has record_count="
            f"{entry.record_count}, position={entry.position}, length={entry.length}; "
            "record_count and length must be >= 1 and position >= 0"
        )


def _check_partition_count(count: object, *, low: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= MAX_PARTITIONS:
        raise InvalidPartitions(
            f"partition count {count!r} must be an integer in [{low}, {MAX_PARTITIONS}]"
        )


def _check_config(config: Mapping[str, str] | None) -> dict[str, str]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidConfig(f"topic config must be a mapping, got {type(config).__name__}")
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidConfig(
                f"topic config {key!r} = {value!r}: keys and values must be strings"
            )
    return dict(config)


def _check_group(group: object) -> None:
    if not isinstance(group, str) or not group:
        raise InvalidRequest(f"group id must be a non-empty string, got {group!r}")
