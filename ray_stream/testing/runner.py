"""Run a chaos test end to end and return the checker's report (a JSON-able dict).

Phases: start Ray (a ``ray.cluster_utils.Cluster`` with a CPU-less head and worker nodes
carrying a custom resource, so the metadata actor and agents live on removable workers)
and a ray_stream cluster on a ``faulty+file://`` object store; run producers and
consumers while the nemesis injects faults (each kind at least once, then at random,
every ``fault_interval_s``); heal; stop producers and settle every send; let consumers
drain to the final high watermarks; optionally crash-restart every actor so what follows
sees only durable state; read committed group offsets and the whole log; audit the store
against the metadata; check.

The report separates safety (``valid``: every checker count is zero) from the nemesis'
own bookkeeping (``all_faults_fired``, ``all_recovered``) and liveness (``live``: every
client succeeded again after the last fault).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_stream.core.keys import SEGMENT_PREFIX
from ray_stream.core.percentile import percentile
from ray_stream.testing.audit import final_read, store_audit
from ray_stream.testing.bootstrap import (
    WORKER_RESOURCE,
    chaos_settings,
    start_cluster,
    start_ray,
    stop_ray,
    tmp_root,
)
from ray_stream.testing.checker import check
from ray_stream.testing.history import OK, History
from ray_stream.testing.kafka_workload import KafkaProducerWorker
from ray_stream.testing.nemesis import FAULT_KINDS, Nemesis, NemesisContext, actor_call
from ray_stream.testing.workload import (
    ClusterHolder,
    ConsumerWorker,
    ProducerWorker,
    read_committed,
)

__all__ = ["ChaosConfig", "run_chaos"]

TOPIC = "chaos"
FAILOVER_KINDS = ("kill-metadata", "remove-metadata-node", "restart-cluster")
BROKEN_STORES = {"drop_acked": {"drop_acked": 1, "key_prefix": SEGMENT_PREFIX}}


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """One chaos run. Rates are records per second per producer."""

    duration_s: float = 120.0
    producers: int = 3
    kafka_producers: int = 1
    groups: int = 2
    consumers_per_group: int = 2
    assign_consumers: int = 1
    partitions: int = 8
    agents: int = 2
    zones: tuple[str, ...] = ("a", "b")
    rate: float = 40.0
    fault_interval_s: tuple[float, float] = (10.0, 20.0)
    faults: tuple[str, ...] = FAULT_KINDS
    worker_nodes: int = 2
    linger_ms: int = 50
    warmup_s: float = 3.0
    # Liveness needs every client back within this window after the last fault. A
    # kafka-python producer whose bootstrap began while the whole cluster was restarting
    # was measured here connecting up to 12 s after the listeners were back (its
    # max_block_ms is 10 s, then a 1 s pause): 10 s flagged live clients as stuck.
    quiet_s: float = 20.0
    drain_timeout_s: float = 60.0
    # The Python producers' delivery_timeout_s: resends end (as indeterminate) after it.
    delivery_timeout_s: float = 30.0
    recovery_timeout_s: float = 60.0
    settle_timeout_s: float = 30.0
    wipe_metadata_disk: bool = True
    cold_final_read: bool = True
    broken_store: str | None = None
    seed: int = 0
    workdir: str | None = None
    keep_workdir: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if self.broken_store is not None and self.broken_store not in BROKEN_STORES:
            raise ValueError(f"broken_store must be one of {sorted(BROKEN_STORES)}")


def run_chaos(config: ChaosConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one chaos test (see the module docstring). Returns the report."""
    started = time.monotonic()
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="rs-chaos-", dir=tmp_root()))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    ray_cluster, started_ray = start_ray(config.worker_nodes)
    resources = {WORKER_RESOURCE: 0.001} if ray_cluster is not None else None
    settings = chaos_settings(
        workdir,
        agents=config.agents,
        linger_ms=config.linger_ms,
        kafka=bool(config.kafka_producers),
        zones=config.zones,
        resources=resources,
    )
    history = History()
    cluster = None
    holder: ClusterHolder | None = None
    report: dict[str, Any] = {}
    try:
        cluster = start_cluster(settings)
        log(f"cluster up in {time.monotonic() - started:.1f}s (namespace {settings.namespace})")
        cluster.create_topic(TOPIC, config.partitions)
        if config.broken_store:
            for i in range(settings.agents):
                actor_call(
                    cluster.agent_by_id(i), "inject_faults", BROKEN_STORES[config.broken_store]
                )
        holder = ClusterHolder(cluster)
        history = History()  # time 0 = the cluster is up and the topic exists

        def restart() -> Any:
            return start_cluster(settings)

        ctx = NemesisContext(
            holder=holder,
            history=history,
            topic=TOPIC,
            partitions=config.partitions,
            restart=restart,
            ray_cluster=ray_cluster,
            node_args={"num_cpus": 1, "resources": {WORKER_RESOURCE: 1000}},
            wipe_metadata_disk=config.wipe_metadata_disk,
            recovery_timeout_s=config.recovery_timeout_s,
            rng=rng,
        )
        nemesis = Nemesis(ctx)
        report = _run(config, holder, history, nemesis, rng, log)
    finally:
        (workdir / "history.json").write_text(json.dumps(history.to_dict()))
        if holder is not None:
            cluster = holder.current  # a restart-cluster fault may have replaced it
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        stop_ray(ray_cluster, started_ray)
        if not config.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["workdir"] = str(workdir) if config.keep_workdir else None
    return report


def _run(
    config: ChaosConfig,
    holder: ClusterHolder,
    history: History,
    nemesis: Nemesis,
    rng: random.Random,
    log: Callable[[str], None],
) -> dict[str, Any]:
    stop_producers, stop_consumers = threading.Event(), threading.Event()
    producers, consumers = _workers(config, holder, history, stop_producers, stop_consumers)
    for worker in [*producers, *consumers]:
        worker.start()
    try:
        return _phases(
            config,
            holder,
            history,
            nemesis,
            rng,
            log,
            producers,
            consumers,
            stop_producers,
            stop_consumers,
        )
    finally:  # never leave client threads calling into a Ray that is shutting down
        stop_producers.set()
        stop_consumers.set()
        for worker in [*producers, *consumers]:
            worker.join(5)


def _phases(
    config: ChaosConfig,
    holder: ClusterHolder,
    history: History,
    nemesis: Nemesis,
    rng: random.Random,
    log: Callable[[str], None],
    producers: list[Any],
    consumers: list[Any],
    stop_producers: threading.Event,
    stop_consumers: threading.Event,
) -> dict[str, Any]:
    kinds = [k for k in config.faults if nemesis.applicable(k)]
    skipped = [k for k in config.faults if not nemesis.applicable(k)]
    _nemesis_loop(nemesis, kinds, config, rng, history, log)
    nemesis.heal()
    last_fault_end = max((e.end_s for e in history.snapshot("faults")), default=0.0)
    log(f"faults done; {config.quiet_s:.0f}s without faults, then settling producers")
    time.sleep(config.quiet_s)  # clients must come back on their own: liveness
    stop_producers.set()
    _settle(producers, config.settle_timeout_s)
    cluster = _wait_cluster(holder, config.recovery_timeout_s)
    try:
        hwms = {
            pi.partition: pi.high_watermark for pi in cluster.describe_topic(TOPIC).partition_info
        }
    except Exception as exc:
        log(f"cannot describe the topic after healing: {exc!r}")
        hwms = {}
    log(f"draining consumers to {sum(hwms.values())} records")
    drained = _drain(consumers, hwms, config.drain_timeout_s)
    stop_consumers.set()
    stuck = [w.name for w in consumers if not w.join(10)]
    if config.cold_final_read:
        log("crash-restarting every actor before the final read")
        _cold_restart(cluster, config.recovery_timeout_s)
    for g in range(config.groups):
        read_committed(cluster, history, "final", f"g{g}", TOPIC, list(range(config.partitions)))
    log("final read and store audit")
    final = final_read(cluster, TOPIC)
    audit = store_audit(cluster, TOPIC)
    readers = ["assign"] * bool(config.assign_consumers) + [
        f"group:g{g}" for g in range(config.groups)
    ]
    result = check(history, final, audit, readers=readers)
    return _report(
        config, history, result, producers, consumers, skipped, last_fault_end, drained, stuck
    )


def _workers(
    config: ChaosConfig,
    holder: ClusterHolder,
    history: History,
    stop_producers: threading.Event,
    stop_consumers: threading.Event,
) -> tuple[list[Any], list[Any]]:
    producers: list[Any] = [
        ProducerWorker(
            i,
            holder,
            history,
            stop_producers,
            topic=TOPIC,
            partitions=config.partitions,
            rate=config.rate,
            delivery_timeout_s=config.delivery_timeout_s,
        )
        for i in range(config.producers)
    ]
    if holder.current.settings.kafka_port:
        for i in range(config.kafka_producers):
            producers.append(
                KafkaProducerWorker(
                    i,
                    lambda: holder.current.bootstrap_servers,
                    history,
                    stop_producers,
                    topic=TOPIC,
                    partitions=config.partitions,
                    rate=config.rate / 2,
                    client_id=f"chaos-k{i}"
                    + (
                        f",ray_stream_az={config.zones[i % len(config.zones)]}"
                        if config.zones
                        else ""
                    ),
                )
            )
    consumers: list[Any] = []
    parts = list(range(config.partitions))
    for g in range(config.groups):
        for c in range(config.consumers_per_group):
            mine = parts[c :: config.consumers_per_group]
            consumers.append(
                ConsumerWorker(
                    f"g{g}c{c}",
                    holder,
                    history,
                    stop_consumers,
                    topic=TOPIC,
                    partitions=mine,
                    group=f"g{g}",
                    agent=g + c,
                )
            )
    for a in range(config.assign_consumers):
        consumers.append(
            ConsumerWorker(
                f"a{a}",
                holder,
                history,
                stop_consumers,
                topic=TOPIC,
                partitions=parts,
                group=None,
                agent=a + 1,
            )
        )
    return producers, consumers


def _nemesis_loop(
    nemesis: Nemesis,
    kinds: list[str],
    config: ChaosConfig,
    rng: random.Random,
    history: History,
    log: Callable[[str], None],
) -> None:
    """Each kind once (in order), then random kinds, until the duration is over."""
    time.sleep(config.warmup_s)
    queue = list(kinds)
    hard_stop = config.duration_s * 3 + 300
    while kinds and history.now() < hard_stop:
        if not queue:
            if history.now() >= config.duration_s:
                break
            queue = [rng.choice(kinds)]
        kind = queue.pop(0)
        event = nemesis.inject(kind)
        log(
            f"[{event.start_s:7.1f}s] {kind}: fired={event.fired} recovered={event.recovered} "
            f"{event.error or ''} {json.dumps(event.evidence, default=str)[:300]}"
        )
        if not queue and history.now() >= config.duration_s:
            break
        time.sleep(rng.uniform(*config.fault_interval_s))
    remaining = config.duration_s - history.now()
    if remaining > 0:
        time.sleep(remaining)


def _settle(producers: list[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for worker in producers:
        worker.join(max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline and any(w.pending() for w in producers):
        time.sleep(0.1)
    for worker in producers:
        worker.abandon()


def _wait_cluster(holder: ClusterHolder, timeout_s: float) -> Any:
    """The current cluster once it answers for the topic (or at the timeout, anyway)."""
    cluster = holder.get(timeout_s) or holder.current
    _wait_until_readable(cluster, time.monotonic() + timeout_s)
    return cluster


def _drain(consumers: list[Any], hwms: dict[int, int], timeout_s: float) -> bool:
    for worker in consumers:
        worker.drain_to(hwms)
    deadline = time.monotonic() + timeout_s
    return all(w.caught_up.wait(max(0.0, deadline - time.monotonic())) for w in consumers)


def _cold_restart(cluster: Any, timeout_s: float) -> None:
    """Kill every actor (Ray restarts them) so later reads see only durable state."""
    import ray

    from ray_stream.testing.nemesis import _try

    actors = [cluster.metadata, *[cluster.agent_by_id(i) for i in range(cluster.settings.agents)]]
    before = [_try(a, "pid") for a in actors]
    for actor in actors:
        ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + timeout_s
    for actor, pid in zip(actors, before, strict=True):
        while time.monotonic() < deadline and _try(actor, "pid") in (None, pid):
            time.sleep(0.2)
    _wait_until_readable(cluster, deadline)


def _wait_until_readable(cluster: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            cluster.describe_topic(TOPIC)
            return
        except Exception:
            time.sleep(0.3)


def _report(
    config: ChaosConfig,
    history: History,
    result: dict[str, Any],
    producers: list[Any],
    consumers: list[Any],
    skipped: list[str],
    last_fault_end: float,
    drained: bool,
    stuck: list[str],
) -> dict[str, Any]:
    events = history.snapshot("faults")
    by_kind: dict[str, dict[str, int]] = {}
    for e in events:
        row = by_kind.setdefault(e.kind, {"injected": 0, "fired": 0, "recovered": 0})
        row["injected"] += 1
        row["fired"] += e.fired
        row["recovered"] += e.recovered
    applicable = [k for k in config.faults if k not in skipped]
    liveness = {
        w.name: {**w.liveness(), "live_after_faults": (w.last_ok_s or -1) >= last_fault_end}
        for w in [*producers, *consumers]
    }
    failover = _failover_samples(history, events)
    waits = [
        s.complete_s - s.invoke_s
        for s in history.snapshot("sends")
        if s.outcome == OK and s.complete_s is not None
    ]
    return {
        "valid": result["valid"],
        "all_faults_fired": bool(events)
        and all(e.fired for e in events)
        and all(k in by_kind for k in applicable),
        "all_recovered": all(e.recovered for e in events),
        "live": drained and not stuck and all(v["live_after_faults"] for v in liveness.values()),
        "counts": result["counts"],
        "examples": result["examples"],
        "stats": result["stats"],
        "faults": {
            "by_kind": by_kind,
            "not_applicable": skipped,
            "events": [asdict(e) for e in events],
        },
        "failover_first_produce_s": {
            "samples": failover,
            "p50": percentile(failover, 50),
            "p99": percentile(failover, 99),
        },
        "ack_latency_s": {
            "p50": percentile(waits, 50),
            "p99": percentile(waits, 99),
            "max": max(waits, default=None),
            "over_10s": sum(w > 10 for w in waits),
        },
        "liveness": {"drained": drained, "stuck_consumers": stuck, "workers": liveness},
        "config": asdict(config),
    }


def _failover_samples(history: History, events: list[Any]) -> list[float]:
    """Per metadata failover: seconds from the fault to the first acknowledged send that
    completed once the new incarnation was seen answering (``fired_at_s``; any client,
    probes included). Sends the old incarnation still served while dying do not count."""
    done = sorted(
        s.complete_s
        for s in history.snapshot("sends")
        if s.outcome == OK and s.complete_s is not None
    )
    out = []
    for e in events:
        if e.kind not in FAILOVER_KINDS or not e.fired or "fired_at_s" not in e.evidence:
            continue
        t0, seen = e.evidence["at_s"], e.evidence["fired_at_s"]
        first = next((t for t in done if t >= seen), None)
        if first is not None:
            out.append(round(first - t0, 3))
    return out
