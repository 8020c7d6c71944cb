"""The cost model (ray_stream/cost.py) on known counts, with hand-computed dollars."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from ray_stream.cost import (
    GIB,
    KAFKA_ON_AWS,
    OFFERINGS,
    SECONDS_PER_MONTH,
    KafkaAssumptions,
    Rates,
    Usage,
    kafka_cost,
    monthly_costs,
    object_store_cost,
    rates_from_status,
)
from ray_stream.errors import InvalidRequest

MIB = 2**20

# One month: 1M PUTs of 4 MiB, 2M GETs of 256 KiB, 10k LISTs, 5k DELETEs, 100 GiB kept,
# 10 GiB across zones; Kafka moves 1500 GiB produced and 3000 GiB consumed.
USAGE = Usage(
    puts=1_000_000,
    put_bytes=1_000_000 * 4 * MIB,
    gets=2_000_000,
    get_bytes=2_000_000 * 256 * 1024,
    lists=10_000,
    deletes=5_000,
    stored_bytes=100 * GIB,
    cross_zone_bytes=10 * GIB,
    produced_bytes=1500 * GIB,
    consumed_bytes=3000 * GIB,
)


def test_cost_s3_standard_prices_requests_storage_and_cross_zone_bytes():
    cost = object_store_cost(USAGE, OFFERINGS["s3-standard"])
    assert cost.storage_usd == pytest.approx(2.30)  # 100 GiB x $0.023
    # 1000k PUT x $0.005 + 2000k GET x $0.0004 + 10k LIST x $0.005; DELETE free
    assert cost.requests_usd == pytest.approx(5.00 + 0.80 + 0.05)
    assert cost.network_usd == pytest.approx(0.20)  # 10 GiB x ($0.01 out + $0.01 in)
    assert cost.total_usd == pytest.approx(8.35)


def test_cost_s3_express_charges_bytes_beyond_512_kib_per_request():
    cost = object_store_cost(USAGE, OFFERINGS["s3-express-one-zone"])
    assert cost.storage_usd == pytest.approx(11.00)  # 100 GiB x $0.11
    # 1000k PUT x $0.00113 + 2000k GET x $0.00003 + 10k LIST x $0.00113, plus the upload
    # charge on 3.5 MiB of each 4 MiB PUT: 3.5e6 MiB = 3417.96875 GiB x $0.0032 = 10.9375;
    # the 256 KiB GETs are under 512 KiB, so no retrieval charge.
    assert cost.requests_usd == pytest.approx(1.13 + 0.06 + 0.0113 + 10.9375)
    assert cost.network_usd == pytest.approx(0.20)


def test_cost_s3_express_retrieval_charge_applies_to_large_gets():
    usage = Usage(gets=1000, get_bytes=1000 * 4.5 * MIB)  # 4 MiB over per GET
    cost = object_store_cost(usage, OFFERINGS["s3-express-one-zone"])
    assert cost.requests_usd == pytest.approx(0.00003 + 4000 / 1024 * 0.0006)


def test_cost_gcs_standard_bills_cross_zone_once():
    cost = object_store_cost(USAGE, OFFERINGS["gcs-standard"])
    assert cost.storage_usd == pytest.approx(2.00)  # 100 GiB x $0.020
    assert cost.requests_usd == pytest.approx(5.85)  # Class A $0.005/1k, Class B $0.0004/1k
    assert cost.network_usd == pytest.approx(0.10)  # 10 GiB x $0.01


def test_cost_kafka_three_zones_rf3_crosses_zones_for_produce_replication_and_consume():
    cost = kafka_cost(USAGE)
    # produced 1500 GiB x (2/3 to the leader + 2 replica copies) = 4000 GiB,
    # consumed 3000 GiB x 2/3 from leaders = 2000 GiB; 6000 GiB x $0.02
    assert cost.network_usd == pytest.approx(120.00)
    assert cost.storage_usd == pytest.approx(24.00)  # 100 GiB x 3 replicas x $0.08 (gp3)
    assert cost.requests_usd == 0.0
    assert cost.name == "Kafka 3 zones RF=3"


def test_cost_kafka_follower_fetching_keeps_consumers_in_zone():
    cost = kafka_cost(USAGE, replace(KAFKA_ON_AWS, follower_fetching=True))
    assert cost.network_usd == pytest.approx(80.00)  # only the 4000 GiB of produce


def test_cost_kafka_disk_headroom_raises_storage():
    cost = kafka_cost(USAGE, replace(KAFKA_ON_AWS, disk_fill_ratio=0.5))
    assert cost.storage_usd == pytest.approx(48.00)


def test_cost_kafka_one_zone_moves_nothing_across_zones():
    cost = kafka_cost(USAGE, KafkaAssumptions(zones=1))
    assert cost.network_usd == 0.0


def test_cost_kafka_rejects_impossible_assumptions():
    with pytest.raises(InvalidRequest, match="disk_fill_ratio"):
        kafka_cost(USAGE, replace(KAFKA_ON_AWS, disk_fill_ratio=0.0))
    with pytest.raises(InvalidRequest, match="zones"):
        kafka_cost(USAGE, KafkaAssumptions(zones=0))


def test_cost_rates_one_put_per_second_is_13_14_dollars_a_month_on_s3():
    (s3, *_) = monthly_costs(Rates(puts_per_s=1.0))
    assert s3.name == "S3 Standard"
    assert s3.requests_usd == pytest.approx(2_628_000 / 1000 * 0.005)  # 730 h month
    assert s3.requests_usd == pytest.approx(13.14)


def test_cost_rates_one_gib_per_second_on_kafka_is_140k_a_month_cross_zone():
    *_, kafka = monthly_costs(Rates(produced_bytes_per_s=GIB))
    # 2,628,000 GiB x (2/3 + 2) x $0.02
    assert kafka.network_usd == pytest.approx(140_160.00)


def test_cost_monthly_costs_lists_each_offering_then_kafka():
    names = [c.name for c in monthly_costs(Rates())]
    assert names == [o.name for o in OFFERINGS.values()] + ["Kafka 3 zones RF=3"]
    assert SECONDS_PER_MONTH == 730 * 3600


def test_cost_every_price_has_a_date_and_a_source():
    for entry in [*OFFERINGS.values(), KAFKA_ON_AWS]:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.as_of)
        assert entry.source.startswith("https://")


def _agent(agent_id, **counters):
    return {"agent_id": agent_id, "zone": "a", **counters}


def test_cost_rates_from_status_diffs_counters_per_agent():
    before = {
        "agents": [
            _agent(1, puts=10, put_bytes=1000, gets=5, get_bytes=500, bytes_in=900),
            _agent(2, puts=50, put_bytes=5000, client_bytes=7000),  # restarts in between
        ],
        "metadata_stats": {"journal_puts": 3, "journal_put_bytes": 300},
    }
    after = {
        "agents": [
            _agent(1, puts=30, put_bytes=3000, gets=9, get_bytes=900, bytes_in=2900),
            _agent(2, puts=4, put_bytes=400, client_bytes=1000, cross_zone_bytes=200),
            _agent(3, puts=6, put_bytes=600),  # new: counts from 0
            {"agent_id": 4, "zone": "b", "error": "ActorDiedError"},
        ],
        "metadata_stats": {"journal_puts": 7, "journal_put_bytes": 700},
    }
    rates = rates_from_status(before, after, interval_s=2.0, stored_bytes=123.0)
    assert rates == Rates(
        produced_bytes_per_s=1000.0,  # 2000 / 2 s
        consumed_bytes_per_s=500.0,  # agent 2 restarted: 1000 since
        puts_per_s=(20 + 4 + 6 + 4) / 2,
        put_bytes_per_s=(2000 + 400 + 600 + 400) / 2,
        gets_per_s=2.0,
        get_bytes_per_s=200.0,
        cross_zone_bytes_per_s=100.0,
        stored_bytes=123.0,
    )


def test_cost_rates_from_status_rejects_a_zero_interval():
    with pytest.raises(InvalidRequest, match="interval_s"):
        rates_from_status({}, {}, interval_s=0.0, stored_bytes=0.0)
