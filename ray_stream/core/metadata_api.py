"""What agents and clients ask of the metadata service: typed messages and protocols.

The metadata service (``metadata/service.py``) implements ``MetadataClient``; agents and
Kafka handlers hold a ``MetadataClient`` and never know whether it is the service itself
(unit tests, in-process) or the Ray adapter in ``actors/metadata_client.py``.

Rules this module keeps:

1. **One error convention.** A failure of a whole call is *raised* as a ray_stream error
   (``errors.py``: InvalidRequest kinds are final, Unavailable kinds may be retried,
   Fenced means a newer incarnation won). A per-item outcome of a bulk call (one segment
   of a commit, one batch of a segment, one partition of a locate or list-offsets, one
   member of a leave, one group of a delete) is an ``error`` field holding a
   ray_stream error on that item's answer, None on success. Never error strings, never
   bare tuples of results.
2. **Bulk data travels as columns.** Batch references cross a process boundary as packed
   ``array`` columns inside one message (``BatchColumns``, ``RefColumns``), never as one
   object per reference: unpickling frozen slotted dataclasses
   (``dataclasses._dataclass_setstate``) was the metadata actor's largest hot spot.
3. **Messages unpickle cheaply.** Every message is a frozen, slotted dataclass decorated
   with ``@wire`` (``core/types.py``), which pickles it as a constructor call.

Never: import asyncio, Ray or anything that does I/O; messages are plain values.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ray_stream.config import Settings
from ray_stream.core.acl import AclBinding, AclFilter, AclOutcome, AclSnapshot
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.group import (
    GroupDeletion,
    GroupDescription,
    GroupListing,
    JoinResult,
    LeaveResult,
    MemberLeave,
    SyncResult,
)
from ray_stream.core.scram import ScramCredential, ScramUserInfo
from ray_stream.core.types import (
    BatchEntry,
    BatchRef,
    BatchResult,
    BrokerInfo,
    CommittedOffset,
    TopicInfo,
    TopicPartition,
    wire,
)
from ray_stream.errors import InternalError, RayStreamError

__all__ = [
    "Acls",
    "BatchColumns",
    "CommitAnswer",
    "CommitRequest",
    "Credentials",
    "GroupDeletion",
    "GroupListing",
    "Groups",
    "HeartbeatRequest",
    "JoinRequest",
    "LeaveRequest",
    "LeaveResult",
    "LocateAnswer",
    "LocateRequest",
    "MemberLeave",
    "MetadataClient",
    "OffsetAnswer",
    "OffsetCommitRequest",
    "ProducerIdentity",
    "RefColumns",
    "Registry",
    "SegmentResult",
    "Sequencing",
    "SyncRequest",
    "Topics",
]


def _ints(code: str) -> array[int]:
    return array(code)


def _ours(error: Exception) -> RayStreamError:
    if isinstance(error, RayStreamError):
        return error
    return InternalError(f"batch failed: {error!r}")


# -------------------------------------------------------------------- commits
@wire
@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The producer batches of one segment object, one column entry per batch.

    ``topics`` lists each distinct topic name once; ``topic_index[i]`` points into it.
    The other columns are the fields of ``BatchEntry`` (see there).
    """

    topics: tuple[str, ...] = ()
    topic_index: array[int] = field(default_factory=lambda: _ints("i"))
    partition: array[int] = field(default_factory=lambda: _ints("i"))
    position: array[int] = field(default_factory=lambda: _ints("q"))
    length: array[int] = field(default_factory=lambda: _ints("q"))
    record_count: array[int] = field(default_factory=lambda: _ints("i"))
    first_timestamp: array[int] = field(default_factory=lambda: _ints("q"))
    max_timestamp: array[int] = field(default_factory=lambda: _ints("q"))
    producer_id: array[int] = field(default_factory=lambda: _ints("q"))
    producer_epoch: array[int] = field(default_factory=lambda: _ints("h"))
    base_sequence: array[int] = field(default_factory=lambda: _ints("i"))

    @classmethod
    def from_entries(cls, entries: Sequence[BatchEntry]) -> BatchColumns:
        """Columns of ``entries``, in order.

        Raises:
            OverflowError: a value does not fit its column (a caller bug: agents build
                entries from parsed RecordBatch headers, whose fields fit).
        """
        names: dict[str, int] = {}
        topic_index = [names.setdefault(e.topic, len(names)) for e in entries]
        return cls(
            topics=tuple(names),
            topic_index=array("i", topic_index),
            partition=array("i", [e.partition for e in entries]),
            position=array("q", [e.position for e in entries]),
            length=array("q", [e.length for e in entries]),
            record_count=array("i", [e.record_count for e in entries]),
            first_timestamp=array("q", [e.first_timestamp for e in entries]),
            max_timestamp=array("q", [e.max_timestamp for e in entries]),
            producer_id=array("q", [e.producer_id for e in entries]),
            producer_epoch=array("h", [e.producer_epoch for e in entries]),
            base_sequence=array("i", [e.base_sequence for e in entries]),
        )

    def __len__(self) -> int:
        return len(self.partition)

    def entry(self, i: int) -> BatchEntry:
        """Row ``i`` as a ``BatchEntry``."""
        return BatchEntry(
            self.topics[self.topic_index[i]],
            self.partition[i],
            self.position[i],
            self.length[i],
            self.record_count[i],
            self.first_timestamp[i],
            self.max_timestamp[i],
            self.producer_id[i],
            self.producer_epoch[i],
            self.base_sequence[i],
        )

    def entries(self) -> list[BatchEntry]:
        return [self.entry(i) for i in range(len(self))]


@wire
@dataclass(frozen=True, slots=True)
class CommitRequest:
    """All batches of one segment object (one agent flush), committed in one step.

    A segment key names one immutable object, so a resent request (same key) is
    answered with the original offsets (``BatchResult.duplicate``), never appended twice.
    """

    segment_key: str
    segment_bytes: int
    batches: BatchColumns

    @classmethod
    def of(
        cls, segment_key: str, segment_bytes: int, entries: Sequence[BatchEntry]
    ) -> CommitRequest:
        return cls(segment_key, segment_bytes, BatchColumns.from_entries(entries))


@wire
@dataclass(frozen=True, slots=True)
class SegmentResult:
    """The answer for one ``CommitRequest``.

    ``error`` refuses the whole segment (StorageUnavailable: the round's journal write
    failed or is in doubt; Fenced; Unavailable: the segment is too old to commit). When
    it is None, ``base_offset[i]`` etc. answer batch ``i``; ``errors`` holds the batches
    refused one by one (UnknownTopicOrPartition, OutOfOrderSequence,
    InvalidProducerEpoch), whose base offset is -1.
    """

    error: RayStreamError | None = None
    base_offset: array[int] = field(default_factory=lambda: _ints("q"))
    log_start_offset: array[int] = field(default_factory=lambda: _ints("q"))
    duplicate: array[int] = field(default_factory=lambda: _ints("b"))
    errors: dict[int, RayStreamError] = field(default_factory=dict)

    @classmethod
    def of(cls, results: Sequence[BatchResult]) -> SegmentResult:
        """Columns of ``results``; a batch error that is not a ray_stream error (a bug)
        is kept as an InternalError, never dropped (the batch would look committed)."""
        return cls(
            None,
            array("q", [r.base_offset for r in results]),
            array("q", [r.log_start_offset for r in results]),
            array("b", [r.duplicate for r in results]),
            {i: _ours(r.error) for i, r in enumerate(results) if r.error is not None},
        )

    def results(self) -> list[BatchResult]:
        """One ``BatchResult`` per batch.

        Raises:
            The segment's ``error``, when the whole segment was refused.
        """
        if self.error is not None:
            raise self.error
        errors = self.errors
        return [
            BatchResult(base, errors.get(i), bool(dup), start)
            for i, (base, start, dup) in enumerate(
                zip(self.base_offset, self.log_start_offset, self.duplicate, strict=True)
            )
        ]


@wire
@dataclass(frozen=True, slots=True)
class CommitAnswer:
    """The answer to ``commit``: one ``SegmentResult`` per request, in request order.

    ``epoch`` is the answering incarnation's epoch (agents drop answers from an epoch
    older than one they have seen); ``catalog_version`` changes whenever a topic is
    deleted (agents then forget the batch locations they cached).
    """

    epoch: int
    catalog_version: int
    segments: tuple[SegmentResult, ...]


# -------------------------------------------------------------------- locating
@wire
@dataclass(frozen=True, slots=True)
class LocateRequest:
    """Where the batches from some offsets on live, for several partitions at once.

    ``positions`` are ``(topic, partition, offset, max_bytes)``. With ``wait_ms`` > 0
    the call long-polls: it answers once the located batches add up to ``min_bytes``,
    a position is in error, or ``wait_ms`` passed (woken by commits, not by a timer).
    """

    positions: tuple[tuple[str, int, int, int], ...]
    wait_ms: int = 0
    min_bytes: int = 1


@wire
@dataclass(frozen=True, slots=True)
class RefColumns:
    """Batch references as columns (``keys`` lists each segment key once)."""

    keys: tuple[str, ...] = ()
    key_index: array[int] = field(default_factory=lambda: _ints("i"))
    position: array[int] = field(default_factory=lambda: _ints("q"))
    length: array[int] = field(default_factory=lambda: _ints("q"))
    base_offset: array[int] = field(default_factory=lambda: _ints("q"))
    record_count: array[int] = field(default_factory=lambda: _ints("i"))
    max_timestamp: array[int] = field(default_factory=lambda: _ints("q"))

    @classmethod
    def from_refs(cls, refs: Sequence[BatchRef]) -> RefColumns:
        keys: dict[str, int] = {}
        key_index = array("i", [keys.setdefault(r.segment_key, len(keys)) for r in refs])
        return cls(
            keys=tuple(keys),
            key_index=key_index,
            position=array("q", [r.position for r in refs]),
            length=array("q", [r.length for r in refs]),
            base_offset=array("q", [r.base_offset for r in refs]),
            record_count=array("i", [r.record_count for r in refs]),
            max_timestamp=array("q", [r.max_timestamp for r in refs]),
        )

    def __len__(self) -> int:
        return len(self.position)

    def refs(self, start: int = 0, stop: int | None = None) -> list[BatchRef]:
        stop = len(self) if stop is None else stop
        keys = self.keys
        return [
            BatchRef(
                keys[self.key_index[i]],
                self.position[i],
                self.length[i],
                self.base_offset[i],
                self.record_count[i],
                self.max_timestamp[i],
            )
            for i in range(start, stop)
        ]


@wire
@dataclass(frozen=True, slots=True)
class LocateAnswer:
    """The answer to ``locate``: per position, in request order, its partition's high
    watermark and log start offset, an ``error`` (UnknownTopicOrPartition,
    OffsetOutOfRange) or the batches holding offsets from the asked one on.

    Position ``i``'s batches are ``refs[ref_ends[i-1]:ref_ends[i]]`` (``ref_ends[-1]`` of
    the previous position, 0 for the first).
    """

    high_watermark: array[int]
    log_start_offset: array[int]
    ref_ends: array[int]
    refs: RefColumns
    errors: dict[int, RayStreamError]
    catalog_version: int

    def batches(self, i: int) -> list[BatchRef]:
        start = self.ref_ends[i - 1] if i else 0
        return self.refs.refs(start, self.ref_ends[i])


@wire
@dataclass(frozen=True, slots=True)
class OffsetAnswer:
    """One partition's ListOffsets answer: an offset and its batch's max timestamp (-1
    when the query asked for earliest/latest), or an ``error``."""

    offset: int
    timestamp: int
    error: RayStreamError | None = None


@wire
@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    producer_id: int
    epoch: int


# ---------------------------------------------------------------------- groups
@wire
@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A JoinGroup (Kafka's classic protocol); ``protocols`` are (name, metadata)."""

    group_id: str
    member_id: str
    group_instance_id: str | None
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    client_id: str
    client_host: str
    require_known_member_id: bool


@wire
@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A SyncGroup; the leader sends ``assignments`` as (member_id, assignment)."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None
    protocol_type: str | None
    protocol_name: str | None
    assignments: tuple[tuple[str, bytes], ...]


@wire
@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


@wire
@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """A LeaveGroup for ``members`` as (member_id, group_instance_id)."""

    group_id: str
    members: tuple[tuple[str, str | None], ...]


@wire
@dataclass(frozen=True, slots=True)
class OffsetCommitRequest:
    """Committed offsets for a group, checked against its membership in the same call.

    ``generation_id`` -1 with an empty ``member_id`` is a "simple" commit (a consumer
    that assigns partitions itself), allowed while the group has no members.
    """

    group_id: str
    offsets: dict[TopicPartition, CommittedOffset]
    generation_id: int = -1
    member_id: str = ""


# ------------------------------------------------------------------- protocols
class Sequencing(Protocol):
    """Offsets: commits from agents, reads of where batches live, producer ids."""

    async def commit(self, requests: list[CommitRequest]) -> CommitAnswer:
        """Commit segments in one durable round, in order. Safe to resend.

        Raises:
            Unavailable: the service is closed or unreachable (resend).
        """
        ...

    async def locate(self, request: LocateRequest) -> LocateAnswer: ...

    async def list_offsets(self, queries: list[tuple[str, int, int]]) -> list[OffsetAnswer]:
        """Kafka ListOffsets for ``(topic, partition, timestamp)`` queries: -2 earliest,
        -1 latest, -3 the newest batch (KIP-734), else the first batch whose max
        timestamp is >= ``timestamp``. Per-query errors in the answers."""
        ...

    async def init_producer_id(self, transactional_id: str | None = None) -> ProducerIdentity:
        """Raises InvalidRequest, StorageUnavailable, Fenced."""
        ...


class Topics(Protocol):
    async def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Raises InvalidTopic, InvalidPartitions, InvalidConfig, TopicAlreadyExists."""
        ...

    async def delete_topic(self, name: str) -> None:
        """Raises UnknownTopicOrPartition."""
        ...

    async def create_partitions(self, name: str, total: int) -> TopicInfo:
        """Raises UnknownTopicOrPartition, InvalidPartitions."""
        ...

    async def list_topics(self) -> list[TopicInfo]: ...

    async def describe_topic(self, name: str) -> TopicInfo:
        """Raises UnknownTopicOrPartition."""
        ...

    async def watch_catalog(self, version: int, timeout_s: float) -> int:
        """The catalog version, as soon as it differs from ``version`` (a topic was
        deleted, or the service restarted), or at ``timeout_s``. Agents long-poll this
        to forget cached batch locations of deleted topics within milliseconds."""
        ...


class Groups(Protocol):
    """Kafka's classic consumer-group coordinator, and committed offsets."""

    async def join_group(self, request: JoinRequest) -> JoinResult: ...

    async def sync_group(self, request: SyncRequest) -> SyncResult: ...

    async def heartbeat(self, request: HeartbeatRequest) -> None:
        """Raises a GroupError (RebalanceInProgress: rejoin; UnknownMemberId, ...)."""
        ...

    async def leave_group(self, request: LeaveRequest) -> LeaveResult: ...

    async def list_groups(self, states: list[str] | None = None) -> list[GroupListing]: ...

    async def describe_groups(self, group_ids: list[str]) -> list[GroupDescription]: ...

    async def delete_groups(self, group_ids: list[str]) -> list[GroupDeletion]:
        """Delete empty groups and their committed offsets."""
        ...

    async def commit_offsets(self, request: OffsetCommitRequest) -> None:
        """Raises a GroupError (membership), InvalidRequest, UnknownTopicOrPartition."""
        ...

    async def fetch_offsets(
        self, group_id: str, partitions: list[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]: ...


class Registry(Protocol):
    """The cluster's own bookkeeping: settings, and the live agents (their leases)."""

    async def settings(self) -> Settings: ...

    async def register_agent(self, index: int, address: BrokerInfo) -> None: ...

    async def agent_address(self, index: int) -> BrokerInfo | None: ...

    async def agent_heartbeat(
        self, record: AgentRecord, known_version: int, wait_s: float
    ) -> FleetView:
        """Renew the agent's lease; the fleet once it differs from ``known_version``."""
        ...

    async def deregister_agent(self, agent_id: int) -> None: ...

    async def fleet(self) -> FleetView: ...


class Acls(Protocol):
    """Authorization data (core/acl.py); agents enforce it from their own copy."""

    async def create_acls(self, bindings: list[AclBinding]) -> list[AclOutcome]:
        """Store bindings; per binding, it or InvalidRequest. Raises StorageUnavailable."""
        ...

    async def describe_acls(self, acl_filter: AclFilter) -> list[AclBinding]:
        """Raises InvalidRequest (an UNKNOWN code in the filter)."""
        ...

    async def delete_acls(self, filters: list[AclFilter]) -> list[AclOutcome]:
        """Per filter, the bindings it deleted (or InvalidRequest)."""
        ...

    async def watch_acls(self, version: int, timeout_s: float) -> AclSnapshot:
        """Every binding once the ACL version differs from ``version``, else after
        ``timeout_s`` the version alone."""
        ...


class Credentials(Protocol):
    """SCRAM credentials (core/scram.py): stored salted and hashed, journaled like the
    rest of the metadata; agents look one up per SASL login."""

    async def alter_scram_credentials(
        self, upserts: list[ScramCredential], deletions: list[tuple[str, str]]
    ) -> None:
        """Store ``upserts`` and forget ``(user, mechanism)`` pairs, in one write.

        Raises:
            InvalidRequest, StorageUnavailable, Fenced.
        """
        ...

    async def scram_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """The credential of ``user`` for ``mechanism``, or None."""
        ...

    async def describe_scram_credentials(self, users: list[str] | None) -> list[ScramUserInfo]:
        """User, mechanism and iterations of every credential (of ``users`` if given)."""
        ...


class MetadataClient(Sequencing, Topics, Groups, Registry, Acls, Credentials, Protocol):
    """Everything the metadata service answers."""
