"""The Python producer is idempotent: faults under load cost neither a record nor a copy.

A producer sends 50,000 records while the agent it talks to (and, separately, the
metadata actor) is killed and restarts. Every future must succeed, and the log must hold
each record exactly once, in send order per partition, at the offset its future named.
Also: the buffer bound (block or raise), per-send callbacks and ``send_async``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

import ray_stream
from ray_stream.actors import handles
from ray_stream.errors import BufferFull, InvalidRequest
from ray_stream.testing.nemesis import actor_call
from tests.fixtures_ray import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = 50_000
PARTITIONS = 4


@pytest.fixture
def stream(ray_session: Any, tmp_path: Any) -> Any:
    cluster = ray_stream.start_local(
        data_dir=str(tmp_path / "data"),
        namespace="idem-" + uuid.uuid4().hex[:8],
        kafka_port=0,
        linger_ms=20,
    )
    yield cluster
    cluster.shutdown()


def _send_all(producer: Any, topic: str, kill: Any) -> list[Any]:
    """Send RECORDS values ``n`` to partition n % PARTITIONS; call ``kill`` once a fifth
    of them were acknowledged."""
    futures: list[Any] = []
    killed = threading.Event()
    for n in range(RECORDS):
        futures.append(producer.send(topic, str(n).encode(), partition=n % PARTITIONS))
        if not killed.is_set() and n >= RECORDS // 5 and futures[RECORDS // 10].done():
            kill()
            killed.set()
    assert killed.is_set(), "the fault never fired: the producer was too slow to test it"
    producer.flush(timeout=240)
    return futures


def _check_exactly_once_in_order(stream: Any, topic: str, futures: list[Any]) -> None:
    errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors == [], f"{len(errors)} sends failed, e.g. {errors[:3]}"
    acked = {n: (f.result().partition, f.result().offset) for n, f in enumerate(futures)}
    rows = stream.read_table(topic).to_pylist()
    values = [int(r["value"]) for r in rows]
    assert len(values) == len(set(values)) == RECORDS, "lost or duplicated records"
    at = {(r["partition"], r["offset"]): int(r["value"]) for r in rows}
    moved = [n for n, place in acked.items() if at.get(place) != n]
    assert moved == [], f"{len(moved)} records are not where their future said"
    for partition in range(PARTITIONS):
        in_log = [
            int(r["value"])
            for r in sorted(rows, key=lambda r: r["offset"])
            if r["partition"] == partition
        ]
        assert in_log == sorted(in_log), f"partition {partition} is out of send order"


def test_killing_the_agent_mid_send_loses_and_duplicates_nothing(stream: Any) -> None:
    import ray

    topic = "idem-agent-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, PARTITIONS)
    agent = stream.agent(0)
    pid_before = actor_call(agent, "pid")
    with stream.producer(agent=0) as producer:
        futures = _send_all(producer, topic, lambda: ray.kill(agent, no_restart=False))
        resent = producer.stats()["resent_batches"]
    print(f"agent kill: {resent} batches resent")
    assert resent > 0  # the kill caught batches in flight: the resend path was exercised
    wait_for(lambda: actor_call(agent, "pid") not in (None, pid_before), timeout=60)
    _check_exactly_once_in_order(stream, topic, futures)


def test_killing_the_metadata_actor_mid_send_loses_and_duplicates_nothing(stream: Any) -> None:
    import ray

    topic = "idem-meta-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, PARTITIONS)
    meta = stream.metadata
    epoch_before = handles.get(meta.ping.remote())["epoch"]
    with stream.producer() as producer:
        futures = _send_all(producer, topic, lambda: ray.kill(meta, no_restart=False))
        resent = producer.stats()["resent_batches"]
    # Agents resend their commits across a metadata restart themselves; the producer
    # resends only what an agent gave up on (often nothing).
    print(f"metadata kill: {resent} batches resent")
    assert handles.get(meta.ping.remote(), timeout_s=60)["epoch"] > epoch_before  # it did restart
    _check_exactly_once_in_order(stream, topic, futures)


def test_a_full_buffer_raises_or_blocks_as_chosen(stream: Any) -> None:
    topic = "idem-buf-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, 1)
    value = b"x" * 1000
    with stream.producer(buffer_bytes=20_000, on_buffer_full="raise", linger_ms=200) as p:
        sent = 0
        with pytest.raises(BufferFull, match="buffer_bytes=20000"):  # noqa: PT012
            while sent < 100:  # 100 KB into a 20 KB buffer within one linger
                p.send(topic, value)
                sent += 1
    assert 15 <= sent <= 20
    with stream.producer(buffer_bytes=20_000, linger_ms=1) as p:  # "block": waits for room
        futures = [p.send(topic, value) for _ in range(100)]
        p.flush(60)
    assert all(f.exception() is None for f in futures)
    with pytest.raises(InvalidRequest, match="on_buffer_full"):
        stream.producer(on_buffer_full="drop")


def test_callbacks_and_send_async_report_every_record(stream: Any) -> None:
    topic = "idem-cb-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, 2)
    delivered: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_delivery(meta: Any, error: BaseException | None) -> None:
        assert error is None
        with lock:
            delivered.append((meta.partition, meta.offset))

    with stream.producer() as producer:
        for i in range(200):
            producer.send(topic, b"cb", partition=i % 2, on_delivery=on_delivery)
        producer.flush(60)

        async def send_many() -> list[Any]:
            return await asyncio.gather(
                *(producer.send_async(topic, f"a{i}".encode(), partition=0) for i in range(50))
            )

        metas = asyncio.run(send_many())
    assert sorted(delivered) == sorted({(p, o) for p, o in delivered})
    assert len(delivered) == 200
    offsets = [m.offset for m in metas]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 50
    # The same records come back through the consumer's async iterator, in offset order.
    with stream.consumer(max_poll_records=20) as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek_to_beginning()

        async def read_async() -> list[bytes]:
            seen: list[bytes] = []
            async for record in consumer:
                if record.value.startswith(b"a"):
                    seen.append(record.value)
                if len(seen) == 50:
                    break
            return seen

        values = asyncio.run(asyncio.wait_for(read_async(), 60))
    by_offset = sorted(zip(offsets, [f"a{i}".encode() for i in range(50)], strict=True))
    assert values == [v for _, v in by_offset]
