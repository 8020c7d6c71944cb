"""The long chaos run: safety under a fault every 10-20 s, with failover latency.

A ``ray.cluster_utils.Cluster`` (CPU-less head, 2 worker nodes) runs the metadata actor
and 2 agents on a fault-injecting local-directory store. 3 Python-API producers and one
kafka-python producer (all never retrying on their own), 2 consumer groups of 2 and one
assign-mode consumer work 8 partitions while the nemesis kills agents, kills the metadata
actor, removes the node it runs on (wiping its local files), injects store faults and
restarts the whole cluster. Then the checker (``ray_stream.testing``) reads everything
back. Writes ``benchmarks/results/chaos.json`` and the README table.

Usage: ``python benchmarks/chaos.py [--duration 600] [--seed 0]`` (``--no-readme --out
chaos-short`` for a trial run that leaves the README and chaos.json alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import loopback_env, machine, update_readme, write_result  # noqa: E402

# benchmarks/kafka.py would shadow the kafka-python package the workload imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=600.0, help="workload seconds (default 600)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=40.0, help="records/s per producer")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (history.json)"
    )
    parser.add_argument(
        "--out", default="chaos", help="results file name (default chaos -> chaos.json)"
    )
    parser.add_argument("--no-readme", action="store_true", help="do not update the README table")
    args = parser.parse_args()
    loopback_env()
    from ray_stream.testing.runner import ChaosConfig, run_chaos

    config = ChaosConfig(
        duration_s=args.duration,
        producers=3,
        kafka_producers=1,
        groups=2,
        consumers_per_group=2,
        assign_consumers=1,
        partitions=8,
        agents=2,
        rate=args.rate,
        fault_interval_s=(10.0, 20.0),
        worker_nodes=2,
        seed=args.seed,
        keep_workdir=args.keep,
    )
    report = run_chaos(config, log=lambda line: print(line, flush=True))
    report["machine"] = machine()
    path = write_result(args.out, report)
    table = _table(report, path)
    if not args.no_readme:
        update_readme("chaos", table)
    print(table)
    return 0 if report["valid"] else 1


def _table(report: dict, path: Path) -> str:
    rows = ["| fault | injected | fired | recovered |", "|---|---|---|---|"]
    for kind, row in sorted(report["faults"]["by_kind"].items()):
        rows.append(f"| {kind} | {row['injected']} | {row['fired']} | {row['recovered']} |")
    rows += [
        "",
        "| check | count |",
        "|---|---|",
        f"| records acknowledged | {report['stats']['acknowledged']} |",
    ]
    rows += [f"| {name} | {count} |" for name, count in report["counts"].items()]
    failover = report["failover_first_produce_s"]
    cfg = report["config"]
    sends = report["stats"]["sends"]

    def seconds(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    rows += [
        "",
        f"Time to first successful produce after a metadata failover (kill, node loss, "
        f"cluster restart): p50 {seconds(failover['p50'])}, p99 {seconds(failover['p99'])} "
        f"over {len(failover['samples'])} failovers. Sends: {sends.get('ok', 0)} ok, "
        f"{sends.get('info', 0)} indeterminate, {sends.get('fail', 0)} failed. "
        f"{cfg['duration_s']:.0f} s, {cfg['producers']} producers + {cfg['kafka_producers']} "
        f"Kafka-client producer, {cfg['groups']} groups x {cfg['consumers_per_group']} consumers "
        f"+ {cfg['assign_consumers']} assign consumer, {cfg['partitions']} partitions, a fault "
        f"every {cfg['fault_interval_s'][0]:.0f}-{cfg['fault_interval_s'][1]:.0f} s, "
        f"{cfg['worker_nodes']} Ray worker nodes, {report['machine']['cpus']} cores; safe="
        f"{report['valid']}, every fault fired={report['all_faults_fired']}, recovered="
        f"{report['all_recovered']}, live={report['live']}. "
        f"Source: `benchmarks/chaos.py` -> `{path.relative_to(path.parents[2])}`.",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
