"""SegmentWriter: an agent's write path, from produce calls to acknowledged offsets.

``write`` validates and buffers RecordBatch v2 bytes from any number of callers; after
``linger_ms`` or ``flush_bytes`` one segment object (Arrow IPC) is PUT, its commit goes
to the metadata service through a ``CommitQueue`` (agent/commit_queue.py), and every
caller of that flush gets its base offsets.

Rules this module keeps:

1. **Ack only what is durable**: a caller is answered "ok" only after its batch is in a
   durable metadata commit; a failed PUT or commit fails every caller of that flush, and
   nothing of it is visible to readers (only the metadata commit makes it so).
2. **Validate once, where data enters**: every batch is checked here (size, header,
   length field, CRC) and nowhere else on the produce path. A partition's batches of
   one call are taken or refused together (Kafka appends a partition's record set
   atomically): one bad batch refuses its partition's others with the same error.
3. **Buffer order is call order**: ``write`` buffers synchronously, and commits leave in
   flush order, so one caller's batches keep their order within a partition.
4. **Bounded memory**: a call is refused with Overloaded once buffered plus in-flight
   bytes would pass ``agent_buffer_bytes`` (an empty writer always takes one call).
5. **Objects are immutable**: a failed segment PUT is retried with the same key and
   bytes up to ``segment_put_attempts`` times with the shared backoff.
6. At most ``MAX_FLUSHES_IN_FLIGHT`` flushes (PUT, then commit) overlap. A flush takes
   everything buffered when a slot frees, so under backlog segments grow past
   ``flush_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray_stream.agent.commit_queue import CommitQueue, Place, SendMany
from ray_stream.clock import Clock
from ray_stream.config import Settings
from ray_stream.core.backoff import Backoff
from ray_stream.core.keys import new_segment_key
from ray_stream.core.metadata_api import CommitRequest
from ray_stream.core.metrics import Meter
from ray_stream.core.percentile import percentile
from ray_stream.core.segment import SegmentBatch, build_segment
from ray_stream.core.types import BatchEntry, BatchResult
from ray_stream.errors import CorruptData, Overloaded, RecordTooLarge, StorageUnavailable
from ray_stream.kafka.records import BatchHeader, parse_batch_header, verify_crc

log = logging.getLogger(__name__)

MAX_FLUSHES_IN_FLIGHT = 3
STAGES = ("linger", "build", "put", "commit_wait", "commit", "produce_wait")

Put = Callable[[str, memoryview], None]  # the object store's blocking PUT
# called with each committed segment's request and its batches' results, in flush order
OnCommitted = Callable[[CommitRequest, Sequence[BatchResult]], None]
_Entry = tuple[
    int, str, int, bytes | memoryview, BatchHeader
]  # (result index, topic, partition, batch, h)


@dataclass(slots=True)
class _Pending:
    """One produce call waiting for its flush."""

    entries: list[_Entry]
    results: list[BatchResult | None]
    future: asyncio.Future[list[BatchResult]] | None
    enqueued_s: float  # monotonic time the call was buffered


@dataclass(slots=True)
class WriteStats:
    flushes: int = 0
    puts: int = 0
    put_bytes: int = 0
    batches_in: int = 0
    bytes_in: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    # per stage, (monotonic time, ms) over the latest flushes (produce_wait: per call,
    # buffered -> answered)
    stages_ms: dict[str, deque[tuple[float, float]]] = field(
        default_factory=lambda: {stage: deque(maxlen=8192) for stage in STAGES}
    )


class SegmentWriter:
    """Buffers, writes and commits one agent's produce data (see the module doc).

    Args:
        settings: linger_ms, flush_bytes, max_record_bytes, agent_buffer_bytes,
            segment_put_attempts, orphan_grace_s, metadata_retry_s,
            commit_group_wait_ms.
        name: the agent's name, for error messages.
        put: the object store's blocking PUT (run in a thread).
        send_commits: the metadata service's ``commit``.
        on_written: called with each segment's key and bytes once stored (the read
            cache's write-through).
        on_committed: called with each segment's commit request and results once
            durable (the agent's location cache learns from it).
        clock / rand: injected time and randomness (backoff jitter, segment keys).
        meter: where produce latencies, flush sizes, produced bytes and records (by
            topic) and Overloaded refusals are reported (default: nowhere).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        put: Put,
        send_commits: SendMany,
        on_written: Callable[[str, memoryview], None],
        on_committed: OnCommitted,
        clock: Clock,
        rand: random.Random,
        meter: Meter | None = None,
    ) -> None:
        self.settings = settings
        self._name = name
        self._meter = meter if meter is not None else Meter()
        self._put = put
        self._on_written = on_written
        self._on_committed = on_committed
        self._clock = clock
        self._rand = rand
        self.commits = CommitQueue(
            send_commits,
            clock=clock,
            wait_s=settings.resolved_commit_group_wait_ms / 1000,
            retry_s=settings.metadata_retry_s,
            group_min_bytes=settings.flush_bytes // 2,
            rand=rand,
        )
        self.stats = WriteStats()
        self._pending: list[_Pending] = []
        self.pending_bytes = 0
        self.inflight_bytes = 0
        self._deadline = 0.0
        self._wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ callers

    def write(
        self, entries: Sequence[tuple[str, int, bytes | memoryview]], acks: int
    ) -> asyncio.Future[list[BatchResult]]:
        """Validate and buffer now (synchronously, so buffer order is call order).

        Returns:
            A future of one BatchResult per entry, resolved after the flush (at once
            for ``acks=0``, with an empty list). Entries that fail validation carry
            RecordTooLarge or CorruptData (rule 2); a full buffer gives every entry
            Overloaded.
        """
        self._start()
        results: list[BatchResult | None] = [None] * len(entries)
        valid = self._validate(entries, results)
        full = self._buffer_full(sum(len(e[3]) for e in valid))
        if full is not None:
            for i, *_ in valid:
                results[i] = BatchResult(base_offset=-1, error=full)
            self._count_failure("buffer_full")
            self._meter.count("ray_stream_overloaded")
            valid = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[BatchResult]] = loop.create_future()
        if not valid:
            done.set_result([r for r in results if r is not None])
            return done
        future = loop.create_future() if acks != 0 else None
        self._enqueue(_Pending(valid, results, future, self._clock.monotonic_s()))
        if future is None:
            done.set_result([])
            return done
        return future

    async def drain(self, timeout_s: float = 6.0) -> None:
        """Flush what is buffered now and wait (up to ``timeout_s``) for every flush."""
        if self._pending:
            self._deadline = 0.0
            if self._wakeup is not None:
                self._wakeup.set()
        loop = asyncio.get_running_loop()  # a real-time bound: flushes do real I/O
        deadline = loop.time() + timeout_s
        while (self._pending or self._flushes) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _start(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(MAX_FLUSHES_IN_FLIGHT)
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def _validate(
        self,
        entries: Sequence[tuple[str, int, bytes | memoryview]],
        results: list[BatchResult | None],
    ) -> list[_Entry]:
        """The entries to buffer; refused ones get their result now (rule 2)."""
        checked: list[tuple[int, str, int, bytes, BatchHeader | Exception]] = [
            (i, topic, partition, data, self._check_batch(data))
            for i, (topic, partition, data) in enumerate(entries)
        ]
        refused: dict[tuple[str, int], Exception] = {}
        for _, topic, partition, _, header in checked:
            if isinstance(header, Exception):
                refused.setdefault((topic, partition), header)
        valid: list[_Entry] = []
        for i, topic, partition, data, header in checked:
            error = refused.get((topic, partition))
            if error is not None:
                results[i] = BatchResult(base_offset=-1, error=error)
            else:
                assert not isinstance(header, Exception)
                valid.append((i, topic, partition, data, header))
        return valid

    def _check_batch(self, data: bytes | memoryview) -> BatchHeader | Exception:
        if len(data) > self.settings.max_record_bytes:
            limit = self.settings.max_record_bytes
            return RecordTooLarge(f"batch of {len(data)} bytes is over max_record_bytes={limit}")
        try:
            header = parse_batch_header(data)
        except CorruptData as exc:
            return exc
        if header.total_size != len(data):
            return CorruptData(
                f"batch length field says {header.total_size} bytes, got {len(data)}"
            )
        if not verify_crc(data):
            return CorruptData("RecordBatch CRC32C mismatch: the batch was corrupted in transit")
        return header

    def _buffer_full(self, adding: int) -> Overloaded | None:
        """Overloaded when ``adding`` bytes would pass ``agent_buffer_bytes`` (rule 4)."""
        held = self.pending_bytes + self.inflight_bytes
        limit = self.settings.resolved_agent_buffer_bytes
        if held == 0 or held + adding <= limit:
            return None
        return Overloaded(
            f"{self._name} holds {held} bytes of unacknowledged produce data; "
            f"agent_buffer_bytes={limit}: the object store or metadata is slow, retry"
        )

    def _enqueue(self, pending: _Pending) -> None:
        assert self._wakeup is not None
        if not self._pending:
            self._deadline = self._clock.monotonic_s() + self.settings.linger_ms / 1000
        self._pending.append(pending)
        added = sum(len(e[3]) for e in pending.entries)
        self.pending_bytes += added
        self.stats.batches_in += len(pending.entries)
        self.stats.bytes_in += added
        self._wakeup.set()

    # ------------------------------------------------------------------ flushes

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None
        assert self._slots is not None
        while True:
            self._wakeup.clear()
            if not self._pending:
                await self._wakeup.wait()
                continue
            wait_s = self._deadline - self._clock.monotonic_s()
            if self.pending_bytes < self.settings.flush_bytes and wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                continue
            await self._slots.acquire()
            pendings, moved = self._pending, self.pending_bytes
            self._pending, self.pending_bytes = [], 0
            self.inflight_bytes += moved
            place = self.commits.reserve()  # in flush order: commits leave in this order
            task = asyncio.get_running_loop().create_task(self._flush(pendings, place, moved))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, pendings: list[_Pending], place: Place, size: int) -> None:
        assert self._slots is not None
        started = self._clock.monotonic_s()
        self._stage("linger", started - pendings[0].enqueued_s)
        request: CommitRequest | None = None
        try:
            try:
                staged: CommitRequest | Exception
                staged, give_up = await self._write_segment(pendings)
            except Exception as exc:  # loop boundary: every caller of this flush gets the error
                log.exception("flush failed")
                staged, give_up = exc, 0.0
            request = staged if isinstance(staged, CommitRequest) else None
            written = self._clock.monotonic_s()
            outcome = await self.commits.commit(place, staged, give_up=give_up)
            if request is not None:
                self._stage("commit_wait", place.sent_s - written)
                self._stage("commit", self._clock.monotonic_s() - place.sent_s)
        finally:
            self._slots.release()
            self.inflight_bytes -= size
        if request is not None and not isinstance(outcome, Exception):
            self._on_committed(request, outcome)
        self._answer(pendings, outcome)

    async def _write_segment(
        self, pendings: list[_Pending]
    ) -> tuple[CommitRequest | Exception, float]:
        """Build and PUT one segment; its commit request (or the PUT's error) and the
        monotonic time after which it must not be committed."""
        flat = [e for p in pendings for e in p.entries]
        seg = [
            SegmentBatch(
                topic=t,
                partition=p,
                payload=data,
                record_count=h.last_offset_delta + 1,
                first_timestamp=h.first_timestamp,
                max_timestamp=h.max_timestamp,
                producer_id=h.producer_id,
                producer_epoch=h.producer_epoch,
                base_sequence=h.base_sequence,
            )
            for _, t, p, data, h in flat
        ]
        started = self._clock.monotonic_s()
        body, positions = await asyncio.to_thread(build_segment, seg)
        built = self._clock.monotonic_s()
        self._stage("build", built - started)
        key = new_segment_key(self._clock.now_ms(), self._rand)
        # After half the orphan grace the sweep may delete an uncommitted segment: never
        # commit it past that point (the metadata service refuses it too).
        give_up = built + self.settings.orphan_grace_s / 2
        failed = await self._put_segment(key, body)
        self._stage("put", self._clock.monotonic_s() - built)
        if failed is not None:
            return failed, give_up
        self.stats.puts += 1
        self.stats.put_bytes += len(body)
        self.stats.flushes += 1
        self._meter.observe("ray_stream_flush_bytes", len(body))
        self._on_written(key, body)
        batches = [
            BatchEntry(
                s.topic,
                s.partition,
                pos,
                length,
                s.record_count,
                s.first_timestamp,
                s.max_timestamp,
                s.producer_id,
                s.producer_epoch,
                s.base_sequence,
            )
            for s, (pos, length) in zip(seg, positions, strict=True)
        ]
        return CommitRequest.of(key, len(body), batches), give_up

    async def _put_segment(self, key: str, body: memoryview) -> Exception | None:
        """PUT with retries (rule 5); the error if all attempts failed, else None."""
        backoff = Backoff(rand=self._rand)
        attempts = self.settings.segment_put_attempts
        for attempt in range(1, attempts + 1):
            try:
                await asyncio.to_thread(self._put, key, body)
                return None
            except StorageUnavailable as exc:
                self._count_failure("put")
                if attempt == attempts:
                    return StorageUnavailable(
                        f"segment PUT of {len(body)} bytes to {key} failed {attempt} times: {exc}"
                    )
                log.warning("segment PUT %s failed (attempt %d), retrying: %s", key, attempt, exc)
            except Exception as exc:  # a bad key or configuration: retrying cannot help
                self._count_failure("put")
                return StorageUnavailable(
                    f"segment PUT of {len(body)} bytes to {key} failed: {exc}"
                )
            await asyncio.sleep(backoff.next_delay())
        raise AssertionError("unreachable")

    def _answer(self, pendings: list[_Pending], outcome: Sequence[BatchResult] | Exception) -> None:
        cursor, now = 0, self._clock.monotonic_s()
        for pending in pendings:
            for result_index, *_ in pending.entries:
                if isinstance(outcome, Exception):
                    pending.results[result_index] = BatchResult(base_offset=-1, error=outcome)
                else:
                    pending.results[result_index] = outcome[cursor]
                cursor += 1
            if pending.future is not None and not pending.future.done():
                pending.future.set_result([r for r in pending.results if r is not None])
            self._stage("produce_wait", now - pending.enqueued_s)
            self._meter.observe("ray_stream_produce_latency_ms", (now - pending.enqueued_s) * 1000)
        if self._meter.enabled and not isinstance(outcome, Exception):
            self._count_produced(pendings)

    def _count_produced(self, pendings: list[_Pending]) -> None:
        """Bytes and records acknowledged, by topic: one report per topic per flush."""
        by_topic: dict[str, list[int]] = {}
        for pending in pendings:
            for index, topic, _, data, header in pending.entries:
                result = pending.results[index]
                if result is not None and result.error is None and not result.duplicate:
                    sums = by_topic.setdefault(topic, [0, 0])
                    sums[0] += len(data)
                    sums[1] += header.last_offset_delta + 1
        for topic, (size, records) in by_topic.items():
            self._meter.count("ray_stream_produced_bytes", size, topic=topic)
            self._meter.count("ray_stream_produced_records", records, topic=topic)

    def _stage(self, stage: str, seconds: float) -> None:
        self.stats.stages_ms[stage].append((self._clock.monotonic_s(), seconds * 1000))

    def _count_failure(self, kind: str) -> None:
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1

    # ------------------------------------------------------------------- report

    def report(self, window_s: float | None = None) -> dict[str, Any]:
        """The write path's counters, for the agent's ``stats()``; stage latencies over
        the last ``window_s`` seconds (default: the latest 8192 of each)."""
        s, c = self.stats, self.commits.stats
        since = -1.0 if window_s is None else self._clock.monotonic_s() - window_s
        stages = {
            stage: _latency([ms for at, ms in values if at >= since])
            for stage, values in s.stages_ms.items()
        }
        return {
            "flushes": s.flushes,
            "puts": s.puts,
            "put_bytes": s.put_bytes,
            "batches_in": s.batches_in,
            "bytes_in": s.bytes_in,
            "pending_bytes": self.pending_bytes,
            "inflight_bytes": self.inflight_bytes,
            "metadata_epoch": self.commits.epoch,
            "commit_calls": c.calls,
            "committed_segments": c.segments,
            "max_commit_group": c.max_group,
            "failures": {
                kind: s.failures.get(kind, 0) + c.failures.get(kind, 0)
                for kind in {*s.failures, *c.failures}
            },
            "produce_wait_ms": stages["produce_wait"],
            "stages_ms": stages,
        }


def _latency(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max of a window of latencies, and how many there were."""
    return {
        "calls": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=None),
    }
