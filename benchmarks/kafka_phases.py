"""confluent-kafka measurements for benchmarks/kafka.py: topics, produce, consume, latency.

Each function takes a bootstrap address and returns plain dicts of what it measured, or
raises with a message saying what went wrong (the caller records it; nothing is guessed).
Throughput is value bytes (1 KiB records) over wall time; latency is measured in one
process with ``time.perf_counter_ns`` on both ends, so no clock skew enters.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from common import percentile

RECORD = 1024
MIB = 1024**2
STAMP = struct.Struct(">q")
# More librdkafka settings for the clients of one bootstrap address (security.protocol,
# sasl.*, ssl.ca.location of a TLS + SCRAM cluster); the runner registers them.
CLIENT_CONFIGS: dict[str, dict[str, Any]] = {}


def _config(bootstrap: str, **settings: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **settings, **CLIENT_CONFIGS.get(bootstrap, {})}


def _producer(bootstrap: str, linger_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer(_config(bootstrap, acks="all", **{"linger.ms": linger_ms}))


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_config(bootstrap))
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], request_timeout=30)
    for future in futures.values():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10)
        if all(n in md.topics and len(md.topics[n].partitions) == partitions for n in names):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {names} not visible in metadata after 30 s")


def produce_phase(
    bootstrap: str,
    topic: str,
    *,
    records: int,
    max_seconds: float,
    linger_ms: int,
    on_warm: Callable[[], None] | None = None,
) -> dict:
    """Send up to ``records`` 1 KiB values (stop early at ``max_seconds``), then flush.

    One warm-up record is acknowledged first (connections, bucket checks); ``on_warm``
    runs after it, just before the timed part.
    """
    producer = _producer(bootstrap, linger_ms)
    errors: list[str] = []
    delivered = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered[0] += 1

    producer.produce(topic, b"w" * RECORD, on_delivery=on_delivery)  # warm the connection
    if producer.flush(60) != 0 or errors:
        raise RuntimeError(f"warm-up record not acknowledged: {errors[:1] or 'flush timed out'}")
    delivered[0] = 0
    if on_warm is not None:
        on_warm()
    value = b"p" * RECORD
    started = time.perf_counter()
    deadline = started + max_seconds
    sent = 0
    while sent < records and time.perf_counter() < deadline:
        try:
            producer.produce(topic, value, on_delivery=on_delivery)
            sent += 1
        except BufferError:
            producer.poll(0.005)
    remaining = producer.flush(300)
    elapsed = time.perf_counter() - started
    if remaining or errors:
        raise RuntimeError(
            f"{delivered[0]} of {sent} records acknowledged; {remaining} unflushed; "
            f"first error: {errors[:1]}"
        )
    return {
        "records": delivered[0],
        "bytes": delivered[0] * RECORD,
        "seconds": elapsed,
        "mib_s": delivered[0] * RECORD / MIB / elapsed,
        "records_s": delivered[0] / elapsed,
        "stopped_at_time_cap": sent < records,
    }


def _consumer(bootstrap: str, fetch_wait_ms: int) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            **CLIENT_CONFIGS.get(bootstrap, {}),
            "bootstrap.servers": bootstrap,
            "group.id": "bench-" + uuid.uuid4().hex[:8],
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
            # librdkafka stops fetching a partition whose local queue passed
            # queued.max.messages.kbytes (64 MiB) and waits fetch.queue.backoff.ms
            # (1000 ms) before it fetches again: a faster broker fills the queue sooner
            # and then sits out whole seconds, which measured the client's backoff, not
            # the broker (ray_stream's consume varied 126-302 MiB/s run to run). Same
            # setting for every system.
            "fetch.queue.backoff.ms": 10,
        }
    )


def consume_phase(
    bootstrap: str,
    topic: str,
    *,
    expected: int,
    partitions: int,
    fetch_wait_ms: int,
    max_seconds: float,
    on_start: Callable[[], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> dict:
    """Read the ``expected`` acknowledged records of ``topic`` from the earliest offsets.

    ``on_start`` runs just before the timed read (after the watermark query), ``on_done``
    right after it (before the consumer closes).

    The count comes from the producer's acknowledgements, not from ListOffsets: the high
    watermarks the broker reports are recorded beside it (``watermark_records``) so a
    broker whose ListOffsets lags its data shows up instead of shortening the read.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = _consumer(bootstrap, fetch_wait_ms)
    try:
        watermarks = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            for p in range(partitions)
        ]
        got = read_bytes = 0
        if on_start is not None:
            on_start()
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = started + max_seconds
        while got < expected and time.perf_counter() < deadline:
            # consume() waits for num_messages or the timeout: never ask for more than is left
            for msg in consumer.consume(num_messages=min(10_000, expected - got), timeout=1.0):
                if msg.error() is not None:
                    raise RuntimeError(f"consume error: {msg.error()}")
                got += 1
                read_bytes += len(msg.value() or b"")
        elapsed = time.perf_counter() - started
        if on_done is not None:
            on_done()
    finally:
        consumer.close()
    if got < expected:
        raise RuntimeError(f"read {got} of {expected} acknowledged records in {elapsed:.0f} s")
    return {
        "records": got,
        "bytes": read_bytes,
        "seconds": elapsed,
        "mib_s": read_bytes / MIB / elapsed,
        "records_s": got / elapsed,
        "watermark_records": sum(high - low for low, high in watermarks),
    }


def latency_phase(
    bootstrap: str,
    topic: str,
    *,
    partitions: int,
    rate: int,
    seconds: float,
    linger_ms: int,
    fetch_wait_ms: int,
) -> dict:
    """Stamp send times into values at ``rate``/s; a consumer thread measures arrival.

    ``topic`` must be empty beforehand. Ack latency is librdkafka's produce-to-ack time.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    # The topic is fresh: read it from the beginning (ListOffsets may lag on some brokers);
    # the warm-up records, stamped 0, are skipped.
    consumer = _consumer(bootstrap, fetch_wait_ms)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    e2e: list[float] = []
    acks: list[float] = []
    warm = threading.Event()
    stop = threading.Event()
    failure: list[str] = []

    def consume() -> None:
        try:
            while not stop.is_set():
                msg = consumer.poll(0.1)  # one at a time: consume() would wait to fill a batch
                now = time.perf_counter_ns()
                if msg is None:
                    continue
                if msg.error() is not None:
                    failure.append(str(msg.error()))
                    continue
                sent = STAMP.unpack_from(msg.value())[0]
                if sent == 0:
                    warm.set()
                else:
                    e2e.append((now - sent) / 1e6)
        finally:
            consumer.close()

    reader = threading.Thread(target=consume, name="latency-consumer", daemon=True)
    reader.start()
    producer = _producer(bootstrap, linger_ms)

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None and msg.latency() is not None and STAMP.unpack_from(msg.value())[0]:
            acks.append(msg.latency() * 1000)

    pad = b"l" * (RECORD - STAMP.size)
    try:
        deadline = time.monotonic() + 60
        while not warm.is_set() and time.monotonic() < deadline:  # connect both ends first
            producer.produce(topic, STAMP.pack(0) + pad)
            producer.flush(10)
            warm.wait(1.0)
        if not warm.is_set():
            raise RuntimeError("warm-up records never reached the consumer within 60 s")
        interval = 1 / rate
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            target = t0 + n * interval
            now = time.perf_counter()
            if target > now:
                time.sleep(target - now)
            producer.produce(
                topic, STAMP.pack(time.perf_counter_ns()) + pad, on_delivery=on_delivery
            )
            producer.poll(0)
            n += 1
        producer.flush(60)
        deadline = time.monotonic() + 60  # a consumer that fell behind may still catch up
        while len(e2e) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(10)
    if failure:
        raise RuntimeError(f"latency consumer error: {failure[0]}")
    return {
        "sent": n,
        "received": len(e2e),
        "rate": rate,
        "p50_ms": percentile(e2e, 50),
        "p99_ms": percentile(e2e, 99),
        "max_ms": max(e2e) if e2e else float("nan"),
        "ack_p50_ms": percentile(acks, 50),
        "ack_p99_ms": percentile(acks, 99),
    }
