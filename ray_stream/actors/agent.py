"""AgentActor: the stateless front of the cluster.

Write path: ``produce`` buffers RecordBatch v2 bytes from any number of callers; after
``linger_ms`` or ``flush_bytes`` one segment object is PUT, then one commit goes to the
metadata actor, then every caller in that flush gets its base offsets. Commits leave in
flush order, so one caller's batches keep their order within a partition.

Read path: ``fetch`` asks the metadata actor where the batches from an offset live, reads
them through a byte-bounded chunk cache (concurrent misses for one chunk share one GET),
rewrites each batch's base offset (bytes 0-8, outside the CRC) and long-polls the
metadata actor when there is nothing new.

Invariants: a caller is answered "ok" only after its batch is in a durable metadata
commit; a failed PUT or commit fails every caller of that flush and nothing of that
flush is visible to readers (the metadata commit is the only thing that makes it so).
The agent keeps nothing that survives it except its own listener address.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from ray_stream.actors.handles import MetadataProxy, call, get_agent, get_metadata
from ray_stream.clock import SystemClock
from ray_stream.config import Settings
from ray_stream.core.lru import ByteLRU
from ray_stream.core.segment import SegmentBatch, build_segment, new_segment_key
from ray_stream.core.types import (
    BatchEntry,
    BatchRef,
    BatchResult,
    BrokerInfo,
    CommitRequest,
    FetchResult,
)
from ray_stream.errors import (
    CorruptData,
    OffsetOutOfRange,
    RayStreamError,
    RecordTooLarge,
    StorageUnavailable,
    UnknownTopicOrPartition,
    Unavailable,
)
from ray_stream.kafka.records import BatchHeader, parse_batch_header, set_base_offset, verify_crc
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024 * 1024  # cache unit, as DESIGN.md: one GET per chunk however many readers
MAX_FLUSHES_IN_FLIGHT = 3  # PUTs overlap; commits still leave in flush order
BROKERS_TTL_S = 10.0
SESSION_GAP_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Turn:
    """Orders one pipelining caller's produce calls."""

    next_seq: int
    changed: asyncio.Condition
    last_used: float = 0.0


@dataclass(slots=True)
class _Pending:
    """One produce call waiting for its flush."""

    entries: list[tuple[int, str, int, bytes, BatchHeader]]  # (result index, topic, partition, bytes, header)
    results: list[BatchResult | None]
    future: asyncio.Future[list[BatchResult]] | None


@dataclass(slots=True)
class _Stats:
    flushes: int = 0
    puts: int = 0
    put_bytes: int = 0
    gets: int = 0
    get_bytes: int = 0
    batches_in: int = 0
    bytes_in: int = 0
    fetches: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class AgentActor:
    """A stateless agent. See the module docstring for the write and read paths."""

    def __init__(self, settings: Settings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.node_id = index
        self.store = open_store(settings.resolved_object_store)
        self.meta = MetadataProxy(get_metadata(settings.namespace))
        self._clock = SystemClock()
        self._rand = random.Random()
        self._cache = ByteLRU(settings.cache_bytes)
        self._inflight_gets: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._deadline = 0.0
        self._wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_slots: asyncio.Semaphore | None = None
        self._last_commit: asyncio.Future[None] | None = None
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._server: Any = None
        self._address: BrokerInfo | None = None
        self._brokers: list[BrokerInfo] = []
        self._brokers_at = -1e9
        self._stats = _Stats()
        self._sessions: dict[str, _Turn] = {}

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> BrokerInfo | None:
        """Start the flusher and, when configured, the Kafka listener. Idempotent."""
        self._ensure_loop_state()
        if self._server is None and self.settings.kafka_port != 0:
            from ray_stream.server.kafka_server import start_kafka_server

            port = 0 if self.settings.kafka_port == -1 else self.settings.kafka_port + self.index
            self._server = await start_kafka_server(self, host=self.settings.kafka_host, port=port)
            bound = self._server.sockets[0].getsockname()
            self._address = BrokerInfo(node_id=self.index, host=self.settings.kafka_host, port=bound[1])
        return self._address

    async def stop(self) -> None:
        """Flush what is buffered, wait for in-flight flushes, close the listener."""
        if self._pending:
            self._deadline = 0.0
            if self._wakeup is not None:
                self._wakeup.set()
        for _ in range(600):
            if not self._pending and not self._flush_tasks:
                break
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
            self._server = None

    def _ensure_loop_state(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._flush_slots = asyncio.Semaphore(MAX_FLUSHES_IN_FLIGHT)
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def kafka_address(self) -> BrokerInfo | None:
        return self._address

    async def brokers(self) -> list[BrokerInfo]:
        """Every agent's Kafka listener (cached for a few seconds)."""
        now = self._clock.monotonic_s()
        if self._brokers and now - self._brokers_at < BROKERS_TTL_S:
            return self._brokers
        found: list[BrokerInfo] = []
        for i in range(self.settings.agents):
            if i == self.index:
                info = self._address
            else:
                try:
                    info = await call(get_agent(self.settings.namespace, i).kafka_address.remote())
                except (RayStreamError, Exception) as exc:  # a dead peer is left out, not fatal
                    log.warning("agent-%d not reachable for broker list: %s", i, exc)
                    info = None
            if info is not None:
                found.append(info)
        self._brokers, self._brokers_at = found, now
        return found

    async def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "flushes": s.flushes,
            "puts": s.puts,
            "put_bytes": s.put_bytes,
            "gets": s.gets,
            "get_bytes": s.get_bytes,
            "batches_in": s.batches_in,
            "bytes_in": s.bytes_in,
            "fetches": s.fetches,
            "cache_hits": self._cache.hits,
            "cache_misses": self._cache.misses,
            "cache_bytes": self._cache.size_bytes,
            "pending_bytes": self._pending_bytes,
            "failures": dict(s.failures),
        }

    # ---------------------------------------------------------------- write path

    async def produce(
        self,
        entries: list[tuple[str, int, bytes]],
        acks: int = -1,
        *,
        session: str | None = None,
        seq: int = 0,
    ) -> list[BatchResult]:
        """Buffer batches until the next flush; answer with their base offsets.

        Args:
            entries: ``(topic, partition, RecordBatch v2 bytes)``, one batch each.
            acks: 0 answers at once with an empty list (fire and forget); 1 and -1 wait
                for the durable metadata commit.

            session / seq: a caller that pipelines calls numbers them 0, 1, 2, ... under
                one session id; Ray does not run an async actor's calls in submission
                order, so each call waits here until its predecessor is buffered.

        Returns:
            One BatchResult per entry, in order. Entries that fail validation carry
            RecordTooLarge or CorruptData without holding up the others.
        """
        self._ensure_loop_state()
        if session is not None:
            await self._wait_turn(session, seq)
            try:
                waiter = self._produce(entries, acks)
            finally:
                self._next_turn(session, seq)
            return await waiter
        return await self._produce(entries, acks)

    async def _wait_turn(self, session: str, seq: int) -> None:
        turn = self._sessions.get(session)
        if turn is None:
            turn = self._sessions[session] = _Turn(next_seq=0, changed=asyncio.Condition())
        turn.last_used = self._clock.monotonic_s()
        async with turn.changed:
            try:
                await asyncio.wait_for(
                    turn.changed.wait_for(lambda: turn.next_seq >= seq), SESSION_GAP_TIMEOUT_S
                )
            except TimeoutError:
                # The predecessor never arrived (its caller died mid-send): move on.
                log.warning("session %s: call %d gave up waiting for %d", session, seq, turn.next_seq)

    def _next_turn(self, session: str, seq: int) -> None:
        turn = self._sessions.get(session)
        if turn is None:
            return
        turn.next_seq = max(turn.next_seq, seq + 1)

        async def notify() -> None:
            async with turn.changed:
                turn.changed.notify_all()

        asyncio.get_running_loop().create_task(notify())
        now = self._clock.monotonic_s()
        if len(self._sessions) > 1000:
            for key in [k for k, t in self._sessions.items() if now - t.last_used > 600]:
                del self._sessions[key]

    def _produce(self, entries: list[tuple[str, int, bytes]], acks: int) -> asyncio.Future[list[BatchResult]]:
        """Validate and buffer now (synchronously, so buffer order is call order);
        the returned future resolves after the flush."""
        results: list[BatchResult | None] = [None] * len(entries)
        valid: list[tuple[int, str, int, bytes, BatchHeader]] = []
        for i, (topic, partition, data) in enumerate(entries):
            error = self._check_batch(data)
            if isinstance(error, Exception):
                results[i] = BatchResult(base_offset=-1, error=error)
            else:
                valid.append((i, topic, partition, bytes(data), error))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[BatchResult]] = loop.create_future()
        if not valid:
            done.set_result([r for r in results if r is not None])
            return done
        future: asyncio.Future[list[BatchResult]] | None = loop.create_future() if acks != 0 else None
        self._enqueue(_Pending(entries=valid, results=results, future=future))
        if future is None:
            done.set_result([])
            return done
        return future

    def _check_batch(self, data: bytes) -> BatchHeader | Exception:
        if len(data) > self.settings.max_record_bytes:
            return RecordTooLarge(
                f"batch of {len(data)} bytes is over max_record_bytes={self.settings.max_record_bytes}"
            )
        try:
            header = parse_batch_header(data)
        except CorruptData as exc:
            return exc
        if header.total_size != len(data):
            return CorruptData(f"batch length field says {header.total_size} bytes, got {len(data)}")
        if not verify_crc(data):
            return CorruptData("RecordBatch CRC32C mismatch: the batch was corrupted in transit")
        return header

    def _enqueue(self, pending: _Pending) -> None:
        assert self._wakeup is not None
        if not self._pending:
            self._deadline = self._clock.monotonic_s() + self.settings.linger_ms / 1000
        self._pending.append(pending)
        added = sum(len(e[3]) for e in pending.entries)
        self._pending_bytes += added
        self._stats.batches_in += len(pending.entries)
        self._stats.bytes_in += added
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None and self._flush_slots is not None
        while True:
            self._wakeup.clear()
            if not self._pending:
                await self._wakeup.wait()
                continue
            wait_s = self._deadline - self._clock.monotonic_s()
            if self._pending_bytes < self.settings.flush_bytes and wait_s > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                except TimeoutError:
                    pass
                continue
            await self._flush_slots.acquire()
            pendings, self._pending, self._pending_bytes = self._pending, [], 0
            previous = self._last_commit
            committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._last_commit = committed
            task = asyncio.get_running_loop().create_task(self._flush(pendings, previous, committed))
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def _flush(
        self,
        pendings: list[_Pending],
        previous: asyncio.Future[None] | None,
        committed: asyncio.Future[None],
    ) -> None:
        assert self._flush_slots is not None
        try:
            outcome = await self._write_and_commit(pendings, previous)
        except Exception as exc:  # loop boundary: every caller of this flush gets the error
            log.exception("flush failed")
            outcome = exc
        finally:
            if not committed.done():
                committed.set_result(None)
            self._flush_slots.release()
        self._answer(pendings, outcome)

    async def _write_and_commit(
        self, pendings: list[_Pending], previous: asyncio.Future[None] | None
    ) -> list[BatchResult] | Exception:
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
        body, positions = await asyncio.to_thread(build_segment, seg)
        key = new_segment_key(self._clock.now_ms(), self._rand)
        try:
            await asyncio.to_thread(self.store.put, key, body)
        except Exception as exc:
            self._count_failure("put")
            if previous is not None:
                await previous
            return StorageUnavailable(f"segment PUT of {len(body)} bytes to {key} failed: {exc}")
        self._stats.puts += 1
        self._stats.put_bytes += len(body)
        self._stats.flushes += 1
        self._cache_object(key, body)
        request = CommitRequest(
            segment_key=key,
            segment_bytes=len(body),
            batches=tuple(
                BatchEntry(
                    topic=s.topic,
                    partition=s.partition,
                    position=pos,
                    length=length,
                    record_count=s.record_count,
                    first_timestamp=s.first_timestamp,
                    max_timestamp=s.max_timestamp,
                    producer_id=s.producer_id,
                    producer_epoch=s.producer_epoch,
                    base_sequence=s.base_sequence,
                )
                for s, (pos, length) in zip(seg, positions, strict=True)
            ),
        )
        if previous is not None:
            await previous  # commits leave in flush order
        try:
            return list(await self.meta.commit(request))
        except RayStreamError as exc:
            self._count_failure("commit")
            return exc
        except Exception as exc:
            self._count_failure("commit")
            return Unavailable(f"metadata commit failed: {exc}")

    def _answer(self, pendings: list[_Pending], outcome: list[BatchResult] | Exception) -> None:
        cursor = 0
        for pending in pendings:
            for result_index, *_ in pending.entries:
                if isinstance(outcome, Exception):
                    pending.results[result_index] = BatchResult(base_offset=-1, error=outcome)
                else:
                    pending.results[result_index] = outcome[cursor]
                cursor += 1
            if pending.future is not None and not pending.future.done():
                pending.future.set_result([r for r in pending.results if r is not None])

    def _count_failure(self, kind: str) -> None:
        self._stats.failures[kind] = self._stats.failures.get(kind, 0) + 1

    # ----------------------------------------------------------------- read path

    async def fetch(
        self,
        requests: list[tuple[str, int, int, int]],
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 50 * 1024 * 1024,
    ) -> list[FetchResult]:
        """Read batches from the given offsets, waiting up to ``max_wait_ms`` for data.

        Args:
            requests: ``(topic, partition, offset, partition_max_bytes)``.
            max_wait_ms: long-poll bound when fewer than ``min_bytes`` are available;
                woken by metadata commits, not by a timer.
            min_bytes: answer as soon as this many bytes are available.
            max_bytes: soft bound on the whole answer (the first batch always comes).

        Returns:
            One FetchResult per request, in order.
        """
        self._stats.fetches += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_ms / 1000
        while True:
            results = await self._fetch_once(requests, max_bytes)
            got = sum(len(r.records) for r in results)
            remaining = deadline - loop.time()
            if got >= min_bytes or remaining <= 0 or any(r.error for r in results):
                return results
            positions = [
                (t, p, max(o, r.high_watermark))
                for (t, p, o, _), r in zip(requests, results, strict=True)
            ]
            await self.meta.wait_for_data(positions, remaining)

    async def _fetch_once(
        self, requests: list[tuple[str, int, int, int]], max_bytes: int
    ) -> list[FetchResult]:
        located = await asyncio.gather(
            *(self.meta.locate(t, p, o, pmax) for t, p, o, pmax in requests),
            return_exceptions=True,
        )
        results: list[FetchResult] = []
        budget = max_bytes
        for (topic, partition, _, _), loc in zip(requests, located, strict=True):
            if isinstance(loc, UnknownTopicOrPartition | OffsetOutOfRange):
                results.append(FetchResult(topic, partition, loc, -1, -1))
                continue
            if isinstance(loc, BaseException):
                raise loc
            refs = list(loc.batches)
            if budget <= 0:
                refs = []
            chosen: list[BatchRef] = []
            for ref in refs:
                if chosen and ref.length > budget:
                    break
                chosen.append(ref)
                budget -= ref.length
            data = await self._read_refs(chosen)
            results.append(
                FetchResult(topic, partition, None, loc.high_watermark, loc.log_start_offset, data)
            )
        return results

    async def _read_refs(self, refs: list[BatchRef]) -> bytes:
        parts: list[bytes] = []
        for ref in refs:
            raw = await self._read_range(ref.segment_key, ref.position, ref.length)
            parts.append(set_base_offset(raw, ref.base_offset))
        return b"".join(parts)

    async def _read_range(self, key: str, start: int, length: int) -> bytes:
        end = start + length
        pieces: list[bytes] = []
        for index in range(start // CHUNK_BYTES, (end - 1) // CHUNK_BYTES + 1):
            chunk = await self._chunk(key, index)
            base = index * CHUNK_BYTES
            pieces.append(chunk[max(start, base) - base : min(end, base + CHUNK_BYTES) - base])
        data = b"".join(pieces)
        if len(data) != length:
            raise StorageUnavailable(f"object {key} is shorter than the committed range {start}+{length}")
        return data

    async def _chunk(self, key: str, index: int) -> bytes:
        cached = self._cache.get((key, index))
        if cached is not None:
            return cached
        inflight = self._inflight_gets.get((key, index))
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight_gets[(key, index)] = future
        try:
            data = await asyncio.to_thread(self.store.get_range, key, index * CHUNK_BYTES, CHUNK_BYTES)
            self._stats.gets += 1
            self._stats.get_bytes += len(data)
            self._cache.put((key, index), data)
            future.set_result(data)
            return data
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved for waiters-less case
            raise
        finally:
            del self._inflight_gets[(key, index)]

    def _cache_object(self, key: str, body: bytes) -> None:
        """Write-through: readers of fresh data hit the agent that wrote it."""
        for index in range(0, max(1, (len(body) + CHUNK_BYTES - 1) // CHUNK_BYTES)):
            self._cache.put((key, index), body[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES])
