"""What a cluster costs per month: object-store offerings beside a three-zone Kafka.

From counted requests (PUT, GET, LIST, DELETE), bytes stored and bytes moved across zones,
this module prices one month of ray_stream on S3 Standard, S3 Express One Zone and GCS
Standard, and prices a Kafka cluster moving the same data (cross-zone produce, replication
and consumer traffic, broker disks). ``monthly_costs(rates)`` does it from per-second rates,
such as ``rates_from_status`` measures from two ``Cluster.status()`` snapshots.

Rules this module keeps:

1. **Every price is in one table** (``OFFERINGS`` and ``KAFKA_ON_AWS``), each entry with
   the date its list price was in effect and the page it comes from. Prices change: check
   the source before quoting a figure, and add a new entry rather than editing a dated one.
2. **Pure.** No Ray, no I/O, no clock: numbers in, numbers out (STYLE.md 1.1).
3. **Units are in the names.** Sizes are bytes; ``GiB`` is 2**30 bytes (AWS and Google bill
   their "GB" as 2**30 bytes); a month is 730 hours, the month both clouds' pricing
   calculators use.

What is not priced, for either side: compute (agent or broker instances), the metadata
store, internet egress, taxes and discounts. The comparison is the seed article's: what the
data costs to move and keep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ray_stream.errors import InvalidRequest

__all__ = [
    "GIB",
    "KAFKA_ON_AWS",
    "OFFERINGS",
    "SECONDS_PER_MONTH",
    "KafkaAssumptions",
    "MonthlyCost",
    "Offering",
    "Rates",
    "Usage",
    "kafka_cost",
    "monthly_costs",
    "object_store_cost",
    "rates_from_status",
]

GIB = 2**30
SECONDS_PER_MONTH = 730 * 3600  # 730 h: AWS's and Google's pricing-calculator month
KIB = 1024


@dataclass(frozen=True, slots=True)
class Offering:
    """One object-storage offering's list prices (USD).

    Attributes:
        name: shown in reports.
        region: where these list prices apply.
        storage_usd_per_gib_month: stored bytes, averaged over the month.
        put_usd_per_1k: PUT/COPY/POST (GCS: Class A) requests.
        get_usd_per_1k: GET (GCS: Class B) requests; ranged GETs count as GETs.
        list_usd_per_1k: LIST requests (S3 prices them as PUTs; GCS as Class A).
        delete_usd_per_1k: DELETE requests (free on all three).
        cross_zone_usd_per_gib: a GiB moved between two zones of the region, both
            directions' charges summed (AWS bills $0.01 out plus $0.01 in; GCP bills the
            sender). Agents pay it for client traffic that crosses zones; reaching the
            bucket from any zone of its region is free on all three.
        upload_usd_per_gib_over: per GiB of each PUT beyond ``free_bytes_per_request``
            (S3 Express One Zone's data upload charge).
        retrieval_usd_per_gib_over: per GiB of each GET beyond ``free_bytes_per_request``
            (S3 Express One Zone's data retrieval charge).
        free_bytes_per_request: bytes per request the two charges above do not cover.
        as_of: the date these list prices were in effect (ISO 8601).
        source: the pricing page they come from.
    """

    name: str
    region: str
    storage_usd_per_gib_month: float
    put_usd_per_1k: float
    get_usd_per_1k: float
    list_usd_per_1k: float
    delete_usd_per_1k: float
    cross_zone_usd_per_gib: float
    as_of: str
    source: str
    upload_usd_per_gib_over: float = 0.0
    retrieval_usd_per_gib_over: float = 0.0
    free_bytes_per_request: int = 0


@dataclass(frozen=True, slots=True)
class KafkaAssumptions:
    """A Kafka cluster spread over zones, moving the same data as ray_stream.

    Defaults: three zones, replication factor 3 with rack-aware placement (one replica
    per zone), producers and consumers spread evenly over the zones, consumers fetching
    from leaders (no KIP-392 follower fetching), each replica on gp3 EBS, AWS prices.

    Attributes:
        zones: availability zones the brokers, producers and consumers are spread over.
        replication_factor: copies of every partition.
        follower_fetching: consumers read from a replica in their own zone (KIP-392,
            ``client.rack``), so consumer traffic does not cross zones.
        cross_zone_usd_per_gib: a GiB moved between zones, both directions summed
            (AWS: $0.01 out + $0.01 in).
        disk_usd_per_gib_month: broker volume price (EBS gp3, provisioned size).
        disk_fill_ratio: stored bytes over provisioned bytes; brokers keep headroom, so a
            real cluster sits below 1.0 (the default 1.0 is the cheapest possible Kafka).
        as_of: the date these list prices were in effect (ISO 8601).
        source: the pricing pages they come from.
    """

    zones: int = 3
    replication_factor: int = 3
    follower_fetching: bool = False
    cross_zone_usd_per_gib: float = 0.02
    disk_usd_per_gib_month: float = 0.08
    disk_fill_ratio: float = 1.0
    as_of: str = "2025-04-10"
    source: str = (
        "https://aws.amazon.com/ec2/pricing/on-demand/ (data transfer within a region); "
        "https://aws.amazon.com/ebs/pricing/ (gp3)"
    )

    @property
    def name(self) -> str:
        fetch = ", follower fetching" if self.follower_fetching else ""
        return f"Kafka {self.zones} zones RF={self.replication_factor}{fetch}"

    @property
    def producer_cross_zone_fraction(self) -> float:
        """A producer reaches a partition's leader in another zone (zones-1)/zones of the
        time: 2/3 with three zones (a producer cannot pick its leader's zone)."""
        return (self.zones - 1) / self.zones

    @property
    def replica_copies_crossing(self) -> int:
        """Follower copies that cross zones per produced byte. Rack-aware placement spreads
        replicas evenly, so the leader's zone holds ceil(RF/zones) of them: with RF 3 on
        three zones, both follower copies cross (2)."""
        return self.replication_factor - math.ceil(self.replication_factor / self.zones)

    @property
    def consumer_cross_zone_fraction(self) -> float:
        """Consumers fetch from the leader, in another zone (zones-1)/zones of the time;
        0 with follower fetching (a replica in every zone when RF >= zones)."""
        if self.follower_fetching and self.replication_factor >= self.zones:
            return 0.0
        return (self.zones - 1) / self.zones


_AWS_S3_PRICING = "https://aws.amazon.com/s3/pricing/"
_AWS_CROSS_AZ_USD_PER_GIB = 0.02  # $0.01/GB out of one AZ + $0.01/GB into the other

# Public list prices, S3 in us-east-1 and GCS in us-central1, as published on the source
# pages on the ``as_of`` date (S3 Express One Zone's price cut took effect 2025-04-10; the
# others had not changed since). Not fetched live: check the pages before quoting a figure,
# and add a dated entry when a price changes (rule 1).
OFFERINGS: dict[str, Offering] = {
    "s3-standard": Offering(
        name="S3 Standard",
        region="us-east-1",
        storage_usd_per_gib_month=0.023,  # first 50 TB/month tier
        put_usd_per_1k=0.005,
        get_usd_per_1k=0.0004,
        list_usd_per_1k=0.005,
        delete_usd_per_1k=0.0,
        cross_zone_usd_per_gib=_AWS_CROSS_AZ_USD_PER_GIB,
        as_of="2025-04-10",
        source=_AWS_S3_PRICING,
    ),
    "s3-express-one-zone": Offering(
        name="S3 Express One Zone",
        region="us-east-1",
        storage_usd_per_gib_month=0.11,  # after the 2025-04-10 price cut (was 0.16)
        put_usd_per_1k=0.00113,  # was 0.0025
        get_usd_per_1k=0.00003,  # was 0.0002
        list_usd_per_1k=0.00113,
        delete_usd_per_1k=0.0,
        cross_zone_usd_per_gib=_AWS_CROSS_AZ_USD_PER_GIB,
        upload_usd_per_gib_over=0.0032,
        retrieval_usd_per_gib_over=0.0006,
        free_bytes_per_request=512 * KIB,
        as_of="2025-04-10",
        source=_AWS_S3_PRICING + " (Express One Zone tab; https://aws.amazon.com/s3/faqs/)",
    ),
    "gcs-standard": Offering(
        name="GCS Standard",
        region="us-central1",
        storage_usd_per_gib_month=0.020,
        put_usd_per_1k=0.005,  # Class A: $0.05 per 10,000
        get_usd_per_1k=0.0004,  # Class B: $0.004 per 10,000
        list_usd_per_1k=0.005,  # objects.list is Class A
        delete_usd_per_1k=0.0,
        cross_zone_usd_per_gib=0.01,  # VM to VM between zones of a region, billed once
        as_of="2025-04-10",
        source="https://cloud.google.com/storage/pricing ; "
        "https://cloud.google.com/vpc/network-pricing (inter-zone)",
    ),
}

KAFKA_ON_AWS = KafkaAssumptions()


@dataclass(frozen=True, slots=True)
class Usage:
    """One month of counted activity.

    Attributes:
        puts, gets, lists, deletes: object-store requests in the month.
        put_bytes, get_bytes: bytes those PUTs wrote and GETs read.
        stored_bytes: bytes kept in the object store, averaged over the month.
        cross_zone_bytes: bytes ray_stream moved between zones (fetches served to a
            client in another zone).
        produced_bytes, consumed_bytes: bytes producers sent and consumers read; the
            Kafka comparison moves these.
    """

    puts: float = 0.0
    put_bytes: float = 0.0
    gets: float = 0.0
    get_bytes: float = 0.0
    lists: float = 0.0
    deletes: float = 0.0
    stored_bytes: float = 0.0
    cross_zone_bytes: float = 0.0
    produced_bytes: float = 0.0
    consumed_bytes: float = 0.0


@dataclass(frozen=True, slots=True)
class Rates:
    """A running cluster's per-second rates, and the bytes it stores now.

    ``stored_bytes`` is a level, not a rate: the month is priced as if it stayed there
    (retention keeping the footprint steady).
    """

    produced_bytes_per_s: float = 0.0
    consumed_bytes_per_s: float = 0.0
    puts_per_s: float = 0.0
    put_bytes_per_s: float = 0.0
    gets_per_s: float = 0.0
    get_bytes_per_s: float = 0.0
    lists_per_s: float = 0.0
    deletes_per_s: float = 0.0
    cross_zone_bytes_per_s: float = 0.0
    stored_bytes: float = 0.0

    def monthly(self, seconds_per_month: float = SECONDS_PER_MONTH) -> Usage:
        """These rates sustained for a month."""
        m = seconds_per_month
        return Usage(
            puts=self.puts_per_s * m,
            put_bytes=self.put_bytes_per_s * m,
            gets=self.gets_per_s * m,
            get_bytes=self.get_bytes_per_s * m,
            lists=self.lists_per_s * m,
            deletes=self.deletes_per_s * m,
            stored_bytes=self.stored_bytes,
            cross_zone_bytes=self.cross_zone_bytes_per_s * m,
            produced_bytes=self.produced_bytes_per_s * m,
            consumed_bytes=self.consumed_bytes_per_s * m,
        )


@dataclass(frozen=True, slots=True)
class MonthlyCost:
    """Dollars per month, by what pays for them.

    Attributes:
        name: the offering (or Kafka) priced.
        storage_usd: stored bytes (Kafka: every replica's disk).
        requests_usd: object-store requests, with S3 Express One Zone's per-GiB upload and
            retrieval charges (Kafka: none).
        network_usd: bytes moved between zones.
    """

    name: str
    storage_usd: float
    requests_usd: float
    network_usd: float

    @property
    def total_usd(self) -> float:
        return self.storage_usd + self.requests_usd + self.network_usd


def object_store_cost(usage: Usage, offering: Offering) -> MonthlyCost:
    """ray_stream's month on ``offering``.

    The per-GiB-over-512-KiB charges use the mean request size, which is exact when
    requests are the same size (one segment per flush, fixed read chunks) and a lower
    bound otherwise.
    """
    o = offering
    requests = (
        usage.puts * o.put_usd_per_1k
        + usage.gets * o.get_usd_per_1k
        + usage.lists * o.list_usd_per_1k
        + usage.deletes * o.delete_usd_per_1k
    ) / 1000
    over_put = _bytes_over(usage.puts, usage.put_bytes, o.free_bytes_per_request)
    over_get = _bytes_over(usage.gets, usage.get_bytes, o.free_bytes_per_request)
    requests += over_put / GIB * o.upload_usd_per_gib_over
    requests += over_get / GIB * o.retrieval_usd_per_gib_over
    return MonthlyCost(
        name=o.name,
        storage_usd=usage.stored_bytes / GIB * o.storage_usd_per_gib_month,
        requests_usd=requests,
        network_usd=usage.cross_zone_bytes / GIB * o.cross_zone_usd_per_gib,
    )


def _bytes_over(requests: float, total_bytes: float, free_per_request: int) -> float:
    """Bytes beyond ``free_per_request`` in each of ``requests`` requests of mean size."""
    if requests <= 0:
        return 0.0
    return requests * max(0.0, total_bytes / requests - free_per_request)


def kafka_cost(usage: Usage, kafka: KafkaAssumptions = KAFKA_ON_AWS) -> MonthlyCost:
    """A Kafka cluster moving ``usage``'s produced and consumed bytes, keeping its stored
    bytes on every replica's disk.

    Cross-zone bytes: produced x (producer fraction + follower copies crossing) plus
    consumed x consumer fraction (see ``KafkaAssumptions``).

    Raises:
        InvalidRequest: zones or replication factor below 1, or a fill ratio outside (0, 1].
    """
    if kafka.zones < 1 or kafka.replication_factor < 1:
        raise InvalidRequest(
            f"kafka zones ({kafka.zones}) and replication_factor "
            f"({kafka.replication_factor}) must be >= 1"
        )
    if not 0 < kafka.disk_fill_ratio <= 1:
        raise InvalidRequest(f"kafka disk_fill_ratio {kafka.disk_fill_ratio} must be in (0, 1]")
    crossing = (
        usage.produced_bytes * (kafka.producer_cross_zone_fraction + kafka.replica_copies_crossing)
        + usage.consumed_bytes * kafka.consumer_cross_zone_fraction
    )
    disk_gib = usage.stored_bytes * kafka.replication_factor / kafka.disk_fill_ratio / GIB
    return MonthlyCost(
        name=kafka.name,
        storage_usd=disk_gib * kafka.disk_usd_per_gib_month,
        requests_usd=0.0,
        network_usd=crossing / GIB * kafka.cross_zone_usd_per_gib,
    )


def monthly_costs(
    rates: Rates,
    *,
    offerings: Iterable[Offering] | None = None,
    kafka: KafkaAssumptions = KAFKA_ON_AWS,
    seconds_per_month: float = SECONDS_PER_MONTH,
) -> list[MonthlyCost]:
    """The monthly breakdown of each offering at ``rates``, then the Kafka line.

    Args:
        rates: the cluster's rates.
        offerings: the offerings to price (default: every one in ``OFFERINGS``).
        kafka: the Kafka cluster to compare with.
        seconds_per_month: how long the rates are sustained.

    Raises:
        InvalidRequest: as ``kafka_cost``.
    """
    usage = rates.monthly(seconds_per_month)
    chosen = OFFERINGS.values() if offerings is None else offerings
    return [object_store_cost(usage, o) for o in chosen] + [kafka_cost(usage, kafka)]


# Agent ``stats()`` counters that feed ``Rates`` (segment_writer report, log_service stats).
_AGENT_COUNTERS = ("bytes_in", "client_bytes", "puts", "put_bytes", "gets", "get_bytes")
_AGENT_CROSS_ZONE = "cross_zone_bytes"


def rates_from_status(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    interval_s: float,
    stored_bytes: float,
) -> Rates:
    """Rates between two ``Cluster.status()`` snapshots taken ``interval_s`` apart.

    Agents are matched by ``agent_id``; one missing from ``before`` (new) counts from 0,
    one whose counter went down (restarted) counts from 0 again, one that reported an
    error is left out. A snapshot may carry ``metadata_stats`` (the metadata actor's
    ``stats()``): its journal PUTs are PUTs too. LISTs and DELETEs are not counted by the
    cluster; they stay 0 (DELETE is free on all three offerings).

    Args:
        before, after: the snapshots.
        interval_s: seconds between them.
        stored_bytes: bytes in the object store now (measured by the caller).

    Raises:
        InvalidRequest: ``interval_s`` is not positive.
    """
    if not interval_s > 0:
        raise InvalidRequest(f"interval_s must be > 0, got {interval_s}")
    sums = dict.fromkeys((*_AGENT_COUNTERS, _AGENT_CROSS_ZONE), 0.0)
    old = {a.get("agent_id"): a for a in before.get("agents", ()) if "error" not in a}
    for agent in after.get("agents", ()):
        if "error" in agent:
            continue
        prior = old.get(agent.get("agent_id"), {})
        for key in sums:
            sums[key] += _delta(prior.get(key), agent.get(key))
    meta_old = before.get("metadata_stats") or {}
    meta_new = after.get("metadata_stats") or {}
    journal_puts = _delta(meta_old.get("journal_puts"), meta_new.get("journal_puts"))
    journal_bytes = _delta(meta_old.get("journal_put_bytes"), meta_new.get("journal_put_bytes"))
    per_s = 1.0 / interval_s
    return Rates(
        produced_bytes_per_s=sums["bytes_in"] * per_s,
        consumed_bytes_per_s=sums["client_bytes"] * per_s,
        puts_per_s=(sums["puts"] + journal_puts) * per_s,
        put_bytes_per_s=(sums["put_bytes"] + journal_bytes) * per_s,
        gets_per_s=sums["gets"] * per_s,
        get_bytes_per_s=sums["get_bytes"] * per_s,
        cross_zone_bytes_per_s=sums[_AGENT_CROSS_ZONE] * per_s,
        stored_bytes=stored_bytes,
    )


def _delta(old: object, new: object) -> float:
    """A counter's growth; a counter that went down was reset (a restart), so it grew by
    its new value."""
    n = float(new) if isinstance(new, int | float) else 0.0
    o = float(old) if isinstance(old, int | float) else 0.0
    return n - o if n >= o else n
