"""MetadataActor: the only writer of metadata; a thin async shell over ``Sequencer``.

A plain class with async methods; ``actors/handles.py`` applies ``ray.remote`` (name
``metadata``, namespace ``ray_stream``, ``num_cpus=0``, ``max_restarts=-1``). All methods
run on one event loop, so sequencer state is only touched from that loop.

Rules this module keeps (docs/design/0002-metadata-durability.md):

1. **The object store is the source of truth.** ``__init__`` rebuilds the state from its
   snapshots and journal (``ObjectJournal.recover``) and fences older incarnations with a
   higher epoch; the local SQLite file is this incarnation's cache.
2. **One write path.** Every change goes through ``MetadataWriter``
   (actors/metadata_writer.py): planned on the sequencer, written to the SQLite cache,
   journaled (one create-only PUT), and only then applied; commits are group-committed
   in rounds, and a fenced incarnation never journals again.
3. **Durable before visible.** Readers never see a change that is not in the journal.
4. **Group commit.** ``commit``/``commit_with_epoch``/``commit_many_with_epoch`` and
   ``commit_offsets`` share one queue: one round is one plan, one SQLite transaction and
   one journal PUT.
5. **Waiters are woken by commits**, never by polling.
6. **Orphans are swept by age.** A segment no batch references is deleted once its ULID
   time is older than ``orphan_grace_s``; the writer refuses commits of segments older
   than half of that, so a sweep can never delete an object a commit is about to
   reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar

from ray_stream.actors.group_service import (
    GroupDescription,
    GroupService,
    JoinResult,
    SyncResult,
)
from ray_stream.actors.metadata_writer import MetadataWriter
from ray_stream.actors.object_journal import ObjectJournal
from ray_stream.clock import Clock, SystemClock
from ray_stream.config import Settings
from ray_stream.core.journal import segment_time_ms
from ray_stream.core.sequencer import Changes
from ray_stream.core.types import (
    BatchResult,
    BrokerInfo,
    CommitRequest,
    CommittedOffset,
    LocateResult,
    TopicInfo,
)
from ray_stream.errors import (
    InvalidRequest,
    RayStreamError,
    UnknownTopicOrPartition,
)
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)
T = TypeVar("T")


class MetadataActor:
    """Topics, offsets, idempotent producers and committed group offsets (see module doc)."""

    def __init__(
        self, settings: Settings, *, store: ObjectStore | None = None, clock: Clock | None = None
    ) -> None:
        """Rebuild the state from the object store and start a new epoch.

        Args:
            settings: cluster settings (object store URL, data_dir, intervals).
            store: the object store (default: opened from ``settings``); tests inject one.
            clock: wall time for the orphan sweep (default ``SystemClock``).

        Raises:
            StorageUnavailable: the object store stayed unreachable for
                ``metadata_start_timeout_s``.
            CorruptData: the journal has a gap or an unreadable entry.
        """
        self._settings = settings
        self._clock = clock or SystemClock()
        self.store = store if store is not None else open_store(settings.resolved_object_store)
        self._journal = ObjectJournal(self.store, put_timeout_s=settings.journal_put_timeout_s)
        started = time.perf_counter()
        recovered = self._journal.recover(settings, timeout_s=settings.metadata_start_timeout_s)
        self._store = recovered.cache
        self._seq = recovered.seq
        self._closed = False
        self._waiters: dict[tuple[str, int], asyncio.Event] = {}
        self._groups = GroupService()
        self._agents: dict[int, BrokerInfo] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer = MetadataWriter(
            settings,
            seq=self._seq,
            cache=self._store,
            journal=self._journal,
            clock=self._clock,
            on_apply=self._wake,
            spawn=self._spawn,
        )
        self._stats: dict[str, Any] = {
            "orphans_deleted": 0,
            "recovery_s": time.perf_counter() - started,
            "recovered_snapshot": recovered.snapshot_index,
            "recovered_entries": recovered.replayed,
        }
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

    # ---------------------------------------------------------------- commits
    async def commit(self, request: CommitRequest) -> list[BatchResult]:
        """Assign offsets to one segment's batches; returns once the round is durable.

        Per-batch failures (UnknownTopicOrPartition, OutOfOrderSequence,
        InvalidProducerEpoch) come back in the results, not raised.

        Raises:
            StorageUnavailable: the round's journal write failed or is in doubt (a later
                round re-writes it: the batches may still become visible).
            Fenced: a newer metadata incarnation took over; nothing of the round is kept.
            Unavailable: the segment is too old to commit safely (rewrite it).
        """
        return await self._writer.commit(request, retry=False)

    async def commit_with_epoch(self, request: CommitRequest) -> tuple[list[BatchResult], int]:
        """``commit`` for agents: safe to resend, and tells which epoch answered.

        A resent request (same segment key) whose batches were already committed gets
        their original offsets with ``duplicate=True``: a segment key names one
        immutable object, so the agent may retry after any ambiguous failure.

        Returns:
            The results and this incarnation's epoch (agents drop answers from an epoch
            older than one they have seen).

        Raises:
            As ``commit``.
        """
        results = await self._writer.commit(request, retry=True)
        return results, self._journal.epoch

    async def commit_many_with_epoch(
        self, requests: list[CommitRequest]
    ) -> tuple[list[list[BatchResult] | RayStreamError], int]:
        """``commit_with_epoch`` for several segments at once, all in one commit round
        (one journal PUT), in the given order. The agent's ``CommitQueue`` sends these.

        Returns:
            Per request, its results or the error that refused it (as ``commit`` raises:
            StorageUnavailable, Fenced, Unavailable), and this incarnation's epoch.
        """
        return await self._writer.commit_many(requests), self._journal.epoch

    async def snapshot(self) -> int:
        """Write a snapshot of the current state now; returns the journal index it holds.

        Raises:
            Unavailable: a snapshot is already being written.
            StorageUnavailable, Fenced.
        """
        return await self._writer.snapshot()

    # ------------------------------------------------------------ orphan sweep
    async def sweep_orphans(self) -> dict[str, int]:
        """Delete segment objects no batch references, older than ``orphan_grace_s``.

        Returns:
            ``{"listed": n, "deleted": m}``.

        Raises:
            StorageUnavailable: listing failed (deletes that fail are left for next time).
        """
        keys = await asyncio.to_thread(self.store.list, "segments/")
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
                await asyncio.to_thread(self.store.delete, key)
                deleted += 1
            except RayStreamError as exc:
                log.warning("orphan %s not deleted: %s", key, exc)
        self._stats["orphans_deleted"] += deleted
        return {"listed": len(keys), "deleted": deleted}

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._settings.orphan_sweep_interval_s)
            try:
                await self.sweep_orphans()
            except Exception as exc:  # loop boundary: log and try again next interval
                log.warning("orphan sweep failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ reads
    async def locate(self, topic: str, partition: int, offset: int, max_bytes: int) -> LocateResult:
        """Batches whose last offset >= ``offset``, in order, at least one, up to ``max_bytes``.

        Raises:
            UnknownTopicOrPartition, OffsetOutOfRange.
        """
        return self._seq.locate(topic, partition, offset, max_bytes)

    async def list_offset(self, topic: str, partition: int, timestamp: int) -> tuple[int, int]:
        """-2 earliest, -1 latest, else the first batch with max_timestamp >= timestamp.

        Raises:
            UnknownTopicOrPartition, InvalidRequest.
        """
        return self._seq.list_offset(topic, partition, timestamp)

    async def wait_for_data(self, positions: list[tuple[str, int, int]], timeout_s: float) -> bool:
        """Wait until some ``(topic, partition)`` has ``high_watermark > offset``.

        A position whose partition does not exist (or whose offset is past the high
        watermark) also counts as ready, so the caller answers its error at once.

        Returns:
            True as soon as a position is ready, False at ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            if self._any_ready(positions):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            events = {self._waiters.setdefault((t, p), asyncio.Event()) for t, p, _ in positions}
            waits = [asyncio.ensure_future(event.wait()) for event in events]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    def _any_ready(self, positions: Iterable[tuple[str, int, int]]) -> bool:
        for topic, partition, offset in positions:
            try:
                hwm = self._seq.partition_info(topic, partition).high_watermark
            except UnknownTopicOrPartition:
                return True
            if hwm != offset:
                return True
        return False

    def _wake(self, changes: Changes) -> None:
        if not self._waiters:
            return
        for row in changes.partitions:
            event = self._waiters.pop((row.topic, row.partition), None)
            if event is not None:
                event.set()
        for name in changes.deleted_topics:
            for key in [k for k in self._waiters if k[0] == name]:
                self._waiters.pop(key).set()

    # ----------------------------------------------------- groups and producers
    async def commit_offsets(
        self, group: str, offsets: dict[tuple[str, int], CommittedOffset]
    ) -> None:
        """Store committed offsets for ``group`` (all or none), in the next commit round.

        Raises:
            InvalidRequest, UnknownTopicOrPartition, StorageUnavailable, Fenced.
        """
        await self._writer.commit_offsets(group, offsets)

    async def fetch_offsets(
        self, group: str, partitions: list[tuple[str, int]] | None = None
    ) -> dict[tuple[str, int], CommittedOffset]:
        """Committed offsets of ``group``: all, or those of ``partitions`` that have one."""
        keys = None if partitions is None else [(t, p) for t, p in partitions]
        return self._seq.fetch_offsets(group, keys)

    async def delete_group_offsets(self, group: str) -> None:
        """Forget every committed offset of ``group`` (used with ``delete_groups``).

        Raises:
            StorageUnavailable, Fenced.
        """
        await self._writer.write(
            lambda: (None, self._seq.plan_delete_group_offsets(group)), then=_same
        )

    async def init_producer_id(self, transactional_id: str | None = None) -> tuple[int, int]:
        """A producer id and epoch; a known transactional id gets the next epoch.

        Raises:
            InvalidRequest, StorageUnavailable, Fenced.
        """
        return await self._writer.write(
            lambda: self._seq.plan_init_producer_id(transactional_id), then=_same
        )

    # ------------------------------------------------------ group membership
    # Membership lives in memory (clients rejoin after a metadata restart); committed
    # offsets are durable above. Each method delegates to GroupService with the same
    # signature, so any agent can coordinate any group.
    async def join_group(self, group_id: str, **kwargs: Any) -> JoinResult:
        return await self._groups.join_group(group_id, **kwargs)

    async def sync_group(self, group_id: str, **kwargs: Any) -> SyncResult:
        return await self._groups.sync_group(group_id, **kwargs)

    async def heartbeat(self, group_id: str, **kwargs: Any) -> str | None:
        return await self._groups.heartbeat(group_id, **kwargs)

    async def leave_group(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> tuple[str | None, list[tuple[str, str | None, str | None]]]:
        return await self._groups.leave_group(group_id, members)

    async def list_groups(self, states: list[str] | None = None) -> list[tuple[str, str, str]]:
        """Groups with members, plus groups known only by committed offsets (state Empty)."""
        listed = await self._groups.list_groups(states)
        known = {g for g, _, _ in listed}
        if states is None or "Empty" in states:
            listed += [(g, "consumer", "Empty") for g in self._seq.group_ids() if g not in known]
        return listed

    async def describe_groups(self, group_ids: list[str]) -> list[GroupDescription]:
        return await self._groups.describe_groups(group_ids)

    async def delete_groups(self, group_ids: list[str]) -> list[tuple[str, str | None]]:
        """Delete empty groups and their committed offsets."""
        answers = await self._groups.delete_groups(group_ids)
        with_offsets = set(self._seq.group_ids())
        out: list[tuple[str, str | None]] = []
        for group_id, error in answers:
            if error == "GROUP_ID_NOT_FOUND" and group_id in with_offsets:
                error = None  # known only by its offsets (e.g. after a restart)
            if error is None:
                await self.delete_group_offsets(group_id)
            out.append((group_id, error))
        return out

    async def validate_offset_commit(
        self, group_id: str, *, generation_id: int, member_id: str
    ) -> str | None:
        return await self._groups.validate_offset_commit(
            group_id, generation_id=generation_id, member_id=member_id
        )

    # ------------------------------------------------------------------ admin
    async def ping(self) -> dict[str, Any]:
        """Liveness plus state counts (topics, partitions, batches, segments, ...)."""
        return {
            "ok": True,
            **self._seq.counts(),
            "pending_commits": self._writer.pending,
            "epoch": self._journal.epoch,
        }

    async def epoch(self) -> int:
        """This incarnation's epoch (each restart has a higher one)."""
        return self._journal.epoch

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

    async def settings(self) -> Settings:
        """The settings this cluster was started with (for clients that attach)."""
        return self._settings

    async def register_agent(self, index: int, address: BrokerInfo) -> None:
        """Remember where agent ``index`` listens, so a restarted agent can reuse it."""
        self._agents[index] = address

    async def agent_address(self, index: int) -> BrokerInfo | None:
        """The listener agent ``index`` last registered (this incarnation), if any."""
        return self._agents.get(index)

    async def inject_faults(self, spec: dict[str, Any]) -> dict[str, int]:
        """Configure this actor's ``FaultyStore`` (chaos testing); returns its counts.

        Raises:
            InvalidRequest: the object store is not a ``faulty+`` one.
            InvalidConfig: a bad spec key or value.
        """
        store = _faulty(self.store)
        store.configure(spec)
        return dict(store.counts_dict())

    async def fault_counts(self) -> dict[str, int]:
        """Faults fired so far by this actor's ``FaultyStore``. Raises InvalidRequest."""
        return dict(_faulty(self.store).counts_dict())

    async def pid(self) -> int:
        return os.getpid()

    async def node_id(self) -> str:
        """The Ray node this incarnation runs on ('' outside Ray)."""
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""

    async def close(self) -> None:
        """Let the write in flight finish, then close SQLite (before the actor is killed).

        Later writes raise StorageUnavailable; reads keep answering from memory.
        """
        self._closed = True
        await self._writer.close()  # refuses writes from here on
        await self._groups.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


def _same(value: T) -> T:
    return value


def _faulty(store: ObjectStore) -> Any:
    from ray_stream.storage.faults import FaultyStore

    if not isinstance(store, FaultyStore):
        raise InvalidRequest(
            f"object store {store.url!r} is not fault-injecting (use a 'faulty+' URL)"
        )
    return store
