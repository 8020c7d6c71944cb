"""Producer: records in, RecordBatch v2 batches out, one agent call per batch of batches.

``send`` appends to a per-partition accumulator and returns a future; a sender thread
drains the accumulators every ``linger_ms`` (or when ``batch_bytes`` fill), cuts each
partition's records into batches, and sends batches of many partitions to one agent in a
single actor call (at most ``max_in_flight`` calls at once).

The producer is idempotent by default, as Kafka's clients are since 3.0: it takes a
producer id from the metadata actor, stamps every batch with a per-partition sequence
number, and resends what failed for a retriable reason (Overloaded, an agent or the
metadata actor restarting, a timeout), with backoff and in order, until
``delivery_timeout_s``. The metadata actor recognises a resend of a batch it already
committed (same producer id, epoch and sequence) and answers with the original offset,
so a resend never duplicates, also when an agent died after its commit and before its
answer.

Rules this module keeps:

1. **Never one actor call per record**; a future resolves only with the offset the
   metadata actor assigned, or with the error that failed its batch for good.
2. **Order within a partition is send order**: calls go to one agent numbered in send
   order (the agent buffers them in that order); a resend goes before anything newer of
   its partition; a partition with a batch waiting to be resent has at most one call in
   flight until the resend is answered, so no batch can be committed ahead of an earlier
   one (a later batch that reaches the metadata actor first is refused as out of order,
   and resent after it).
3. **Resends stay recognisable**: the metadata actor remembers a producer's last five
   runs of batches per partition (a run: batches contiguous in sequences and offsets, as
   a producer's batches of one agent flush are when no other producer writes the
   partition in between). A batch is uncertain only if its flush was committed and the
   answer lost (the agent died between its commit and its reply), which an agent's
   commit pipeline bounds to its last few flushes, so a resend finds its original
   offset. A resend older than every remembered run is answered DuplicateSequence
   (it was written once): its records count as delivered, with offset -1, as in Kafka.
4. **A batch that failed for good leaves no gap behind it**: its partition takes a new
   producer id, and every later batch of the partition is stamped afresh under it.
5. **Bounded memory**: records count against ``buffer_bytes`` from ``send`` until their
   batch is answered; a full buffer blocks ``send`` (up to ``max_block_s``) or raises
   ``BufferFull`` at once, as ``on_buffer_full`` says.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ray_stream.actors import handles
from ray_stream.core.backoff import Backoff, BackoffPolicy
from ray_stream.core.partitioner import partition_for_key
from ray_stream.core.types import BatchResult
from ray_stream.errors import (
    BufferFull,
    Conflict,
    DuplicateSequence,
    Fenced,
    InvalidRequest,
    OutOfOrderSequence,
    Overloaded,
    RayStreamError,
    RecordTooLarge,
    Unavailable,
    UnknownTopicOrPartition,
)
from ray_stream.kafka.records import Record, encode_batch, encode_columns

RECORD_OVERHEAD = 70  # record framing + batch header share, for size checks
SEQUENCE_LIMIT = 2**31  # sequences wrap from Int.MAX to 0, as Kafka's do
MAX_IN_FLIGHT = 64  # calls: the agent holds each for its linger, so many overlap
MAX_IN_FLIGHT_LIMIT = 1024
DeliveryCallback = Callable[["RecordMetadata | None", "BaseException | None"], None]


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a sent record landed."""

    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclass(slots=True)
class _Accumulator:
    records: list[Record] = field(default_factory=list)
    futures: list[Future[RecordMetadata] | None] = field(default_factory=list)
    size: int = 0
    since: float = 0.0  # monotonic time of the first send: the delivery deadline counts from it


@dataclass(slots=True, eq=False)
class _Batch:
    """One RecordBatch to deliver: what it holds, how to encode it, whom to tell."""

    order: int  # send order within the producer; resends sort by it
    topic: str
    partition: int
    count: int  # records
    size: int  # bytes counted against buffer_bytes
    encode: Callable[[int, int, int], bytes]  # (producer_id, epoch, base_sequence) -> bytes
    done: Callable[[BatchResult | BaseException], None]
    deadline: float  # monotonic
    stamp: tuple[int, int, int, int] | None = None  # (generation, producer_id, epoch, seq)
    data: bytes = b""
    encoded: tuple[int, int, int, int] | None = None
    sent: bool = False
    error: BaseException | None = None  # the last retriable error
    uncertain: bool = False  # an attempt failed after the agent may have taken it in


@dataclass(slots=True)
class _Partition:
    """The delivery state of one partition (rules 2 and 4)."""

    queue: list[_Batch] = field(default_factory=list)  # to send, in send order
    inflight: int = 0  # calls in flight that carry this partition
    generation: int = 0  # bumped when a batch failed for good
    identity: tuple[int, int] | None = None  # (producer_id, epoch) of a generation > 0
    next_seq: int = 0
    recovering: bool = False  # a batch failed and is resent before anything newer
    retry_at: float = 0.0
    backoff: Backoff | None = None


@dataclass(slots=True, eq=False)
class _Call:
    batches: list[_Batch]
    keys: list[tuple[str, int]]  # partitions it carries (each once)
    started: float = 0.0
    finished: bool = False


class Producer:
    """Sends records to a cluster. Thread-safe; use one per process or thread group.

    Idempotent by default: retriable failures are resent (in order, without duplicates)
    until ``delivery_timeout_s``; a future fails only then, or at once for an error no
    resend can fix (a deleted topic, an oversized batch), with the last error.

    Args:
        cluster: the Cluster handle.
        linger_ms: client-side batching delay before a send to the agent (the agent
            adds its own linger before the object-store write).
        batch_bytes: send a partition's batch once it holds this many bytes.
        compression: None, "gzip", "snappy", "lz4" or "zstd".
        buffer_bytes: record bytes that may wait for acknowledgement; see on_buffer_full.
        on_buffer_full: "block" (default): ``send`` waits for room, up to ``max_block_s``,
            then raises BufferFull; "raise": ``send`` raises BufferFull at once.
        max_block_s: how long a blocked ``send`` waits (Kafka's ``max.block.ms``).
        delivery_timeout_s: how long a record may take from ``send`` to acknowledgement,
            resends included (Kafka's ``delivery.timeout.ms``, default 120 s).
        request_timeout_s: a call the agent has not answered within this is treated as
            failed and resent (Kafka's ``request.timeout.ms``, default 30 s).
        retry_backoff_s / retry_backoff_max_s: the backoff between resends of a
            partition (exponential with jitter, as Kafka's ``retry.backoff.ms``).
        max_in_flight: calls in flight at once (1..1024, default 64). An agent holds
            each call for its linger (250 ms by default), so a steady sender needs many.
        enable_idempotence: False sends without producer id and sequence numbers and
            never resends: a failure fails the future at once (a resend could duplicate).
        agent: which agent to talk to (default: spread producers round-robin).
        zone: this client's availability zone: it talks to an agent of that zone when
            one is alive (no cross-zone traffic), else to any agent.
    """

    _next_agent = 0

    def __init__(
        self,
        cluster: Any,
        *,
        linger_ms: int = 5,
        batch_bytes: int = 1024 * 1024,
        compression: str | None = None,
        buffer_bytes: int = 32 * 1024 * 1024,
        on_buffer_full: str = "block",
        max_block_s: float = 60.0,
        delivery_timeout_s: float = 120.0,
        request_timeout_s: float = 30.0,
        retry_backoff_s: float = 0.1,
        retry_backoff_max_s: float = 1.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        enable_idempotence: bool = True,
        agent: int | None = None,
        zone: str | None = None,
    ) -> None:
        _check_options(
            on_buffer_full=on_buffer_full,
            max_in_flight=max_in_flight,
            delivery_timeout_s=delivery_timeout_s,
            request_timeout_s=request_timeout_s,
            buffer_bytes=buffer_bytes,
            max_block_s=max_block_s,
            linger_ms=linger_ms,
        )
        self._cluster = cluster
        self.zone = zone
        self._linger_s = linger_ms / 1000
        self._batch_bytes = batch_bytes
        self._compression = compression
        self._buffer_bytes = buffer_bytes
        self._block = on_buffer_full == "block"
        self._max_block_s = max_block_s
        self._delivery_s = delivery_timeout_s
        self._request_s = request_timeout_s
        self._backoff = BackoffPolicy(retry_backoff_s, max(retry_backoff_s, retry_backoff_max_s))
        self._rand = random.Random()
        self._max_in_flight = max_in_flight
        self._idempotent = enable_idempotence
        self._max_record_bytes = cluster.settings.max_record_bytes
        # A call must fit an agent's buffer, or it would be refused as Overloaded forever.
        self._max_call_bytes = max(
            self._max_record_bytes, cluster.settings.resolved_agent_buffer_bytes // 2
        )
        if agent is None:
            agent = Producer._next_agent
            Producer._next_agent += 1
        self._agent_index = agent
        self._agent: Any = None
        self._identity: tuple[int, int] | None = None  # generation 0's (producer_id, epoch)
        self._identity_error: BaseException | None = None
        self._identity_backoff = Backoff(self._backoff, rand=self._rand)
        self._identity_retry_at = 0.0
        self._partitions: dict[str, int] = {}
        self._acc: dict[tuple[str, int], _Accumulator] = {}
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._queued = 0  # batches in partition queues
        self._calls: list[_Call] = []  # in flight
        self._order = itertools.count()
        self._session_base = f"{id(self):x}-{time.time_ns():x}"
        self._generation = 0
        self._session = f"{self._session_base}/0"
        self._seq = 0
        self._lock = threading.Condition()
        self._unacked_bytes = 0
        self._counts = {"sent_batches": 0, "resent_batches": 0, "failed_batches": 0}
        self._round_robin: dict[str, int] = {}
        self._closed = False
        self._ready_at: float | None = None
        self._sender = threading.Thread(target=self._run, name="ray-stream-producer", daemon=True)
        self._sender.start()

    # ------------------------------------------------------------------ API

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
    ) -> Future[RecordMetadata]:
        """Queue one record; the future's result is a RecordMetadata.

        Args:
            on_delivery: called once, from the producer's thread, with
                ``(RecordMetadata, None)`` or ``(None, error)`` when the record is
                acknowledged or failed for good. Keep it short.

        Raises:
            InvalidRequest: value/key/headers of the wrong type (the message names the field).
            RecordTooLarge: the record is over the cluster's max_record_bytes.
            UnknownTopicOrPartition: no such topic or partition.
            BufferFull: ``buffer_bytes`` are waiting and ``on_buffer_full`` said raise
                (or ``max_block_s`` passed).
        """
        return self._send_one(topic, value, key, partition, headers, timestamp, on_delivery, True)

    async def send_async(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | dict[str, bytes] | None = None,
        timestamp: int | None = None,
    ) -> RecordMetadata:
        """``send`` for asyncio code: queue one record and await its RecordMetadata.

        The event loop is never blocked: when the buffer is full the wait for room runs
        in a worker thread. Errors are ``send``'s, raised by the await.
        """
        try:
            future = self._send_one(topic, value, key, partition, headers, timestamp, None, False)
        except BufferFull:
            if not self._block:
                raise
            future = await asyncio.to_thread(
                self._send_one, topic, value, key, partition, headers, timestamp, None, True
            )
        return await asyncio.wrap_future(future)

    def _send_one(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes | None]] | dict[str, bytes] | None,
        timestamp: int | None,
        on_delivery: DeliveryCallback | None,
        block: bool,
    ) -> Future[RecordMetadata]:
        record = _make_record(value, key, headers, timestamp)
        size = _record_size(record)
        if size > self._max_record_bytes:
            raise RecordTooLarge(
                f"record of about {size} bytes is over max_record_bytes={self._max_record_bytes}"
            )
        partition = self._choose_partition(topic, key, partition)
        future: Future[RecordMetadata] = Future()
        if on_delivery is not None:
            future.add_done_callback(lambda f: _deliver(f, on_delivery))
        self._append(topic, partition, [record], [future], size, block=block)
        return future

    def send_batch(
        self,
        topic: str,
        table: Any,
        *,
        partition: int | None = None,
    ) -> Future[Any]:
        """Send every row of an Arrow table; the future's result is a table of
        ``partition`` and ``offset`` per input row, in input order.

        The table needs a ``value`` column (binary or string) and may have ``key``,
        ``timestamp`` (int64 ms or timestamp), ``partition`` and ``headers``
        (list<struct<key: string, value: binary>>) columns. Rows with a key go where
        murmur2 puts them; rows without one go to ``partition`` or, in runs of
        ``batch_bytes``, round robin over the partitions. Rows are encoded straight
        into batches (no per-row future), after anything ``send`` queued before. The
        rows are delivered (and resent) as ``send``'s records are; the future fails
        with the first batch that failed for good (the other rows may have landed).

        Raises:
            InvalidRequest: a required column is missing or has the wrong type.
            RecordTooLarge: a row is over the cluster's max_record_bytes.
            UnknownTopicOrPartition: no such topic or partition.
            BufferFull: as for ``send``.
        """
        import numpy as np

        from ray_stream.client.table import columns_from_table

        cols = columns_from_table(table, record_overhead=RECORD_OVERHEAD)
        rows = len(cols.values)
        if rows and int(cols.sizes.max()) > self._max_record_bytes:
            bad = int(np.argmax(cols.sizes))
            raise RecordTooLarge(
                f"row {bad} of about {int(cols.sizes[bad])} bytes is over "
                f"max_record_bytes={self._max_record_bytes}"
            )
        assigned = self._assign_rows(topic, cols, partition)
        groups = {int(p): np.flatnonzero(assigned == p) for p in np.unique(assigned)}
        total = int(cols.sizes.sum()) if rows else 0
        out: Future[Any] = Future()
        table_job = _TableResult(rows, out)
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._check_open()
            self._wait_for_room(total, block=True)
            self._unacked_bytes += total
            deadline = time.monotonic() + self._delivery_s
            self._drain_accumulators()  # what send() queued before goes first
            for p, idx in groups.items():
                for piece in _split_rows(idx, cols.sizes, self._max_record_bytes):
                    self._enqueue(
                        topic,
                        p,
                        count=len(piece),
                        size=int(cols.sizes[piece].sum()),
                        encode=self._table_encoder(cols, piece, now_ms),
                        done=table_job.part(p, piece),
                        deadline=deadline,
                    )
            if not groups:
                out.set_result(table_job.table())
            self._lock.notify_all()
        return out

    def _assign_rows(self, topic: str, cols: Any, partition: int | None) -> Any:
        """The partition of every row (numpy int32 array)."""
        import numpy as np

        count = self._partition_count(topic)
        rows = len(cols.values)
        if partition is not None:
            self._choose_partition(topic, None, partition)  # validates
        if cols.partitions is None and cols.keys is None:
            if partition is not None:
                return np.full(rows, partition, np.int32)
            # Runs of about batch_bytes per partition, round robin (sticky partitioning).
            start = self._round_robin.get(topic, 0)
            runs = (
                np.cumsum(cols.sizes) // max(1, self._batch_bytes)
                if rows
                else np.zeros(0, np.int64)
            )
            self._round_robin[topic] = start + (int(runs[-1]) + 1 if rows else 0)
            return ((runs + start) % count).astype(np.int32)
        out = np.empty(rows, np.int32)
        for i in range(rows):
            explicit = cols.partitions[i] if cols.partitions is not None else None
            key = cols.keys[i] if cols.keys is not None else None
            out[i] = self._choose_partition(
                topic, key, explicit if explicit is not None else partition
            )
        return out

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait until every record is acknowledged or failed
        for good (resends included).

        Raises:
            Unavailable: not done within ``timeout`` seconds (nothing is cancelled).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._ready_at = time.monotonic()
            self._lock.notify_all()
            while self._acc or self._queued or self._calls:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Unavailable(
                        f"flush did not finish within {timeout}s: {self._queued} batches "
                        f"wait to be sent and {len(self._calls)} calls are in flight"
                    )
                self._lock.wait(timeout=min(remaining, 1.0) if remaining is not None else 1.0)

    def stats(self) -> dict[str, int]:
        """Counters since creation: ``sent_batches`` (acknowledged), ``resent_batches``
        (retriable failures sent again), ``failed_batches`` (failed for good), and the
        ``buffered_bytes`` waiting for acknowledgement now."""
        with self._lock:
            return {**self._counts, "buffered_bytes": self._unacked_bytes}

    def close(self, timeout: float | None = None) -> None:
        """``flush`` (up to ``timeout``), then stop the sender thread."""
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._sender.join(timeout=5)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ accumulate

    def _choose_partition(self, topic: str, key: bytes | None, partition: int | None) -> int:
        count = self._partition_count(topic)
        if partition is not None:
            if not isinstance(partition, int) or not 0 <= partition < count:
                raise UnknownTopicOrPartition(
                    f"partition {partition!r} does not exist in topic {topic!r} (0..{count - 1})"
                )
            return partition
        if key is not None:
            return partition_for_key(key, count)
        # Sticky-ish round robin: fill one partition's batch, then move on.
        current = self._round_robin.get(topic, 0)
        acc = self._acc.get((topic, current % count))
        if acc is not None and acc.size >= self._batch_bytes:
            current += 1
            self._round_robin[topic] = current
        return current % count

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            if not isinstance(topic, str):
                raise InvalidRequest(f"topic must be a str, got {type(topic).__name__}")
            info = self._cluster.describe_topic(topic)
            count = self._partitions[topic] = info.partitions
        return count

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequest("producer is closed")

    def _wait_for_room(self, size: int, *, block: bool) -> None:
        """Under the lock: return once ``size`` more bytes fit ``buffer_bytes`` (rule 5)."""
        if self._unacked_bytes + size <= self._buffer_bytes or self._unacked_bytes == 0:
            return
        if not block or not self._block:
            raise BufferFull(
                f"producer buffer full: {self._unacked_bytes} bytes of buffer_bytes="
                f"{self._buffer_bytes} wait for acknowledgement; flush(), raise "
                "buffer_bytes, or pass on_buffer_full='block'"
            )
        deadline = time.monotonic() + self._max_block_s
        while self._unacked_bytes + size > self._buffer_bytes and self._unacked_bytes > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BufferFull(
                    f"producer buffer still full after max_block_s={self._max_block_s}: "
                    f"{self._unacked_bytes} bytes of buffer_bytes={self._buffer_bytes} wait "
                    "for acknowledgement (is the cluster reachable? `ray-stream status`)"
                )
            self._lock.wait(timeout=min(remaining, 1.0))
            self._check_open()

    def _append(
        self,
        topic: str,
        partition: int,
        records: list[Record],
        futures: list[Future[RecordMetadata] | None],
        size: int,
        *,
        block: bool,
    ) -> None:
        with self._lock:
            self._check_open()
            self._wait_for_room(size, block=block)
            acc = self._acc.get((topic, partition))
            if acc is None:
                acc = self._acc[(topic, partition)] = _Accumulator(since=time.monotonic())
                if self._ready_at is None:
                    self._ready_at = time.monotonic() + self._linger_s
                    self._lock.notify_all()
            acc.records.extend(records)
            acc.futures.extend(futures)
            acc.size += size
            self._unacked_bytes += size
            if acc.size >= self._batch_bytes:
                self._ready_at = time.monotonic()
                self._lock.notify_all()

    def _drain_accumulators(self) -> None:
        """Under the lock: cut every accumulator into batches on its partition's queue."""
        drained, self._acc, self._ready_at = self._acc, {}, None
        now_ms = int(time.time() * 1000)
        for (topic, partition), acc in drained.items():
            deadline = acc.since + self._delivery_s
            for records, futures in _split(acc.records, acc.futures, self._max_record_bytes):
                self._enqueue(
                    topic,
                    partition,
                    count=len(records),
                    size=sum(_record_size(r) for r in records),
                    encode=self._record_encoder(records, now_ms),
                    done=_record_outcome(topic, partition, records, futures, now_ms),
                    deadline=deadline,
                )

    def _enqueue(self, topic: str, partition: int, **batch: Any) -> None:
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = _Partition()
        part.queue.append(_Batch(next(self._order), topic, partition, **batch))
        self._queued += 1

    def _record_encoder(
        self, records: list[Record], now_ms: int
    ) -> Callable[[int, int, int], bytes]:
        compression = self._compression

        def encode(producer_id: int, epoch: int, sequence: int) -> bytes:
            return encode_batch(
                records,
                now_ms=now_ms,
                compression=compression,
                producer_id=producer_id,
                producer_epoch=epoch,
                base_sequence=sequence,
            )

        return encode

    def _table_encoder(
        self, cols: Any, piece: Any, now_ms: int
    ) -> Callable[[int, int, int], bytes]:
        compression = self._compression

        def encode(producer_id: int, epoch: int, sequence: int) -> bytes:
            rows = piece.tolist()
            return encode_columns(
                [cols.values[i] for i in rows],
                keys=None if cols.keys is None else [cols.keys[i] for i in rows],
                timestamps=None if cols.timestamps is None else [cols.timestamps[i] for i in rows],
                headers=None if cols.headers is None else [cols.headers[i] for i in rows],
                now_ms=now_ms,
                compression=compression,
                producer_id=producer_id,
                producer_epoch=epoch,
                base_sequence=sequence,
            )

        return encode

    # ---------------------------------------------------------------- sender

    def _run(self) -> None:
        while True:
            expired: list[tuple[_Batch, BatchResult | BaseException]] = []
            call: _Call | None = None
            with self._lock:
                while True:
                    now = time.monotonic()
                    if self._acc and self._ready_at is not None and now >= self._ready_at:
                        self._drain_accumulators()
                    expired = self._expire(now)
                    if self._needs_identity() and now >= self._identity_retry_at:
                        break  # fetch it outside the lock
                    if len(self._calls) < self._max_in_flight:
                        call = self._next_call(now)
                    if call is not None or expired:
                        break
                    if self._closed and not (self._acc or self._queued or self._calls):
                        return
                    self._lock.wait(timeout=self._idle_wait(now))
            for batch, error in expired:
                batch.done(error)
            if call is None and not expired:
                self._fetch_identity()
            if call is not None:
                self._dispatch(call)

    def _idle_wait(self, now: float) -> float:
        """Under the lock: how long the sender may sleep before something is due."""
        wait = 0.25
        if self._acc and self._ready_at is not None:
            wait = min(wait, self._ready_at - now)
        can_call = len(self._calls) < self._max_in_flight
        for part in self._parts.values():
            if not part.queue:
                continue
            wait = min(wait, part.queue[0].deadline - now)
            # An answer (which notifies) unblocks a partition waiting on calls in flight;
            # counting it here would spin the sender.
            if can_call and not (self._idempotent and part.recovering and part.inflight):
                wait = min(wait, part.retry_at - now)
        for call in self._calls:
            wait = min(wait, call.started + self._request_s - now)
        if self._needs_identity():
            wait = min(wait, self._identity_retry_at - now)
        return max(wait, 0.0005)

    def _needs_identity(self) -> bool:
        return self._idempotent and self._identity is None and self._queued > 0

    def _fetch_identity(self) -> None:
        """Take generation 0's producer id from the metadata actor (retried with backoff:
        the metadata actor may be restarting)."""
        if not self._needs_identity():
            return
        try:
            meta = self._cluster.metadata
            identity = handles.get(meta.init_producer_id.remote(), timeout_s=self._request_s)
        except Exception as exc:  # anything here means: try again later
            with self._lock:
                self._identity_error = handles.unwrap(exc)
                self._identity_retry_at = time.monotonic() + self._identity_backoff.next_delay()
            return
        with self._lock:
            self._identity = (identity.producer_id, identity.epoch)
            self._identity_backoff = Backoff(self._backoff, rand=self._rand)
            self._lock.notify_all()

    def _expire(self, now: float) -> list[tuple[_Batch, BatchResult | BaseException]]:
        """Under the lock: calls past the request timeout are settled as failed (their
        batches resent), and queued batches past their delivery deadline fail for good.
        Returns the outcomes to hand out outside the lock."""
        out: list[tuple[_Batch, BatchResult | BaseException]] = []
        for call in list(self._calls):
            if now - call.started > self._request_s:
                timeout = Unavailable(
                    f"no answer from the agent within request_timeout_s={self._request_s}"
                )
                self._settle(call, timeout, now, out)
        for part in self._parts.values():
            if not part.queue or part.queue[0].deadline > now:
                continue
            kept: list[_Batch] = []
            for batch in part.queue:
                if batch.deadline <= now:
                    out.append((batch, _timed_out(batch, self._delivery_s, self._identity_error)))
                    self._counts["failed_batches"] += 1
                    self._release(batch)
                    self._gap(part, batch)
                else:
                    kept.append(batch)
            part.queue = kept
        return out

    def _release(self, batch: _Batch) -> None:
        self._unacked_bytes -= batch.size
        self._queued -= 1
        self._lock.notify_all()

    def _gap(self, part: _Partition, batch: _Batch) -> None:
        """A batch of ``part`` failed for good (rule 4): if it carried the current
        generation's sequence, later batches are stamped afresh under a new producer id."""
        if batch.stamp is not None and batch.stamp[0] == part.generation:
            part.generation += 1
            part.identity = None
            part.next_seq = 0

    def _next_call(self, now: float) -> _Call | None:
        """Under the lock: the batches of the next call (rule 2), stamped."""
        batches: list[_Batch] = []
        keys: list[tuple[str, int]] = []
        size = 0
        for key, part in self._parts.items():
            if not part.queue or part.retry_at > now:
                continue
            if self._idempotent and part.recovering and part.inflight:
                continue  # uncertain sequence state: one call at a time
            if self._idempotent and part.generation == 0 and self._identity is None:
                continue
            if self._idempotent and part.generation > 0 and part.identity is None:
                part.identity = self._new_identity_later(key)
                if part.identity is None:
                    continue
            taken = 0
            for batch in part.queue:
                if batches and size + batch.size > self._max_call_bytes:
                    break
                self._stamp(part, batch)
                batches.append(batch)
                size += batch.size
                taken += 1
            if taken:
                del part.queue[:taken]
                self._queued -= taken
                part.inflight += 1
                keys.append(key)
            if size >= self._max_call_bytes:
                break
        if not batches:
            return None
        call = _Call(batches, keys, started=now)
        self._calls.append(call)
        return call

    def _new_identity_later(self, key: tuple[str, int]) -> tuple[int, int] | None:
        """Under the lock: a fresh producer id for a partition whose sequence had a gap.
        Taken with a blocking call, so it is asked for outside the lock; until then the
        partition waits."""
        thread = threading.Thread(target=self._fetch_partition_identity, args=(key,), daemon=True)
        part = self._parts[key]
        part.retry_at = time.monotonic() + 3600  # until the fetch answers
        thread.start()
        return None

    def _fetch_partition_identity(self, key: tuple[str, int]) -> None:
        try:
            meta = self._cluster.metadata
            identity = handles.get(meta.init_producer_id.remote(), timeout_s=self._request_s)
            found: tuple[int, int] | None = (identity.producer_id, identity.epoch)
        except Exception as exc:  # retried at the next turn
            self._identity_error = handles.unwrap(exc)
            found = None
        with self._lock:
            part = self._parts[key]
            if found is not None:
                part.identity = found
                part.retry_at = 0.0
            else:
                part.retry_at = time.monotonic() + self._part_backoff(part).next_delay()
            self._lock.notify_all()

    def _part_backoff(self, part: _Partition) -> Backoff:
        if part.backoff is None:
            part.backoff = Backoff(self._backoff, rand=self._rand)
        return part.backoff

    def _stamp(self, part: _Partition, batch: _Batch) -> None:
        """Give ``batch`` its sequence unless it already has one of this generation."""
        if not self._idempotent:
            batch.stamp = (0, -1, -1, -1)
            return
        if batch.stamp is not None and batch.stamp[0] == part.generation:
            return
        if part.generation == 0:
            assert self._identity is not None
            producer_id, epoch = self._identity
        else:
            assert part.identity is not None
            producer_id, epoch = part.identity
        batch.stamp = (part.generation, producer_id, epoch, part.next_seq)
        part.next_seq = (part.next_seq + batch.count) % SEQUENCE_LIMIT

    def _dispatch(self, call: _Call) -> None:
        """Encode (outside the lock) and send one call; its answer settles its batches."""
        items: list[tuple[str, int, bytes]] = []
        refused: list[tuple[_Batch, BaseException]] = []
        for batch in call.batches:
            assert batch.stamp is not None
            if batch.encoded != batch.stamp:
                try:
                    batch.data = batch.encode(*batch.stamp[1:])
                    batch.encoded = batch.stamp
                except RayStreamError as exc:
                    refused.append((batch, exc))
                    continue
            items.append((batch.topic, batch.partition, batch.data))
        if refused:
            with self._lock:
                bad = {id(b) for b, _ in refused}
                call.batches = [b for b in call.batches if id(b) not in bad]
                done = [(b, e) for b, e in refused]
                for b, _ in refused:
                    self._gap(self._parts[(b.topic, b.partition)], b)
                    self._unacked_bytes -= b.size
                self._lock.notify_all()
            for b, e in done:
                b.done(e)
        try:
            if not items:
                raise _Empty
            agent = self._pick_agent()
            ref = agent.produce.remote(items, -1, **self._turn())
        except _Empty:
            self._answer(call, [])
            return
        except Exception as exc:  # no agent now: resend later
            self._answer(call, handles.unwrap(exc))
            return
        for batch in call.batches:
            batch.sent = True

        def on_reply(fut: Future[list[BatchResult]]) -> None:
            try:
                outcome: list[BatchResult] | BaseException = list(fut.result())
            except BaseException as exc:  # settled per batch below
                outcome = handles.unwrap(exc)
            self._answer(call, outcome)

        ref.future().add_done_callback(on_reply)

    def _pick_agent(self) -> Any:
        if self._agent is None:
            self._agent = self._cluster.agent(self._agent_index, zone=self.zone, role="produce")
        return self._agent

    def _turn(self) -> dict[str, Any]:
        """Number this producer's calls so the agent buffers them in send order."""
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            return {"session": self._session, "seq": seq}

    def _answer(self, call: _Call, outcome: list[BatchResult] | BaseException) -> None:
        done: list[tuple[_Batch, BatchResult | BaseException]] = []
        with self._lock:
            self._settle(call, outcome, time.monotonic(), done)
        for batch, result in done:
            batch.done(result)

    def _settle(
        self,
        call: _Call,
        outcome: list[BatchResult] | BaseException,
        now: float,
        done: list[tuple[_Batch, BatchResult | BaseException]],
    ) -> None:
        """Under the lock: acknowledge, resend or fail each batch of an answered (or
        timed-out) call. ``done`` collects the outcomes to hand out outside the lock."""
        if call.finished:
            return  # timed out before; this late answer changes nothing
        call.finished = True
        self._calls.remove(call)
        for key in call.keys:
            self._parts[key].inflight -= 1
        if isinstance(outcome, BaseException):
            self._new_session(drop_agent=isinstance(outcome, Unavailable | Fenced))
            results: list[BatchResult | BaseException] = [outcome] * len(call.batches)
        else:
            results = list(outcome)
        failed: set[tuple[str, int]] = set()
        for batch, result in zip(call.batches, results, strict=True):
            key = (batch.topic, batch.partition)
            part = self._parts[key]
            error = result if isinstance(result, BaseException) else result.error
            if isinstance(error, DuplicateSequence):
                # Written once, before what the metadata actor still remembers (rule 3):
                # delivered, at an offset no longer known (-1), as Kafka's clients report.
                error, result = None, BatchResult(-1, None, True)
            if error is None:
                assert not isinstance(result, BaseException)
                done.append((batch, result))
                self._unacked_bytes -= batch.size
                self._counts["sent_batches"] += 1
            elif self._retriable(error) and now < batch.deadline:
                self._counts["resent_batches"] += 1
                batch.error = error
                batch.uncertain |= batch.sent and not isinstance(error, Overloaded)
                failed.add(key)
                part.queue.append(batch)
                self._queued += 1
            else:
                done.append((batch, _final_error(batch, error)))
                self._unacked_bytes -= batch.size
                self._counts["failed_batches"] += 1
                failed.add(key)
                self._gap(part, batch)
        for key in call.keys:
            part = self._parts[key]
            if key in failed:
                part.queue.sort(key=_by_order)
                part.recovering = any(b.sent for b in part.queue)
                if part.recovering:
                    part.retry_at = now + self._part_backoff(part).next_delay()
            elif not any(b.sent for b in part.queue):
                part.recovering = False
                part.backoff = None
        self._lock.notify_all()

    def _retriable(self, error: BaseException) -> bool:
        """Resending can fix it: the cluster was busy or restarting, or the batch came
        after one that is being resent (rule 2). Only an idempotent producer resends."""
        if not self._idempotent:
            return False
        return isinstance(error, Unavailable | Conflict | Fenced | OutOfOrderSequence)

    def _new_session(self, *, drop_agent: bool) -> None:
        """Under the lock, after a failed call: number calls afresh (the agent refuses
        late calls of an old session), and pick an agent again if it went away."""
        self._generation += 1
        self._session, self._seq = f"{self._session_base}/{self._generation}", 0
        if drop_agent:
            self._agent = None


class _Empty(Exception):
    """A call whose every batch was refused before sending."""


def _by_order(batch: _Batch) -> int:
    return batch.order


def _final_error(batch: _Batch, error: BaseException) -> BaseException:
    """The error a batch fails with for good: ``error``, unless an earlier attempt may
    have been written (it failed after the agent could have taken it in), in which case
    the outcome is unknown and the error says so (an Unavailable, never an error that
    means "nothing was written")."""
    if not batch.uncertain:
        return error
    return Unavailable(
        f"delivery of {batch.count} records to {batch.topic}-{batch.partition} not "
        f"confirmed (an earlier attempt may have been written): {type(error).__name__}: {error}"
    )


def _timed_out(
    batch: _Batch, limit_s: float, identity_error: BaseException | None
) -> BaseException:
    """The error of a batch whose delivery timeout passed: the last one it met."""
    if batch.error is not None:
        return _final_error(batch, batch.error)
    if identity_error is not None:
        return identity_error
    return Unavailable(
        f"{batch.count} records for {batch.topic}-{batch.partition} not delivered within "
        f"delivery_timeout_s={limit_s}: is the cluster running? `ray-stream status`"
    )


def _record_outcome(
    topic: str,
    partition: int,
    records: list[Record],
    futures: list[Future[RecordMetadata] | None],
    now_ms: int,
) -> Callable[[BatchResult | BaseException], None]:
    """How a batch of ``send`` records hands its outcome to their futures."""

    def done(outcome: BatchResult | BaseException) -> None:
        if isinstance(outcome, BaseException):
            _fail_futures(futures, outcome)
            return
        for i, (rec, f) in enumerate(zip(records, futures, strict=True)):
            if f is not None and not f.done():
                ts = rec.timestamp_ms if rec.timestamp_ms is not None else now_ms
                offset = outcome.base_offset + i if outcome.base_offset >= 0 else -1
                f.set_result(RecordMetadata(topic, partition, offset, ts))

    return done


class _TableResult:
    """Collects a ``send_batch`` table's per-batch outcomes into its one future."""

    def __init__(self, rows: int, future: Future[Any]) -> None:
        import numpy as np

        self._future = future
        self._partitions = np.zeros(rows, dtype=np.int32)
        self._offsets = np.zeros(rows, dtype=np.int64)
        self._waiting = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def part(self, partition: int, rows: Any) -> Callable[[BatchResult | BaseException], None]:
        import numpy as np

        self._waiting += 1

        def done(outcome: BatchResult | BaseException) -> None:
            with self._lock:
                if isinstance(outcome, BaseException):
                    self._error = self._error or outcome
                else:
                    self._partitions[rows] = partition
                    base = outcome.base_offset
                    self._offsets[rows] = base + np.arange(len(rows)) if base >= 0 else -1
                self._waiting -= 1
                finished = self._waiting == 0
            if finished:
                if self._error is not None:
                    self._future.set_exception(self._error)
                else:
                    self._future.set_result(self.table())

        return done

    def table(self) -> Any:
        import pyarrow as pa

        return pa.table(
            {"partition": pa.array(self._partitions), "offset": pa.array(self._offsets)}
        )


def _deliver(future: Future[RecordMetadata], callback: DeliveryCallback) -> None:
    error = future.exception()
    callback(None, error) if error is not None else callback(future.result(), None)


def _check_options(
    *,
    on_buffer_full: str,
    max_in_flight: int,
    delivery_timeout_s: float,
    request_timeout_s: float,
    buffer_bytes: int,
    max_block_s: float,
    linger_ms: int,
) -> None:
    """Raise InvalidRequest naming the first option out of range."""
    checks = {
        "on_buffer_full": on_buffer_full in ("block", "raise"),
        "max_in_flight": isinstance(max_in_flight, int)
        and 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT,
        "delivery_timeout_s": delivery_timeout_s > 0,
        "request_timeout_s": request_timeout_s > 0,
        "buffer_bytes": buffer_bytes > 0,
        "max_block_s": max_block_s >= 0,
        "linger_ms": linger_ms >= 0,
    }
    for name, ok in checks.items():
        if not ok:
            allowed = {
                "on_buffer_full": "'block' or 'raise'",
                "max_in_flight": f"an int in 1..{MAX_IN_FLIGHT_LIMIT}",
            }.get(name, "a positive number")
            raise InvalidRequest(f"producer option {name} must be {allowed}")


def _split(
    records: list[Record], tags: list[Any], max_bytes: int
) -> list[tuple[list[Record], list[Any]]]:
    """Cut one partition's records (and their parallel tags) into batches under the size limit."""
    out: list[tuple[list[Record], list[Any]]] = []
    start, size = 0, 61
    for i, rec in enumerate(records):
        rsize = _record_size(rec)
        if i > start and size + rsize > max_bytes:
            out.append((records[start:i], tags[start:i]))
            start, size = i, 61
        size += rsize
    out.append((records[start:], tags[start:]))
    return out


def _split_rows(idx: Any, sizes: Any, max_bytes: int) -> list[Any]:
    """Cut a partition's row indices into runs whose sizes stay under ``max_bytes``."""
    import numpy as np

    if len(idx) == 0:
        return []
    cumulative = np.cumsum(sizes[idx])
    pieces = []
    start = 0
    base = 0
    while start < len(idx):
        end = int(np.searchsorted(cumulative, base + max_bytes - 61, side="right"))
        end = max(end, start + 1)
        pieces.append(idx[start:end])
        base = int(cumulative[end - 1])
        start = end
    return pieces


def _fail_futures(futures: list[Future[RecordMetadata] | None], err: BaseException) -> None:
    for f in futures:
        if f is not None and not f.done():
            f.set_exception(err)


def _check_bytes(name: str, value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidRequest(
        f"{name} must be bytes (or None), got {type(value).__name__}; encode it first, e.g. "
        f"{name}.encode() for a str"
    )


def _make_record(
    value: object,
    key: object,
    headers: list[tuple[str, bytes | None]] | dict[str, bytes] | None,
    timestamp: object,
) -> Record:
    v = _check_bytes("value", value)
    k = _check_bytes("key", key)
    hdrs: tuple[tuple[str, bytes | None], ...] = ()
    if headers is not None:
        items = headers.items() if isinstance(headers, dict) else headers
        try:
            hdrs = tuple((str(hk), _check_bytes("header value", hv)) for hk, hv in items)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"headers must be (str, bytes) pairs: {exc}") from exc
        for hk, _ in hdrs:
            if not isinstance(hk, str):
                raise InvalidRequest("header keys must be str")
    if timestamp is not None and (not isinstance(timestamp, int) or isinstance(timestamp, bool)):
        raise InvalidRequest(f"timestamp must be int milliseconds, got {type(timestamp).__name__}")
    return Record(value=v, key=k, timestamp_ms=timestamp, headers=hdrs)  # type: ignore[arg-type]


def _record_size(record: Record) -> int:
    size = RECORD_OVERHEAD + len(record.value or b"") + len(record.key or b"")
    for hk, hv in record.headers:
        size += len(hk) + len(hv or b"") + 4
    return size


__all__ = ["Producer", "RayStreamError", "RecordMetadata"]
