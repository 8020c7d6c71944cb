"""MetadataActor: the only writer of metadata; a thin async shell over ``Sequencer``.

A plain class with async methods; ``actors/handles.py`` applies ``ray.remote`` (name
``metadata``, namespace ``ray_stream``, ``num_cpus=0``). All methods run on one event
loop, so sequencer state is only touched from that loop.

Rules this module keeps:

1. **Durable before visible.** Every change is planned on the sequencer, written to
   SQLite in one transaction (in a worker thread, so the loop keeps accepting calls),
   and only then applied. ``locate``/``list_offset``/``wait_for_data`` never see a change
   that is not on disk; a failed write leaves the in-memory state untouched.
2. **One writer at a time.** ``_write_lock`` serializes plan -> persist -> apply, so a
   plan is always applied to the state it was made against.
3. **Group commit.** ``commit`` queues its request; one committer task drains the whole
   queue into one round (one ``plan_commits``, one transaction), resolves every caller,
   and loops while more arrived during the write. A failed round answers every caller
   in it with ``StorageUnavailable``.
4. **Waiters are woken by commits**, never by polling: one ``asyncio.Event`` per awaited
   partition, set after each durable round that moves its watermark.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ray_stream.actors.group_service import (
    GroupDescription,
    GroupService,
    JoinResult,
    SyncResult,
)
from ray_stream.actors.metadata_store import MetadataStore
from ray_stream.config import Settings
from ray_stream.core.sequencer import Changes
from ray_stream.core.types import (
    BatchResult,
    CommitRequest,
    CommittedOffset,
    LocateResult,
    TopicInfo,
)
from ray_stream.errors import InternalError, StorageUnavailable, UnknownTopicOrPartition

_Pending = tuple[CommitRequest, "asyncio.Future[list[BatchResult]]"]


class MetadataActor:
    """Topics, offsets, idempotent producers and committed group offsets (see module doc)."""

    def __init__(self, settings: Settings) -> None:
        """Open ``<settings.resolved_data_dir>/metadata.sqlite`` and load its state.

        Raises:
            StorageUnavailable: the database cannot be opened or read.
        """
        self._settings = settings
        self._store = MetadataStore.open(settings)
        self._seq = self._store.load()
        self._write_lock = asyncio.Lock()
        self._queue: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._committing = False
        self._waiters: dict[tuple[str, int], asyncio.Event] = {}
        self._groups = GroupService()
        self._stats = {
            "commit_rounds": 0,
            "commit_requests": 0,
            "batches_committed": 0,
            "duplicates": 0,
            "failed_rounds": 0,
            "transactions": 0,
            "persist_s": 0.0,
            "max_round_requests": 0,
        }

    # ----------------------------------------------------------------- topics
    async def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic with a fresh topic id; all partitions start empty at offset 0.

        Raises:
            InvalidTopic, InvalidPartitions, InvalidConfig, TopicAlreadyExists,
            StorageUnavailable.
        """
        topic_id = uuid.uuid4().hex
        async with self._write_lock:
            await self._write(
                self._seq.plan_create_topic(name, partitions, config, topic_id=topic_id)
            )
            return self._seq.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        """Forget a topic, its batches, producer states and committed offsets.

        Raises:
            UnknownTopicOrPartition, StorageUnavailable.
        """
        async with self._write_lock:
            await self._write(self._seq.plan_delete_topic(name))

    async def create_partitions(self, name: str, total: int) -> TopicInfo:
        """Grow a topic to ``total`` partitions.

        Raises:
            UnknownTopicOrPartition, InvalidPartitions, StorageUnavailable.
        """
        async with self._write_lock:
            await self._write(self._seq.plan_create_partitions(name, total))
            return self._seq.describe_topic(name)

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
            StorageUnavailable: the round could not be persisted; nothing of it is visible.
        """
        future: asyncio.Future[list[BatchResult]] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._committing:
            self._committing = True
            self._committer = asyncio.create_task(self._commit_rounds())
        return await future

    async def _commit_rounds(self) -> None:
        try:
            while self._queue:
                pending, self._queue = self._queue, []
                await self._commit_round(pending)
        finally:
            self._committing = False

    async def _commit_round(self, pending: list[_Pending]) -> None:
        async with self._write_lock:
            try:
                results, changes = self._seq.plan_commits([req for req, _ in pending])
            except Exception as exc:  # a bug: answer the callers instead of hanging them
                _fail(pending, InternalError, f"planning a commit round failed: {exc!r}")
                return
            try:
                await self._write(changes)
            except StorageUnavailable as exc:
                self._stats["failed_rounds"] += 1
                _fail(pending, StorageUnavailable, str(exc))
                return
        self._count_round(pending, results, changes)
        for (_, future), result in zip(pending, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _count_round(
        self, pending: list[_Pending], results: list[list[BatchResult]], changes: Changes
    ) -> None:
        stats = self._stats
        stats["commit_rounds"] += 1
        stats["commit_requests"] += len(pending)
        stats["max_round_requests"] = max(stats["max_round_requests"], len(pending))
        stats["batches_committed"] += len(changes.batches)
        stats["duplicates"] += sum(r.duplicate for rs in results for r in rs)

    async def _write(self, changes: Changes) -> None:
        """Persist then apply ``changes``; the caller holds ``_write_lock``.

        Raises:
            StorageUnavailable: nothing was applied.
        """
        if not changes.empty:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._store.persist, changes)
            except StorageUnavailable:
                raise
            except Exception as exc:  # the store translates sqlite errors; anything else too
                raise StorageUnavailable(f"metadata write failed: {exc!r}") from exc
            self._stats["transactions"] += 1
            self._stats["persist_s"] += time.perf_counter() - started
        self._seq.apply(changes)
        self._wake(changes)

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
        """Store committed offsets for ``group`` (all or none).

        Raises:
            InvalidRequest, UnknownTopicOrPartition, StorageUnavailable.
        """
        async with self._write_lock:
            await self._write(self._seq.plan_commit_offsets(group, offsets))

    async def fetch_offsets(
        self, group: str, partitions: list[tuple[str, int]] | None = None
    ) -> dict[tuple[str, int], CommittedOffset]:
        """Committed offsets of ``group``: all, or those of ``partitions`` that have one."""
        keys = None if partitions is None else [(t, p) for t, p in partitions]
        return self._seq.fetch_offsets(group, keys)

    async def delete_group_offsets(self, group: str) -> None:
        """Forget every committed offset of ``group`` (used with ``delete_groups``).

        Raises:
            StorageUnavailable.
        """
        async with self._write_lock:
            await self._write(self._seq.plan_delete_group_offsets(group))

    async def init_producer_id(self, transactional_id: str | None = None) -> tuple[int, int]:
        """A producer id and epoch; a known transactional id gets the next epoch.

        Raises:
            InvalidRequest, StorageUnavailable.
        """
        async with self._write_lock:
            ids, changes = self._seq.plan_init_producer_id(transactional_id)
            await self._write(changes)
            return ids

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
        return {"ok": True, **self._seq.counts(), "pending_commits": len(self._queue)}

    async def stats(self) -> dict[str, Any]:
        """Group-commit counters: rounds, requests, batches, SQLite transactions, ..."""
        return dict(self._stats)

    async def settings(self) -> Settings:
        """The settings this cluster was started with (for clients that attach)."""
        return self._settings

    async def close(self) -> None:
        """Let the write in flight finish, then close SQLite (before the actor is killed).

        Later writes raise StorageUnavailable; reads keep answering from memory.
        """
        await self._groups.close()
        async with self._write_lock:
            await asyncio.to_thread(self._store.close)


def _fail(pending: list[_Pending], kind: type[Exception], message: str) -> None:
    """Answer every caller of a round with its own ``kind(message)`` instance."""
    for _, future in pending:
        if not future.done():
            future.set_exception(kind(message))
