"""Cold-read fan-out over S3: consumer groups x agents, with the zone-shared chunk cache.

One topic of ``--mib`` MiB (1 KiB records, 3 partitions) is written once through one
agent to an S3 endpoint on 127.0.0.1 (SeaweedFS, else a moto server) behind a counting
proxy (``s3_counting_proxy.py``: its object-GET count is the ground truth). Then, for each
configuration, a fresh cluster starts on the same data (new agent processes, so every
chunk cache is cold and no reader wrote the data) and ``--groups`` (1, 3, 6) consumer
groups read the whole topic concurrently through the Python API:

- 1 agent;
- 3 agents in one zone, shared cache on, then off (each agent GETs from the store);
- 3 agents in zones a, b (a: agents 0 and 2, b: agent 1), shared cache on, with
  ``--zoned-groups`` (6) groups only: expect one GET per chunk per zone.

A group is one consumer thread per partition (assigned, no commits); member ``j`` of group
``g`` reads through agent ``(g + j) % agents`` and names that agent's zone, so even one
group reads through every agent. Segments hold every partition's batches, so members on
different agents need the same chunks. Measured per run, over the read phase only:

- object GETs at the store, per chunk of the topic's segment objects and per GiB the
  consumers read (record values); the agents' own counters (GETs, chunks got from and
  served to a peer, peer failures, cross-zone bytes) beside;
- aggregate consume MiB/s: values read by all groups / time until the last group is done;
- CPU-seconds per GiB read: every process of the Ray cluster (agents, metadata, raylet,
  ...), the client (this process: the consumer threads) and the store (S3 server + proxy).

Ratios: GETs per GiB of 3 agents against 1 agent at the same group count, and aggregate
throughput of 6 groups against 1. Bars (issue 9, reported, never asserted): with 3 agents
in one zone and the shared cache on, GETs per GiB <= 1.1x one agent's, and 6 groups'
aggregate throughput >= one group's. Writes benchmarks/results/fanout.json and the README
table (``--report-only`` rebuilds the table from the JSON). One agent runs with the shared
cache on only: alone in its zone, it owns every chunk, so the setting changes nothing.
Usage: ``python benchmarks/fanout.py [--mib 256] [--quick] [--s3 auto|seaweedfs|moto]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray  # noqa: F401 - puts Ray's bundled psutil (for kafka_usage) on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, loopback_env, machine, update_readme, write_result
from kafka_services import CountingProxy, start_s3_endpoint
from kafka_usage import ProcessTree, child_keys, new_children, phase_cpu

GIB = 1024**3
MIB = 1024**2
CHUNK_BYTES = 16 * MIB  # ray_stream.agent.chunk_cache.CHUNK_BYTES, checked in main()
RECORD = 1024
PARTITIONS = 3
TOPIC = "fanout"
WARM_TOPIC = "fanout-warm"  # read through every agent before each measured read
WARM_RECORDS = 256
BUCKET = "fanout-bench"
PREFIX = "fanout"
AGENT_COUNTERS = [  # summed over the agents; LogService.stats names
    "gets", "get_bytes", "peer_chunks", "peer_bytes", "served_chunks", "served_bytes",
    "peer_failures", "cache_hits", "cache_misses", "client_bytes", "cross_zone_bytes",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Config:
    """One cluster shape to read through."""

    agents: int
    zones: tuple[str, ...]
    shared: bool

    def fields(self, groups: int) -> dict:
        return {"agents": self.agents, "zones": list(self.zones), "shared": self.shared,
                "groups": groups}  # fmt: skip

    @property
    def label(self) -> str:
        zones = f"zones {'+'.join(self.zones)}" if self.zones else "one zone"
        plural = "s" if self.agents > 1 else ""
        return f"{self.agents} agent{plural}, {zones}, shared {'on' if self.shared else 'off'}"


ZONED = Config(3, ("a", "b"), True)  # agents 0 and 2 in zone a, agent 1 in b


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ environment


def set_env() -> None:
    """Loopback Ray in its own temp dir; fake AWS credentials, before Ray starts (its
    workers inherit this environment)."""
    tmp = ROOT / ".tmp" / "bench-fanout"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    loopback_env()
    os.environ.update(  # never real credentials, even towards a local endpoint
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )


@dataclass
class Rig:
    """What outlives the clusters: the S3 endpoint, its proxy, Ray and the data dir."""

    s3: Any
    proxy: CountingProxy
    url: str
    data_dir: Path
    ray_tree: ProcessTree
    store_tree: ProcessTree

    def start(self, config: Config) -> Any:
        import ray_stream

        return ray_stream.start_local(
            data_dir=str(self.data_dir),
            object_store=self.url,
            agents=config.agents,
            zones=list(config.zones) or None,
            cache_shared=config.shared,
            kafka_port=0,
            namespace="fanout-" + uuid.uuid4().hex[:6],
        )


# ------------------------------------------------------------------ write once


def write_topic(rig: Rig, mib: int) -> dict:
    """Produce ``mib`` MiB of 1 KiB random values through one agent, list its segment
    objects, then write the small warm-up topic (after the main one is acknowledged, so
    in segments of its own) and stop the cluster."""
    rows = 8192
    batches = max(1, mib * MIB // (rows * RECORD))
    table = value_table(rows)
    cluster = rig.start(Config(1, (), True))
    try:
        cluster.create_topic(TOPIC, PARTITIONS)
        producer = cluster.producer()
        started = time.perf_counter()
        futures = [producer.send_batch(TOPIC, table) for _ in range(batches)]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
        producer.close()
        info = cluster.describe_topic(TOPIC)
        segments = segment_objects(rig)
        cluster.create_topic(WARM_TOPIC, 1)
        producer = cluster.producer()
        producer.send_batch(WARM_TOPIC, value_table(WARM_RECORDS, partitions=1)).result()
        producer.close()
    finally:
        cluster.shutdown()
    ends = {p.partition: p.high_watermark for p in info.partition_info}
    assert sum(ends.values()) == batches * rows, (ends, batches * rows)
    return {
        "records": batches * rows,
        "value_bytes": batches * rows * RECORD,
        "produce_mib_s": batches * rows * RECORD / MIB / elapsed,
        "high_watermarks": ends,
        "segments": segments,
    }


def value_table(rows: int, *, partitions: int = PARTITIONS) -> Any:
    """``rows`` random 1 KiB values, spread over the partitions round-robin."""
    import pyarrow as pa

    values = os.urandom(rows * RECORD)
    return pa.table(
        {
            "value": pa.array([values[i * RECORD : (i + 1) * RECORD] for i in range(rows)]),
            "partition": pa.array([i % partitions for i in range(rows)], pa.int32()),
        }
    )


def segment_objects(rig: Rig) -> dict:
    """The topic's segment objects, listed straight at the endpoint (never counted)."""
    import boto3

    client = boto3.client("s3", endpoint_url=rig.s3.url, region_name="us-east-1")
    sizes = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{PREFIX}/segments/"
    ):
        sizes.extend(obj["Size"] for obj in page.get("Contents", []))
    chunks = sum(-(-size // CHUNK_BYTES) for size in sizes)
    return {"objects": len(sizes), "bytes": sum(sizes), "chunks": chunks}


# ------------------------------------------------------------------ read


def read_partition(consumer: Any, end: int, deadline: float) -> int:
    """Poll one assigned partition until offset ``end``; the value bytes read."""
    read = 0
    offset = 0
    while offset < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"partition stuck at offset {offset} of {end}")
        for record in consumer.poll(timeout=1.0, max_records=100_000):
            read += len(record.value or b"")
            offset = record.offset + 1
    return read


def member_agent(cluster: Any, agent_ids: list[Any], target: int) -> tuple[int, str | None]:
    """``(agent index within its zone's list, zone)`` that makes a consumer read through
    agent ``agent_ids[target]``: ``Cluster.agent`` indexes the agents of the zone."""
    record = agent_ids[target]
    zone = record.zone or None
    ids = [a.agent_id for a in cluster.agents(zone=zone, role="consume")]
    return ids.index(record.agent_id), zone


def warm_up(cluster: Any, config: Config) -> None:
    """Read the warm-up topic through every agent: fresh agent processes pay their first
    fetch, GET and peer call here, not in the measured read. Its segment is its own
    object, so the measured topic's chunks stay cold."""
    from ray_stream.core.types import TopicPartition

    records = sorted(cluster.agents(role="consume"), key=lambda a: a.agent_id)
    for target in range(config.agents):
        index, zone = member_agent(cluster, records, target)
        consumer = cluster.consumer(agent=index, zone=zone)
        consumer.assign([TopicPartition(WARM_TOPIC, 0)])
        read_partition(consumer, WARM_RECORDS, time.monotonic() + 60)


def run_groups(
    cluster: Any, config: Config, groups: int, ends: dict, *, timeout_s: float, on_start: Any
) -> dict:
    """``groups`` groups of one consumer per partition read the whole topic at once;
    ``on_start()`` runs once every consumer exists, right before they start."""
    from ray_stream.core.types import TopicPartition

    records = sorted(cluster.agents(role="consume"), key=lambda a: a.agent_id)
    assert len(records) == config.agents, records
    members = []
    for g in range(groups):
        for p in range(PARTITIONS):
            index, zone = member_agent(cluster, records, (g + p) % config.agents)
            consumer = cluster.consumer(
                group_id=f"g{g}",
                agent=index,
                zone=zone,
                max_poll_records=100_000,
                max_partition_fetch_bytes=8 * MIB,
            )
            consumer.assign([TopicPartition(TOPIC, p)])
            members.append((g, p, consumer))
    done_at: dict[int, float] = {}
    got: dict[tuple[int, int], int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(members) + 1)
    deadline = time.monotonic() + timeout_s

    def member(g: int, p: int, consumer: Any) -> None:
        try:
            barrier.wait()
            got[(g, p)] = read_partition(consumer, ends[p], deadline)
        except Exception as exc:
            errors.append(f"group {g} partition {p}: {type(exc).__name__}: {exc}")
        with lock:
            done_at[g] = max(done_at.get(g, 0.0), time.perf_counter())

    threads = [threading.Thread(target=member, args=m, daemon=True) for m in members]
    for thread in threads:
        thread.start()
    try:
        on_start()
    except BaseException:
        barrier.abort()  # releases the members, which record the broken barrier
        raise
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return {
        "seconds": max(done_at.values()) - started,
        "group_seconds": [done_at[g] - started for g in range(groups)],
        "value_bytes": sum(got.values()),
    }


def agent_totals(status: dict) -> dict:
    totals = {key: 0 for key in AGENT_COUNTERS}
    for stats in status["agents"]:
        if "error" in stats:
            raise RuntimeError(f"agent {stats.get('agent_id')}: {stats['error']}")
        for key in AGENT_COUNTERS:
            totals[key] += int(stats.get(key, 0) or 0)
    return totals


def measure(rig: Rig, config: Config, groups: int, topic: dict, args: argparse.Namespace) -> dict:
    """One cold read: a fresh cluster, ``groups`` groups, counters around the read only."""
    say(f"{config.label}, {groups} group{'s' if groups > 1 else ''}: starting cluster ...")
    cluster = rig.start(config)
    try:
        warm_up(cluster, config)
        marks: dict[str, Any] = {}

        def on_start() -> None:
            marks.update(status=cluster.status(), counts=rig.proxy.counts())
            marks.update(cpu=(rig.ray_tree.sample(), rig.store_tree.sample()))

        read = run_groups(
            cluster,
            config,
            groups,
            topic["high_watermarks"],
            timeout_s=args.timeout_s,
            on_start=on_start,
        )
        cpu1 = (rig.ray_tree.sample(), rig.store_tree.sample())
        status1, counts1 = cluster.status(), rig.proxy.counts()
    finally:
        cluster.shutdown()
    status0, counts0, cpu0 = marks["status"], marks["counts"], marks["cpu"]
    ray_cpu, store_cpu = phase_cpu(cpu0[0], cpu1[0]), phase_cpu(cpu0[1], cpu1[1])
    gets = counts1["classes"].get("get_object", 0) - counts0["classes"].get("get_object", 0)
    agents0, agents1 = agent_totals(status0), agent_totals(status1)
    gib = read["value_bytes"] / GIB
    run = {
        **config.fields(groups),
        **read,
        "consume_mib_s": read["value_bytes"] / MIB / read["seconds"],
        "store_gets": gets,
        "store_get_bytes": counts1["get_bytes"] - counts0["get_bytes"],
        "store_requests": counts1["requests"] - counts0["requests"],
        "gets_per_gib": gets / gib,
        "gets_per_chunk": gets / topic["segments"]["chunks"],
        "agent": {k: agents1[k] - agents0[k] for k in AGENT_COUNTERS},
        "zone_gets": {
            z: t["gets"] - status0["zones"].get(z, {}).get("gets", 0)
            for z, t in status1["zones"].items()
        },
        "cpu_s_per_gib": {
            "ray": ray_cpu["system_cpu_s"] / gib,
            "client": ray_cpu["client_cpu_s"] / gib,
            "store": store_cpu["system_cpu_s"] / gib,
        },
        "ray_cpu_by_process_s": dict(
            sorted(ray_cpu["by_process"].items(), key=lambda kv: -kv[1])[:8]
        ),
        "loadavg": os.getloadavg()[0],
    }
    a = run["agent"]
    say(
        f"  {run['consume_mib_s']:.1f} MiB/s over {read['seconds']:.1f} s; store GETs {gets} "
        f"({run['gets_per_chunk']:.2f}/chunk, {run['gets_per_gib']:.1f}/GiB read); agents: "
        f"GETs {a['gets']}, peer {a['peer_chunks']} chunks / {a['peer_bytes'] / MIB:.0f} MiB, "
        f"peer failures {a['peer_failures']}; CPU-s/GiB ray {run['cpu_s_per_gib']['ray']:.2f} "
        f"client {run['cpu_s_per_gib']['client']:.2f} store {run['cpu_s_per_gib']['store']:.2f}"
    )
    return run


# ------------------------------------------------------------------ report


def find(runs: list[dict], config: Config, groups: int) -> dict | None:
    """The successful run of ``config`` with ``groups`` groups."""
    want = config.fields(groups)
    for run in runs:
        if "error" not in run and {k: run[k] for k in want} == want:
            return run
    return None


def add_ratios(runs: list[dict]) -> None:
    """GETs per GiB against one agent's at the same group count; throughput against the
    same cluster's one-group run."""
    for run in runs:
        if "error" in run:
            continue
        config = Config(run["agents"], tuple(run["zones"]), run["shared"])
        one_agent = find(runs, Config(1, (), True), run["groups"])
        one_group = find(runs, config, 1)
        if one_agent is not None and one_agent["gets_per_gib"]:
            run["gets_vs_1_agent"] = run["gets_per_gib"] / one_agent["gets_per_gib"]
        if one_group is not None:
            run["mib_s_vs_1_group"] = run["consume_mib_s"] / one_group["consume_mib_s"]


def bars(runs: list[dict], groups: list[int], zoned: list[int]) -> list[dict]:
    """Issue 9's two bars, and the 2-zone expectation (one GET per chunk per zone)."""
    shared = Config(3, (), True)
    ratios = [r.get("gets_vs_1_agent") for g in groups if (r := find(runs, shared, g))]
    top = find(runs, shared, max(groups))
    per_chunk = [r["gets_per_chunk"] for g in zoned if (r := find(runs, ZONED, g))]
    return [
        {
            "bar": "3 agents, one zone, shared: GETs per GiB <= 1.1x one agent's",
            "value": ratios,
            "passed": bool(ratios) and None not in ratios and max(ratios) <= 1.1,
        },
        {
            "bar": f"3 agents, one zone, shared: {max(groups)} groups' MiB/s >= 1 group's",
            "value": top.get("mib_s_vs_1_group") if top else None,
            "passed": bool(top) and (top.get("mib_s_vs_1_group") or 0) >= 1.0,
        },
        {
            "bar": "expected: 3 agents, zones a+b, shared: ~2 GETs per chunk (one per zone)",
            "value": per_chunk,
            "passed": bool(per_chunk) and max(per_chunk) <= 2.2,
            "unit": "GETs per chunk",
        },
    ]


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def table(results: dict) -> str:
    lines = [
        "| agents | zones | shared cache | groups | store GETs | GETs / chunk | GETs / GiB read "
        "| vs 1 agent | consume MiB/s (all groups) | vs 1 group | peer MiB | peer failures "
        "| CPU-s / GiB Ray / client / store | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        zones = ", ".join(r["zones"]) or "one"
        head = f"| {r['agents']} | {zones} | {'on' if r['shared'] else 'off'} | {r['groups']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:120]} ||||||||||")
            continue
        cpu = r["cpu_s_per_gib"]
        lines.append(
            f"{head} {r['store_gets']} | {r['gets_per_chunk']:.2f} | {r['gets_per_gib']:.1f} | "
            f"{_x(r.get('gets_vs_1_agent'))} | {r['consume_mib_s']:.1f} | "
            f"{_x(r.get('mib_s_vs_1_group'))} | {r['agent']['peer_bytes'] / MIB:.0f} | "
            f"{r['agent']['peer_failures']} | "
            f"{cpu['ray']:.1f} / {cpu['client']:.1f} / {cpu['store']:.1f} | {r['loadavg']:.1f} |"
        )
    lines += ["", "| bar (issue 9) | measured | result |", "|---|---|---|"]
    for bar in results["bars"]:
        value = bar["value"]
        fmt = (lambda v: f"{v:.2f}") if "unit" in bar else _x
        shown = ", ".join(fmt(v) for v in value) if isinstance(value, list) else fmt(value)
        lines.append(f"| {bar['bar']} | {shown} | {'pass' if bar['passed'] else 'FAIL'} |")
    t, seg, cfg = results["topic"], results["topic"]["segments"], results["config"]
    loads = [r["loadavg"] for r in results["runs"] if "loadavg" in r]
    notes = [
        f"Cold reads of one topic of {t['value_bytes'] / MIB:.0f} MiB ({t['records']} records "
        f"of {RECORD} B, {PARTITIONS} partitions; {seg['objects']} segment objects, "
        f"{seg['bytes'] / MIB:.0f} MiB, {seg['chunks']} chunks of 16 MiB), written once "
        "through one agent; every row is a fresh cluster on that data, so no reader wrote "
        "it and every cache starts empty (each agent first reads a small topic of its own, "
        "so process start-up is not in the read).",
        "A group is one consumer thread per partition (Python API, this process); member j "
        "of group g reads through agent (g + j) mod agents, in that agent's zone (zones a, "
        "b: agents 0 and 2 in a, agent 1 in b).",
        f"Store GETs: object GETs counted by a proxy in front of {cfg['s3_server']} on "
        "127.0.0.1 during the read only; GiB read: values delivered to all groups; vs 1 "
        "agent: GETs per GiB against the 1-agent row with as many groups.",
        "MiB/s: values of all groups / time until the last group is done; vs 1 group: "
        "against the same cluster's 1-group row.",
        "Peer MiB: chunks agents got from their zone's owner over Ray; peer failures: owner "
        "calls that failed or timed out (the reader then GETs itself).",
        "CPU-s / GiB read: user+system CPU of every Ray process (agents, metadata, raylet, "
        "...) / of this process (the consumers) / of the S3 server and the proxy.",
        f"Load: the machine's 1-min load average after the read ({min(loads, default=0):.1f}"
        f"-{max(loads, default=0):.1f}; other jobs share its {results['machine']['cpus']} "
        "cores, so MiB/s of rows at different loads compare loosely; GET counts do not "
        f"depend on it). Agent cache {cfg['cache_mib']} MiB each.",
        "Source: `benchmarks/fanout.py` -> `benchmarks/results/fanout.json`.",
    ]
    lines += ["", " ".join(notes)]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def configs(args: argparse.Namespace) -> list[tuple[Config, list[int]]]:
    groups, zoned = args.group_counts, args.zoned_counts
    plan = [
        (Config(1, (), True), groups),
        (Config(3, (), True), groups),
        (Config(3, (), False), groups),
    ]
    if zoned:
        plan.append((ZONED, zoned))
    return plan


def open_rig(args: argparse.Namespace, workdir: Path) -> Rig:
    from ray_stream.actors import handles

    say(f"starting S3 endpoint ({args.s3}) ...")
    s3 = start_s3_endpoint(args.s3, workdir, buckets={"rs": BUCKET})
    say(f"  {s3.kind} at {s3.url}")
    try:
        proxy = CountingProxy.start(s3.url, workdir / "proxy.log")
    except Exception:
        s3.stop()
        raise
    before = child_keys()
    handles.ensure_ray(namespace="bench-fanout")
    return Rig(
        s3=s3,
        proxy=proxy,
        url=f"s3://{BUCKET}/{PREFIX}?endpoint_url={proxy.url}",
        data_dir=workdir / "data",
        ray_tree=ProcessTree(new_children(before)),
        store_tree=ProcessTree.of_pids([s3.proc.pid, proxy.proc.pid]),
    )


def run_all(rig: Rig, args: argparse.Namespace, results: dict) -> None:
    say(f"writing {args.mib} MiB through one agent ...")
    topic = results["topic"] = write_topic(rig, args.mib)
    say(
        f"  {topic['produce_mib_s']:.1f} MiB/s; {topic['segments']['objects']} segment "
        f"objects, {topic['segments']['chunks']} chunks"
    )
    for config, groups in configs(args):
        for n in groups:
            try:
                results["runs"].append(measure(rig, config, n, topic, args))
            except Exception as exc:  # recorded, never invented
                say(f"  FAILED: {type(exc).__name__}: {exc}")
                error = f"{type(exc).__name__}: {exc}"
                results["runs"].append({**config.fields(n), "error": error})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of values in the topic")
    parser.add_argument("--groups", default="1,3,6", help="consumer group counts per cluster")
    parser.add_argument(
        "--zoned-groups", default="6", help="group counts for the 2-zone cluster ('' skips it)"
    )
    parser.add_argument("--s3", choices=("auto", "seaweedfs", "moto"), default="auto")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="cap on one read")
    parser.add_argument("--quick", action="store_true", help="32 MiB smoke run")
    parser.add_argument("--no-readme", action="store_true", help="write JSON only")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the README table from the JSON"
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((RESULTS / "fanout.json").read_text())
        update_readme("fanout", table(results))
        print(table(results))
        return
    if args.quick:
        args.mib = min(args.mib, 32)
    args.group_counts = [int(g) for g in args.groups.split(",") if g]
    args.zoned_counts = [int(g) for g in args.zoned_groups.split(",") if g]
    if 1 not in args.group_counts:
        parser.error("--groups must include 1 (the baseline of the throughput ratio)")
    set_env()
    from ray_stream.agent.chunk_cache import CHUNK_BYTES as PRODUCT_CHUNK
    from ray_stream.config import Settings

    assert PRODUCT_CHUNK == CHUNK_BYTES, PRODUCT_CHUNK
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-", dir=str(ROOT / ".tmp")))
    results: dict = {"machine": machine(), "runs": []}
    rig = None
    try:
        rig = open_rig(args, workdir)
        results["config"] = {
            "mib": args.mib,
            "record_bytes": RECORD,
            "partitions": PARTITIONS,
            "s3_server": rig.s3.kind,
            "cache_mib": Settings().cache_bytes // MIB,
            "groups": args.groups,
            "zoned_groups": args.zoned_groups,
        }
        run_all(rig, args, results)
    finally:
        if rig is not None:
            import ray

            ray.shutdown()
            rig.proxy.stop()
            rig.s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(results["runs"])
    results["bars"] = bars(results["runs"], args.group_counts, args.zoned_counts)
    path = write_result("fanout", results)
    text = table(results)
    if not args.no_readme:
        update_readme("fanout", text)
    print(text)
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
