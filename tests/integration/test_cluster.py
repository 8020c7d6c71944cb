"""The embedded cluster end to end on a real local Ray: write path, read path, restart."""

from __future__ import annotations

import threading
import time
import uuid

import pyarrow as pa
import pytest

import ray_stream
from ray_stream.core.partitioner import partition_for_key

pytestmark = pytest.mark.integration


def _start(tmp_path, **kw):
    kw.setdefault("kafka_port", 0)
    kw.setdefault("linger_ms", 20)
    return ray_stream.start_local(
        data_dir=str(tmp_path / "data"), namespace="ns-" + uuid.uuid4().hex[:8], **kw
    )


@pytest.fixture
def cluster(ray_session, tmp_path):
    c = _start(tmp_path)
    yield c
    c.shutdown()


def _round_trip(cluster, topic):
    cluster.create_topic(topic, 2)
    with cluster.producer() as producer:
        futures = [
            producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode(), headers=[("h", b"x")])
            for i in range(500)
        ]
    metas = [f.result(timeout=30) for f in futures]
    table = cluster.read_table(topic)
    assert table.num_rows == 500
    got = {(r["partition"], r["offset"]): r for r in table.to_pylist()}
    for i, meta in enumerate(metas):
        row = got[(meta.partition, meta.offset)]
        assert row["value"] == f"v{i}".encode()
        assert row["key"] == f"k{i}".encode()
        assert row["headers"] == [{"key": "h", "value": b"x"}]
    return metas


def test_round_trip_local_directory_store(cluster, unique_name):
    metas = _round_trip(cluster, unique_name)
    # offsets are dense per partition, starting at 0
    for p in (0, 1):
        offsets = sorted(m.offset for m in metas if m.partition == p)
        assert offsets == list(range(len(offsets)))


def test_round_trip_s3_store(ray_session, tmp_path, s3_url, unique_name):
    c = _start(tmp_path, object_store=s3_url)
    try:
        _round_trip(c, unique_name)
        stats = c.status()["agents"][0]
        assert stats["puts"] >= 1
    finally:
        c.shutdown()


def test_flushes_that_queue_up_commit_together_and_keep_their_order(
    ray_session, tmp_path, unique_name
):
    # Journal PUTs (one per metadata commit round) take 0.4 s and the agent lingers
    # 10 ms: its flushes queue up behind the round in flight, so the agent commits
    # several segments per round.
    slow = f"faulty+file://{tmp_path}/objects#latency_s=0.4&key_prefix=metadata/journal/"
    c = _start(tmp_path, object_store=slow, linger_ms=10, commit_group_wait_ms=1000)
    try:
        c.create_topic(unique_name, 1)
        with c.producer(linger_ms=1) as producer:
            # The idempotent producer keeps one call in flight until its first batch is
            # acknowledged; after that it pipelines one call per record here.
            futures = [producer.send(unique_name, b"v0")]
            futures[0].result(timeout=60)
            for i in range(1, 40):
                futures.append(producer.send(unique_name, f"v{i}".encode()))
                time.sleep(0.02)
            offsets = [f.result(timeout=60).offset for f in futures]
        agent = c.status()["agents"][0]
        table = c.read_table(unique_name)
    finally:
        c.shutdown()
    assert offsets == list(range(40))  # acked in send order
    assert table.column("value").to_pylist() == [f"v{i}".encode() for i in range(40)]
    assert agent["committed_segments"] == agent["flushes"] > 1
    assert agent["commit_calls"] < agent["flushes"]  # segments shared commits
    assert agent["max_commit_group"] >= 2


def test_per_partition_order_under_three_concurrent_producers(cluster, unique_name):
    cluster.create_topic(unique_name, 3)
    per_producer = 2000
    results: dict[int, list] = {}

    def run(pid: int) -> None:
        producer = cluster.producer(linger_ms=2, batch_bytes=16 * 1024)
        futs = [
            producer.send(unique_name, f"{pid}:{seq}".encode(), partition=seq % 3)
            for seq in range(per_producer)
        ]
        producer.flush()
        results[pid] = [f.result() for f in futs]

    threads = [threading.Thread(target=run, args=(pid,)) for pid in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = cluster.read_table(unique_name)
    assert table.num_rows == 3 * per_producer
    for p in range(3):
        rows = sorted(
            (r for r in table.to_pylist() if r["partition"] == p), key=lambda r: r["offset"]
        )
        assert [r["offset"] for r in rows] == list(range(len(rows)))
        last_seq: dict[str, int] = {}
        for r in rows:
            pid, seq = r["value"].decode().split(":")
            assert int(seq) > last_seq.get(pid, -1), "a producer's records were reordered"
            last_seq[pid] = int(seq)
    # acks match what the log holds
    for pid, metas in results.items():
        for seq, meta in enumerate(metas):
            assert meta.partition == seq % 3


def test_keyed_records_land_where_murmur2_puts_them(cluster, unique_name):
    from kafka.partitioner.default import murmur2 as kafka_python_murmur2

    cluster.create_topic(unique_name, 7)
    keys = [f"customer-{i}".encode() for i in range(200)]
    with cluster.producer() as producer:
        futures = [producer.send(unique_name, b"x", key=k) for k in keys]
    for key, fut in zip(keys, futures, strict=True):
        expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % 7
        assert fut.result().partition == expected == partition_for_key(key, 7)


def test_send_batch_of_arrow_table(cluster, unique_name):
    cluster.create_topic(unique_name, 3)
    n = 5000
    table = pa.table(
        {
            "key": [f"k{i % 50}".encode() for i in range(n)],
            "value": [f"value-{i}".encode() for i in range(n)],
            "timestamp": pa.array([1_700_000_000_000 + i for i in range(n)], pa.int64()),
        }
    )
    with cluster.producer() as producer:
        placed = producer.send_batch(unique_name, table).result(timeout=60)
    assert placed.num_rows == n
    read = cluster.read_table(unique_name)
    assert read.num_rows == n
    by_pos = {(r["partition"], r["offset"]): r for r in read.to_pylist()}
    for i, (p, o) in enumerate(
        zip(placed["partition"].to_pylist(), placed["offset"].to_pylist(), strict=True)
    ):
        row = by_pos[(p, o)]
        assert row["value"] == f"value-{i}".encode()
        assert int(row["timestamp"].timestamp() * 1000) == 1_700_000_000_000 + i


def test_consumer_group_commit_and_resume(cluster, unique_name):
    cluster.create_topic(unique_name, 2)
    with cluster.producer() as producer:
        for i in range(100):
            producer.send(unique_name, str(i).encode(), partition=i % 2)
    consumer = cluster.consumer(group_id="g1")
    consumer.assign_topic(unique_name)
    first = []
    while len(first) < 60:
        first.extend(consumer.poll(timeout=5, max_records=60 - len(first)))
    consumer.commit()
    consumer.close()
    again = cluster.consumer(group_id="g1")
    again.assign_topic(unique_name)
    rest = []
    while len(rest) < 40:
        got = again.poll(timeout=5)
        assert got, "consumer stalled"
        rest.extend(got)
    seen = {(r.partition, r.offset) for r in first} | {(r.partition, r.offset) for r in rest}
    assert len(seen) == 100 == len(first) + len(rest)


def test_poll_long_polls_until_new_data(cluster, unique_name):
    cluster.create_topic(unique_name, 1)
    consumer = cluster.consumer(fetch_max_wait_ms=5000)
    consumer.assign([(unique_name, 0)])
    assert consumer.poll(timeout=0.2) == []
    producer = cluster.producer()
    timer = threading.Timer(0.5, lambda: producer.send(unique_name, b"late"))
    timer.start()
    records = consumer.poll(timeout=10)
    assert [r.value for r in records] == [b"late"]
    producer.close()


def test_restart_keeps_every_acknowledged_record_at_its_offset(ray_session, tmp_path, unique_name):
    ns = "ns-" + uuid.uuid4().hex[:8]
    first = ray_stream.start_local(
        data_dir=str(tmp_path / "d"), namespace=ns, kafka_port=0, linger_ms=10
    )
    first.create_topic(unique_name, 3)
    with first.producer() as producer:
        futures = [
            producer.send(unique_name, f"r{i}".encode(), key=str(i).encode()) for i in range(3000)
        ]
    acked = {
        (f.result().partition, f.result().offset): f"r{i}".encode() for i, f in enumerate(futures)
    }
    consumer = first.consumer(group_id="keep")
    consumer.assign_topic(unique_name)
    while consumer.poll(timeout=2):
        pass
    consumer.commit()
    first.shutdown()

    second = ray_stream.start_local(
        data_dir=str(tmp_path / "d"), namespace=ns, kafka_port=0, linger_ms=10
    )
    try:
        table = second.read_table(unique_name)
        got = {(r["partition"], r["offset"]): r["value"] for r in table.to_pylist()}
        assert got == acked
        resumed = second.consumer(group_id="keep")
        resumed.assign_topic(unique_name)
        assert resumed.poll(timeout=0.5) == []
        # new records continue the offsets
        with second.producer() as producer:
            meta = producer.send(unique_name, b"after", partition=0).result()
        assert meta.offset == max(o for p, o in acked if p == 0) + 1
    finally:
        second.shutdown()


def test_send_batch_with_partition_and_headers_columns(cluster, unique_name):
    cluster.create_topic(unique_name, 4)
    n = 400
    table = pa.table(
        {
            "value": pa.array([f"s{i}" for i in range(n)], pa.string()),
            "partition": pa.array([i % 4 for i in range(n)], pa.int32()),
            "headers": pa.array(
                [[{"key": "i", "value": str(i).encode()}] for i in range(n)],
                pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())])),
            ),
        }
    )
    with cluster.producer() as producer:
        placed = producer.send_batch(unique_name, table).result(timeout=60)
    assert placed["partition"].to_pylist() == [i % 4 for i in range(n)]
    read = cluster.read_table(unique_name)
    rows = {r["value"]: r for r in read.to_pylist()}
    for i in range(n):
        row = rows[f"s{i}".encode()]
        assert row["partition"] == i % 4
        assert row["headers"] == [{"key": "i", "value": str(i).encode()}]


def test_send_batch_rejects_bad_tables(cluster, unique_name):
    from ray_stream import InvalidRequest, RecordTooLarge

    cluster.create_topic(unique_name, 1)
    producer = cluster.producer()
    with pytest.raises(InvalidRequest, match="value"):
        producer.send_batch(unique_name, pa.table({"payload": [b"x"]}))
    with pytest.raises(InvalidRequest, match="value"):
        producer.send_batch(unique_name, pa.table({"value": [1, 2]}))
    with pytest.raises(InvalidRequest, match="pyarrow"):
        producer.send_batch(unique_name, [b"x"])
    with pytest.raises(RecordTooLarge, match="row 1"):
        producer.send_batch(unique_name, pa.table({"value": [b"x", b"y" * (2 * 1024 * 1024)]}))
    producer.close()


def test_read_table_ranges_and_dataset(cluster, unique_name):
    cluster.create_topic(unique_name, 2)
    with cluster.producer() as producer:
        for i in range(200):
            producer.send(unique_name, str(i).encode(), partition=i % 2)
    part = cluster.read_table(unique_name, partitions=[1], start=10, end=20)
    assert part["offset"].to_pylist() == list(range(10, 20))
    assert set(part["partition"].to_pylist()) == {1}
    per = cluster.read_table(unique_name, start={0: 95}, end={1: 3})
    assert sorted(zip(per["partition"].to_pylist(), per["offset"].to_pylist(), strict=True)) == [
        (0, 95),
        (0, 96),
        (0, 97),
        (0, 98),
        (0, 99),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    ds = cluster.read_dataset(unique_name)
    assert ds.count() == 200
    assert sorted(int(row["value"]) for row in ds.take_all()) == list(range(200))
