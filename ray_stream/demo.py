"""The demo workload: start an embedded cluster, produce, consume, read a table, report.

It is the main job of the README's quick start, so it prints each step as it goes.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any


def run_demo(*, records: int, partitions: int, **settings: Any) -> int:
    from ray_stream.client.cluster import start_local

    if settings.get("data_dir") is None:
        settings["data_dir"] = tempfile.mkdtemp(prefix="ray_stream-demo-")
    if settings.get("kafka_port") is None:
        settings["kafka_port"] = -1  # any free port: the demo must not clash with a running broker
    print(f"[1/5] starting an embedded cluster (data in {settings['data_dir']}) ...", flush=True)
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
        print(f"[2/5] created topic {topic!r} with {partitions} partitions", flush=True)

        t0 = time.monotonic()
        with cluster.producer() as producer:
            futures = [
                producer.send(topic, f"event-{i}".encode(), key=f"user-{i % 97}".encode())
                for i in range(records)
            ]
        metas = [f.result() for f in futures]
        elapsed = time.monotonic() - t0
        print(
            f"[3/5] produced {len(metas)} records in {elapsed:.2f}s "
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
        print(f"[4/5] consumed {seen} records in {time.monotonic() - t0:.2f}s and committed offsets", flush=True)

        table = cluster.read_table(topic)
        per_partition = table.group_by("partition").aggregate([("offset", "count")]).to_pylist()
        print(f"[5/5] read_table -> {table.num_rows} rows; per partition: {per_partition}", flush=True)
        ok = seen == records == table.num_rows
        print("demo " + ("ok" if ok else "FAILED: counts differ"), flush=True)
        return 0 if ok else 1
    finally:
        cluster.shutdown()
