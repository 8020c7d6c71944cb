"""MetadataActor: the only writer of metadata; a thin async shell over ``Sequencer``.

A plain class with async methods; ``actors/handles.py`` applies ``ray.remote`` (name
``metadata``, namespace ``ray_stream``, ``num_cpus=0``, ``max_restarts=-1``). All methods
run on one event loop, so sequencer state is only touched from that loop.

Rules this module keeps (docs/design/0002-metadata-durability.md):

1. **The object store is the source of truth.** ``__init__`` rebuilds the state from its
   snapshots and journal (``ObjectJournal.recover``) and fences older incarnations with a
   higher epoch; the local SQLite file is this incarnation's cache.
2. **Durable before visible.** Every change is planned on the sequencer, written to the
   SQLite cache, then journaled (one create-only PUT), and only then applied. Readers
   never see a change that is not in the journal; a failed round answers its callers
   with an error and leaves memory untouched.
3. **One writer at a time.** ``_write_lock`` serializes plan -> persist -> journal ->
   apply. A round whose journal PUT is *in doubt* is re-written (and applied) before
   anything else is planned; a ``Fenced`` round means a newer incarnation exists: this
   one answers every later write with ``Fenced`` and never journals again.
4. **Group commit.** ``commit``/``commit_with_epoch``/``commit_many_with_epoch`` and
   ``commit_offsets`` queue; one committer task drains the queue into one round (one
   plan, one SQLite transaction, one journal PUT), answers every caller, and loops
   while more arrived.
5. **Waiters are woken by commits**, never by polling.
6. **Orphans are swept by age.** A segment no batch references is deleted once its ULID
   time is older than ``orphan_grace_s``; commits of segments older than half of that
   are refused, so a sweep can never delete an object a commit is about to reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ray_stream.actors.group_service import (
    GroupDescription,
    GroupService,
    JoinResult,
    SyncResult,
)
from ray_stream.actors.object_journal import ObjectJournal
from ray_stream.clock import Clock, SystemClock
from ray_stream.config import Settings
from ray_stream.core.journal import segment_time_ms
from ray_stream.core.sequencer import Changes, merge_changes
from ray_stream.core.types import (
    BatchResult,
    BrokerInfo,
    CommitRequest,
    CommittedOffset,
    LocateResult,
    TopicInfo,
)
from ray_stream.errors import (
    Fenced,
    InternalError,
    InvalidRequest,
    RayStreamError,
    StorageUnavailable,
    Unavailable,
    UnknownTopicOrPartition,
)
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Op:
    """One queued write: a segment commit, or a group's offset commit."""

    future: asyncio.Future[Any]
    request: CommitRequest | None = None
    retry: bool = False  # the agent path: dedup by segment key (see Sequencer.plan_commits)
    group: str = ""
    offsets: dict[tuple[str, int], CommittedOffset] | None = None


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
        self._write_lock = asyncio.Lock()
        self._queue: list[_Op] = []
        self._committing = False
        self._closed = False
        self._waiters: dict[tuple[str, int], asyncio.Event] = {}
        self._groups = GroupService()
        self._agents: dict[int, BrokerInfo] = {}
        self._since_snapshot = 0
        self._snapshot_at = self._clock.monotonic_s()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._snapshotting = False
        self._stats: dict[str, Any] = {
            "commit_rounds": 0,
            "commit_requests": 0,
            "batches_committed": 0,
            "duplicates": 0,
            "failed_rounds": 0,
            "transactions": 0,
            "persist_s": 0.0,
            "max_round_requests": 0,
            "snapshots": 0,
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

        return await self._locked_write(plan, then=lambda _: self._seq.describe_topic(name))

    async def delete_topic(self, name: str) -> None:
        """Forget a topic, its batches, producer states and committed offsets.

        Raises:
            UnknownTopicOrPartition, StorageUnavailable, Fenced.
        """
        await self._locked_write(lambda: (None, self._seq.plan_delete_topic(name)), then=_same)

    async def create_partitions(self, name: str, total: int) -> TopicInfo:
        """Grow a topic to ``total`` partitions.

        Raises:
            UnknownTopicOrPartition, InvalidPartitions, StorageUnavailable, Fenced.
        """
        return await self._locked_write(
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
        results: list[BatchResult] = await self._enqueue(
            _Op(asyncio.get_running_loop().create_future(), request)
        )
        return results

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
        future = asyncio.get_running_loop().create_future()
        results: list[BatchResult] = await self._enqueue(_Op(future, request, retry=True))
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
        loop = asyncio.get_running_loop()
        ops = [_Op(loop.create_future(), request, retry=True) for request in requests]
        self._queue.extend(ops)
        self._start_committer()
        answers = await asyncio.gather(*(op.future for op in ops), return_exceptions=True)
        return [_as_answer(answer) for answer in answers], self._journal.epoch

    async def _enqueue(self, op: _Op) -> Any:
        self._queue.append(op)
        self._start_committer()
        return await op.future

    def _start_committer(self) -> None:
        if not self._committing:
            self._committing = True
            self._spawn(self._commit_rounds())

    async def _commit_rounds(self) -> None:
        try:
            while self._queue:
                ops, self._queue = self._queue, []
                await self._commit_round(ops)
        finally:
            self._committing = False

    async def _commit_round(self, ops: list[_Op]) -> None:
        async with self._write_lock:
            try:
                await self._ready_to_write()
            except RayStreamError as exc:
                _fail(ops, exc)
                return
            commits = [op for op in ops if op.request is not None and self._fresh(op)]
            try:
                requests = [op.request for op in commits if op.request is not None]
                results, changes = self._seq.plan_commits(
                    requests, retries=[op.retry for op in commits]
                )
            except Exception as exc:  # a bug: answer the callers instead of hanging them
                _fail(ops, InternalError(f"planning a commit round failed: {exc!r}"))
                return
            parts, offset_ops = [changes], []
            for op in ops:
                if op.offsets is not None:
                    try:
                        parts.append(self._seq.plan_commit_offsets(op.group, op.offsets))
                        offset_ops.append(op)
                    except RayStreamError as exc:
                        op.future.set_exception(exc)
                    except Exception as exc:  # malformed input that slipped past the checks
                        op.future.set_exception(InvalidRequest(f"bad offset commit: {exc!r}"))
            try:
                await self._write(merge_changes(parts))
            except (StorageUnavailable, Fenced) as exc:
                self._stats["failed_rounds"] += 1
                _fail(commits + offset_ops, exc)
                return
            except Exception as exc:  # a bug: answer the callers instead of hanging them
                _fail(commits + offset_ops, InternalError(f"commit round failed: {exc!r}"))
                return
        self._count_round(commits, results, changes)
        for op, result in zip(commits, results, strict=True):
            if not op.future.done():
                op.future.set_result(result)
        for op in offset_ops:
            if not op.future.done():
                op.future.set_result(None)

    def _fresh(self, op: _Op) -> bool:
        """Refuse segments the orphan sweep may already consider (rule 6 of the module)."""
        assert op.request is not None
        key = op.request.segment_key
        made_ms = segment_time_ms(key)
        limit_ms = self._settings.orphan_grace_s * 500  # half the grace, in ms
        if made_ms is None or self._clock.now_ms() - made_ms < limit_ms:
            return True
        if op.retry and self._seq.is_referenced(key):
            return True  # a resend of a committed segment: answered as duplicates
        op.future.set_exception(
            Unavailable(
                f"segment {key} was written {(self._clock.now_ms() - made_ms) / 1000:.0f}s "
                f"ago, over orphan_grace_s/2; the orphan sweep may delete it: rewrite it"
            )
        )
        return False

    def _count_round(
        self, commits: list[_Op], results: list[list[BatchResult]], changes: Changes
    ) -> None:
        stats = self._stats
        stats["commit_rounds"] += 1
        stats["commit_requests"] += len(commits)
        stats["max_round_requests"] = max(stats["max_round_requests"], len(commits))
        stats["batches_committed"] += len(changes.batches)
        stats["duplicates"] += sum(r.duplicate for rs in results for r in rs)

    # ------------------------------------------------------------- durability
    async def _locked_write(
        self, plan: Callable[[], tuple[T, Changes]], *, then: Callable[[T], R]
    ) -> R:
        async with self._write_lock:
            await self._ready_to_write()
            value, changes = plan()
            await self._write(changes)
            return then(value)

    async def _ready_to_write(self) -> None:
        """Refuse writes when closed or fenced; settle a journal entry left in doubt.

        Raises:
            StorageUnavailable, Fenced.
        """
        if self._closed:
            raise StorageUnavailable("the metadata actor is closed")
        if self._journal.fenced:
            raise Fenced(f"metadata epoch {self._journal.epoch} was fenced by a newer one")
        if self._journal.in_doubt is not None:
            changes = await asyncio.to_thread(self._journal.resolve)
            if changes is not None:
                self._apply(changes)

    async def _write(self, changes: Changes) -> None:
        """Persist to the SQLite cache, journal, then apply; the caller holds the lock.

        Raises:
            StorageUnavailable: nothing was applied (the entry may be in doubt).
            Fenced: nothing was applied, ever will be, by this incarnation.
        """
        if changes.empty:
            return
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._store.persist, changes)
        except StorageUnavailable:
            raise
        except Exception as exc:  # the store translates sqlite errors; anything else too
            raise StorageUnavailable(f"metadata write failed: {exc!r}") from exc
        try:
            await asyncio.to_thread(self._journal.append, changes)
        except (StorageUnavailable, Fenced):
            raise
        except Exception as exc:  # unexpected: the entry stays in doubt, resolved later
            raise StorageUnavailable(f"metadata journal write failed: {exc!r}") from exc
        self._stats["transactions"] += 1
        self._stats["persist_s"] += time.perf_counter() - started
        self._apply(changes)
        self._since_snapshot += 1
        interval = self._settings.snapshot_interval_s
        if self._since_snapshot >= self._settings.snapshot_every_rounds or (
            self._clock.monotonic_s() - self._snapshot_at >= interval
        ):
            self._spawn(self._snapshot_quietly())

    def _apply(self, changes: Changes) -> None:
        self._seq.apply(changes)
        self._wake(changes)

    async def snapshot(self) -> int:
        """Write a snapshot of the current state now; returns the journal index it holds.

        Raises:
            StorageUnavailable, Fenced.
        """
        if self._snapshotting:
            raise Unavailable("a snapshot is already being written")
        self._snapshotting = True
        try:
            async with self._write_lock:
                await self._ready_to_write()
                index, epoch = self._journal.next_index - 1, self._journal.epoch
                data = await asyncio.to_thread(
                    self._store.snapshot_bytes, journal_index=index, epoch=epoch
                )
                covered = self._since_snapshot
            deleted = await asyncio.to_thread(self._journal.write_snapshot, index, data)
            self._since_snapshot -= covered  # rounds journaled meanwhile still count
            self._snapshot_at = self._clock.monotonic_s()
            self._stats["snapshots"] += 1
            log.info("snapshot %d (%d bytes), deleted %d objects", index, len(data), len(deleted))
            return index
        finally:
            self._snapshotting = False

    async def _snapshot_quietly(self) -> None:
        if self._snapshotting:
            return
        try:
            await self.snapshot()
        except RayStreamError as exc:
            log.warning("snapshot failed (the journal keeps everything): %s", exc)

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
        async with self._write_lock:  # no round is half-applied while we look
            live = self._seq.referenced_segments()
            doubt = self._journal.in_doubt
            held = {b.ref.segment_key for b in doubt.batches} if doubt is not None else set()
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
        future = asyncio.get_running_loop().create_future()
        await self._enqueue(_Op(future, group=group, offsets=dict(offsets)))

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
        await self._locked_write(
            lambda: (None, self._seq.plan_delete_group_offsets(group)), then=_same
        )

    async def init_producer_id(self, transactional_id: str | None = None) -> tuple[int, int]:
        """A producer id and epoch; a known transactional id gets the next epoch.

        Raises:
            InvalidRequest, StorageUnavailable, Fenced.
        """
        return await self._locked_write(
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
            "pending_commits": len(self._queue),
            "epoch": self._journal.epoch,
        }

    async def epoch(self) -> int:
        """This incarnation's epoch (each restart has a higher one)."""
        return self._journal.epoch

    async def stats(self) -> dict[str, Any]:
        """Group-commit, journal, snapshot and recovery counters."""
        journal = self._journal
        return {
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
        await self._groups.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        async with self._write_lock:
            await asyncio.to_thread(self._store.close)


def _same(value: T) -> T:
    return value


def _as_answer(answer: Any) -> Any:
    """A commit's answer for Ray to carry: results, or a ray_stream error as a value."""
    if isinstance(answer, RayStreamError) or not isinstance(answer, BaseException):
        return answer
    return InternalError(f"commit failed: {answer!r}")


def _fail(ops: list[_Op], exc: RayStreamError) -> None:
    """Answer every caller with its own instance of ``exc``'s kind and message."""
    for op in ops:
        if not op.future.done():
            op.future.set_exception(type(exc)(str(exc)))


def _faulty(store: ObjectStore) -> Any:
    from ray_stream.storage.faults import FaultyStore

    if not isinstance(store, FaultyStore):
        raise InvalidRequest(
            f"object store {store.url!r} is not fault-injecting (use a 'faulty+' URL)"
        )
    return store
