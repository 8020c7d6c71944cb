"""AgentActor: the stateless front of the cluster.

Write path: ``produce`` buffers RecordBatch v2 bytes from any number of callers; after
``linger_ms`` or ``flush_bytes`` one segment object is PUT, then its commit goes to the
metadata actor, then every caller in that flush gets its base offsets. Commits leave in
flush order through a ``CommitQueue`` (actors/commit_queue.py), so one caller's batches
keep their order within a partition; when flushes queue up behind each other, several
segments go in one commit (one journal PUT).

Read path: ``fetch`` asks the metadata actor where the batches from an offset live, reads
them through a byte-bounded chunk cache (concurrent misses for one chunk share one GET),
rewrites each batch's base offset (bytes 0-8, outside the CRC) and long-polls the
metadata actor when there is nothing new.

Invariants: a caller is answered "ok" only after its batch is in a durable metadata
commit; a failed PUT or commit fails every caller of that flush and nothing of that
flush is visible to readers (the metadata commit is the only thing that makes it so).
The agent keeps nothing that survives it except its own listener address.

Recovery (docs/design/0002-metadata-durability.md):

- A segment PUT that fails is retried (same key, same bytes: objects are immutable) up
  to ``segment_put_attempts`` times with backoff.
- A commit is resent with backoff while the metadata actor restarts, its journal write
  fails, or an answer comes from an epoch older than one already seen, for at most
  ``metadata_retry_s`` and never past half of ``orphan_grace_s`` after the segment's
  key was made (after that the sweep may delete it). Resending is safe:
  ``commit_many_with_epoch`` answers an already-committed segment with its original
  offsets (actors/commit_queue.py).
- Buffers are bounded: produce answers Unavailable once buffered plus in-flight bytes
  would pass ``agent_buffer_bytes``.
- Ray restarts a dead agent (``max_restarts=-1``) by re-running ``__init__``, which Ray
  runs inside the actor's event loop: the Kafka listener starts from there, on the same
  port (for ``kafka_port=-1``: the port the metadata actor saw it register last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ray_stream.actors.commit_queue import CommitQueue, Place
from ray_stream.actors.handles import MetadataProxy, call, get_agent
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
    InvalidRequest,
    OffsetOutOfRange,
    Overloaded,
    RecordTooLarge,
    StorageUnavailable,
    Unavailable,
    UnknownTopicOrPartition,
)
from ray_stream.kafka.records import BatchHeader, parse_batch_header, set_base_offset, verify_crc
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024 * 1024  # cache unit, as DESIGN.md: one GET per chunk however many readers
MAX_FLUSHES_IN_FLIGHT = 3  # PUTs overlap; commits still leave in flush order (CommitQueue)
BROKERS_TTL_S = 10.0
PEER_TIMEOUT_S = 2.0  # a restarting peer is left out of the broker list, not waited for
SESSION_GAP_TIMEOUT_S = 5.0  # Ray reorders calls by ms; a caller that died leaves a gap
REBIND_WAIT_S = 20.0


@dataclass(slots=True)
class _Turn:
    """Orders one pipelining caller's produce calls."""

    next_seq: int
    changed: asyncio.Condition
    last_used: float = 0.0


@dataclass(slots=True)
class _Pending:
    """One produce call waiting for its flush."""

    entries: list[
        tuple[int, str, int, bytes, BatchHeader]
    ]  # (result index, topic, partition, bytes, header)
    results: list[BatchResult | None]
    future: asyncio.Future[list[BatchResult]] | None
    enqueued_s: float = 0.0  # monotonic time the call was buffered


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
    # buffered -> answered, per produce call, over the latest calls (linger + PUT + commit)
    produce_wait_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


class _KafkaFront:
    """The agent as ``KafkaBackend``: its broker id is ``node_id`` there, while the
    actor's own ``node_id()`` method answers the Ray node (for the chaos harness)."""

    def __init__(self, agent: AgentActor) -> None:
        self.node_id = agent.index
        self.settings = agent.settings
        self.meta = agent.meta
        self.brokers = agent.brokers
        self.produce = agent.produce  # bound directly: no extra await before buffering
        self.fetch = agent.fetch


def _restarted() -> bool:
    """True in an actor process Ray started again after the previous one died."""
    import ray

    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # outside an actor (unit tests)
        return False


class AgentActor:
    """A stateless agent. See the module docstring for the write and read paths."""

    def __init__(self, settings: Settings, index: int, *, autostart: bool = True) -> None:
        """Open the object store; inside an event loop (as under Ray) also ``start()``.

        Args:
            settings: cluster settings.
            index: this agent's number (its name is ``agent-<index>``).
            autostart: start the flusher and Kafka listener from here when a loop runs,
                so a restarted agent serves again with no manual step.
        """
        self.settings = settings
        self.index = index
        self.store = open_store(settings.resolved_object_store)
        ns = settings.namespace
        self.meta = MetadataProxy(namespace=ns, retry_s=settings.metadata_retry_s)
        self._meta_once = MetadataProxy(namespace=ns)  # the commit queue retries itself
        self._clock = SystemClock()
        self._commits = CommitQueue(
            self._send_commits,
            clock=self._clock,
            wait_s=settings.resolved_commit_group_wait_ms / 1000,
            retry_s=settings.metadata_retry_s,
        )
        self._inflight_bytes = 0
        self._start_lock = asyncio.Lock()
        self._rand = random.Random()
        self._cache = ByteLRU(settings.cache_bytes)
        self._inflight_gets: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._deadline = 0.0
        self._wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._flush_slots: asyncio.Semaphore | None = None
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._server: Any = None
        self._address: BrokerInfo | None = None
        self._brokers: list[BrokerInfo] = []
        self._brokers_at = -1e9
        self._stats = _Stats()
        self._sessions: dict[str, _Turn] = {}
        self._generations: dict[str, int] = {}
        self._autostart: asyncio.Task[None] | None = None
        if autostart:
            try:
                loop = asyncio.get_running_loop()  # Ray runs an async actor's __init__ in it
            except RuntimeError:
                loop = None
            if loop is not None:
                self._autostart = loop.create_task(self._start_quietly())

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> BrokerInfo | None:
        """Start the flusher and, when configured, the Kafka listener. Idempotent.

        Raises:
            OSError: the Kafka port is taken.
        """
        async with self._start_lock:
            self._ensure_loop_state()
            if self._server is None and self.settings.kafka_port != 0:
                await self._listen()
            return self._address

    async def _listen(self) -> None:
        from ray_stream.server.kafka_server import start_kafka_server

        host = self.settings.kafka_host
        if self.settings.kafka_port == -1:
            port = await self._previous_port()
            try:
                self._server = await self._bind(host, port)
            except OSError:
                if port == 0:
                    raise
                self._server = await start_kafka_server(_KafkaFront(self), host=host, port=0)
        else:
            port = self.settings.kafka_port + self.index
            self._server = await self._bind(host, port)
        bound = self._server.sockets[0].getsockname()
        self._address = BrokerInfo(node_id=self.index, host=host, port=bound[1])
        if self.settings.kafka_port == -1:  # remembered for this agent's next incarnation
            with contextlib.suppress(Exception):  # best effort: only a later restart needs it
                register = self._meta_once.register_agent(self.index, self._address)
                await asyncio.wait_for(register, 5)

    async def _previous_port(self) -> int:
        """The port this agent's previous incarnation registered (0 if unknown)."""
        try:
            info = await asyncio.wait_for(self._meta_once.agent_address(self.index), 2)
        except Exception:  # no metadata actor (yet): any free port
            return 0
        return info.port if info is not None and info.host == self.settings.kafka_host else 0

    async def _bind(self, host: str, port: int) -> Any:
        """Listen on ``port``, waiting out a predecessor process that still holds it
        (after a restart, clients only know the old address)."""
        from ray_stream.server.kafka_server import start_kafka_server

        wait_s = REBIND_WAIT_S if port and _restarted() else 0.0
        deadline = self._clock.monotonic_s() + wait_s
        while True:
            try:
                return await start_kafka_server(_KafkaFront(self), host=host, port=port)
            except OSError:
                if self._clock.monotonic_s() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _start_quietly(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # an explicit start() raises it again for the caller
            log.warning("agent-%d could not start on its own: %s", self.index, exc)

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
                    peer = get_agent(self.settings.namespace, i)
                    info = await asyncio.wait_for(call(peer.kafka_address.remote()), PEER_TIMEOUT_S)
                except Exception as exc:  # a dead or restarting peer is left out, not fatal
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
            "inflight_bytes": self._inflight_bytes,
            "metadata_epoch": self._commits.epoch,
            "commit_calls": self._commits.stats.calls,
            "committed_segments": self._commits.stats.segments,
            "max_commit_group": self._commits.stats.max_group,
            "failures": _merged(s.failures, self._commits.stats.failures),
            "produce_wait_ms": _percentiles(s.produce_wait_ms),
        }

    async def inject_faults(self, spec: dict[str, Any]) -> dict[str, int]:
        """Configure this agent's ``FaultyStore`` (chaos testing); returns its counts.

        Raises:
            InvalidRequest: the object store is not a ``faulty+`` one.
            InvalidConfig: a bad spec key or value.
        """
        store = self._faulty_store()
        store.configure(spec)
        return dict(store.counts_dict())

    async def fault_counts(self) -> dict[str, int]:
        """Faults fired so far by this agent's ``FaultyStore``. Raises InvalidRequest."""
        return dict(self._faulty_store().counts_dict())

    def _faulty_store(self) -> Any:
        from ray_stream.storage.faults import FaultyStore

        if not isinstance(self.store, FaultyStore):
            raise InvalidRequest(
                f"object store {self.store.url!r} is not fault-injecting (use a 'faulty+' URL)"
            )
        return self.store

    async def pid(self) -> int:
        return os.getpid()

    async def node_id(self) -> str:
        """The Ray node this agent runs on ('' outside Ray)."""
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""

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
            late = await self._wait_turn(session, seq)
            if late is not None:
                return [BatchResult(base_offset=-1, error=late) for _ in entries]
            try:
                waiter = self._produce(entries, acks)
            finally:
                self._next_turn(session, seq)
            return await waiter
        return await self._produce(entries, acks)

    async def _wait_turn(self, session: str, seq: int) -> Unavailable | None:
        """Wait until call ``seq`` of ``session`` is next; an error if it came too late.

        Accepted calls of one producer are always buffered in send order: a call that
        arrives after a later one of its producer was taken (its predecessor gap timed
        out, or the producer moved on to a newer session after an error) is refused,
        never buffered out of order. Sessions are ``<producer>/<generation>``.
        """
        producer, _, generation = session.partition("/")
        gen = int(generation or 0)
        if gen < self._generations.get(producer, gen):
            return Unavailable(
                f"call {seq} of an older session of producer {producer}: not written"
            )
        self._generations[producer] = gen
        turn = self._sessions.get(session)
        if turn is None:
            turn = self._sessions[session] = _Turn(next_seq=0, changed=asyncio.Condition())
        turn.last_used = self._clock.monotonic_s()
        if seq < turn.next_seq:
            return Unavailable(
                f"call {seq} of session {session} arrived after its successor: not written"
            )
        async with turn.changed:
            try:
                await asyncio.wait_for(
                    turn.changed.wait_for(lambda: turn.next_seq >= seq), SESSION_GAP_TIMEOUT_S
                )
            except TimeoutError:
                # The predecessor never arrived (its caller died mid-send): skip the gap;
                # if it still turns up it is refused as late.
                log.warning(
                    "session %s: call %d gave up waiting for %d", session, seq, turn.next_seq
                )
        if gen < self._generations.get(producer, gen):  # a newer session went first
            return Unavailable(
                f"call {seq} of an older session of producer {producer}: not written"
            )
        if seq < turn.next_seq:  # a successor skipped the gap while this one waited
            return Unavailable(
                f"call {seq} of session {session} arrived after its successor: not written"
            )
        return None

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

    def _produce(
        self, entries: list[tuple[str, int, bytes]], acks: int
    ) -> asyncio.Future[list[BatchResult]]:
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
        full = self._buffer_full(sum(len(e[3]) for e in valid))
        if full is not None:
            for i, *_ in valid:
                results[i] = BatchResult(base_offset=-1, error=full)
            self._count_failure("buffer_full")
            valid = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[BatchResult]] = loop.create_future()
        if not valid:
            done.set_result([r for r in results if r is not None])
            return done
        future: asyncio.Future[list[BatchResult]] | None = (
            loop.create_future() if acks != 0 else None
        )
        self._enqueue(
            _Pending(
                entries=valid,
                results=results,
                future=future,
                enqueued_s=self._clock.monotonic_s(),
            )
        )
        if future is None:
            done.set_result([])
            return done
        return future

    def _buffer_full(self, adding: int) -> Overloaded | None:
        """Overloaded when ``adding`` bytes would pass ``agent_buffer_bytes`` (buffered
        plus in flight); an empty agent always takes one call, however large."""
        held = self._pending_bytes + self._inflight_bytes
        limit = self.settings.resolved_agent_buffer_bytes
        if held == 0 or held + adding <= limit:
            return None
        return Overloaded(
            f"agent-{self.index} holds {held} bytes of unacknowledged produce data; "
            f"agent_buffer_bytes={limit}: the object store or metadata is slow, retry"
        )

    def _check_batch(self, data: bytes) -> BatchHeader | Exception:
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
        assert self._wakeup is not None
        assert self._flush_slots is not None
        while True:
            self._wakeup.clear()
            if not self._pending:
                await self._wakeup.wait()
                continue
            wait_s = self._deadline - self._clock.monotonic_s()
            if self._pending_bytes < self.settings.flush_bytes and wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                continue
            await self._flush_slots.acquire()
            pendings, moved = self._pending, self._pending_bytes
            self._pending, self._pending_bytes = [], 0
            self._inflight_bytes += moved
            place = self._commits.reserve()  # in flush order: commits leave in this order
            task = asyncio.get_running_loop().create_task(self._flush(pendings, place, moved))
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def _flush(self, pendings: list[_Pending], place: Place, size: int) -> None:
        assert self._flush_slots is not None
        try:
            try:
                staged: CommitRequest | Exception
                staged, give_up = await self._write_segment(pendings)
            except Exception as exc:  # loop boundary: every caller of this flush gets the error
                log.exception("flush failed")
                staged, give_up = exc, 0.0
            outcome = await self._commits.commit(place, staged, give_up=give_up)
        finally:
            self._flush_slots.release()
            self._inflight_bytes -= size
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
        body, positions = await asyncio.to_thread(build_segment, seg)
        key = new_segment_key(self._clock.now_ms(), self._rand)
        # After half the orphan grace the sweep may delete an uncommitted segment: never
        # commit it past that point (the metadata actor refuses it too).
        give_up = self._clock.monotonic_s() + self.settings.orphan_grace_s / 2
        failed = await self._put_segment(key, body)
        if failed is not None:
            return failed, give_up
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
        return request, give_up

    async def _put_segment(self, key: str, body: bytes) -> Exception | None:
        """PUT with retries (same key and bytes: a repeat is harmless); the error if all
        ``segment_put_attempts`` failed, else None."""
        delay = 0.1
        for attempt in range(1, self.settings.segment_put_attempts + 1):
            try:
                await asyncio.to_thread(self.store.put, key, body)
                return None
            except StorageUnavailable as exc:
                self._count_failure("put")
                if attempt == self.settings.segment_put_attempts:
                    return StorageUnavailable(
                        f"segment PUT of {len(body)} bytes to {key} failed {attempt} times: {exc}"
                    )
                log.warning("segment PUT %s failed (attempt %d), retrying: %s", key, attempt, exc)
            except Exception as exc:  # a bad key or configuration: retrying cannot help
                self._count_failure("put")
                return StorageUnavailable(
                    f"segment PUT of {len(body)} bytes to {key} failed: {exc}"
                )
            await asyncio.sleep(delay * (0.5 + self._rand.random()))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _send_commits(self, requests: list[CommitRequest]) -> tuple[list[Any], int]:
        answers, epoch = await self._meta_once.commit_many_with_epoch(requests)
        return list(answers), int(epoch)

    def _answer(self, pendings: list[_Pending], outcome: list[BatchResult] | Exception) -> None:
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
        waited_ms = [(now - p.enqueued_s) * 1000 for p in pendings]
        self._stats.produce_wait_ms.extend(waited_ms)

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
            raise StorageUnavailable(
                f"object {key} is shorter than the committed range {start}+{length}"
            )
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
            data = await asyncio.to_thread(
                self.store.get_range, key, index * CHUNK_BYTES, CHUNK_BYTES
            )
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
        for index in range(max(1, (len(body) + CHUNK_BYTES - 1) // CHUNK_BYTES)):
            self._cache.put((key, index), body[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES])


def _merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


def _percentiles(values: deque[float]) -> dict[str, float]:
    """p50/p99/max of a window of latencies (nearest rank), and how many there were."""
    ordered = sorted(values)
    if not ordered:
        return {"calls": 0}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"calls": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": rank(1.0)}
