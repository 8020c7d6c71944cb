"""Consumer: assign partitions or subscribe through a consumer group, poll records,
commit offsets.

Positions follow Kafka's: ``position(tp)`` is the offset of the next record ``poll``
returns. A partition without a position starts from the group's committed offset (when
a ``group_id`` is set) or from ``auto_offset_reset``. Fetches cover every assigned
partition in one agent call and long-poll up to ``fetch_max_wait_ms``.

``subscribe`` makes the consumer a member of its consumer group, in the same group
coordinator Kafka clients use (``client/group_member.py`` runs the membership on a
background thread). Rules this module keeps for it:

1. Rebalance callbacks and commits run on the caller's thread, inside ``poll`` (and
   ``close``/``unsubscribe``), as Kafka's clients run them: ``on_revoke`` before the
   partitions are given up (after the auto-commit), ``on_assign`` after new ones arrive.
2. ``poll`` never waits on group membership longer than its own timeout: it serves
   the events the member thread delivered and fetches the partitions it owns.
3. Commits name the member and generation of the last assignment, so the coordinator
   refuses those of a member the group moved on from.
4. One metadata or agent call per poll, commit, ``lag`` or seek batch; never one per
   record.

A Consumer is used from one thread at a time (its poll thread), like Kafka's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from ray_stream.actors import handles
from ray_stream.client.fetcher import EARLIEST, LATEST, ConsumerRecord, Fetcher
from ray_stream.client.group_calls import RayGroupCalls
from ray_stream.client.group_member import Assignment, GroupMember, MemberOptions, Revocation
from ray_stream.core.metadata_api import OffsetCommitRequest
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import (
    InvalidConfig,
    InvalidRequest,
    OffsetOutOfRange,
    RayStreamError,
    UnknownTopicOrPartition,
)

__all__ = ["Consumer", "ConsumerRecord", "RebalanceCallback"]

log = logging.getLogger(__name__)

RebalanceCallback = Callable[[list[TopicPartition]], None]


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
    """Reads records from assigned (or group-assigned) partitions.

    Args:
        cluster: the Cluster handle.
        group_id: commit and resume offsets under this consumer group; ``subscribe``
            joins it.
        auto_offset_reset: where a partition without a committed offset starts:
            "earliest", "latest" or "none" (raise OffsetOutOfRange).
        max_poll_records: at most this many records per ``poll``.
        fetch_max_wait_ms: how long an agent holds a fetch open waiting for data.
        max_partition_fetch_bytes: per-partition bound of one fetch.
        agent: which agent to read through (default: spread consumers over the agents).
        zone: this client's availability zone: it reads through an agent of that zone
            when one is alive (no cross-zone traffic), else through any agent. Also the
            rack id of its group subscription.
        enable_auto_commit: commit the positions of the records ``poll`` returned every
            ``auto_commit_interval_ms`` (from ``poll``), before partitions are revoked,
            and on ``close``. Off by default: call ``commit`` (Kafka's clients default
            to on).
        auto_commit_interval_ms: how often auto-commit commits (one metadata call).
        session_timeout_ms: with ``subscribe``: how long the group waits for this
            member's heartbeat before giving its partitions to others. The cluster
            accepts ``group_min_session_timeout_ms``..``group_max_session_timeout_ms``
            (6 s..30 min by default).
        heartbeat_interval_ms: with ``subscribe``: time between heartbeats (one
            metadata call each); also how soon a rebalance is noticed.
        max_poll_interval_ms: with ``subscribe``: a consumer that does not ``poll`` for
            this long leaves the group (its partitions go to the others) and rejoins
            at its next poll; also how long a rebalance waits for every member.
        partition_assignment_strategy: with ``subscribe``: the assignors this member
            offers, in preference order ("range", "roundrobin"; a list or a
            comma-separated string). The default matches confluent-kafka's, so mixed
            groups agree on "range".
        metadata_max_age_ms: with ``subscribe``: how often the group leader looks for
            new partitions of the group's topics (one metadata call) and rebalances.
        client_id: names this member in the group (member ids start with it).

    Raises:
        InvalidConfig: an option is out of range (the message names it).
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
        enable_auto_commit: bool = False,
        auto_commit_interval_ms: int = 5_000,
        session_timeout_ms: int = 45_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        partition_assignment_strategy: str | Sequence[str] = ("range", "roundrobin"),
        metadata_max_age_ms: int = 300_000,
        client_id: str = "ray_stream-consumer",
    ) -> None:
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise InvalidConfig(
                "auto_offset_reset must be 'earliest', 'latest' or 'none', "
                f"got {auto_offset_reset!r}"
            )
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise InvalidConfig("group_id must be a non-empty str")
        if not isinstance(auto_commit_interval_ms, int) or auto_commit_interval_ms < 1:
            raise InvalidConfig(
                f"auto_commit_interval_ms must be >= 1, got {auto_commit_interval_ms!r}"
            )
        self._member_options = MemberOptions(
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            metadata_max_age_ms=metadata_max_age_ms,
            assignors=partition_assignment_strategy
            if isinstance(partition_assignment_strategy, str)
            else tuple(partition_assignment_strategy),
            client_id=client_id,
        )
        self._cluster = cluster
        self.group_id = group_id
        self._reset = auto_offset_reset
        self._max_poll_records = max_poll_records
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self.zone = zone
        self._fetcher = Fetcher(
            cluster,
            agent_index=agent if agent is not None else id(self) // 16,
            zone=zone,
            auto_offset_reset=auto_offset_reset,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
        )
        self._meta = cluster.metadata
        self._closed = False
        self._auto_commit = enable_auto_commit
        self._auto_commit_s = auto_commit_interval_ms / 1000
        self._next_auto_commit_s = time.monotonic() + self._auto_commit_s
        self._last_committed: dict[TopicPartition, int] = {}
        self._member: GroupMember | None = None
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None

    # -------------------------------------------------------------- assignment

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions (replacing any earlier assignment).

        Raises:
            UnknownTopicOrPartition: a topic or partition does not exist.
            InvalidRequest: the consumer is subscribed (``unsubscribe`` first).
        """
        if self._member is not None:
            raise InvalidRequest("assign() and subscribe() exclude each other: unsubscribe() first")
        tps = [_tp(p) for p in partitions]
        counts: dict[str, int] = {}
        for tp in tps:
            if tp.topic not in counts:
                counts[tp.topic] = self._cluster.describe_topic(tp.topic).partitions
            if not 0 <= tp.partition < counts[tp.topic]:
                raise UnknownTopicOrPartition(
                    f"partition {tp.partition} does not exist in topic {tp.topic!r} "
                    f"(0..{counts[tp.topic] - 1})"
                )
        self._set_assignment(tps)

    def assign_topic(self, topic: str) -> None:
        """Assign every partition of ``topic``."""
        count = self._cluster.describe_topic(topic).partitions
        self.assign([TopicPartition(topic, p) for p in range(count)])

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer reads now (with ``subscribe``: as of the last
        ``poll``, which applies the group's assignments)."""
        return list(self._fetcher.partitions)

    def _set_assignment(self, tps: list[TopicPartition]) -> None:
        self._fetcher.set_partitions(tps)
        keep = set(tps)
        self._last_committed = {tp: o for tp, o in self._last_committed.items() if tp in keep}

    # -------------------------------------------------------------- group

    def subscribe(
        self,
        topics: str | Iterable[str],
        *,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Join the consumer group ``group_id`` and read the partitions it assigns
        this member out of ``topics`` (Kafka's classic protocol, protocol type
        "consumer", the assignors of ``partition_assignment_strategy``). Returns at
        once; ``poll`` applies assignments as they arrive. Calling it again replaces
        the topics (the group rebalances) and the callbacks.

        An assigned partition starts at the group's committed offset, else where
        ``auto_offset_reset`` says.

        Args:
            topics: topic names (a topic need not exist yet: the group leader notices
                it within ``metadata_max_age_ms``).
            on_assign: called from ``poll`` with the partitions the group assigned this
                member, after they are assigned (``seek`` works on them here).
            on_revoke: called before this member gives its partitions up (from
                ``poll`` when the group rebalances, and from ``close``/``unsubscribe``),
                after the auto-commit; a ``commit`` here is the last one that counts.
                Also called, without the auto-commit, for partitions lost because the
                group removed this member (session timeout, poll timeout).

        Raises:
            InvalidRequest: no ``group_id``, no topics, or partitions were assigned
                with ``assign`` (Kafka's clients refuse mixing the two).
        """
        if not self.group_id:
            raise InvalidRequest(
                "subscribe needs a group_id: create the consumer with group_id=..."
            )
        if self._closed:
            raise InvalidRequest("consumer is closed")
        names = [topics] if isinstance(topics, str) else list(topics)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise InvalidRequest(f"subscribe takes a non-empty list of topic names, got {topics!r}")
        if self._member is None and self._fetcher.partitions:
            raise InvalidRequest("assign() and subscribe() exclude each other: assign([]) first")
        self._on_assign, self._on_revoke = on_assign, on_revoke
        if self._member is not None:
            self._member.resubscribe(names)
            return
        self._member = GroupMember(
            RayGroupCalls(self._meta),
            group_id=self.group_id,
            topics=names,
            options=self._member_options,
            rack=self.zone,
        )
        self._member.start()

    def subscription(self) -> list[str]:
        """The topics ``subscribe`` named (empty when not subscribed)."""
        return list(self._member.topics) if self._member is not None else []

    def unsubscribe(self) -> None:
        """Give the partitions up (auto-commit, ``on_revoke``) and leave the group."""
        member = self._member
        if member is None:
            self._set_assignment([])
            return
        try:
            self._give_up(member, lost=False)  # commits as the member: it is still one
        finally:
            self._member = self._on_assign = self._on_revoke = None
            member.close()

    def _serve_group(self, wait_s: float = 0.0) -> None:
        """Apply what the member thread delivered, in order (rule 1), waiting up to
        ``wait_s`` for the first event.

        Raises:
            GroupError, RayStreamError: the membership stopped for good (e.g.
                InconsistentGroupProtocol: the group's members offer no common assignor).
        """
        member = self._member
        if member is None:
            return
        member.polled()
        if member.failure is not None:
            raise member.failure
        event = member.next_event(wait_s)
        while event is not None:
            if isinstance(event, Revocation):
                self._give_up(member, lost=event.lost)
            else:
                self._take(event)
            event = member.next_event(0)

    def _give_up(self, member: GroupMember, *, lost: bool) -> None:
        partitions = self.assignment()
        try:
            if not lost and self._auto_commit:
                self._commit_quietly()
            if self._on_revoke is not None and partitions:
                self._on_revoke(partitions)
        finally:
            self._set_assignment([])
            member.revoked()

    def _take(self, event: Assignment) -> None:
        self._set_assignment(list(event.partitions))
        if self._on_assign is not None:
            self._on_assign(list(event.partitions))

    # -------------------------------------------------------------- positions

    def seek(self, partition: TopicPartition | tuple[str, int], offset: int) -> None:
        """Make ``offset`` the next record ``poll`` returns for this partition."""
        tp = self._owned(partition)
        if not isinstance(offset, int) or offset < 0:
            raise InvalidRequest(f"offset must be a non-negative int, got {offset!r}")
        self._fetcher.seek(tp, offset)

    def seek_to_beginning(
        self, partitions: Iterable[TopicPartition | tuple[str, int]] | None = None
    ) -> None:
        """Seek these assigned partitions (default: all) to their log start."""
        self._seek_to(partitions, EARLIEST)

    def seek_to_end(
        self, partitions: Iterable[TopicPartition | tuple[str, int]] | None = None
    ) -> None:
        """Seek these assigned partitions (default: all) to their high watermark."""
        self._seek_to(partitions, LATEST)

    def _seek_to(
        self, partitions: Iterable[TopicPartition | tuple[str, int]] | None, spec: int
    ) -> None:
        tps = [self._owned(p) for p in partitions] if partitions is not None else self.assignment()
        for tp, offset in self._fetcher.list_offsets(tps, spec).items():
            self._fetcher.seek(tp, offset)

    def position(self, partition: TopicPartition | tuple[str, int]) -> int:
        """The offset of the next record ``poll`` returns for this assigned partition."""
        tp = self._owned(partition)
        self._init_positions()
        return self._fetcher.positions[tp]

    def lag(self) -> dict[TopicPartition, int]:
        """Records each assigned partition has beyond this consumer's position: its
        high watermark minus ``position`` (one metadata call)."""
        self._init_positions()
        ends = self._fetcher.list_offsets(self.assignment(), LATEST)
        positions = self._fetcher.positions
        return {tp: max(end - positions[tp], 0) for tp, end in ends.items()}

    def _owned(self, partition: TopicPartition | tuple[str, int]) -> TopicPartition:
        tp = _tp(partition)
        if tp not in self._fetcher.partitions:
            raise InvalidRequest(f"{tp.topic}[{tp.partition}] is not assigned to this consumer")
        return tp

    # ------------------------------------------------------------------ poll

    def poll(self, timeout: float = 1.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Records from the assigned partitions, waiting up to ``timeout`` seconds for
        some. With ``subscribe``, also where rebalance callbacks and auto-commits run.

        Raises:
            InvalidRequest: closed, or neither assigned nor subscribed.
            GroupError: the group membership failed for good (see ``subscribe``).
        """
        if self._closed:
            raise InvalidRequest("consumer is closed")
        if self._member is None and not self._fetcher.partitions:
            raise InvalidRequest("no partitions assigned: call assign() or subscribe() first")
        limit = max_records or self._max_poll_records
        deadline = time.monotonic() + timeout
        self._serve_group()
        self._maybe_auto_commit()
        fetcher = self._fetcher
        while not fetcher.buffered:
            remaining = deadline - time.monotonic()
            if not fetcher.partitions:  # subscribed, waiting for an assignment
                if remaining <= 0:
                    break
                self._serve_group(wait_s=min(remaining, 1.0))  # 1 s: polled() stays fresh
                continue
            self._init_positions()
            fetcher.fetch(max_wait_ms=max(0, min(int(remaining * 1000), self._fetch_max_wait_ms)))
            self._serve_group()
            if fetcher.buffered or time.monotonic() >= deadline:
                break
        return fetcher.take(limit)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        while not self._closed:
            yield from self.poll(timeout=1.0)

    async def poll_async(
        self, timeout: float = 1.0, max_records: int | None = None
    ) -> list[ConsumerRecord]:
        """``poll`` for asyncio code: it runs in a worker thread, so the event loop
        keeps serving while the fetch waits. Rebalance callbacks run in that thread.
        One poll at a time: await it before calling anything else on this consumer."""
        return await asyncio.to_thread(self.poll, timeout, max_records)

    def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        """``async for record in consumer``: records until the consumer is closed."""
        return self._records_async()

    async def _records_async(self) -> AsyncIterator[ConsumerRecord]:
        while not self._closed:
            for record in await self.poll_async(timeout=1.0):
                yield record

    def _init_positions(self) -> None:
        """Rule: a partition without a position starts at the group's committed offset,
        else where ``auto_offset_reset`` says (one call for each, for all of them)."""
        missing = self._fetcher.unpositioned()
        if not missing:
            return
        committed = self._committed(missing) if self.group_id else {}
        unknown = [tp for tp in missing if tp not in committed]
        if unknown and self._reset == "none":
            tp = unknown[0]
            raise OffsetOutOfRange(
                f"no committed offset for {tp.topic}[{tp.partition}] and auto_offset_reset='none'"
            )
        spec = EARLIEST if self._reset == "earliest" else LATEST
        self._fetcher.start_at({**committed, **self._fetcher.list_offsets(unknown, spec)})
        self._last_committed.update(committed)  # auto-commit skips what did not move

    # ---------------------------------------------------------------- commits

    def commit(self, offsets: dict[TopicPartition | tuple[str, int], int] | None = None) -> None:
        """Commit the current positions (or the given ``{partition: next offset}``) for
        the group. A subscribed consumer commits as the member of its last assignment.

        Raises:
            InvalidRequest: the consumer has no group_id.
            GroupError: the coordinator refused the commit: IllegalGeneration or
                UnknownMemberId (the group rebalanced without this member: its
                partitions may be another's now), RebalanceInProgress (retry after the
                next ``poll``).
        """
        if not self.group_id:
            raise InvalidRequest("commit needs a group_id: create the consumer with group_id=...")
        if offsets is None:
            positions = self._fetcher.positions
            chosen = {tp: positions[tp] for tp in self._fetcher.partitions if tp in positions}
        else:
            chosen = {_tp(tp): int(o) for tp, o in offsets.items()}
        self._send_commit(chosen)

    def _send_commit(self, chosen: dict[TopicPartition, int]) -> None:
        if not chosen:
            return
        assert self.group_id is not None
        generation_id, member_id = (
            self._member.generation() if self._member is not None else (-1, "")
        )
        request = OffsetCommitRequest(
            self.group_id,
            {tp: CommittedOffset(offset=o) for tp, o in chosen.items()},
            generation_id=generation_id,
            member_id=member_id,
        )
        handles.get(self._meta.commit_offsets.remote(request))
        self._last_committed.update(chosen)

    def _commit_quietly(self) -> None:
        """Auto-commit: the positions that moved since the last commit; a refusal is
        logged (the records will be read again by whoever owns the partition next)."""
        if not self.group_id:
            return
        positions = self._fetcher.positions
        moved = {
            tp: positions[tp]
            for tp in self._fetcher.partitions
            if tp in positions and self._last_committed.get(tp) != positions[tp]
        }
        try:
            self._send_commit(moved)
        except RayStreamError as exc:
            log.warning("consumer group %s: auto-commit failed: %r", self.group_id, exc)

    def _maybe_auto_commit(self) -> None:
        if not self._auto_commit or time.monotonic() < self._next_auto_commit_s:
            return
        self._next_auto_commit_s = time.monotonic() + self._auto_commit_s
        self._commit_quietly()

    def committed(self, partition: TopicPartition | tuple[str, int]) -> int | None:
        """The group's committed offset of ``partition`` (None: none)."""
        tp = _tp(partition)
        if not self.group_id:
            raise InvalidRequest("committed needs a group_id")
        return self._committed([tp]).get(tp)

    def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        got = handles.get(self._meta.fetch_offsets.remote(self.group_id, tps))
        return {tp: c.offset for tp, c in got.items() if c is not None and c.offset >= 0}

    def close(self) -> None:
        """Stop: with ``subscribe``, give the partitions up (auto-commit, ``on_revoke``)
        and leave the group, so the others take them over at once; else auto-commit
        when enabled."""
        if self._closed:
            return
        self._closed = True
        if self._member is not None:
            self.unsubscribe()
        elif self._auto_commit:
            self._commit_quietly()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
