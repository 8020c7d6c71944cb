"""``ray-stream status --cost`` (ray_stream/cost_cli.py) without Ray: its figures are the
cost model's on known counts, and the stored bytes are the segment objects' sizes."""

from __future__ import annotations

import json

import pytest

from ray_stream import cost_cli
from ray_stream.cli import build_parser
from ray_stream.cost import GIB, Rates, monthly_costs
from ray_stream.storage.local import LocalStore

MIB = 2**20

# Two snapshots 10 s apart: 40 segment PUTs of 8 MiB and 10 journal PUTs of 1000 bytes,
# 20 GETs of 4 MiB, 320 MiB produced, 640 MiB consumed, 64 MiB of it across zones.
BEFORE = {
    "agents": [
        {
            "agent_id": 1,
            "zone": "a",
            "puts": 100,
            "put_bytes": 100 * 8 * MIB,
            "gets": 50,
            "get_bytes": 50 * 4 * MIB,
            "bytes_in": 800 * MIB,
            "client_bytes": 1000 * MIB,
            "cross_zone_bytes": 0,
        }
    ],
    "metadata_stats": {"journal_puts": 10, "journal_put_bytes": 10_000},
}
AFTER = {
    "agents": [
        {
            "agent_id": 1,
            "zone": "a",
            "puts": 140,
            "put_bytes": 140 * 8 * MIB,
            "gets": 70,
            "get_bytes": 70 * 4 * MIB,
            "bytes_in": 1120 * MIB,
            "client_bytes": 1640 * MIB,
            "cross_zone_bytes": 64 * MIB,
        }
    ],
    "metadata_stats": {"journal_puts": 20, "journal_put_bytes": 20_000},
}
STORED = 1024 * GIB
RATES = Rates(
    produced_bytes_per_s=32 * MIB,
    consumed_bytes_per_s=64 * MIB,
    puts_per_s=5.0,
    put_bytes_per_s=(320 * MIB + 10_000) / 10,
    gets_per_s=2.0,
    get_bytes_per_s=8 * MIB,
    cross_zone_bytes_per_s=6.4 * MIB,
    stored_bytes=STORED,
)


def _report(**kw):
    return cost_cli.cost_report(
        BEFORE, AFTER, interval_s=10.0, stored_bytes=STORED, stored_how="test", **kw
    )


def test_cost_cli_json_figures_match_the_cost_model():
    report = json.loads(_report(as_json=True))
    expected = monthly_costs(RATES)
    got = report["monthly_usd"]
    assert [g["name"] for g in got] == [c.name for c in expected]
    for g, c in zip(got, expected, strict=True):
        assert g["storage_usd"] == pytest.approx(c.storage_usd)
        assert g["requests_usd"] == pytest.approx(c.requests_usd)
        assert g["network_usd"] == pytest.approx(c.network_usd)
        assert g["total_usd"] == pytest.approx(c.total_usd)
    assert report["rates"]["puts_per_s"] == pytest.approx(5.0)


def test_cost_cli_json_figures_match_hand_computed_dollars():
    by_name = {g["name"]: g for g in json.loads(_report(as_json=True))["monthly_usd"]}
    s3 = by_name["S3 Standard"]
    # 5 PUT/s x 2,628,000 s x $0.005/1k = 65.70; 2 GET/s -> 5,256,000 x $0.0004/1k = 2.1024
    assert s3["requests_usd"] == pytest.approx(67.8024)
    assert s3["storage_usd"] == pytest.approx(23.552)  # 1024 GiB x $0.023
    # 6.4 MiB/s x 2,628,000 s = 16,425 GiB across zones x $0.02
    assert s3["network_usd"] == pytest.approx(328.50)
    gcs = by_name["GCS Standard"]
    assert gcs["total_usd"] == pytest.approx(20.48 + 67.8024 + 164.25)
    kafka = by_name["Kafka 3 zones RF=3"]
    # produced 82,125 GiB x 8/3 = 219,000; consumed 164,250 GiB x 2/3 = 109,500; x $0.02
    assert kafka["network_usd"] == pytest.approx(6570.00)
    assert kafka["storage_usd"] == pytest.approx(245.76)  # 1024 GiB x 3 x $0.08


def test_cost_cli_table_prints_each_offerings_total():
    lines = _report().splitlines()
    for c in monthly_costs(RATES):
        (row,) = [line for line in lines if line.startswith(c.name + " ")]
        assert row.split()[-1] == f"{c.total_usd:,.2f}"
    assert any(line.startswith("S3 Standard ") and "419.85" in line for line in lines)
    assert any("6,815.76" in line for line in lines if line.startswith("Kafka"))
    assert any(
        line.startswith("prices: S3 Standard (us-east-1) as of 2025-04-10: https://")
        for line in lines
    )


def test_cost_cli_stored_bytes_sums_segment_object_sizes(tmp_path):
    store = LocalStore(str(tmp_path))
    for n, size in enumerate((10, 20, 30)):
        store.put(f"segments/{n:026d}.arrow", b"x" * size)
    store.put("journal/00000000000000000001.json", b"y" * 1000)  # not a segment
    stored, how = cost_cli._stored_bytes(f"file://{tmp_path}")
    assert stored == 60.0
    assert how == "sum of 3 segment object sizes"


def test_cost_cli_stored_bytes_extrapolates_from_a_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_cli, "STORED_SIZES_MAX", 2)
    store = LocalStore(str(tmp_path))
    for n, size in enumerate((10, 99, 99, 30, 99)):
        store.put(f"segments/{n:026d}.arrow", b"x" * size)
    stored, how = cost_cli._stored_bytes(f"file://{tmp_path}")
    assert stored == pytest.approx((10 + 30) / 2 * 5)  # keys 0 and 3 sampled (every 3rd)
    assert how == "5 segment objects x mean size of 2 sampled"


def test_cost_cli_stored_bytes_of_a_memory_store_are_not_measured():
    stored, how = cost_cli._stored_bytes("memory://cluster")
    assert stored == 0.0
    assert how.startswith("not measured")


def test_cost_cli_status_parser_takes_cost_and_sample_s():
    args = build_parser().parse_args(["status", "--cost", "--sample-s", "2"])
    assert (args.cost, args.sample_s, args.json) == (True, 2.0, False)
    plain = build_parser().parse_args(["status"])
    assert (plain.cost, plain.sample_s) == (False, None)  # 1 s for rates, 5 s with --cost
