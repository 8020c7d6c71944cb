"""MetadataService: the only writer of metadata, with no Ray in it.

It answers the ``MetadataClient`` protocol (``core/metadata_api.py``): sequencing
(commits, locating batches, list offsets, producer ids), topics, consumer groups and the
agent registry. ``actors/handles.py`` runs it as the named ``metadata`` actor (its Ray
shell is ``ray.remote`` applied to this class); unit tests use it in-process. All
methods run on one event loop, so sequencer state is only touched from that loop.

Rules this module keeps (docs/design/0002-metadata-durability.md):

1. **The object store is the source of truth.** ``__init__`` rebuilds the state from its
   snapshots and journal (``ObjectJournal.recover``) and fences older incarnations with a
   higher epoch; the local SQLite file is this incarnation's cache.
2. **One write path.** Every change goes through ``MetadataWriter`` (metadata/writer.py):
   planned on the sequencer, written to the SQLite cache, journaled (one create-only
   PUT), and only then applied; commits are group-committed in rounds, and a fenced
   incarnation never journals again.
3. **Durable before visible.** Readers never see a change that is not in the journal.
4. **Group commit.** ``commit`` and ``commit_offsets`` share one queue: one round is one
   plan, one SQLite transaction and one journal PUT.
5. **Long polls are woken by commits**, never by polling.
6. **Orphans are swept by age.** A segment no batch references is deleted once its ULID
   time is older than ``orphan_grace_s``; the writer refuses commits of segments older
   than half of that, so a sweep can never delete an object a commit is about to
   reference.
7. **Catalog versions.** Every commit and locate answer carries ``catalog_version``,
   which changes whenever a topic is deleted and with every new incarnation; agents
   drop the batch locations they cached when it changes (a recreated topic reuses
   offsets).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TypeVar

from ray_stream.clock import Clock, SystemClock
from ray_stream.config import Settings
from ray_stream.core.acl import AclBinding, AclFilter, AclOutcome, AclSnapshot
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.group import (
    GroupDeletion,
    GroupDescription,
    GroupListing,
    JoinResult,
    LeaveResult,
    SyncResult,
)
from ray_stream.core.keys import SEGMENT_PREFIX, segment_time_ms
from ray_stream.core.metadata_api import (
    CommitAnswer,
    CommitRequest,
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    LocateAnswer,
    LocateRequest,
    OffsetAnswer,
    OffsetCommitRequest,
    ProducerIdentity,
    SyncRequest,
)
from ray_stream.core.metrics import Meter, MetricsSink
from ray_stream.core.scram import ScramCredential, ScramUserInfo, mechanism_code
from ray_stream.core.sequencer import Changes
from ray_stream.core.types import BrokerInfo, CommittedOffset, TopicInfo, TopicPartition
from ray_stream.errors import GroupIdNotFound, InvalidRequest, RayStreamError, StorageUnavailable
from ray_stream.metadata.acl_service import AclService
from ray_stream.metadata.group_service import GroupService
from ray_stream.metadata.object_journal import ObjectJournal
from ray_stream.metadata.registry import AgentRegistry
from ray_stream.metadata.writer import MetadataWriter
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.metered import MeteredStore
from ray_stream.storage.url import open_store

__all__ = ["MetadataService"]

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 10.0  # consumer-group lag gauges: Ray exports every 10 s anyway

T = TypeVar("T")


class MetadataService:
    """Topics, offsets, idempotent producers and consumer groups (see the module doc).

    Args:
        settings: cluster settings (object store URL, data_dir, intervals).
        store: the object store (default: opened from ``settings``); tests inject one.
        clock: wall time for the orphan sweep and segment freshness, monotonic time for
            group sessions and snapshots (default ``SystemClock``); long polls are bounded
            by the event loop's time.
        settle_heap: the service owns its process (the metadata actor): once recovered,
            freeze the heap so full garbage collections do not rescan the recovered
            state (``gc.freeze``; a pause of ~0.45 s at 1.25M references otherwise).
        metrics: where the metadata actor's metrics go (core/metrics.py): its epoch,
            commit rounds, object-store requests, and every ``LAG_INTERVAL_S`` each
            consumer group's lag per partition; None: nowhere.

    Raises:
        StorageUnavailable: the object store stayed unreachable for
            ``metadata_start_timeout_s``.
        CorruptData: the journal has a gap or an unreadable entry.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ObjectStore | None = None,
        clock: Clock | None = None,
        settle_heap: bool = False,
        metrics: MetricsSink | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._meter = Meter(metrics, {"ray_namespace": settings.namespace})
        self.store = store if store is not None else open_store(settings.resolved_object_store)
        # Requests go through ``_io`` (counted); ``store`` stays the store as opened, for
        # the test hooks that reach its faults (testing/nemesis.py).
        self._io: ObjectStore = self.store
        if self._meter.enabled:
            self._io = MeteredStore(self.store, self._meter.child(component="metadata"))
        self._journal = ObjectJournal(self._io, put_timeout_s=settings.journal_put_timeout_s)
        started = time.perf_counter()
        recovered = self._journal.recover(settings, timeout_s=settings.metadata_start_timeout_s)
        self._seq = recovered.seq
        self._closed = False
        self._waiters: dict[tuple[str, int], asyncio.Event] = {}
        self._catalog_version = recovered.epoch << 32  # + 1 per topic deletion (rule 7)
        self._catalog_changed = asyncio.Event()
        self._groups = GroupService(
            self._clock,
            min_session_timeout_ms=settings.group_min_session_timeout_ms,
            max_session_timeout_ms=settings.group_max_session_timeout_ms,
        )
        self._registry = AgentRegistry(self._clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer = MetadataWriter(
            settings,
            seq=self._seq,
            cache=recovered.cache,
            journal=self._journal,
            clock=self._clock,
            on_apply=self._wake,
            spawn=self._spawn,
            meter=self._meter,
        )
        self._acls = AclService(self._seq, self._writer, epoch=recovered.epoch)
        self._meter.set("ray_stream_metadata_epoch", recovered.epoch)
        self._stats: dict[str, Any] = {
            "orphans_deleted": 0,
            "recovery_s": time.perf_counter() - started,
            "recovered_snapshot": recovered.snapshot_index,
            "recovered_entries": recovered.replayed,
        }
        if settle_heap:
            gc.collect()
            gc.freeze()
        log.info(
            "metadata epoch %d: snapshot %d + %d journal entries in %.2fs",
            recovered.epoch,
            recovered.snapshot_index,
            recovered.replayed,
            self._stats["recovery_s"],
        )
        try:
            loop = asyncio.get_running_loop()  # Ray runs an async actor's __init__ in its loop
        except RuntimeError:
            loop = None
        self._sweeper: asyncio.Task[None] | None = None
        if loop is not None and settings.orphan_sweep_interval_s > 0:
            self._sweeper = loop.create_task(self._sweep_loop())
        self._lag_reporter: asyncio.Task[None] | None = None
        if loop is not None and self._meter.enabled:
            self._lag_reporter = loop.create_task(self._lag_loop())

    # ----------------------------------------------------------------- topics
    async def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic with a fresh topic id; all partitions start empty at offset 0.

        Raises:
            InvalidTopic, InvalidPartitions, InvalidConfig, TopicAlreadyExists,
            StorageUnavailable, Fenced.
        """
        topic_id = uuid.uuid4().hex

        def plan() -> tuple[None, Changes]:
            return None, self._seq.plan_create_topic(name, partitions, config, topic_id=topic_id)

        return await self._writer.write(plan, then=lambda _: self._seq.describe_topic(name))

    async def delete_topic(self, name: str) -> None:
        """Forget a topic, its batches, producer states and committed offsets.

        Raises:
            UnknownTopicOrPartition, StorageUnavailable, Fenced.
        """
        await self._writer.write(lambda: (None, self._seq.plan_delete_topic(name)), then=_same)

    async def create_partitions(self, name: str, total: int) -> TopicInfo:
        """Grow a topic to ``total`` partitions.

        Raises:
            UnknownTopicOrPartition, InvalidPartitions, StorageUnavailable, Fenced.
        """
        return await self._writer.write(
            lambda: (None, self._seq.plan_create_partitions(name, total)),
            then=lambda _: self._seq.describe_topic(name),
        )

    async def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name, with ``partition_info``."""
        return self._seq.list_topics()

    async def describe_topic(self, name: str) -> TopicInfo:
        """Raises UnknownTopicOrPartition."""
        return self._seq.describe_topic(name)

    async def watch_catalog(self, version: int, timeout_s: float) -> int:
        """The catalog version as soon as it differs from ``version``, or at ``timeout_s``
        (rule 7: agents long-poll this to drop cached locations of deleted topics)."""
        if version == self._catalog_version:
            changed = self._catalog_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(timeout_s, 0.0))
        return self._catalog_version

    # ------------------------------------------------------------- sequencing
    async def commit(self, requests: list[CommitRequest]) -> CommitAnswer:
        """Assign offsets to the batches of several segments in one commit round (one
        journal PUT), in the given order; answers once the round is durable.

        A resent request (same segment key) whose batches were already committed gets
        their original offsets with ``duplicate=True``: a segment key names one
        immutable object, so an agent may resend after any ambiguous failure.

        Returns:
            Per request, its results or the error that refused it (StorageUnavailable:
            the journal write failed or is in doubt; Fenced; Unavailable: the segment
            is too old to commit), with this incarnation's epoch.

        Raises:
            StorageUnavailable: the service is closed (the ``Sequencing`` contract: a
                whole-call failure is raised; resend to the next incarnation).
        """
        if self._closed:
            raise StorageUnavailable("the metadata service is closed")
        segments = await self._writer.commit_many(requests)
        return CommitAnswer(self._journal.epoch, self._catalog_version, tuple(segments))

    async def locate(self, request: LocateRequest) -> LocateAnswer:
        """Where the batches from each position's offset on live (see ``LocateRequest``).

        With ``wait_ms`` > 0, waits (woken by commits) until the located batches add up
        to ``min_bytes``, a position is in error, or the time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(request.wait_ms, 0) / 1000
        while True:
            answer = self._seq.locate_many(request.positions, catalog_version=self._catalog_version)
            remaining = deadline - loop.time()
            found = sum(answer.refs.length)
            if answer.errors or found >= request.min_bytes or remaining <= 0:
                return answer
            if not request.positions:  # nothing a commit could wake it for
                return answer
            await self._wait_for_commit(request.positions, remaining)

    async def list_offsets(self, queries: list[tuple[str, int, int]]) -> list[OffsetAnswer]:
        """ListOffsets for ``(topic, partition, timestamp)``; per-query errors."""
        return self._seq.list_offsets(queries)

    async def init_producer_id(self, transactional_id: str | None = None) -> ProducerIdentity:
        """A producer id and epoch; a known transactional id gets the next epoch.

        Raises:
            InvalidRequest, StorageUnavailable, Fenced.
        """
        pid, epoch = await self._writer.write(
            lambda: self._seq.plan_init_producer_id(transactional_id), then=_same
        )
        return ProducerIdentity(pid, epoch)

    async def _wait_for_commit(
        self, positions: Iterable[tuple[str, int, int, int]], timeout_s: float
    ) -> None:
        """Until a commit touches one of the partitions of ``positions`` (or timeout)."""
        events = {self._waiters.setdefault((t, p), asyncio.Event()) for t, p, _, _ in positions}
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _wake(self, changes: Changes) -> None:
        self._acls.observe(changes)
        if changes.deleted_topics:
            self._catalog_version += len(changes.deleted_topics)
            self._catalog_changed.set()
            self._catalog_changed = asyncio.Event()
        if not self._waiters:
            return
        for row in changes.partitions:
            event = self._waiters.pop((row.topic, row.partition), None)
            if event is not None:
                event.set()
        for name in changes.deleted_topics:
            for key in [k for k in self._waiters if k[0] == name]:
                self._waiters.pop(key).set()

    # ----------------------------------------------------------------- groups
    # Membership lives in memory (clients rejoin after a metadata restart); committed
    # offsets are durable in the sequencer.
    async def join_group(self, request: JoinRequest) -> JoinResult:
        """JoinGroup; blocks until the rebalance completes, like Kafka's coordinator."""
        return await self._groups.join_group(request)

    async def sync_group(self, request: SyncRequest) -> SyncResult:
        """SyncGroup; followers block until the leader sends the assignment."""
        return await self._groups.sync_group(request)

    async def heartbeat(self, request: HeartbeatRequest) -> None:
        """Raises a GroupError: RebalanceInProgress (rejoin), UnknownMemberId, ..."""
        error = await self._groups.heartbeat(request)
        if error is not None:
            raise error

    async def leave_group(self, request: LeaveRequest) -> LeaveResult:
        return await self._groups.leave_group(request)

    async def list_groups(self, states: list[str] | None = None) -> list[GroupListing]:
        """Groups with members, plus groups known only by committed offsets (state Empty,
        as after a metadata restart: membership lives in memory)."""
        listed = await self._groups.list_groups(states)
        known = {g.group_id for g in listed}
        if states is None or "empty" in {s.lower() for s in states}:
            listed += [
                GroupListing(g, "", "Empty") for g in self._seq.group_ids() if g not in known
            ]
        return listed

    async def describe_groups(self, group_ids: list[str]) -> list[GroupDescription]:
        """DescribeGroups; a group known only by its committed offsets is Empty."""
        described = await self._groups.describe_groups(group_ids)
        with_offsets = set(self._seq.group_ids())
        return [
            replace(d, state="Empty")
            if d.state == "Dead" and d.error is None and d.group_id in with_offsets
            else d
            for d in described
        ]

    async def delete_groups(self, group_ids: list[str]) -> list[GroupDeletion]:
        """Delete empty groups and their committed offsets (a group known only by its
        offsets, e.g. after a restart, is deleted too).

        Raises:
            StorageUnavailable, Fenced: deleting the offsets failed.
        """
        answers = await self._groups.delete_groups(group_ids)
        with_offsets = set(self._seq.group_ids())
        out: list[GroupDeletion] = []
        for answer in answers:
            error = answer.error
            if isinstance(error, GroupIdNotFound) and answer.group_id in with_offsets:
                error = None
            if error is None:
                await self._delete_group_offsets(answer.group_id)
            out.append(GroupDeletion(answer.group_id, error))
        return out

    async def _delete_group_offsets(self, group_id: str) -> None:
        await self._writer.write(
            lambda: (None, self._seq.plan_delete_group_offsets(group_id)), then=_same
        )

    async def commit_offsets(self, request: OffsetCommitRequest) -> None:
        """Check the committer's membership, then store the offsets (all or none) in the
        next commit round.

        Raises:
            GroupError (IllegalGeneration, UnknownMemberId, RebalanceInProgress),
            InvalidRequest, UnknownTopicOrPartition, StorageUnavailable, Fenced.
        """
        error = await self._groups.validate_offset_commit(
            request.group_id, generation_id=request.generation_id, member_id=request.member_id
        )
        if error is not None:
            raise error
        if request.offsets:
            offsets = {(tp.topic, tp.partition): o for tp, o in request.offsets.items()}
            await self._writer.commit_offsets(request.group_id, offsets)

    async def fetch_offsets(
        self, group_id: str, partitions: list[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of ``group_id``: all, or those of ``partitions`` that have one."""
        keys = None if partitions is None else [(tp.topic, tp.partition) for tp in partitions]
        found = self._seq.fetch_offsets(group_id, keys)
        return {TopicPartition(t, p): offset for (t, p), offset in found.items()}

    # ------------------------------------------------------------------- acls
    # Authorization data (metadata/acl_service.py); agents enforce it from their copy.
    async def create_acls(self, bindings: list[AclBinding]) -> list[AclOutcome]:
        """Store ACL bindings durably; per binding, it or InvalidRequest.

        Raises:
            StorageUnavailable, Fenced.
        """
        return await self._acls.create(bindings)

    async def describe_acls(self, acl_filter: AclFilter) -> list[AclBinding]:
        """The bindings the filter matches. Raises InvalidRequest."""
        return await self._acls.describe(acl_filter)

    async def delete_acls(self, filters: list[AclFilter]) -> list[AclOutcome]:
        """Delete what each filter matches; per filter, the bindings it deleted.

        Raises:
            StorageUnavailable, Fenced.
        """
        return await self._acls.delete(filters)

    async def watch_acls(self, version: int, timeout_s: float) -> AclSnapshot:
        """Every binding once the ACL version differs from ``version``, else after
        ``timeout_s`` the version alone (agents long-poll this)."""
        return await self._acls.watch(version, timeout_s)

    # ------------------------------------------------------------ credentials
    # SCRAM credentials (core/scram.py), salted and hashed; written like every change.
    async def alter_scram_credentials(
        self, upserts: list[ScramCredential], deletions: list[tuple[str, str]]
    ) -> None:
        """Store ``upserts`` and forget ``(user, mechanism)`` pairs, in one write.

        Raises:
            InvalidRequest: an unknown mechanism or a malformed credential.
            StorageUnavailable, Fenced.
        """
        for credential in upserts:
            if not isinstance(credential, ScramCredential) or not credential.user:
                raise InvalidRequest(f"not a SCRAM credential: {type(credential).__name__}")
            mechanism_code(credential.mechanism)
        for _, mechanism in deletions:
            mechanism_code(mechanism)
        await self._writer.write(
            lambda: (None, self._seq.plan_alter_scram(upserts, deletions)), then=_same
        )

    async def scram_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """The credential of ``user`` for ``mechanism``, or None."""
        return self._seq.scram_credential(user, mechanism)

    async def describe_scram_credentials(self, users: list[str] | None) -> list[ScramUserInfo]:
        """User, mechanism and iterations of every credential (of ``users`` if given)."""
        wanted = None if users is None else set(users)
        return [
            ScramUserInfo(c.user, c.mechanism, c.iterations)
            for c in self._seq.scram_credentials()
            if wanted is None or c.user in wanted
        ]

    # --------------------------------------------------------------- registry
    async def settings(self) -> Settings:
        """The settings this cluster was started with (for clients that attach)."""
        return self._settings

    async def register_agent(self, index: int, address: BrokerInfo) -> None:
        """Remember where agent ``index`` listens, so a restarted agent can reuse it."""
        self._registry.remember_address(index, address)

    async def agent_address(self, index: int) -> BrokerInfo | None:
        """The listener agent ``index`` last registered (this incarnation), if any."""
        return self._registry.last_address(index)

    async def agent_heartbeat(
        self, record: AgentRecord, known_version: int, wait_s: float
    ) -> FleetView:
        """Renew an agent's lease; the live fleet as soon as it differs from
        ``known_version``, else after ``wait_s`` (metadata/registry.py)."""
        return await self._registry.heartbeat(record, known_version, wait_s)

    async def deregister_agent(self, agent_id: int) -> None:
        """Take an agent out of the fleet (it stopped, or its node left)."""
        self._registry.deregister(agent_id)

    async def fleet(self) -> FleetView:
        """The live agents."""
        return self._registry.view()

    # ------------------------------------------------------------------ admin
    async def ping(self) -> dict[str, Any]:
        """Liveness plus state counts (topics, partitions, batches, segments, ...)."""
        return {
            "ok": True,
            **self._seq.counts(),
            "pending_commits": self._writer.pending,
            "epoch": self._journal.epoch,
        }

    async def stats(self) -> dict[str, Any]:
        """Group-commit, journal, snapshot and recovery counters."""
        journal = self._journal
        return {
            **self._writer.stats,
            **self._stats,
            "epoch": journal.epoch,
            "journal_index": journal.next_index - 1,
            "journal_puts": journal.puts,
            "journal_put_s": journal.put_s,
            "journal_put_bytes": journal.put_bytes,
            "in_doubt": journal.in_doubt is not None,
            "fenced": journal.fenced,
        }

    async def snapshot(self) -> int:
        """Write a snapshot of the current state now; returns the journal index it holds.

        Raises:
            Unavailable: a snapshot is already being written.
            StorageUnavailable, Fenced.
        """
        return await self._writer.snapshot()

    async def sweep_orphans(self) -> dict[str, int]:
        """Delete segment objects no batch references, older than ``orphan_grace_s``.

        Returns:
            ``{"listed": n, "deleted": m}``.

        Raises:
            StorageUnavailable: listing failed (deletes that fail are left for next time).
        """
        keys = await asyncio.to_thread(self._io.list, SEGMENT_PREFIX)
        cutoff_ms = self._clock.now_ms() - int(self._settings.orphan_grace_s * 1000)
        live, held = await self._writer.held_segments()
        doomed = [
            k
            for k in keys
            if k not in live
            and k not in held
            and (made := segment_time_ms(k)) is not None
            and made < cutoff_ms
        ]
        deleted = 0
        for key in doomed:
            try:
                await asyncio.to_thread(self._io.delete, key)
                deleted += 1
            except RayStreamError as exc:
                log.warning("orphan %s not deleted: %s", key, exc)
        self._stats["orphans_deleted"] += deleted
        return {"listed": len(keys), "deleted": deleted}

    async def close(self) -> None:
        """Let the write in flight finish, then close SQLite (before the actor is killed).

        Later writes raise StorageUnavailable; reads keep answering from memory.
        """
        self._closed = True
        await self._writer.close()  # refuses writes from here on
        await self._groups.close()
        for task in (self._sweeper, self._lag_reporter):
            if task is not None:
                task.cancel()

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._settings.orphan_sweep_interval_s)
            try:
                await self.sweep_orphans()
            except Exception as exc:  # loop boundary: log and try again next interval
                log.warning("orphan sweep failed: %s", exc)

    def group_lag(self) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, lag) for each partition a consumer group committed:
        high watermark minus committed offset (partitions of deleted topics skipped)."""
        found = []
        for group in self._seq.group_ids():
            for (topic, partition), committed in self._seq.fetch_offsets(group).items():
                try:
                    high, _ = self._seq.list_offset(topic, partition, -1)
                except RayStreamError:  # the topic or partition is gone
                    continue
                found.append((group, topic, partition, max(high - committed.offset, 0)))
        return found

    async def consumer_lag(self) -> list[tuple[str, str, int, int]]:
        """``group_lag`` for operators (``ray-stream status``)."""
        return self.group_lag()

    def report_lag(self) -> None:
        """Set each consumer group's lag gauge from ``group_lag``."""
        for group, topic, partition, lag in self.group_lag():
            self._meter.set(
                "ray_stream_consumer_group_lag",
                lag,
                consumer_group=group,
                topic=topic,
                partition=str(partition),
            )

    async def _lag_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(LAG_INTERVAL_S)
            try:
                self.report_lag()
            except Exception as exc:  # loop boundary: metrics never stop the service
                log.warning("consumer-group lag report failed: %r", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _same(value: T) -> T:
    return value
