"""``ray-stream status --cost``: what the running cluster costs per month at its current rates.

Samples ``Cluster.status()`` (plus the metadata actor's stats) twice, ``--sample-s`` apart,
measures the bytes in the object store, and prints ``ray_stream.cost``'s monthly breakdown
for each object-store offering beside a three-zone Kafka. ``cost_report`` turns two
snapshots into the printed text without Ray, so tests check it on known counts.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from ray_stream.core.keys import SEGMENT_PREFIX
from ray_stream.cost import (
    KAFKA_ON_AWS,
    OFFERINGS,
    MonthlyCost,
    Rates,
    monthly_costs,
    rates_from_status,
)
from ray_stream.errors import InvalidRequest, NotFound, RayStreamError
from ray_stream.storage.url import inner_url, open_store

__all__ = ["STORED_SIZES_MAX", "cost_report", "status_cost"]


def status_cost(cluster: Any, *, sample_s: float, as_json: bool) -> None:
    """Sample the counters twice, ``sample_s`` apart, measure the stored bytes, print.

    Raises:
        InvalidRequest: ``sample_s`` is not positive.
        Unavailable: the cluster's actors do not answer.
        StorageUnavailable: listing or sizing the segment objects failed.
    """
    if not sample_s > 0:
        raise InvalidRequest(f"--sample-s must be > 0, got {sample_s}")
    before, at_before = _cost_snapshot(cluster)
    time.sleep(sample_s)
    after, at_after = _cost_snapshot(cluster)
    stored, how = _stored_bytes(cluster.settings.resolved_object_store)
    text = cost_report(
        before,
        after,
        interval_s=at_after - at_before,
        stored_bytes=stored,
        stored_how=how,
        as_json=as_json,
    )
    print(text)


def _cost_snapshot(cluster: Any) -> tuple[dict[str, Any], float]:
    """``cluster.status()`` plus the metadata actor's stats (its journal PUTs cost too),
    and the monotonic time at the middle of the sampling."""
    from ray_stream.actors import handles  # Ray: only once a cluster is attached

    started = time.monotonic()
    status = cluster.status()
    try:
        status["metadata_stats"] = handles.get(cluster.metadata.stats.remote(), timeout_s=30)
    except RayStreamError as exc:  # journal PUTs are then left out of the rates
        print(f"warning: metadata stats unavailable ({exc})", file=sys.stderr)
    return status, (started + time.monotonic()) / 2


STORED_SIZES_MAX = 1000  # HEADs per measurement; beyond, the mean of a sample is used


def _stored_bytes(url: str) -> tuple[float, str]:
    """Bytes of the segment objects in the store at ``url``, and how they were found: a
    LIST of ``segments/`` and the size of each object (of an even sample of
    ``STORED_SIZES_MAX`` when there are more, times the object count)."""
    base = inner_url(url)
    if base.startswith("memory://"):
        return 0.0, "not measured: a memory:// store lives inside the cluster's processes"
    store = open_store(base)
    try:
        keys = store.list(SEGMENT_PREFIX)
        step = max(1, -(-len(keys) // STORED_SIZES_MAX))
        sizes: list[int] = []
        for key in keys[::step]:
            with contextlib.suppress(NotFound):  # deleted since the LIST
                sizes.append(store.size(key))
    finally:
        store.close()
    if step == 1 or not sizes:
        return float(sum(sizes)), f"sum of {len(sizes)} segment object sizes"
    return (
        sum(sizes) / len(sizes) * len(keys),
        f"{len(keys)} segment objects x mean size of {len(sizes)} sampled",
    )


def cost_report(
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    interval_s: float,
    stored_bytes: float,
    stored_how: str = "",
    as_json: bool = False,
) -> str:
    """What ``status --cost`` prints for two status snapshots ``interval_s`` apart.

    Args:
        before, after: ``Cluster.status()`` results, each optionally with
            ``metadata_stats`` (the metadata actor's ``stats()``).
        interval_s: seconds between the two snapshots.
        stored_bytes: bytes in the object store.
        stored_how: how ``stored_bytes`` was found, printed beside it.
        as_json: the rates, the monthly breakdown and the price table as JSON instead.

    Raises:
        InvalidRequest: ``interval_s`` is not positive.
    """
    rates = rates_from_status(before, after, interval_s=interval_s, stored_bytes=stored_bytes)
    costs = monthly_costs(rates)
    if as_json:
        return _cost_json(rates, costs, interval_s=interval_s, stored_how=stored_how)
    r, k = rates, KAFKA_ON_AWS
    lines = [
        f"rates over {interval_s:.1f} s: produced {_size(r.produced_bytes_per_s)}/s, "
        f"consumed {_size(r.consumed_bytes_per_s)}/s, PUT {r.puts_per_s:.2f}/s "
        f"({_size(r.put_bytes_per_s)}/s), GET {r.gets_per_s:.2f}/s "
        f"({_size(r.get_bytes_per_s)}/s), cross-zone {_size(r.cross_zone_bytes_per_s)}/s",
        f"stored {_size(r.stored_bytes)} ({stored_how or 'given'})",
        "$/month at these rates (730 h month):",
        *_cost_table(costs),
        *(f"prices: {o.name} ({o.region}) as of {o.as_of}: {o.source}" for o in OFFERINGS.values()),
        f"assumed: {k.name}: producers cross zones {k.producer_cross_zone_fraction:.0%} "
        f"of the time, {k.replica_copies_crossing} replica copies cross, consumers cross "
        f"{k.consumer_cross_zone_fraction:.0%}, ${k.cross_zone_usd_per_gib}/GiB moved, "
        f"EBS gp3 ${k.disk_usd_per_gib_month}/GiB-month x{k.replication_factor} "
        f"(as of {k.as_of}). Prices change: check the sources. Compute is not priced.",
    ]
    return "\n".join(lines)


def _cost_json(
    rates: Rates, costs: list[MonthlyCost], *, interval_s: float, stored_how: str
) -> str:
    return json.dumps(
        {
            "interval_s": interval_s,
            "rates": asdict(rates),
            "stored_bytes_how": stored_how,
            "monthly_usd": [{**asdict(c), "total_usd": c.total_usd} for c in costs],
            "prices": {key: asdict(o) for key, o in OFFERINGS.items()},
            "kafka": asdict(KAFKA_ON_AWS),
        },
        indent=2,
    )


def _cost_table(costs: list[MonthlyCost]) -> list[str]:
    head = ["", "storage", "requests", "network", "total"]
    rows = [
        [
            c.name,
            *(f"{v:,.2f}" for v in (c.storage_usd, c.requests_usd, c.network_usd, c.total_usd)),
        ]
        for c in costs
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in [head, *rows]
    ]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")
