"""The fleet as values (core/fleet.py): the zone a client names, what it discovers, and
which agent of a zone owns a chunk.

What a user relies on here: a client that names its zone in ``client.id`` talks only to
agents of that zone (and to all of them when the zone is unknown or has none alive, never
to an error), groups never leak into each other, and a chunk's owner is the same on every
agent and moves as little as possible when the fleet changes.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ray_stream.core.fleet import DEFAULT_GROUP, AgentRecord, FleetView, chunk_owner, client_zone
from ray_stream.core.types import BrokerInfo

KEYS = [f"segments/{i:026d}.arrow" for i in range(400)]
CHUNKS = [(key, index) for key in KEYS for index in range(3)]  # 1200 chunks


def owners(members: list[int]) -> dict[tuple[str, int], int | None]:
    return {(key, index): chunk_owner(members, key, index) for key, index in CHUNKS}


def view(*agents: AgentRecord, version: int = 7) -> FleetView:
    return FleetView(version, agents)


def ids(records: list[AgentRecord]) -> list[int]:
    return [r.agent_id for r in records]


# ---------------------------------------------------------------------- client_zone
@pytest.mark.parametrize(
    ("client_id", "zone"),
    [
        ("ray_stream_az=a", "a"),
        ("warpstream_az=b", "b"),
        ("app=x,ray_stream_az=a", "a"),
        ("ray_stream_az=a,app=x", "a"),
        (" app = x , ray_stream_az = us-east-1a ", "us-east-1a"),
        ("ray_stream_az=,warpstream_az=c", "c"),  # an empty value is skipped
        ("warpstream_az=b,ray_stream_az=a", "b"),  # the first zone key wins
        ("a=b=c,ray_stream_az=z", "z"),
        ("foo,ray_stream_az=z", "z"),
    ],
)
def test_client_zone_reads_the_zone_pair_of_client_id(client_id, zone):
    assert client_zone(client_id) == zone


@pytest.mark.parametrize(
    "client_id",
    [
        None,
        "",
        "my-consumer",
        "ray_stream_az",
        "ray_stream_az=",
        "ray_stream_az=  ",
        "app=x,team=y",
        "a=b=c",
        "foo",
        ",,,",
        "=a",
        "zone=a",
        "x_ray_stream_az=a",
    ],
)
def test_client_zone_is_none_without_a_well_formed_zone_pair(client_id):
    assert client_zone(client_id) is None


# ------------------------------------------------------------------------- records
def test_agent_record_broker_carries_its_zone_as_rack():
    assert AgentRecord(3, "h", 9095, zone="a").broker == BrokerInfo(3, "h", 9095, "a")
    assert AgentRecord(3, "h", 9095).broker == BrokerInfo(3, "h", 9095, None)


def test_agent_record_serves_both_roles_unless_restricted():
    default = AgentRecord(1, "h", 1)
    consumer = AgentRecord(1, "h", 1, roles=frozenset({"consume"}))
    assert default.serves("produce")
    assert default.serves("consume")
    assert not consumer.serves("produce")
    assert consumer.serves("consume")


# ---------------------------------------------------------------------- discovery
FLEET = view(
    AgentRecord(4, "h", 4, zone="b"),
    AgentRecord(1, "h", 1, zone="a"),
    AgentRecord(2, "h", 2, zone="a"),
    AgentRecord(3, "h", 3, zone="b"),
    AgentRecord(5, "h", 5, zone="a", group="analytics"),
    AgentRecord(6, "h", 6, zone="c", group="analytics"),
    AgentRecord(7, "h", 7),
)


def test_fleet_discover_in_a_zone_lists_only_that_zones_agents():
    assert ids(FLEET.discover(DEFAULT_GROUP, "a")) == [1, 2]
    assert ids(FLEET.discover(DEFAULT_GROUP, "b")) == [3, 4]


def test_fleet_discover_without_a_zone_lists_the_whole_group_sorted():
    assert ids(FLEET.discover(DEFAULT_GROUP, None)) == [1, 2, 3, 4, 7]
    assert ids(FLEET.discover(DEFAULT_GROUP, "")) == [1, 2, 3, 4, 7]


def test_fleet_discover_falls_back_to_all_when_the_zone_has_no_live_agent():
    assert ids(FLEET.discover(DEFAULT_GROUP, "c")) == [1, 2, 3, 4, 7]  # c is another group's
    assert ids(FLEET.discover(DEFAULT_GROUP, "nowhere")) == [1, 2, 3, 4, 7]


def test_fleet_discover_never_crosses_groups():
    assert ids(FLEET.discover("analytics", "a")) == [5]
    assert ids(FLEET.discover("analytics", "b")) == [5, 6]  # b lives only in the default group
    assert ids(FLEET.discover("analytics", None)) == [5, 6]
    assert FLEET.discover("nobody", None) == []


def test_fleet_zone_and_zones_group_agents_by_zone():
    assert ids(FLEET.zone(DEFAULT_GROUP, "a")) == [1, 2]
    assert ids(FLEET.zone(DEFAULT_GROUP, "")) == [7]
    zones = FLEET.zones()
    assert {zone: ids(agents) for zone, agents in zones.items()} == {
        "a": [1, 2, 5],
        "b": [3, 4],
        "c": [6],
        "": [7],
    }


def test_fleet_get_finds_an_agent_by_id():
    assert FLEET.get(3) == AgentRecord(3, "h", 3, zone="b")
    assert FLEET.get(99) is None


# --------------------------------------------------------------------- chunk owner
def test_chunk_owner_is_deterministic_and_independent_of_member_order():
    first = owners([1, 2, 3, 4])
    assert owners([4, 3, 2, 1]) == first
    assert owners([2, 4, 1, 3]) == first
    assert set(first.values()) == {1, 2, 3, 4}


def test_chunk_owner_of_no_members_is_none():
    assert chunk_owner([], "segments/x.arrow", 0) is None


def test_chunk_owner_of_one_member_is_that_member():
    assert set(owners([9]).values()) == {9}


def test_chunk_owner_depends_on_the_chunk_index_not_only_the_key():
    by_key = {key: {chunk_owner([1, 2, 3], key, i) for i in range(8)} for key in KEYS[:50]}
    assert any(len(found) > 1 for found in by_key.values())


def test_chunk_owner_spreads_chunks_roughly_evenly():
    members = [1, 2, 3, 4, 5]
    counts = Counter(owners(members).values())
    share = len(CHUNKS) / len(members)  # 240
    assert set(counts) == set(members)
    assert all(0.75 * share <= n <= 1.25 * share for n in counts.values()), counts


def test_chunk_owner_when_an_agent_joins_only_the_chunks_it_wins_move():
    before, after = owners([1, 2, 3, 4]), owners([1, 2, 3, 4, 5])
    moved = [chunk for chunk in CHUNKS if before[chunk] != after[chunk]]
    assert all(after[chunk] == 5 for chunk in moved)
    assert moved == [chunk for chunk in CHUNKS if after[chunk] == 5]
    assert 0.75 * len(CHUNKS) / 5 <= len(moved) <= 1.25 * len(CHUNKS) / 5


def test_chunk_owner_when_an_agent_leaves_only_its_chunks_move():
    before, after = owners([1, 2, 3, 4, 5]), owners([1, 2, 4, 5])
    moved = [chunk for chunk in CHUNKS if before[chunk] != after[chunk]]
    assert moved == [chunk for chunk in CHUNKS if before[chunk] == 3]
    assert all(after[chunk] in {1, 2, 4, 5} for chunk in moved)
    assert len({after[chunk] for chunk in moved}) > 1  # its chunks spread over the rest
