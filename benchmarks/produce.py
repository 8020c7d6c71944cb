"""Python-API produce throughput and latency against the raw local-directory store.

Measures, in one run on the local-directory object store:
- raw store throughput: the same bytes written as 8 MiB objects with the store's own
  fsync'd put (the ceiling for any write path on this disk), measured before, between
  and after the cluster runs; the ratio uses the median, as fsync speed drifts;
- per-record ``send`` and ``send_batch`` throughput (1 KiB records, 3 partitions);
- produce latency p50/p99 (send -> acknowledged offset) at a steady, unsaturated rate;
at agent linger 250 ms and 10 ms. Writes benchmarks/results/produce.json and the README
table. Usage: ``python benchmarks/produce.py [--mb 256]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loopback_env, machine, percentile, update_readme, write_result  # noqa: E402

RECORD = 1024
PARTITIONS = 3


def raw_store_mb_s(total_mb: int, workdir: Path) -> float:
    from ray_stream.storage.local import LocalStore

    store = LocalStore(str(workdir / "raw"))
    chunk = b"r" * (8 * 1024 * 1024)
    objects = max(1, total_mb // 8)
    started = time.perf_counter()
    for i in range(objects):
        store.put(f"raw/{i:06d}", chunk)
    elapsed = time.perf_counter() - started
    return objects * 8 / elapsed


def send_throughput(cluster, topic: str, total_mb: int) -> float:
    value = b"v" * RECORD
    count = total_mb * 1024
    producer = cluster.producer()
    started = time.perf_counter()
    futures = [producer.send(topic, value) for _ in range(count)]
    producer.flush()
    elapsed = time.perf_counter() - started
    assert all(f.exception() is None for f in futures[-10:])
    producer.close()
    return count * RECORD / 1024 / 1024 / elapsed


def send_batch_throughput(cluster, topic: str, total_mb: int) -> float:
    import pyarrow as pa

    rows = 8192
    table = pa.table({"value": pa.array([b"b" * RECORD] * rows, pa.binary())})
    batches = max(1, total_mb * 1024 // rows)
    producer = cluster.producer()
    started = time.perf_counter()
    futures = [producer.send_batch(topic, table) for _ in range(batches)]
    for f in futures:
        f.result()
    elapsed = time.perf_counter() - started
    producer.close()
    return batches * rows * RECORD / 1024 / 1024 / elapsed


def latency_ms(cluster, topic: str, *, seconds: float, rate: int) -> tuple[float, float, int]:
    producer = cluster.producer()
    value = b"l" * RECORD
    samples: list[float] = []
    lock = threading.Lock()

    def done(started: float):
        def callback(fut):
            if fut.exception() is None:
                with lock:
                    samples.append((time.perf_counter() - started) * 1000)

        return callback

    interval = 1 / rate
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        target = t0 + n * interval
        now = time.perf_counter()
        if target > now:
            time.sleep(target - now)
        started = time.perf_counter()
        producer.send(topic, value).add_done_callback(done(started))
        n += 1
    producer.flush()
    producer.close()
    return percentile(samples, 50), percentile(samples, 99), len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB per throughput run")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--latency-rate", type=int, default=500, help="records/s for latency runs")
    args = parser.parse_args()
    loopback_env()
    import ray_stream

    workdir = Path(tempfile.mkdtemp(prefix="rs-bench-", dir=str(Path.cwd() / ".tmp")))
    results: dict = {
        "machine": machine(),
        "record_bytes": RECORD,
        "partitions": PARTITIONS,
        "runs": [],
    }
    try:
        raws: list[float] = []

        def measure_raw() -> None:
            print(f"raw store: writing {args.mb} MiB as 8 MiB fsync'd objects ...", flush=True)
            raws.append(raw_store_mb_s(args.mb, workdir / f"raw{len(raws)}"))
            print(f"  raw store {raws[-1]:.1f} MB/s", flush=True)

        measure_raw()
        for linger in (250, 10):
            ns = "bench-" + uuid.uuid4().hex[:6]
            cluster = ray_stream.start_local(
                data_dir=str(workdir / f"d{linger}"), namespace=ns, linger_ms=linger, kafka_port=0
            )
            try:
                cluster.create_topic("t_send", PARTITIONS)
                cluster.create_topic("t_batch", PARTITIONS)
                cluster.create_topic("t_lat", PARTITIONS)
                print(f"linger {linger} ms: send path ...", flush=True)
                send = send_throughput(cluster, "t_send", args.mb // 2)
                print(f"  send {send:.1f} MB/s; send_batch path ...", flush=True)
                batch = send_batch_throughput(cluster, "t_batch", args.mb)
                print(
                    f"  send_batch {batch:.1f} MB/s; latency at {args.latency_rate}/s ...",
                    flush=True,
                )
                p50, p99, n = latency_ms(
                    cluster, "t_lat", seconds=args.latency_seconds, rate=args.latency_rate
                )
                print(f"  latency p50 {p50:.1f} ms p99 {p99:.1f} ms ({n} samples)", flush=True)
                stats = cluster.status()["agents"][0]
            finally:
                cluster.shutdown()
            results["runs"].append(
                {
                    "linger_ms": linger,
                    "send_mb_s": send,
                    "send_batch_mb_s": batch,
                    "latency_p50_ms": p50,
                    "latency_p99_ms": p99,
                    "latency_samples": n,
                    "p99_bar_ms": linger + 50,
                    "puts": stats["puts"],
                    "put_bytes": stats["put_bytes"],
                }
            )
            measure_raw()
        raw = sorted(raws)[len(raws) // 2]
        results["raw_store_mb_s"] = raw
        results["raw_store_mb_s_passes"] = raws
        for r in results["runs"]:
            r["send_batch_vs_raw"] = r["send_batch_mb_s"] / raw
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = write_result("produce", results)
    rows = [
        "| agent linger | `send` MB/s | `send_batch` MB/s | send_batch / raw store | p50 ms | p99 ms | p99 bar (linger+50) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        rows.append(
            f"| {r['linger_ms']} ms | {r['send_mb_s']:.1f} | {r['send_batch_mb_s']:.1f} | "
            f"{r['send_batch_vs_raw']:.2f} | {r['latency_p50_ms']:.1f} | {r['latency_p99_ms']:.1f} | "
            f"{r['p99_bar_ms']} |"
        )
    rows.append("")
    rows.append(
        f"Raw local-directory store, 8 MiB fsync'd objects, same run: median {raw:.1f} MB/s "
        f"of {', '.join(f'{x:.0f}' for x in raws)} (before, between and after the runs). "
        f"1 KiB records, {PARTITIONS} partitions, {results['machine']['cpus']} cores; "
        f"latency at {args.latency_rate} records/s. Source: `benchmarks/produce.py` -> `{path.relative_to(path.parents[2])}`."
    )
    update_readme("produce", "\n".join(rows))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
