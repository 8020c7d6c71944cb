"""The demo workload: start an embedded cluster, produce, consume, read a table, report.

It is the main job of the README's quick start, so it prints each step as it goes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any


async def _kafka_round_trip(bootstrap: str, topic: str, already: int) -> tuple[int, int]:
    """Produce and consume through the agents' Kafka listener with aiokafka."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sends = [await producer.send(topic, f"kafka-{i}".encode()) for i in range(1000)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id="demo-kafka"
    )
    await consumer.start()
    got = 0
    try:
        while got < already + len(sends):
            batch = await consumer.getmany(timeout_ms=5000)
            if not batch:
                break
            got += sum(len(msgs) for msgs in batch.values())
    finally:
        await consumer.stop()
    return len(sends), got


def run_demo(*, records: int, partitions: int, **settings: Any) -> int:
    from ray_stream.client.cluster import start_local

    if settings.get("data_dir") is None:
        settings["data_dir"] = tempfile.mkdtemp(prefix="ray_stream-demo-")
    if settings.get("kafka_port") is None:
        settings["kafka_port"] = -1  # any free port: the demo must not clash with a running broker
    print(f"[1/6] starting an embedded cluster (data in {settings['data_dir']}) ...", flush=True)
    t0 = time.monotonic()
    cluster = start_local(**settings)
    try:
        print(
            f"      ready in {time.monotonic() - t0:.1f}s: {cluster.settings.agents} agent(s), "
            f"object store {cluster.settings.resolved_object_store}, "
            f"kafka {cluster.bootstrap_servers or 'off'}",
            flush=True,
        )
        topic = "demo"
        cluster.create_topic(topic, partitions)
        print(f"[2/6] created topic {topic!r} with {partitions} partitions", flush=True)

        t0 = time.monotonic()
        with cluster.producer() as producer:
            futures = [
                producer.send(topic, f"event-{i}".encode(), key=f"user-{i % 97}".encode())
                for i in range(records)
            ]
        metas = [f.result() for f in futures]
        elapsed = time.monotonic() - t0
        print(
            f"[3/6] produced {len(metas)} records in {elapsed:.2f}s "
            f"({len(metas) / elapsed:,.0f} records/s), every one acknowledged with its offset",
            flush=True,
        )

        t0 = time.monotonic()
        consumer = cluster.consumer(group_id="demo-group")
        consumer.assign_topic(topic)
        seen = 0
        while seen < records:
            batch = consumer.poll(timeout=5.0)
            if not batch:
                break
            seen += len(batch)
        consumer.commit()
        print(
            f"[4/6] consumed {seen} records in {time.monotonic() - t0:.2f}s and committed offsets",
            flush=True,
        )

        table = cluster.read_table(topic)
        per_partition = table.group_by("partition").aggregate([("offset", "count")]).to_pylist()
        print(
            f"[5/6] read_table -> {table.num_rows} rows; per partition: {per_partition}", flush=True
        )
        ok = seen == records == table.num_rows
        if cluster.bootstrap_servers:
            sent, got = asyncio.run(_kafka_round_trip(cluster.bootstrap_servers, topic, records))
            print(
                f"[6/6] a stock Kafka client (aiokafka) at {cluster.bootstrap_servers} produced {sent} "
                f"records and consumed {got} (all {records + sent} in the log)",
                flush=True,
            )
            ok = ok and got == records + sent
        print("demo " + ("ok" if ok else "FAILED: counts differ"), flush=True)
        return 0 if ok else 1
    finally:
        cluster.shutdown()
