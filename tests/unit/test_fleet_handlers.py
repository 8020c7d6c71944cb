"""Kafka handlers over a fleet with zones and agent groups restricted to roles (no
sockets): the real agent core and metadata service (``tests/fakes.py`` HandlerHarness).

What a user relies on here: a client that names its zone in ``client.id`` is given only
that zone's agents (with the zone as their rack), so it never pays for cross-zone
traffic; an unknown or malformed zone is no zone, not an error; and an agent of a group
that does not serve produce (or consume) refuses that role per partition with a
non-retriable error, instead of silently serving it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.fleet import AgentRecord
from ray_stream.kafka.records import Record, encode_batch
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, fetch_request, run_handlers

NOW_MS = 1_700_000_000_000
ZONES = {0: "a", 1: "a", 2: "b", 3: "b"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def batch(*values: bytes) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS)


def all_topics() -> dict[str, Any]:
    return {
        "topics": None,
        "allow_auto_topic_creation": False,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }


async def zoned(harness: HandlerHarness) -> None:
    """Agent 0 (the harness's) and peer 1 in zone a, peers 2 and 3 in zone b."""
    for agent_id in range(1, 4):
        record = AgentRecord(agent_id, "127.0.0.1", 9092 + agent_id, zone=ZONES[agent_id])
        await harness.service.agent_heartbeat(record, -1, 30.0)
    membership = harness.backend.membership
    membership.record = replace(membership.record, zone=ZONES[0])
    await membership.refresh()


def brokers(response: Any) -> list[tuple[int, str | None]]:
    return sorted((b.node_id, b.rack) for b in response.brokers)


def restrict(harness: HandlerHarness, *roles: str) -> None:
    membership = harness.backend.membership
    membership.record = replace(membership.record, roles=frozenset(roles))


# ----------------------------------------------------------------------- Metadata
def test_fleet_handlers_metadata_lists_only_the_clients_zone(settings):
    async def scenario(harness: HandlerHarness) -> Any:
        await zoned(harness)
        await harness.meta.create_topic("t", 6)
        a = await harness.call(ApiKey.METADATA, 12, all_topics(), client_id="ray_stream_az=a")
        b = await harness.call(
            ApiKey.METADATA, 12, all_topics(), client_id="app=x, warpstream_az=b"
        )
        return a, b

    a, b = run_handlers(settings, scenario)
    assert brokers(a) == [(0, "a"), (1, "a")]
    assert brokers(b) == [(2, "b"), (3, "b")]
    assert {p.leader_id for p in a.topics[0].partitions} == {0, 1}
    assert {p.leader_id for p in b.topics[0].partitions} == {2, 3}


@pytest.mark.parametrize(
    "client_id",
    [None, "", "consumer-1", "ray_stream_az=c", "ray_stream_az=", "ray_stream_az", "a=b=c,,,"],
)
def test_fleet_handlers_metadata_without_a_known_zone_lists_every_agent(settings, client_id):
    async def scenario(harness: HandlerHarness) -> Any:
        await zoned(harness)
        return await harness.call(ApiKey.METADATA, 12, all_topics(), client_id=client_id)

    response = run_handlers(settings, scenario)
    assert brokers(response) == [(0, "a"), (1, "a"), (2, "b"), (3, "b")]


def test_fleet_handlers_metadata_without_zones_has_no_racks(settings):
    async def scenario(harness: HandlerHarness) -> Any:
        return await harness.call(ApiKey.METADATA, 12, all_topics(), client_id="ray_stream_az=a")

    response = run_handlers(settings, scenario, brokers=3)
    assert brokers(response) == [(0, None), (1, None), (2, None)]


def test_fleet_handlers_fetch_counts_bytes_served_to_another_known_zone(settings):
    async def scenario(harness: HandlerHarness) -> Any:
        await zoned(harness)
        await harness.meta.create_topic("t", 1)
        await harness.produce("t", 0, batch(b"x" * 100))
        counted = []
        for client_id in ("ray_stream_az=a", "ray_stream_az=nowhere", "ray_stream_az=b"):
            fetched = await harness.call(ApiKey.FETCH, 11, fetch_values("t"), client_id=client_id)
            assert fetched.responses[0].partitions[0].error_code == ErrorCode.none
            counted.append(harness.backend.stats()["cross_zone_bytes"])
        return counted, harness.backend.stats()["client_bytes"]

    (same_zone, unknown_zone, other_zone), served = run_handlers(settings, scenario)
    assert same_zone == 0
    assert unknown_zone == 0
    assert 0 < other_zone == served // 3


# ------------------------------------------------------------------------- roles
def produce_values(topic: str, partitions: int) -> dict[str, Any]:
    return {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [
            {
                "name": topic,
                "partition_data": [
                    {"index": p, "records": batch(f"p{p}".encode())} for p in range(partitions)
                ],
            }
        ],
    }


def fetch_values(topic: str) -> dict[str, Any]:
    return fetch_request(topic, 0, 0, max_wait_ms=0, min_bytes=1)


def test_fleet_handlers_an_agent_without_produce_refuses_produce_per_partition(settings):
    async def scenario(harness: HandlerHarness) -> Any:
        await harness.meta.create_topic("t", 2)
        restrict(harness, "consume")
        produced = await harness.call(ApiKey.PRODUCE, 9, produce_values("t", 2))
        fetched = await harness.fetch("t", 0, 0)
        return produced, fetched, harness.produce_calls

    produced, fetched, produce_calls = run_handlers(settings, scenario)
    parts = produced.responses[0].partition_responses
    assert [(p.index, p.error_code) for p in parts] == [
        (0, ErrorCode.policy_violation),
        (1, ErrorCode.policy_violation),
    ]
    assert all(p.base_offset == -1 for p in parts)
    assert "produce" in parts[0].error_message
    assert produce_calls == []  # refused before the agent buffered anything
    assert fetched.error_code == ErrorCode.none  # it still serves consumers


def test_fleet_handlers_an_agent_without_consume_refuses_fetch_per_partition(settings):
    async def scenario(harness: HandlerHarness) -> Any:
        await harness.meta.create_topic("t", 1)
        restrict(harness, "produce")
        produced = await harness.produce("t", 0, batch(b"x"))
        fetched = await harness.fetch("t", 0, 0)
        return produced, fetched, harness.fetch_calls

    produced, fetched, fetch_calls = run_handlers(settings, scenario)
    assert produced.error_code == ErrorCode.none  # it still serves producers
    assert fetched.error_code == ErrorCode.policy_violation
    assert fetched.records in (None, b"")
    assert fetch_calls == []
