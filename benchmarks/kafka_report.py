"""Tables and pass/fail bars for benchmarks/kafka.py (pure: results dict in, text out).

The bars are reported, never asserted. From issue 3, on the S3 endpoint: ray_stream's
producer throughput >= Tansu's, >= 10x fewer PUTs per GiB written, and end-to-end p99
<= agent linger + 100 ms. From issue 8, one agent on the local directory (fsync'd)
against Tansu memory:// in the same run: consume >= 1.0x and produce >= 0.9x. A bar
whose inputs are missing (a system failed or was not run) is ``None`` / "n/a", never
guessed.
"""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB
# what each system actually ran on, per --stores choice (Tansu has no local-dir engine)
STORE_NAMES = {
    ("ray_stream", "local"): "local dir (fsync)",
    ("ray_stream_tls", "local"): "local dir (fsync)",
    ("tansu", "local"): "memory://",
}
# ray_stream_tls: the same ray_stream with TLS + SASL/SCRAM-SHA-512 on its listener
SYSTEM_NAMES = {"ray_stream": "ray_stream", "ray_stream_tls": "ray_stream TLS+SCRAM"}
PAIR_NAMES = {
    "local": "ray_stream local dir (fsync) vs Tansu memory://",
    "memory": "memory:// vs memory://",
    "s3": "s3:// vs s3:// (same endpoint)",
}
LOCAL_BARS = (("local_dir_consume", "consume", 1.0), ("local_dir_produce", "produce", 0.9))


def store_name(system: str, store: str) -> str:
    return STORE_NAMES.get((system, store), f"{store}://")


def run_label(system: str, store: str) -> str:
    """``ray_stream local dir (fsync)``, ``tansu memory:// (beside ray_stream local dir)``."""
    text = f"{system} {store_name(system, store)}"
    return (
        text + " (beside ray_stream local dir)" if (system, store) == ("tansu", "local") else text
    )


def vs_tansu(runs: list[dict], run: dict) -> dict | None:
    """``run``'s throughput over the same pair's Tansu row (None for Tansu or a failure)."""
    tansu = next((r for r in runs if (r["system"], r["store"]) == ("tansu", run["store"])), {})
    if run["system"] == "tansu" or any("produce" not in r or "error" in r for r in (run, tansu)):
        return None
    return {ph: run[ph]["mib_s"] / tansu[ph]["mib_s"] for ph in ("produce", "consume")}


def _local_bars(by: dict) -> dict:
    rs, tansu = by.get(("ray_stream", "local"), {}), by.get(("tansu", "local"), {})
    out: dict[str, Any] = {}
    for key, phase, bar in LOCAL_BARS:
        if all(phase in r and "error" not in r for r in (rs, tansu)):
            ratio = rs[phase]["mib_s"] / tansu[phase]["mib_s"]
            out[key] = {
                "ray_stream_mib_s": rs[phase]["mib_s"],
                "tansu_mib_s": tansu[phase]["mib_s"],
                "ratio": ratio,
                "bar": bar,
                "pass": ratio >= bar,
            }
            continue
        missing = [
            f"{name} {'was not run' if not r else 'failed'}"
            for name, r in (("ray_stream local dir", rs), ("Tansu memory://", tansu))
            if not r or "error" in r
        ]
        out[key] = {"pass": None, "why": ", ".join(missing) or "missing measurements"}
    return out


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

    def why(*pairs: tuple[str, dict]) -> str:
        for name, r in pairs:
            if not r:
                return f"{name} s3:// was not run"
            if "error" in r:
                return f"{name} s3:// failed"
        return "missing measurements"

    both = (("ray_stream", rs), ("Tansu", tansu))
    out: dict[str, Any] = {}
    if ok(rs, "produce") and ok(tansu, "produce"):
        out["producer_throughput"] = {
            "ray_stream_mib_s": rs["produce"]["mib_s"],
            "tansu_mib_s": tansu["produce"]["mib_s"],
            "pass": rs["produce"]["mib_s"] >= tansu["produce"]["mib_s"],
        }
    else:
        out["producer_throughput"] = {"pass": None, "why": why(*both)}
    if ok(rs, "puts_per_gib") and ok(tansu, "puts_per_gib"):
        out["puts_per_gib"] = {
            "ray_stream": rs["puts_per_gib"],
            "tansu": tansu["puts_per_gib"],
            "ratio": tansu["puts_per_gib"] / rs["puts_per_gib"]
            if rs["puts_per_gib"]
            else float("inf"),
            "pass": rs["puts_per_gib"] * 10 <= tansu["puts_per_gib"],
        }
    else:
        out["puts_per_gib"] = {"pass": None, "why": why(*both)}
    if ok(rs, "latency"):
        bar = rs["agent_linger_ms"] + 100
        out["e2e_p99"] = {
            "p99_ms": rs["latency"]["p99_ms"],
            "bar_ms": bar,
            "pass": rs["latency"]["p99_ms"] <= bar,
        }
    else:
        out["e2e_p99"] = {"pass": None, "why": why(("ray_stream", rs))}
    out.update(_local_bars(by))
    return out


def round_cpu_text(record: dict) -> str:
    """``; CPU-s/GiB produce x / consume y ...`` for one round's progress line."""
    cpu = record.get("cpu", {})
    if set(cpu) != {"produce", "consume"}:
        return ""
    per_gib = {
        who: [cpu[ph][who] / (record[ph]["bytes"] / GIB) for ph in ("produce", "consume")]
        for who in ("system_cpu_s", "client_cpu_s")
    }
    (sp, sc), (cp, cc) = per_gib["system_cpu_s"], per_gib["client_cpu_s"]
    n = cpu["produce"]["processes"]
    return (
        f"; CPU-s/GiB produce {sp:.1f} / consume {sc:.1f} over {n} "
        f"process{'es' if n != 1 else ''} (client {cp:.1f} / {cc:.1f})"
    )


def summary_lines(label: str, r: dict) -> list[str]:
    """What one system's run came to: S3 requests, CPU per GiB, peak RSS."""
    lines = []
    if "puts_per_gib" in r:
        lines.append(
            f"{label}: {r['puts_per_gib']:.0f} PUTs/GiB written, "
            f"{r['gets_per_gib']:.0f} GETs/GiB read"
        )
    cpu, client = r.get("cpu_s_per_gib", {}), r.get("client_cpu_s_per_gib", {})
    if "produce" in cpu and "consume" in cpu:
        lines.append(
            f"{label}: CPU-s/GiB produce {cpu['produce']:.1f}, consume {cpu['consume']:.1f} "
            f"(client {client['produce']:.1f} / {client['consume']:.1f})"
        )
    if "peak_rss" in r:
        who = "agent" if r["system"] in SYSTEM_NAMES else "broker"
        lines.append(f"{label}: {who} peak RSS {r['peak_rss']['peak_rss_mib']:.0f} MiB")
    return lines


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


HEADER = (
    "| run | system | store | produce MiB/s | consume MiB/s | vs Tansu produce / consume "
    "| CPU-s / GiB produce / consume | peak RSS MiB | e2e p50 ms | e2e p99 ms "
    "| ack p50 / p99 ms | PUTs / GiB written | GETs / GiB read |"
)
COLUMNS = HEADER.count("|") - 1


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pair(values: dict, spec: str, suffix: str = "") -> str:
    if "produce" not in values or "consume" not in values:
        return "—"
    return f"{values['produce']:{spec}}{suffix} / {values['consume']:{spec}}{suffix}"


def _rss(r: dict) -> str:
    if "peak_rss" not in r:
        return "—"
    who = "agent" if r["system"] in SYSTEM_NAMES else "broker"
    return f"{r['peak_rss']['peak_rss_mib']:.0f} ({who})"


def _run_row(r: dict) -> str:
    name = SYSTEM_NAMES.get(r["system"], "Tansu")
    cells = [PAIR_NAMES.get(r["store"], r["store"]), name, store_name(r["system"], r["store"])]
    if "error" in r:
        reason = r["error"].replace("|", "/").replace("\n", " ")[:160]
        return _row([*cells, f"failed: {reason}", *[""] * (COLUMNS - len(cells) - 1)])
    lat = r["latency"]
    p99 = f"{lat['p99_ms']:.1f}"
    if lat["received"] != lat["sent"]:
        p99 += f" ({lat['received']} of {lat['sent']} arrived)"
    return _row(
        [
            *cells,
            f"{r['produce']['mib_s']:.1f}",
            f"{r['consume']['mib_s']:.1f}",
            "(baseline)" if r["system"] == "tansu" else _pair(r.get("vs_tansu", {}), ".2f", "x"),
            _pair(r.get("cpu_s_per_gib", {}), ".1f"),
            _rss(r),
            f"{lat['p50_ms']:.1f}",
            p99,
            f"{lat['ack_p50_ms']:.0f} / {lat['ack_p99_ms']:.0f}",
            _fmt(r.get("puts_per_gib"), ".0f"),
            _fmt(r.get("gets_per_gib"), ".0f"),
        ]
    )


def _verdict(entry: dict) -> str:
    if entry["pass"] is None:
        return f"n/a ({entry['why']})"
    return "pass" if entry["pass"] else "FAIL"


def _load_note(results: dict) -> str:
    loads = [rnd["loadavg"] for r in results["runs"] for rnd in r.get("rounds", [])]
    if not loads:
        return ""
    return f", 1-min load average {min(loads):.1f}-{max(loads):.1f} during the rounds"


def _saturation_note(r: dict) -> str:
    """What the ray_stream agent did during the throughput rounds (before the latency run)."""
    a = r.get("agent_stats_after_rounds")
    if not a or "error" in r or not a.get("flushes"):
        return ""
    wait = a.get("produce_wait_ms", {})
    text = (
        f"{run_label(r['system'], r['store'])} agent during the throughput rounds: "
        f"{a['flushes']} segments of {a['put_bytes'] / a['flushes'] / MIB:.1f} MiB on average"
    )
    if a.get("commit_calls"):
        text += (
            f", {a['committed_segments'] / a['commit_calls']:.2f} segments per commit "
            f"(journal PUT), at most {a['max_commit_group']}"
        )
    if wait.get("calls"):
        text += (
            f"; a produce request waited in the agent (buffered -> acked) p50 "
            f"{wait['p50']:.0f} ms, p99 {wait['p99']:.0f} ms, max {wait['max']:.0f} ms"
        )
    return text + "."


def _s3_bar_rows(b: dict) -> list[str]:
    pt, pg, lt = (b[k] for k in ("producer_throughput", "puts_per_gib", "e2e_p99"))
    return [
        "| bar (issue 3, S3 endpoint) | ray_stream s3:// | Tansu s3:// | result |",
        "|---" * 4 + "|",
        _row(
            [
                "producer throughput >= Tansu",
                f"{_fmt(pt.get('ray_stream_mib_s'))} MiB/s",
                f"{_fmt(pt.get('tansu_mib_s'))} MiB/s",
                _verdict(pt),
            ]
        ),
        _row(
            [
                ">= 10x fewer PUTs per GiB",
                _fmt(pg.get("ray_stream"), ".0f"),
                _fmt(pg.get("tansu"), ".0f")
                + (f" ({pg['ratio']:.1f}x ray_stream's)" if "ratio" in pg else ""),
                _verdict(pg),
            ]
        ),
        _row(
            [
                "e2e p99 <= agent linger + 100 ms",
                f"{_fmt(lt.get('p99_ms'))} ms (bar {_fmt(lt.get('bar_ms'), 'd')} ms)",
                "",
                _verdict(lt),
            ]
        ),
    ]


def _local_bar_rows(b: dict) -> list[str]:
    rows = [
        "| bar (issue 8, one agent) | ray_stream local dir (fsync) | Tansu memory:// | result |",
        "|---" * 4 + "|",
    ]
    for key, phase, bar in LOCAL_BARS:
        e = b.get(key, {"pass": None, "why": "not computed"})
        ratio = f" ({e['ratio']:.2f}x)" if "ratio" in e else ""
        rows.append(
            _row(
                [
                    f"local-dir {phase} >= {bar:.1f}x Tansu memory://",
                    f"{_fmt(e.get('ray_stream_mib_s'))} MiB/s{ratio}",
                    f"{_fmt(e.get('tansu_mib_s'))} MiB/s",
                    _verdict(e),
                ]
            )
        )
    return rows


def _config_note(results: dict) -> str:
    c = results["config"]
    return (
        f"confluent-kafka {c['client']}, 1 KiB records, acks=all, linger.ms={c['linger_ms']}, "
        f"{c['partitions']} partitions. Each run starts both systems side by side; ratios are "
        "to the same run's Tansu row. Throughput: median of "
        f"{c['rounds']} alternating rounds of up to {c['records']} records per system. "
        "CPU-s / GiB: user+system CPU seconds of every process of the system (ray_stream: "
        "every process Ray started for its cluster: GCS, raylet, agent and metadata workers, "
        "dashboard, ...; Tansu: its broker) during the timed produce (consume) phases, per "
        "GiB of values acknowledged (read); the client's CPU is not in it (see below). Peak "
        "RSS: VmHWM of ray_stream's agent worker (Tansu: its broker) at the end of the run. "
        f"Latency: {c['latency_rate']} records/s "
        f"for {c['latency_seconds']:g} s, consumer fetch.wait.max.ms={c['fetch_wait_ms']}. "
        f"ray_stream: 1 agent, agent linger {c['rs_linger_ms']} ms. Tansu: {c['tansu']}. "
        + (
            f"S3: {c['s3_server']} on 127.0.0.1; requests counted by a proxy in front of it "
            "(GETs are object GETs; reads a broker serves from its cache cost none). "
            if c["s3_server"] != "none"
            else ""
        )
        + f"{results['machine']['cpus']} cores{_load_note(results)}. "
        f"Source: `benchmarks/kafka.py` -> `benchmarks/results/{c.get('out', 'kafka')}.json`."
    )


def _cpu_note(r: dict, top: int = 6) -> str:
    """Where a run's CPU went, by process, and what the client spent beside it."""
    by = r.get("cpu_by_process_s", {})
    client = r.get("client_cpu_s_per_gib", {})
    if "error" in r or "produce" not in by or "consume" not in by:
        return ""
    names = sorted(
        set(by["produce"]) | set(by["consume"]),
        key=lambda n: -(by["produce"].get(n, 0.0) + by["consume"].get(n, 0.0)),
    )
    parts = [
        f"{n} {by['produce'].get(n, 0.0):.2f} / {by['consume'].get(n, 0.0):.2f}"
        for n in names[:top]
    ]
    if len(names) > top:
        rest = [sum(by[ph].get(n, 0.0) for n in names[top:]) for ph in ("produce", "consume")]
        parts.append(f"{len(names) - top} more {rest[0]:.2f} / {rest[1]:.2f}")
    return (
        f"{run_label(r['system'], r['store'])}: CPU seconds by process, produce / consume "
        f"phases of all rounds: {', '.join(parts)}. The client (confluent-kafka, in the "
        f"benchmark driver, not counted above) used {_pair(client, '.1f')} CPU-s / GiB."
    )


def table(results: dict) -> str:
    rows = [HEADER, "|---" * COLUMNS + "|", *(_run_row(r) for r in results["runs"])]
    stores = {r["store"] for r in results["runs"]}
    if "local" in stores:
        rows += ["", *_local_bar_rows(results["bars"])]
    if "s3" in stores or "local" not in stores:
        rows += ["", *_s3_bar_rows(results["bars"])]
    rows += ["", _config_note(results)]
    for r in results["runs"]:
        families = r.get("puts_per_gib_by_family")
        if families and "error" not in r:
            parts = ", ".join(f"`{f}/` {n:.0f}" for f, n in families.items())
            rows += [
                "",
                f"{run_label(r['system'], r['store'])} PUTs per GiB written by key folder: "
                f"{parts}.",
            ]
    for r in results["runs"]:
        ratio = r.get("vs_plaintext")
        if ratio and "error" not in r:
            rows += [
                "",
                f"{run_label(r['system'], r['store'])}: TLS + SASL/SCRAM-SHA-512 on the "
                f"listener gives {ratio['produce']:.2f}x the plaintext run's produce and "
                f"{ratio['consume']:.2f}x its consume throughput (same run, same store).",
            ]
    for note in (_cpu_note, _saturation_note):
        for r in results["runs"]:
            line = note(r)
            if line:
                rows += ["", line]
    for r in results["runs"]:
        for m in r.get("listoffsets_mismatch", [])[:1]:
            rows.append("")
            rows.append(
                f"Note: {run_label(r['system'], r['store'])} ListOffsets (high watermarks) "
                f"reported {m['reported']} records right after {m['acknowledged']} were "
                "acknowledged; the consumer still read all of them."
            )
    return "\n".join(rows)
