"""``ray-stream chaos``: run the correctness harness under faults and print its verdict.

Hooked into ``ray_stream/cli.py`` with ``add_parser(sub)`` and ``run(args)``; also runs
alone as ``python -m ray_stream.chaos_cli``. Prints progress lines, then one JSON report
(or writes it to ``--json``). Exit status: 0 when the run is safe (every anomaly count is
zero), every fault fired and the system recovered from each and stayed live; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser", "main", "run"]


def _interval(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    try:
        low = float(lo)
        high = float(hi) if hi else low
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN-MAX, got {text!r}") from exc
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"interval {text!r} must satisfy 0 <= min <= max")
    return low, high


def _arguments(p: argparse.ArgumentParser) -> None:
    from ray_stream.testing.nemesis import FAULT_KINDS

    p.add_argument("--duration", type=float, default=120.0, help="workload seconds (default 120)")
    p.add_argument("--producers", type=int, default=3)
    p.add_argument(
        "--kafka-producers", type=int, default=1, help="kafka-python producers (0: none)"
    )
    p.add_argument("--groups", type=int, default=2, help="consumer groups")
    p.add_argument("--consumers-per-group", type=int, default=2)
    p.add_argument("--assign-consumers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--agents", type=int, default=2)
    p.add_argument(
        "--zones", default="a,b", help="simulated zones of the agents ('' for none; default a,b)"
    )
    p.add_argument("--rate", type=float, default=40.0, help="records/s per producer")
    p.add_argument(
        "--fault-interval",
        type=_interval,
        default=(10.0, 20.0),
        metavar="MIN-MAX",
        help="seconds between faults (default 10-20)",
    )
    p.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated kinds (default all: {','.join(FAULT_KINDS)})",
    )
    p.add_argument(
        "--worker-nodes",
        type=int,
        default=2,
        help="Ray worker nodes (0: plain local Ray, no node removal)",
    )
    p.add_argument(
        "--no-wipe",
        action="store_true",
        help="keep the metadata node's local files when removing it",
    )
    p.add_argument(
        "--broken-store",
        choices=["drop_acked"],
        help="TEST ONLY: a store that loses acknowledged PUTs (the checker must notice)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the work directory (history.json)")
    p.add_argument("--json", dest="json_path", help="write the report here instead of stdout")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``chaos`` subcommand to a ``ray-stream`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "chaos", help="run producers/consumers under faults and check safety"
    )
    _arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the chaos test the parsed arguments describe; 0 if it passed (see module doc)."""
    from ray_stream.testing.runner import ChaosConfig, run_chaos

    config = ChaosConfig(
        duration_s=args.duration,
        producers=args.producers,
        kafka_producers=args.kafka_producers,
        groups=args.groups,
        consumers_per_group=args.consumers_per_group,
        assign_consumers=args.assign_consumers,
        partitions=args.partitions,
        agents=args.agents,
        zones=tuple(z for z in args.zones.split(",") if z),
        rate=args.rate,
        fault_interval_s=args.fault_interval,
        faults=tuple(k for k in args.faults.split(",") if k),
        worker_nodes=args.worker_nodes,
        wipe_metadata_disk=not args.no_wipe,
        broken_store=args.broken_store,
        seed=args.seed,
        keep_workdir=args.keep,
    )
    report = run_chaos(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2, default=str)
    if args.json_path:
        with open(args.json_path, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    summary = {k: v for k, v in report["counts"].items() if v}
    print(
        f"chaos: valid={report['valid']} faults_fired={report['all_faults_fired']} "
        f"recovered={report['all_recovered']} live={report['live']} "
        f"acknowledged={report['stats']['acknowledged']} anomalies={summary or 'none'}",
        file=sys.stderr,
    )
    fired = report["all_faults_fired"] or not config.faults
    ok = report["valid"] and fired and report["all_recovered"] and report["live"]
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray-stream chaos", description=__doc__.splitlines()[0])
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
