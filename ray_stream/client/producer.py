"""Producer: records in, RecordBatch v2 batches out, one agent call per batch of batches.

``send`` appends to a per-partition accumulator and returns a future; a sender thread
drains the accumulators every ``linger_ms`` (or when ``batch_bytes`` fill), encodes each
partition's records as one RecordBatch v2 (CRC32C, optional compression), and sends every
partition's batch to one agent in a single actor call. One producer talks to one agent,
so its batches keep their order within each partition.

Invariants: never one actor call per record; a future resolves only with the offset the
metadata actor assigned, or with the error that failed its batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ray_stream.actors import handles
from ray_stream.core.partitioner import partition_for_key
from ray_stream.core.types import BatchResult
from ray_stream.errors import (
    InvalidRequest,
    RayStreamError,
    RecordTooLarge,
    Unavailable,
    UnknownTopicOrPartition,
)
from ray_stream.kafka.records import Record, encode_batch, encode_columns

RECORD_OVERHEAD = 70  # record framing + batch header share, for size checks


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


@dataclass(slots=True)
class _TableJob:
    topic: str
    cols: Any  # client.table.TableColumns
    groups: dict[int, Any]  # partition -> numpy row indices
    rows: int
    size: int
    future: Future[Any]


@dataclass(slots=True)
class _Batch:
    topic: str
    partition: int
    data: bytes
    records: list[Record]
    futures: list[Future[RecordMetadata] | None]
    now_ms: int


class Producer:
    """Sends records to a cluster. Thread-safe; use one per process or thread group.

    Nothing is resent automatically (a resend could land after later batches): a failed
    future carries the error, e.g. Overloaded when the agent's buffer was full and
    nothing was taken in.

    Args:
        cluster: the Cluster handle.
        linger_ms: client-side batching delay before a send to the agent (the agent
            adds its own linger before the object-store write).
        batch_bytes: send a partition's batch once it holds this many bytes.
        compression: None, "gzip", "snappy", "lz4" or "zstd".
        buffer_bytes: ``send`` blocks while this many bytes wait to be acknowledged.
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
        agent: int | None = None,
        zone: str | None = None,
    ) -> None:
        self._cluster = cluster
        self.zone = zone
        self._linger_s = linger_ms / 1000
        self._batch_bytes = batch_bytes
        self._compression = compression
        self._buffer_bytes = buffer_bytes
        self._max_record_bytes = cluster.settings.max_record_bytes
        if agent is None:
            agent = Producer._next_agent
            Producer._next_agent += 1
        self._agent_index = agent
        self._agent = cluster.agent(agent, zone=zone, role="produce")
        self._agent_gone = False  # the agent went away: pick a live one before the next call
        self._partitions: dict[str, int] = {}
        self._acc: dict[tuple[str, int], _Accumulator] = {}
        self._jobs: list[Any] = []
        self._producer_id = uuid.uuid4().hex
        self._generation = 0
        self._session = f"{self._producer_id}/0"
        self._seq = 0
        self._lock = threading.Condition()
        self._unacked_bytes = 0
        self._inflight = 0
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
    ) -> Future[RecordMetadata]:
        """Queue one record; the future's result is a RecordMetadata.

        Raises:
            InvalidRequest: value/key/headers of the wrong type (the message names the field).
            RecordTooLarge: the record is over the cluster's max_record_bytes.
            UnknownTopicOrPartition: no such topic or partition.
        """
        record = _make_record(value, key, headers, timestamp)
        size = _record_size(record)
        if size > self._max_record_bytes:
            raise RecordTooLarge(
                f"record of about {size} bytes is over max_record_bytes={self._max_record_bytes}"
            )
        partition = self._choose_partition(topic, key, partition)
        future: Future[RecordMetadata] = Future()
        self._append(topic, partition, [record], [future], size)
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
        into batches (no per-row future), after anything ``send`` queued before.

        Raises:
            InvalidRequest: a required column is missing or has the wrong type.
            RecordTooLarge: a row is over the cluster's max_record_bytes.
            UnknownTopicOrPartition: no such topic or partition.
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
        job = _TableJob(topic=topic, cols=cols, groups=groups, rows=rows, size=total, future=out)
        with self._lock:
            if self._closed:
                raise InvalidRequest("producer is closed")
            while self._unacked_bytes + total > self._buffer_bytes and self._unacked_bytes > 0:
                self._lock.wait(timeout=1.0)
            if self._acc:
                self._jobs.append(self._acc)
                self._acc = {}
            self._jobs.append(job)
            self._unacked_bytes += total
            self._ready_at = time.monotonic()
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
        """Send everything queued and wait until every record is acknowledged.

        Raises:
            Unavailable: not done within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._ready_at = time.monotonic()
            self._lock.notify_all()
            while self._acc or self._jobs or self._inflight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Unavailable(f"flush did not finish within {timeout}s")
                self._lock.wait(timeout=remaining if remaining is not None else 1.0)

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._sender.join(timeout=5)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

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

    def _append(
        self,
        topic: str,
        partition: int,
        records: list[Record],
        futures: list[Future[RecordMetadata] | None],
        size: int,
    ) -> None:
        with self._lock:
            if self._closed:
                raise InvalidRequest("producer is closed")
            while self._unacked_bytes + size > self._buffer_bytes and self._unacked_bytes > 0:
                self._lock.wait(timeout=1.0)
            acc = self._acc.get((topic, partition))
            if acc is None:
                acc = self._acc[(topic, partition)] = _Accumulator()
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

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (
                    self._ready_at is None or time.monotonic() < self._ready_at
                ):
                    wait = None if self._ready_at is None else self._ready_at - time.monotonic()
                    self._lock.wait(timeout=wait if wait is None else max(wait, 0.0005))
                if self._acc:
                    self._jobs.append(self._acc)
                    self._acc = {}
                if self._closed and not self._jobs:
                    return
                jobs, self._jobs, self._ready_at = self._jobs, [], None
                self._inflight += len(jobs)
            for job in jobs:
                size = job.size if isinstance(job, _TableJob) else sum(a.size for a in job.values())
                try:
                    if isinstance(job, _TableJob):
                        self._send_table(job)
                    else:
                        self._send(job)
                except BaseException as exc:  # never leave futures hanging
                    self._fail(job, exc)
                    self._done(size)

    def _send(self, drained: dict[tuple[str, int], _Accumulator]) -> None:
        batches: list[_Batch] = []
        now_ms = int(time.time() * 1000)
        for (topic, partition), acc in drained.items():
            for records, futures in _split(acc.records, acc.futures, self._max_record_bytes):
                data = encode_batch(records, now_ms=now_ms, compression=self._compression)
                batches.append(_Batch(topic, partition, data, records, futures, now_ms))
        total = sum(a.size for a in drained.values())
        self._submit(
            [(b.topic, b.partition, b.data) for b in batches],
            lambda outcome: self._complete(outcome, batches, total),
        )

    def _send_table(self, job: _TableJob) -> None:
        now_ms = int(time.time() * 1000)
        cols = job.cols
        batches: list[tuple[int, bytes, Any]] = []
        for partition, idx in job.groups.items():
            for piece in _split_rows(idx, cols.sizes, self._max_record_bytes):
                rows = piece.tolist()
                data = encode_columns(
                    [cols.values[i] for i in rows],
                    keys=None if cols.keys is None else [cols.keys[i] for i in rows],
                    timestamps=None
                    if cols.timestamps is None
                    else [cols.timestamps[i] for i in rows],
                    headers=None if cols.headers is None else [cols.headers[i] for i in rows],
                    now_ms=now_ms,
                    compression=self._compression,
                )
                batches.append((partition, data, piece))
        self._submit(
            [(job.topic, p, d) for p, d, _ in batches],
            lambda outcome: self._complete_table(outcome, job, batches),
        )

    def _submit(
        self,
        items: list[tuple[str, int, bytes]],
        done: Any,
    ) -> None:
        """One agent call; ``done`` gets the per-batch results, or the exception that
        failed the call. Nothing is resent: a resend could land after later batches."""
        if self._agent_gone:
            self._agent_gone = False
            self._agent = self._cluster.agent(self._agent_index, zone=self.zone, role="produce")
        ref = self._agent.produce.remote(items, -1, **self._turn())

        def on_reply(fut: Future[list[BatchResult]]) -> None:
            try:
                results = list(fut.result())
            except BaseException as exc:
                self._new_session()
                error = handles.unwrap(exc)
                if isinstance(error, Unavailable):  # retired or restarting: pick again
                    self._agent_gone = True
                done(error)
                return
            done(results)

        ref.future().add_done_callback(on_reply)

    def _complete_table(
        self,
        outcome: list[BatchResult] | BaseException,
        job: _TableJob,
        batches: list[tuple[int, bytes, Any]],
    ) -> None:
        import numpy as np
        import pyarrow as pa

        try:
            if isinstance(outcome, BaseException):
                raise outcome
            results = outcome
            partitions = np.zeros(job.rows, dtype=np.int32)
            offsets = np.zeros(job.rows, dtype=np.int64)
            for (partition, _, idx), result in zip(batches, results, strict=True):
                if result.error is not None:
                    raise result.error
                rows = idx
                partitions[rows] = partition
                offsets[rows] = result.base_offset + np.arange(len(rows), dtype=np.int64)
            job.future.set_result(
                pa.table({"partition": pa.array(partitions), "offset": pa.array(offsets)})
            )
        except BaseException as exc:
            job.future.set_exception(exc)
        finally:
            self._done(job.size)

    def _new_session(self) -> None:
        """After a failed call (e.g. the agent restarted), number calls afresh."""
        with self._lock:
            self._generation += 1
            self._session, self._seq = f"{self._producer_id}/{self._generation}", 0

    def _turn(self) -> dict[str, Any]:
        """Number this producer's calls so the agent buffers them in send order."""
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            return {"session": self._session, "seq": seq}

    def _complete(
        self, outcome: list[BatchResult] | BaseException, batches: list[_Batch], total: int
    ) -> None:
        if isinstance(outcome, BaseException):
            for b in batches:
                _fail_futures(b.futures, outcome)
        else:
            results = outcome
            for b, result in zip(batches, results, strict=True):
                if result.error is not None:
                    _fail_futures(b.futures, result.error)
                    continue
                for i, (rec, f) in enumerate(zip(b.records, b.futures, strict=True)):
                    if f is not None and not f.done():
                        ts = rec.timestamp_ms if rec.timestamp_ms is not None else b.now_ms
                        f.set_result(
                            RecordMetadata(b.topic, b.partition, result.base_offset + i, ts)
                        )
        self._done(total)

    def _fail(
        self, job: _TableJob | dict[tuple[str, int], _Accumulator], exc: BaseException
    ) -> None:
        err = handles.unwrap(exc)
        if isinstance(job, _TableJob):
            if not job.future.done():
                job.future.set_exception(err)
            return
        for acc in job.values():
            _fail_futures(acc.futures, err)

    def _done(self, size: int) -> None:
        with self._lock:
            self._inflight -= 1
            self._unacked_bytes -= size
            self._lock.notify_all()


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
