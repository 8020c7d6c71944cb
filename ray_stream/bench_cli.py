"""``ray-stream bench``: a producer/consumer load test, like Kafka's perf-test tools.

Hooked into ``ray_stream/cli.py`` with ``add_parser(sub)`` and ``run(args)``. Produces
``--records`` records of ``--record-size`` bytes to a topic (created with
``--partitions`` when missing) at ``--throughput`` records/s (-1: as fast as it goes)
through the Python API, printing a progress line with a bar every second (records/s,
acknowledged records); then reads them back from the start of the
produce and reports the same. Acknowledged means durable: the segment is in the object
store and its commit round in the metadata journal.

Rules:

1. Latency is measured per record, from ``send`` returning to its future's callback;
   the summary reports p50/p95/p99/max over every record.
2. The consume phase reads exactly the offsets the produce phase wrote (per partition,
   from the first to the last acknowledged offset), so it never waits for data that
   will not come.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ray_stream.errors import InvalidRequest, UnknownTopicOrPartition

__all__ = ["add_parser", "run"]

MB = 1_000_000
BAR = 20  # characters of the progress bar


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="producer/consumer load test: records/s, MB/s, latency percentiles"
    )
    p.add_argument("--topic", help="topic to use (default: a new bench-<id> topic)")
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--record-size", type=int, default=1024, help="value bytes (default 1024)")
    p.add_argument(
        "--throughput", type=int, default=-1, help="records/s to aim for (-1: unlimited)"
    )
    p.add_argument("--partitions", type=int, default=3, help="for a new topic (default 3)")
    p.add_argument("--no-consume", action="store_true", help="produce only")
    return p


def run(args: argparse.Namespace, *, out: Callable[[str], None] | None = None) -> int:
    from ray_stream.client.cluster import connect

    say = out or (lambda line: print(line, flush=True))
    if args.records < 1 or args.record_size < 0 or args.partitions < 1:
        raise InvalidRequest("--records and --partitions must be >= 1, --record-size >= 0")
    cluster = connect()
    topic = args.topic or f"bench-{uuid.uuid4().hex[:8]}"
    try:
        cluster.describe_topic(topic)
    except UnknownTopicOrPartition:
        cluster.create_topic(topic, args.partitions)
        say(f"created topic {topic} with {args.partitions} partitions")
    written = _produce(cluster, topic, args, say)
    if not args.no_consume:
        _consume(cluster, topic, written, args, say)
    return 0


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no samples"

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"p50 {at(0.50):.1f} ms, p95 {at(0.95):.1f} ms, p99 {at(0.99):.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


class _Progress:
    """Counts records and bytes; ``tick`` prints one line per second."""

    def __init__(
        self,
        phase: str,
        total: int,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.phase, self.total, self.say, self._clock = phase, total, say, clock
        self.count = 0
        self.bytes = 0
        self.started = self._last = clock()
        self._last_count = 0

    def add(self, records: int, size: int) -> None:
        self.count += records
        self.bytes += size

    def tick(self, extra: str = "") -> None:
        now = self._clock()
        if now - self._last < 1.0:
            return
        rate = (self.count - self._last_count) / (now - self._last)
        self._last, self._last_count = now, self.count
        done = self.count / self.total
        bar = "#" * int(BAR * done) + "." * (BAR - int(BAR * done))
        self.say(
            f"{self.phase} [{bar}] {100 * done:3.0f}% {self.count}/{self.total} records, "
            f"{rate:.0f} records/s{extra}"
        )

    def summary(self, latency: str) -> str:
        took = max(self._clock() - self.started, 1e-9)
        return (
            f"{self.phase}: {self.count} records in {took:.2f} s: "
            f"{self.count / took:.0f} records/s, {self.bytes / took / MB:.2f} MB/s; {latency}"
        )


def _produce(
    cluster: Any, topic: str, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[int, tuple[int, int]]:
    """Produce; the (first, last) acknowledged offset of each partition."""
    value = b"x" * args.record_size
    latencies: list[float] = []
    offsets: dict[int, tuple[int, int]] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()
    progress = _Progress("produce", args.records, say)

    def done(sent: float, future: Any) -> None:
        took = time.perf_counter() - sent
        error = future.exception()
        with lock:
            if error is not None:
                failures.append(error)
                return
            latencies.append(took)
            meta = future.result()
            lo, hi = offsets.get(meta.partition, (meta.offset, meta.offset))
            offsets[meta.partition] = (min(lo, meta.offset), max(hi, meta.offset))

    producer = cluster.producer(linger_ms=5)
    started = time.perf_counter()
    try:
        for n in range(args.records):
            if args.throughput > 0:
                delay = started + n / args.throughput - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent = time.perf_counter()
            future = producer.send(topic, value)
            future.add_done_callback(lambda f, sent=sent: done(sent, f))
            progress.add(1, len(value))
            progress.tick(f", {len(latencies)} acknowledged")
        producer.flush()
    finally:
        producer.close()
    if failures:
        say(f"produce: {len(failures)} records failed, e.g. {failures[0]!r}")
    say(progress.summary(_percentiles(latencies)))
    if failures:
        raise failures[0]
    return offsets


def _consume(
    cluster: Any,
    topic: str,
    written: dict[int, tuple[int, int]],
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> None:
    total = sum(hi - lo + 1 for lo, hi in written.values())
    consumer = cluster.consumer(max_poll_records=5000)
    consumer.assign([(topic, p) for p in written])
    for partition, (lo, _) in written.items():
        consumer.seek((topic, partition), lo)
    progress = _Progress("consume", total, say)
    remaining = {p: hi for p, (_, hi) in written.items()}
    idle_since = time.monotonic()
    try:
        while remaining:
            records = consumer.poll(timeout=1.0)
            if not records:
                if time.monotonic() - idle_since > 30:
                    raise InvalidRequest(
                        f"consume: no records for 30 s with {len(remaining)} partitions unread"
                    )
                continue
            idle_since = time.monotonic()
            for rec in records:
                if rec.partition in remaining and rec.offset <= remaining[rec.partition]:
                    progress.add(1, len(rec.value or b""))
                    if rec.offset == remaining[rec.partition]:
                        del remaining[rec.partition]
            progress.tick()
    finally:
        consumer.close()
    say(progress.summary("read back from the object store"))


if __name__ == "__main__":  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(prog="ray-stream")
    run(add_parser(parser.add_subparsers()).parse_args(sys.argv[1:]))
