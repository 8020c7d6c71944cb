"""MetadataWriter: the metadata actor's one write path (docs/design/0002-metadata-durability.md).

Every change is planned on the sequencer, written to the SQLite cache, journaled (one
create-only PUT), and only then applied to memory and announced (``on_apply``).

Rules this module keeps:

1. **Durable before visible.** Readers never see a change that is not in the journal; a
   failed write answers its callers with an error and leaves memory untouched.
2. **One writer at a time.** ``_lock`` serializes plan -> persist -> journal -> apply. A
   journal entry left *in doubt* is settled (re-written and applied) before anything
   else is planned; once ``Fenced`` (a newer incarnation exists) every later write is
   refused with ``Fenced`` and nothing is journaled again.
3. **Group commit.** Segment commits and group offset commits queue; one committer task
   drains the queue into one round (one plan, one SQLite transaction, one journal PUT),
   answers every caller, and loops while more arrived.
4. **Fresh segments only.** A segment whose ULID time is older than half of
   ``orphan_grace_s`` is refused (unless it is a resend of a committed one), so the
   orphan sweep can never delete an object a commit is about to reference.
5. Snapshots are written after ``snapshot_every_rounds`` journal entries or
   ``snapshot_interval_s``, in the background; a failed one loses nothing (the journal
   keeps every entry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ray_stream.clock import Clock
from ray_stream.config import Settings
from ray_stream.core.keys import segment_time_ms
from ray_stream.core.metadata_api import CommitRequest, SegmentResult
from ray_stream.core.metrics import Meter
from ray_stream.core.sequencer import Changes, Sequencer, merge_changes
from ray_stream.core.types import CommittedOffset
from ray_stream.errors import (
    Fenced,
    InternalError,
    InvalidRequest,
    RayStreamError,
    StorageUnavailable,
    Unavailable,
)
from ray_stream.metadata.object_journal import ObjectJournal
from ray_stream.metadata.store import MetadataStore

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Op:
    """One queued write: a segment commit, or a group's offset commit."""

    future: asyncio.Future[Any]
    request: CommitRequest | None = None
    group: str = ""
    offsets: dict[tuple[str, int], CommittedOffset] | None = None


class MetadataWriter:
    """Plans, persists, journals and applies metadata changes (see the module doc).

    Args:
        settings: snapshot_every_rounds, snapshot_interval_s, orphan_grace_s.
        seq: the in-memory state, rebuilt from the object store.
        cache: this incarnation's SQLite cache.
        journal: the object-store journal (fencing, entries in doubt, snapshots).
        clock: wall time (segment freshness) and monotonic time (snapshot interval).
        on_apply: called with every change set once it is applied (wakes long-polls).
        spawn: runs a background coroutine on the actor's loop.
        meter: where commit rounds are counted (default: nowhere).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        seq: Sequencer,
        cache: MetadataStore,
        journal: ObjectJournal,
        clock: Clock,
        on_apply: Callable[[Changes], None],
        spawn: Callable[[Any], None],
        meter: Meter | None = None,
    ) -> None:
        self._meter = meter if meter is not None else Meter()
        self._settings = settings
        self._seq = seq
        self._cache = cache
        self._journal = journal
        self._clock = clock
        self._on_apply = on_apply
        self._spawn = spawn
        self._lock = asyncio.Lock()
        self._queue: list[_Op] = []
        self._committing = False
        self._closed = False
        self._since_snapshot = 0
        self._snapshot_at = clock.monotonic_s()
        self._snapshotting = False
        self.stats: dict[str, Any] = {
            "commit_rounds": 0,
            "commit_requests": 0,
            "batches_committed": 0,
            "duplicates": 0,
            "failed_rounds": 0,
            "transactions": 0,
            "persist_s": 0.0,
            "max_round_requests": 0,
            "snapshots": 0,
        }

    @property
    def pending(self) -> int:
        """Commits waiting for the next round."""
        return len(self._queue)

    # ------------------------------------------------------------------ writes
    async def write(self, plan: Callable[[], tuple[T, Changes]], *, then: Callable[[T], R]) -> R:
        """Plan under the lock, make it durable, apply it, then answer ``then(value)``.

        Raises:
            what ``plan`` raises, StorageUnavailable, Fenced.
        """
        async with self._lock:
            await self._ready_to_write()
            value, changes = plan()
            await self._write(changes)
            return then(value)

    async def commit_many(self, requests: list[CommitRequest]) -> list[SegmentResult]:
        """Queue segment commits into the next round, in order; answer once durable.

        Every request may be a resend (its segment key names one immutable object), so
        batches already committed from that key are answered with their original
        offsets (``Sequencer.plan_commits``).

        Returns:
            Per request, its results or the ray_stream error that refused it
            (StorageUnavailable, Fenced, Unavailable: rule 4).
        """
        loop = asyncio.get_running_loop()
        ops = [_Op(loop.create_future(), request) for request in requests]
        self._enqueue(ops)
        answers = await asyncio.gather(*(op.future for op in ops), return_exceptions=True)
        return [_as_answer(answer) for answer in answers]

    async def commit_offsets(
        self, group: str, offsets: dict[tuple[str, int], CommittedOffset]
    ) -> None:
        """Queue a group's offset commit (all or none) for the next round.

        Raises:
            InvalidRequest, UnknownTopicOrPartition, StorageUnavailable, Fenced.
        """
        op = _Op(asyncio.get_running_loop().create_future(), group=group, offsets=dict(offsets))
        self._enqueue([op])
        await op.future

    def _enqueue(self, ops: list[_Op]) -> None:
        """Queue for the next round, starting the committer task when it is idle."""
        self._queue.extend(ops)
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
        async with self._lock:
            try:
                await self._ready_to_write()
            except RayStreamError as exc:
                _fail(ops, exc)
                return
            commits = [op for op in ops if op.request is not None and self._fresh(op)]
            try:
                requests = [op.request for op in commits if op.request is not None]
                results, changes = self._seq.plan_commits(requests, retries=[True] * len(requests))
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
                self.stats["failed_rounds"] += 1
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
        """Refuse segments the orphan sweep may already consider (rule 4)."""
        assert op.request is not None
        key = op.request.segment_key
        made_ms = segment_time_ms(key)
        limit_ms = self._settings.orphan_grace_s * 500  # half the grace, in ms
        if made_ms is None or self._clock.now_ms() - made_ms < limit_ms:
            return True
        if self._seq.is_referenced(key):
            return True  # a resend of a committed segment: answered as duplicates
        op.future.set_exception(
            Unavailable(
                f"segment {key} was written {(self._clock.now_ms() - made_ms) / 1000:.0f}s "
                f"ago, over orphan_grace_s/2; the orphan sweep may delete it: rewrite it"
            )
        )
        return False

    def _count_round(
        self, commits: list[_Op], results: list[SegmentResult], changes: Changes
    ) -> None:
        stats = self.stats
        stats["commit_rounds"] += 1
        self._meter.count("ray_stream_metadata_commit_rounds")
        stats["commit_requests"] += len(commits)
        stats["max_round_requests"] = max(stats["max_round_requests"], len(commits))
        stats["batches_committed"] += len(changes.batches)
        stats["duplicates"] += sum(sum(r.duplicate) for r in results)

    # -------------------------------------------------------------- durability
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
            await asyncio.to_thread(self._cache.persist, changes)
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
        self.stats["transactions"] += 1
        self.stats["persist_s"] += time.perf_counter() - started
        self._apply(changes)
        self._since_snapshot += 1
        interval = self._settings.snapshot_interval_s
        if self._since_snapshot >= self._settings.snapshot_every_rounds or (
            self._clock.monotonic_s() - self._snapshot_at >= interval
        ):
            self._spawn(self._snapshot_quietly())

    def _apply(self, changes: Changes) -> None:
        self._seq.apply(changes)
        self._on_apply(changes)

    async def snapshot(self) -> int:
        """Write a snapshot of the current state now; returns the journal index it holds.

        Raises:
            Unavailable: a snapshot is already being written.
            StorageUnavailable, Fenced.
        """
        if self._snapshotting:
            raise Unavailable("a snapshot is already being written")
        self._snapshotting = True
        try:
            async with self._lock:
                await self._ready_to_write()
                index, epoch = self._journal.next_index - 1, self._journal.epoch
                data = await asyncio.to_thread(
                    self._cache.snapshot_bytes, journal_index=index, epoch=epoch
                )
                covered = self._since_snapshot
            deleted = await asyncio.to_thread(self._journal.write_snapshot, index, data)
            self._since_snapshot -= covered  # rounds journaled meanwhile still count
            self._snapshot_at = self._clock.monotonic_s()
            self.stats["snapshots"] += 1
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

    async def held_segments(self) -> tuple[frozenset[str], set[str]]:
        """Segment keys committed, and those of an entry in doubt (no round half-applied)."""
        async with self._lock:
            live = self._seq.referenced_segments()
            doubt = self._journal.in_doubt
            held = {b.ref.segment_key for b in doubt.batches} if doubt is not None else set()
        return live, held

    async def close(self) -> None:
        """Refuse later writes, let the one in flight finish, close the SQLite cache."""
        self._closed = True
        async with self._lock:
            await asyncio.to_thread(self._cache.close)


def _as_answer(answer: Any) -> SegmentResult:
    """A commit's answer for Ray to carry: results, or a ray_stream error as a value."""
    if isinstance(answer, SegmentResult):
        return answer
    if isinstance(answer, RayStreamError):
        return SegmentResult(error=answer)
    return SegmentResult(error=InternalError(f"commit failed: {answer!r}"))


def _fail(ops: list[_Op], exc: RayStreamError) -> None:
    """Answer every caller with its own instance of ``exc``'s kind and message."""
    for op in ops:
        if not op.future.done():
            op.future.set_exception(type(exc)(str(exc)))
