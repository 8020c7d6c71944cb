"""Python-API produce throughput and latency against the raw local-directory store.

Measures, in one run on the local-directory object store:
- raw store throughput: the same bytes written as 8 MiB objects with the store's own
  fsync'd put (the ceiling for any write path on this disk), measured before, between
  and after the cluster runs; the ratio uses the median, as fsync speed drifts;
- per-record ``send`` and ``send_batch`` throughput (1 KiB records, 3 partitions);
- produce latency p50/p99 (send -> acknowledged offset) at a steady, unsaturated rate,
  ``--repeat`` times on a fresh cluster each (default 3); the table reports the worst
  p99 of them, the JSON every one;
- where the latency goes, per repeat: the agent's write stages over the latency phase
  (linger, segment build, PUT, wait for the commit queue, commit call, and buffered ->
  acked), its event-loop lag and garbage-collection pauses; "client + Ray" is the
  end-to-end p50/p99 minus the agent's buffered -> acked p50/p99 (the client's own
  linger, encoding, and the Ray calls there and back);
at agent linger 250 ms and 10 ms. Writes benchmarks/results/produce.json and the README
table. Usage: ``python benchmarks/produce.py [--mb 256] [--repeat 3]``.
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
from common import loopback_env, machine, percentile, update_readme, write_result

RECORD = 1024
PARTITIONS = 3
WARM_UP_SECONDS = 3


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


def warm_up(cluster, topic: str) -> None:
    """A few seconds of steady sends, not measured: every repeat starts fresh actors,
    and their first calls (Ray's first method calls, the first commit rounds) are not
    what a produce's steady latency is."""
    producer = cluster.producer()
    for _ in range(WARM_UP_SECONDS * 50):
        producer.send(topic, b"w" * RECORD)
        time.sleep(0.02)
    producer.flush()
    producer.close()


def measure_linger(args, workdir: Path, linger: int, rep: int) -> dict:
    """One fresh cluster at ``linger``: throughput on the first repeat, then latency."""
    import ray_stream
    from ray_stream.actors import handles

    cluster = ray_stream.start_local(
        data_dir=str(workdir / f"d{linger}-{rep}"),
        namespace="bench-" + uuid.uuid4().hex[:6],
        linger_ms=linger,
        kafka_port=0,
    )
    run: dict = {"linger_ms": linger, "repeat": rep, "p99_bar_ms": linger + 50}
    try:
        for name in ("t_send", "t_batch", "t_lat"):
            cluster.create_topic(name, PARTITIONS)
        if rep == 0:
            print(f"linger {linger} ms: send path ...", flush=True)
            run["send_mb_s"] = send_throughput(cluster, "t_send", args.mb // 2)
            print(f"  send {run['send_mb_s']:.1f} MB/s; send_batch path ...", flush=True)
            run["send_batch_mb_s"] = send_batch_throughput(cluster, "t_batch", args.mb)
            print(f"  send_batch {run['send_batch_mb_s']:.1f} MB/s", flush=True)
        warm_up(cluster, "t_lat")
        print(
            f"linger {linger} ms, repeat {rep + 1}: latency at {args.latency_rate}/s ...",
            flush=True,
        )
        p50, p99, n = latency_ms(
            cluster, "t_lat", seconds=args.latency_seconds, rate=args.latency_rate
        )
        window = args.latency_seconds + 1  # the agent's figures for the latency phase only
        stats = handles.get(cluster.agent(0).stats.remote(window))
    finally:
        cluster.shutdown()
    stages = stats["stages_ms"]
    acked = stages["produce_wait"]
    run.update(
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        latency_samples=n,
        stages_ms=stages,
        client_and_ray_p50_ms=p50 - (acked["p50"] or 0.0),
        client_and_ray_p99_ms=p99 - (acked["p99"] or 0.0),
        loop_lag_ms=stats["loop_lag_ms"],
        gc_pause_ms=stats["gc_pause_ms"],
        puts=stats["puts"],
        put_bytes=stats["put_bytes"],
    )
    print(
        f"  latency p50 {p50:.1f} ms p99 {p99:.1f} ms ({n} samples); {_breakdown(run)}", flush=True
    )
    return run


def _breakdown(run: dict) -> str:
    """The p99 of each stage, as one line."""
    parts = [
        f"{stage} {run['stages_ms'][stage]['p99']:.1f}"
        for stage in ("linger", "build", "put", "commit_wait", "commit", "produce_wait")
        if run["stages_ms"][stage]["p99"] is not None
    ]
    gc_max = max((g["max"] or 0.0) for g in run["gc_pause_ms"].values())
    return (
        "p99 ms: "
        + ", ".join(parts)
        + f", client+Ray {run['client_and_ray_p99_ms']:.1f}"
        + f"; loop lag max {run['loop_lag_ms']['max'] or 0:.1f}, GC pause max {gc_max:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB per throughput run")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--latency-rate", type=int, default=500, help="records/s for latency runs")
    parser.add_argument("--repeat", type=int, default=3, help="latency runs per linger")
    args = parser.parse_args()
    loopback_env()

    from ray_stream.actors import handles

    # One Ray for every cluster of the run, as a long-running deployment has: each repeat
    # gets fresh actors, not a fresh Ray (whose start-up burst would land in the next
    # measurement on a 2-core machine).
    handles.ensure_ray(namespace="bench")
    workdir = Path(tempfile.mkdtemp(prefix="rs-bench-", dir=str(Path.cwd() / ".tmp")))
    results: dict = {
        "machine": machine(),
        "record_bytes": RECORD,
        "partitions": PARTITIONS,
        "repeat": args.repeat,
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
            for rep in range(args.repeat):
                results["runs"].append(measure_linger(args, workdir, linger, rep))
            measure_raw()
        raw = sorted(raws)[len(raws) // 2]
        results["raw_store_mb_s"] = raw
        results["raw_store_mb_s_passes"] = raws
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = _summary_rows(results, raw, args)
    results["summary"] = rows
    path = write_result("produce", results)
    table = _table(rows, results, raw, args, path)
    update_readme("produce", table)
    print(table)


def _summary_rows(results: dict, raw: float, args) -> list[dict]:
    """Per linger: throughput (first repeat) and the worst of the repeats' latency."""
    rows = []
    for linger in (250, 10):
        runs = [r for r in results["runs"] if r["linger_ms"] == linger]
        worst = max(runs, key=lambda r: r["latency_p99_ms"])
        rows.append(
            {
                "linger_ms": linger,
                "send_mb_s": runs[0]["send_mb_s"],
                "send_batch_mb_s": runs[0]["send_batch_mb_s"],
                "send_batch_vs_raw": runs[0]["send_batch_mb_s"] / raw,
                "p50s_ms": [r["latency_p50_ms"] for r in runs],
                "p99s_ms": [r["latency_p99_ms"] for r in runs],
                "worst_p99_ms": worst["latency_p99_ms"],
                "p99_bar_ms": linger + 50,
                "bar_held": all(r["latency_p99_ms"] <= linger + 50 for r in runs),
                "worst_breakdown": _breakdown(worst),
            }
        )
    return rows


def _table(rows: list[dict], results: dict, raw: float, args, path: Path) -> str:
    lines = [
        "| agent linger | `send` MB/s | `send_batch` MB/s | send_batch / raw store "
        "| p50 ms | p99 ms, worst of runs | p99 of each run | p99 bar (linger+50) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "held in every run" if r["bar_held"] else "FAILED in a run"
        lines.append(
            f"| {r['linger_ms']} ms | {r['send_mb_s']:.1f} | {r['send_batch_mb_s']:.1f} | "
            f"{r['send_batch_vs_raw']:.2f} | {max(r['p50s_ms']):.1f} | "
            f"{r['worst_p99_ms']:.1f} | {', '.join(f'{p:.0f}' for p in r['p99s_ms'])} | "
            f"{r['p99_bar_ms']} ({verdict}) |"
        )
    lines.append("")
    for r in rows:
        lines.append(f"Worst run at linger {r['linger_ms']} ms, {r['worst_breakdown']}.")
    lines.append("")
    lines.append(
        f"Raw local-directory store, 8 MiB fsync'd objects, same run: median {raw:.1f} MB/s "
        f"of {', '.join(f'{x:.0f}' for x in results['raw_store_mb_s_passes'])} (before, "
        f"between and after the runs). 1 KiB records, {PARTITIONS} partitions, "
        f"{results['machine']['cpus']} cores; latency at {args.latency_rate} records/s for "
        f"{args.latency_seconds:.0f} s, {args.repeat} runs per linger on a fresh cluster "
        f"each. Source: `benchmarks/produce.py` -> `{path.relative_to(path.parents[2])}`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
