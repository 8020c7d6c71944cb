"""The ``ray-stream`` command line: start a cluster, manage topics, produce, consume, demo.

Parses arguments, builds Settings, and calls the Python API. Errors print one line that
says what went wrong and what to do, and exit non-zero (2 for bad input, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from ray_stream.config import (
    Settings,
    parse_group,
    parse_principals,
    parse_sasl_mechanisms,
    read_pem,
    unique_groups,
)
from ray_stream.errors import InvalidRequest, RayStreamError


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", help="metadata and default segment directory (default ./.ray_stream-data)"
    )
    p.add_argument(
        "--object-store", help="file:///dir, s3://bucket/prefix?endpoint_url=..., memory://"
    )
    p.add_argument("--agents", type=int, help="number of agent actors (default 1)")
    p.add_argument("--linger-ms", type=int, help="agent flush interval (default 250)")
    p.add_argument("--flush-bytes", type=int, help="agent flush size (default 8 MiB)")
    p.add_argument(
        "--kafka-port", type=int, help="first agent's Kafka port (default 9092; 0 = off)"
    )
    p.add_argument(
        "--kafka-host",
        help="address the Kafka listeners bind to (default 127.0.0.1; 0.0.0.0 = every interface)",
    )
    p.add_argument(
        "--kafka-advertised-host",
        help="host named to Kafka clients (default: --kafka-host, or each node's IP for 0.0.0.0)",
    )
    p.add_argument("--namespace", help="Ray namespace (default ray_stream)")
    p.add_argument(
        "--zones",
        help="simulated availability zones, e.g. a,b: agent n is in zone n %% len (default: "
        "each agent's Ray node zone, from resource zone:<name> or label ray.io/availability-zone)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME:agents=N,port=P,roles=produce+consume",
        help="an agent group besides 'default', with its own listener ports and roles (repeatable)",
    )
    p.add_argument(
        "--agents-per-node",
        type=int,
        help="keep K agents on every alive Ray node, following nodes that join and leave",
    )
    p.add_argument(
        "--group-min-session-timeout-ms",
        type=int,
        help="shortest consumer-group session timeout a JoinGroup may ask for (default 6000)",
    )
    p.add_argument(
        "--group-max-session-timeout-ms",
        type=int,
        help="longest consumer-group session timeout a JoinGroup may ask for (default 1800000)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="PEM certificate chain: the Kafka listeners speak TLS (read here, sent to agents)",
    )
    p.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert (unencrypted)")
    p.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="PEM CA certificates: require client certificates; their CN is the principal",
    )
    p.add_argument(
        "--sasl-mechanisms",
        metavar="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        help="require a SASL login with one of these (users: `ray-stream users add`)",
    )
    p.add_argument(
        "--allow-plaintext-sasl",
        action="store_true",
        default=None,
        help="allow SASL PLAIN without TLS (passwords cross the network readable)",
    )
    p.add_argument(
        "--authorizer",
        choices=("none", "acl"),
        help="acl: check Kafka requests against the stored ACLs, deny by default "
        "(default none: everything allowed)",
    )
    p.add_argument(
        "--super-users",
        metavar="User:admin,User:ops",
        help="principals that bypass the ACLs (comma-separated, Kafka's User:<name> form)",
    )


def _settings_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_dir": args.data_dir,
        "object_store": args.object_store,
        "agents": args.agents,
        "linger_ms": args.linger_ms,
        "flush_bytes": args.flush_bytes,
        "kafka_port": args.kafka_port,
        "namespace": args.namespace,
        "kafka_host": args.kafka_host,
        "kafka_advertised_host": args.kafka_advertised_host,
        "zones": _zones(args.zones),
        "groups": unique_groups([parse_group(g) for g in args.group]) if args.group else None,
        "agents_per_node": args.agents_per_node,
        "group_min_session_timeout_ms": args.group_min_session_timeout_ms,
        "group_max_session_timeout_ms": args.group_max_session_timeout_ms,
        **_security_kwargs(args),
        "authorizer": args.authorizer,
        "super_users": parse_principals(args.super_users) if args.super_users else None,
    }


def _security_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """TLS files are read here, where the cluster is started (docs/design/0008), and
    loaded once, so a key that does not fit its certificate fails before anything starts.

    Raises:
        InvalidConfig: a file cannot be read or does not load (the message names the flag).
    """
    tls = {
        "tls_cert_pem": read_pem(args.tls_cert, flag="--tls-cert") if args.tls_cert else None,
        "tls_key_pem": read_pem(args.tls_key, flag="--tls-key") if args.tls_key else None,
        "tls_ca_pem": read_pem(args.tls_ca, flag="--tls-ca") if args.tls_ca else None,
    }
    if tls["tls_cert_pem"] and tls["tls_key_pem"]:
        from ray_stream.server.tls import server_context

        server_context(Settings().with_overrides(**tls))
    return {
        **tls,
        "sasl_mechanisms": (
            parse_sasl_mechanisms(args.sasl_mechanisms) if args.sasl_mechanisms else None
        ),
        "allow_plaintext_sasl": args.allow_plaintext_sasl,
    }


def _security_text(settings: Settings) -> str:
    """`` security=SASL_SSL(SCRAM-SHA-256)`` for the ready line ('' when all is off)."""
    tls = "SSL" if settings.tls_cert_pem else "PLAINTEXT"
    if settings.sasl_mechanisms:
        return f" security=SASL_{tls}({','.join(settings.sasl_mechanisms)})"
    if settings.tls_ca_pem:
        return " security=SSL(client certificates)"
    return " security=SSL" if settings.tls_cert_pem else ""


def _zones(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    zones = tuple(z.strip() for z in text.split(",") if z.strip())
    if not zones:
        raise InvalidRequest(f"--zones takes comma-separated zone names, got {text!r}")
    return zones


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-stream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="run the embedded cluster in the foreground")
    _settings_args(start)
    start.add_argument(
        "--address", help="run inside an existing Ray cluster (e.g. 'auto' on a `ray up` head node)"
    )

    status = sub.add_parser("status", help="show the running cluster, per agent and per zone")
    status.add_argument("--json", action="store_true", help="every counter, as JSON")
    status.add_argument(
        "--cost",
        action="store_true",
        help="$/month at the current rates on S3 Standard, S3 Express One Zone and GCS, "
        "beside a three-zone Kafka with replication factor 3",
    )
    status.add_argument(
        "--sample-s",
        type=float,
        default=None,
        help="seconds between the two counter samples the rates come from "
        "(default 1; with --cost 5)",
    )

    stop = sub.add_parser("stop", help="stop the cluster `ray-stream start` runs (from any shell)")
    stop.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")

    scale = sub.add_parser("scale", help="resize the running embedded cluster's agents")
    scale.add_argument("--agents", type=int, required=True, help="agents the group should run")
    scale.add_argument("--group", default="default", help="agent group (default: default)")

    topics = sub.add_parser("topics", help="create, list, describe, delete topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    create = tsub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    tsub.add_parser("list")
    describe = tsub.add_parser("describe")
    describe.add_argument("name")
    delete = tsub.add_parser("delete")
    delete.add_argument("name")

    produce = sub.add_parser("produce", help="send stdin lines as records")
    produce.add_argument("topic")
    produce.add_argument("--key-separator", help="split each line into key<SEP>value")
    produce.add_argument("--partition", type=int)

    consume = sub.add_parser("consume", help="print records to stdout")
    consume.add_argument("topic")
    consume.add_argument("--group")
    consume.add_argument(
        "--from-beginning", action="store_true", help="start at the earliest offset"
    )
    consume.add_argument("--partition", type=int, action="append")
    consume.add_argument("--offset", type=int, help="start offset (with --partition)")
    consume.add_argument("--max-records", type=int)
    consume.add_argument(
        "--timeout", type=float, default=5.0, help="stop after this many idle seconds"
    )
    consume.add_argument("--print-offsets", action="store_true")

    from ray_stream.chaos_cli import add_parser as add_chaos_parser

    add_chaos_parser(sub)

    from ray_stream.bench_cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    from ray_stream.acl_cli import add_parser as add_acls_parser

    add_acls_parser(sub)

    from ray_stream.users_cli import add_parser as add_users_parser

    add_users_parser(sub)

    demo = sub.add_parser("demo", help="start an embedded cluster, produce, consume, report")
    _settings_args(demo)
    demo.add_argument("--records", type=int, default=20_000)
    demo.add_argument("--partitions", type=int, default=3)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_dispatch(args) or 0)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RayStreamError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "start":
        return _start(args)
    if args.command == "chaos":
        from ray_stream.chaos_cli import run as run_chaos

        return run_chaos(args)
    if args.command == "demo":
        from ray_stream.demo import run_demo

        return run_demo(records=args.records, partitions=args.partitions, **_settings_kwargs(args))
    if args.command == "bench":
        from ray_stream.bench_cli import run as run_bench

        return run_bench(args)
    if args.command == "stop":
        return _stop(args.timeout)
    from ray_stream.client.cluster import connect

    cluster = connect()
    if args.command == "status" and args.cost:
        from ray_stream.cost_cli import status_cost

        status_cost(cluster, sample_s=args.sample_s or 5.0, as_json=args.json)
    elif args.command == "status":
        _status(cluster, sample_s=args.sample_s or 1.0, as_json=args.json)
    elif args.command == "scale":
        placed = cluster.scale(args.agents, args.group)
        ids = [p.agent_id for p in placed if p.group == args.group]
        print(f"group {args.group}: {len(ids)} agent(s) {ids}")
    elif args.command == "topics":
        _topics(cluster, args)
    elif args.command == "users":
        from ray_stream.users_cli import run as run_users

        run_users(cluster, args)
    elif args.command == "acls":
        from ray_stream.acl_cli import run as run_acls

        run_acls(cluster, args)
    elif args.command == "produce":
        _produce(cluster, args)
    elif args.command == "consume":
        _consume(cluster, args)
    return 0


def _start(args: argparse.Namespace) -> int:
    from ray_stream.client.cluster import clear_state, start_local, write_state

    cluster = start_local(address=args.address, **_settings_kwargs(args))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        write_state(cluster)
        print(
            f"ready kafka={cluster.bootstrap_servers or 'off'} namespace={cluster.settings.namespace} "
            f"data_dir={cluster.settings.resolved_data_dir} "
            f"object_store={cluster.settings.resolved_object_store}"
            f"{_security_text(cluster.settings)}",
            flush=True,
        )
        for group in cluster.settings.group_names[1:]:
            listeners = ",".join(f"{b.host}:{b.port}" for b in cluster.brokers(group=group))
            print(f"group {group} kafka={listeners or 'off'}", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
    finally:
        clear_state()
        cluster.shutdown()
    print("stopped", flush=True)
    return 0


STATUS_COLUMNS = (
    ("gets", "GETs"),
    ("get_bytes", "GET bytes"),
    ("cache_hits", "hits"),
    ("cache_misses", "misses"),
    ("peer_chunks", "from peers"),
    ("peer_bytes", "peer bytes"),
    ("served_chunks", "to peers"),
    ("served_bytes", "served bytes"),
    ("client_bytes", "client bytes"),
    ("cross_zone_bytes", "cross-zone bytes"),
)


def _status(cluster: Any, *, sample_s: float, as_json: bool) -> None:
    """The fleet's counters (from a second sample ``sample_s`` after a first: the
    cluster-wide rates come from the difference, as ``status --cost`` prices them) and
    the consumer groups' lag."""
    from ray_stream.cost import rates_from_status

    if not sample_s > 0:
        raise InvalidRequest(f"--sample-s must be > 0, got {sample_s}")
    before, at_before = cluster.status(), time.monotonic()
    time.sleep(sample_s)
    status, at_after = cluster.status(), time.monotonic()
    rates = rates_from_status(before, status, interval_s=at_after - at_before, stored_bytes=0)
    status["rates"] = {
        "interval_s": round(at_after - at_before, 3),
        "produced_bytes_per_s": rates.produced_bytes_per_s,
        "consumed_bytes_per_s": rates.consumed_bytes_per_s,
        "puts_per_s": rates.puts_per_s,
        "gets_per_s": rates.gets_per_s,
        "cross_zone_bytes_per_s": rates.cross_zone_bytes_per_s,
    }
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        return
    _status_table(status)


def _status_table(status: dict[str, Any]) -> None:
    print(f"namespace {status['namespace']}  object store {status['object_store']}")
    print(f"kafka {status['kafka'] or 'off'}")
    head = ["agent", "listener", "zone", "group"] + [title for _, title in STATUS_COLUMNS]
    rows = [
        [
            str(a.get("agent_id")),
            a.get("listener") or "-",
            a.get("zone") or "-",
            a.get("group", "-"),
        ]
        + [str(a.get(key, a.get("error", "?"))) for key, _ in STATUS_COLUMNS]
        for a in status["agents"]
    ]
    rows += [
        ["zone total", "", zone or "-", f"{t['agents']} agents"]
        + [str(t[k]) for k, _ in STATUS_COLUMNS]
        for zone, t in sorted(status["zones"].items())
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    r = status["rates"]
    print(
        f"rates over {r['interval_s']:.1f} s: produce {r['produced_bytes_per_s'] / 1e6:.2f} MB/s, "
        f"consume {r['consumed_bytes_per_s'] / 1e6:.2f} MB/s, {r['puts_per_s']:.1f} PUTs/s, "
        f"{r['gets_per_s']:.1f} GETs/s, cross-zone {r['cross_zone_bytes_per_s'] / 1e6:.2f} MB/s"
    )
    totals: dict[tuple[str, str], int] = {}
    for row in status["lag"]:
        key = (row["group"], row["topic"])
        totals[key] = totals.get(key, 0) + row["lag"]
    for (group, topic), lag in sorted(totals.items()):
        print(f"lag group={group} topic={topic} records={lag}")


def _stop(timeout_s: float) -> int:
    """SIGTERM to the ``ray-stream start`` process this machine's state file names,
    then wait for it to flush and exit."""
    import os

    from ray_stream.client.cluster import pid_alive, read_state
    from ray_stream.errors import Unavailable

    state = read_state()
    pid = (state or {}).get("pid")
    if not isinstance(pid, int):
        raise Unavailable(
            "no running `ray-stream start` found on this machine (nothing to stop); "
            "a cluster started from Python stops with cluster.shutdown()"
        )
    print(f"stopping the cluster of process {pid} (namespace {state.get('namespace')})", end="")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print()
            raise Unavailable(
                f"process {pid} is still stopping after {timeout_s:.0f} s: wait longer "
                f"(ray-stream stop --timeout ...) or kill it (kill {pid})"
            )
        print(".", end="", flush=True)
        time.sleep(1.0)
    print(" stopped", flush=True)
    return 0


def _topics(cluster: Any, args: argparse.Namespace) -> None:
    cmd = args.topics_command
    if cmd == "create":
        config = {}
        for item in args.config:
            if "=" not in item:
                raise InvalidRequest(f"--config takes KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            config[k] = v
        info = cluster.create_topic(args.name, args.partitions, config)
        print(f"created {info.name} partitions={info.partitions}")
    elif cmd == "list":
        for info in cluster.list_topics():
            print(f"{info.name}\tpartitions={info.partitions}")
    elif cmd == "describe":
        info = cluster.describe_topic(args.name)
        print(
            f"{info.name}\tid={info.topic_id}\tpartitions={info.partitions}\tconfig={info.config}"
        )
        for pi in info.partition_info:
            print(
                f"  partition {pi.partition}\tlog_start={pi.log_start_offset}\thigh_watermark={pi.high_watermark}"
            )
    elif cmd == "delete":
        cluster.delete_topic(args.name)
        print(f"deleted {args.name}")


def _produce(cluster: Any, args: argparse.Namespace) -> None:
    producer = cluster.producer()
    futures = []
    started = time.monotonic()
    for n, line in enumerate(sys.stdin.buffer, 1):
        line = line.rstrip(b"\n")
        key = None
        if args.key_separator:
            sep = args.key_separator.encode()
            if sep in line:
                key, line = line.split(sep, 1)
        futures.append(producer.send(args.topic, line, key=key, partition=args.partition))
        if n % 100_000 == 0:
            print(f"... {n} records queued", file=sys.stderr)
    producer.close()
    for f in futures:
        f.result()
    print(
        f"produced {len(futures)} records to {args.topic} in {time.monotonic() - started:.2f}s",
        file=sys.stderr,
    )


def _consume(cluster: Any, args: argparse.Namespace) -> None:
    consumer = cluster.consumer(
        group_id=args.group,
        auto_offset_reset="earliest" if args.from_beginning or not args.group else "latest",
    )
    if args.partition:
        consumer.assign([(args.topic, p) for p in args.partition])
        if args.offset is not None:
            for p in args.partition:
                consumer.seek((args.topic, p), args.offset)
    else:
        consumer.assign_topic(args.topic)
    count = 0
    out = sys.stdout.buffer
    while args.max_records is None or count < args.max_records:
        records = consumer.poll(timeout=args.timeout)
        if not records:
            break
        for rec in records:
            if args.print_offsets:
                out.write(f"{rec.partition}:{rec.offset}\t".encode())
            out.write((rec.value or b"") + b"\n")
            count += 1
            if args.max_records is not None and count >= args.max_records:
                break
        out.flush()
        if args.group:
            consumer.commit()
    print(f"consumed {count} records", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
