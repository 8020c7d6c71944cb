"""Tables and pass/fail bars for benchmarks/kafka.py (pure: results dict in, text out).

The bars come from issue 3 and are reported, never asserted: on the S3 endpoint,
ray_stream's producer throughput >= Tansu's, >= 10x fewer PUTs per GiB written, and
end-to-end p99 <= agent linger + 100 ms. A bar whose inputs are missing (a system
failed) is ``None`` / "n/a", never guessed.
"""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


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
    return out


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


HEADER = (
    "| system | store | produce MiB/s | consume MiB/s | e2e p50 ms | e2e p99 ms "
    "| ack p50 / p99 ms | PUTs / GiB written | GETs / GiB read |"
)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _run_row(r: dict) -> str:
    name = "ray_stream" if r["system"] == "ray_stream" else "Tansu"
    store = "memory://" if r["store"] == "memory" else "s3://"
    if "error" in r:
        reason = r["error"].replace("|", "/").replace("\n", " ")[:160]
        return _row([name, store, f"failed: {reason}", *[""] * 6])
    lat = r["latency"]
    p99 = f"{lat['p99_ms']:.1f}"
    if lat["received"] != lat["sent"]:
        p99 += f" ({lat['received']} of {lat['sent']} arrived)"
    return _row(
        [
            name,
            store,
            f"{r['produce']['mib_s']:.1f}",
            f"{r['consume']['mib_s']:.1f}",
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
        f"{r['system']} {r['store']}:// agent during the throughput rounds: "
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


def table(results: dict) -> str:
    rows = [HEADER, "|---" * 9 + "|", *(_run_row(r) for r in results["runs"])]
    pt, pg, lt = (results["bars"][k] for k in ("producer_throughput", "puts_per_gib", "e2e_p99"))
    rows += ["", "| bar (S3 endpoint) | ray_stream | Tansu s3:// | result |", "|---" * 4 + "|"]
    rows.append(
        _row(
            [
                "producer throughput >= Tansu",
                f"{_fmt(pt.get('ray_stream_mib_s'))} MiB/s",
                f"{_fmt(pt.get('tansu_mib_s'))} MiB/s",
                _verdict(pt),
            ]
        )
    )
    rows.append(
        _row(
            [
                ">= 10x fewer PUTs per GiB",
                _fmt(pg.get("ray_stream"), ".0f"),
                _fmt(pg.get("tansu"), ".0f")
                + (f" ({pg['ratio']:.1f}x ray_stream's)" if "ratio" in pg else ""),
                _verdict(pg),
            ]
        )
    )
    rows.append(
        _row(
            [
                "e2e p99 <= agent linger + 100 ms",
                f"{_fmt(lt.get('p99_ms'))} ms (bar {_fmt(lt.get('bar_ms'), 'd')} ms)",
                "",
                _verdict(lt),
            ]
        )
    )
    c = results["config"]
    note = (
        f"confluent-kafka {c['client']}, 1 KiB records, acks=all, linger.ms={c['linger_ms']}, "
        f"{c['partitions']} partitions. Throughput: median of {c['rounds']} alternating rounds "
        f"of up to {c['records']} records per system. Latency: {c['latency_rate']} records/s "
        f"for {c['latency_seconds']:g} s, consumer fetch.wait.max.ms={c['fetch_wait_ms']}. "
        f"ray_stream: 1 agent, agent linger {c['rs_linger_ms']} ms. Tansu: {c['tansu']}. "
        f"S3: {c['s3_server']} on 127.0.0.1; requests counted by a proxy in front of it "
        "(GETs are object GETs; reads a broker serves from its cache cost none). "
        f"{results['machine']['cpus']} cores{_load_note(results)}. "
        "Source: `benchmarks/kafka.py` -> `benchmarks/results/kafka.json`."
    )
    rows += ["", note]
    for r in results["runs"]:
        families = r.get("puts_per_gib_by_family")
        if families and "error" not in r:
            parts = ", ".join(f"`{f}/` {n:.0f}" for f, n in families.items())
            rows += [
                "",
                f"{r['system']} {r['store']}:// PUTs per GiB written by key folder: {parts}.",
            ]
    for r in results["runs"]:
        line = _saturation_note(r)
        if line:
            rows += ["", line]
    for r in results["runs"]:
        for m in r.get("listoffsets_mismatch", [])[:1]:
            rows.append("")
            rows.append(
                f"Note: {r['system']} {r['store']}:// ListOffsets (high watermarks) reported "
                f"{m['reported']} records right after {m['acknowledged']} were acknowledged; the "
                "consumer still read all of them."
            )
    return "\n".join(rows)
