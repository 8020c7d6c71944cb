"""The per-zone shared chunk cache (agent/log_service.py rule 5, agent/chunk_cache.py
rule 6): real in-process agents over one counting MemoryStore, no Ray.

What a user relies on here: however many agents of a zone read the same data, the object
store is asked once per chunk per zone (that is the cost the shared cache exists for);
a dead or slow owner costs a reader at most one bounded wait, never a failed read; and an
object that is gone is reported as gone, not hidden behind a store retry.

The writer is an agent outside the fleet (it never joins), so the segments it caches on
write are in no reader's ring: every read below is cold.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from ray_stream.agent.chunk_cache import Chunk
from ray_stream.agent.log_service import LogService
from ray_stream.config import Settings
from ray_stream.core.fleet import AgentRecord
from ray_stream.core.keys import SEGMENT_PREFIX
from ray_stream.errors import NotFound, Unavailable
from ray_stream.kafka.records import Record, decode_batch, encode_batch, split_batches
from ray_stream.storage.memory import MemoryStore
from tests.fakes import make_agent, make_meta

NOW_MS = 1_700_000_000_000
WRITER = 0
SEGMENTS = 12


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), cache_peer_timeout_ms=50)


class CountingStore(MemoryStore):
    """A MemoryStore that counts the reads of each segment object (``get_range`` reads
    through ``get``)."""

    def __init__(self) -> None:
        super().__init__()
        self.segment_gets: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def get(self, key: str) -> bytes:
        if key.startswith(SEGMENT_PREFIX):
            with self._count_lock:
                self.segment_gets[key] += 1
        return super().get(key)

    def segments(self) -> list[str]:
        return self.list(SEGMENT_PREFIX)


class Peers:
    """The agents' PeerLink: routes a chunk request to the owner's ``serve_chunk``."""

    def __init__(self) -> None:
        self.agents: dict[int, LogService] = {}
        self.calls: list[tuple[int, str, int]] = []

    async def fetch_chunk(self, agent_id: int, key: str, index: int) -> Chunk:
        self.calls.append((agent_id, key, index))
        return await self.agents[agent_id].serve_chunk(key, index)


class HangingPeers(Peers):
    """An owner that never answers (a stuck or overloaded agent)."""

    async def fetch_chunk(self, agent_id: int, key: str, index: int) -> Chunk:
        self.calls.append((agent_id, key, index))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class DeadPeers(Peers):
    """An owner whose calls fail (its actor died)."""

    async def fetch_chunk(self, agent_id: int, key: str, index: int) -> Chunk:
        self.calls.append((agent_id, key, index))
        raise Unavailable(f"agent-{agent_id} is dead")


class Fleet:
    """A writer outside the fleet plus readers that joined it, sharing one store."""

    def __init__(self, store: CountingStore, writer: LogService) -> None:
        self.store = store
        self.writer = writer
        self.readers: dict[int, LogService] = {}

    async def produce(self, count: int) -> None:
        """``count`` one-batch segments in partition t/0 (offsets 0..count-1)."""
        for i in range(count):
            await self.writer.produce([("t", 0, batch(f"v{i}".encode()))])

    def owner(self, key: str) -> int | None:
        """Chunk 0's owner, as the first reader computes it."""
        return next(iter(self.readers.values())).membership.owner(key, 0)


def batch(*values: bytes) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS)


def values(records: bytes | bytearray) -> list[bytes | None]:
    return [r.value for b in split_batches(records) for r in decode_batch(b)]


async def read_all(agent: LogService) -> Any:
    (result,) = await asyncio.wait_for(agent.fetch([("t", 0, 0, 1 << 20)]), 10)
    return result


def run(
    settings: Settings,
    scenario: Any,
    *,
    zones: dict[int, str],
    peers: dict[int, Peers] | None = None,
) -> Any:
    """``scenario(fleet)`` with readers ``zones`` (agent id -> zone) joined to the fleet;
    ``peers`` gives some readers their own PeerLink (default: one routing Peers)."""

    async def main() -> Any:
        store = CountingStore()
        service = make_meta(settings, store=store)
        writer = make_agent(settings, service, store, node_id=WRITER)
        fleet = Fleet(store, writer)
        shared = Peers()
        links = [shared, *(peers or {}).values()]
        for agent_id, zone in zones.items():
            link = (peers or {}).get(agent_id, shared)
            record = AgentRecord(agent_id, "127.0.0.1", 0, zone=zone)
            agent = make_agent(
                settings, service, store, node_id=agent_id, record=record, peers=link
            )
            for each in links:  # every link can reach every agent
                each.agents[agent_id] = agent
            await agent.join("127.0.0.1", 0)
            fleet.readers[agent_id] = agent
        for agent in fleet.readers.values():
            await agent.membership.refresh()  # every reader sees every other
        await service.create_topic("t", 1)
        try:
            return await scenario(fleet)
        finally:
            for agent in [writer, *fleet.readers.values()]:
                await agent.close()
            await service.close()

    return asyncio.run(main())


def expected() -> list[bytes]:
    return [f"v{i}".encode() for i in range(SEGMENTS)]


# ----------------------------------------------------------------- one GET per zone
def test_shared_cache_two_agents_of_a_zone_cost_one_get_per_chunk(settings):
    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(SEGMENTS)
        b, c = fleet.readers[1], fleet.readers[2]
        first, second = await read_all(b), await read_all(c)
        keys = fleet.store.segments()
        owned_by_b = sum(fleet.owner(k) == 1 for k in keys)
        return first, second, keys, dict(fleet.store.segment_gets), owned_by_b, b, c

    first, second, keys, gets, owned_by_b, b, c = run(settings, scenario, zones={1: "a", 2: "a"})
    assert values(first.records) == values(second.records) == expected()
    assert len(keys) == SEGMENTS
    assert gets == dict.fromkeys(keys, 1)  # as many GETs as one agent reading alone
    assert b.stats()["gets"] == owned_by_b  # each chunk was read by its owner
    assert c.stats()["gets"] == SEGMENTS - owned_by_b
    assert b.stats()["peer_chunks"] + c.stats()["peer_chunks"] == SEGMENTS
    assert b.stats()["served_chunks"] == c.stats()["peer_chunks"]


def test_shared_cache_three_concurrent_readers_of_a_zone_cost_one_get_per_chunk(settings):
    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(SEGMENTS)
        results = await asyncio.gather(*(read_all(a) for a in fleet.readers.values()))
        return results, fleet.store.segments(), dict(fleet.store.segment_gets)

    results, keys, gets = run(settings, scenario, zones={1: "a", 2: "a", 3: "a"})
    assert all(values(r.records) == expected() for r in results)
    assert gets == dict.fromkeys(keys, 1)


def test_shared_cache_costs_one_get_per_chunk_per_zone(settings):
    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(SEGMENTS)
        results = [await read_all(a) for a in fleet.readers.values()]
        rings = {i: a.membership.ring() for i, a in fleet.readers.items()}
        return results, fleet.store.segments(), dict(fleet.store.segment_gets), rings

    results, keys, gets, rings = run(settings, scenario, zones={1: "a", 2: "a", 3: "b", 4: "b"})
    assert all(values(r.records) == expected() for r in results)
    assert gets == dict.fromkeys(keys, 2)
    assert rings == {1: [1, 2], 2: [1, 2], 3: [3, 4], 4: [3, 4]}


def test_shared_cache_off_every_agent_reads_the_store_itself(settings):
    unshared = replace(settings, cache_shared=False)

    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(SEGMENTS)
        for agent in fleet.readers.values():
            await read_all(agent)
        return fleet.store.segments(), dict(fleet.store.segment_gets)

    keys, gets = run(unshared, scenario, zones={1: "a", 2: "a"})
    assert gets == dict.fromkeys(keys, 2)  # what the shared cache saves


def test_shared_cache_owner_serves_from_its_cache_or_the_store_never_a_peer(settings):
    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(1)
        (key,) = fleet.store.segments()
        owner = fleet.readers[1]
        chunk = await owner.serve_chunk(key, 0)  # even if agent 2 would own it
        again = await owner.serve_chunk(key, 0)
        return bytes(chunk) == bytes(again), dict(fleet.store.segment_gets), owner.stats()

    same, gets, stats = run(
        settings, scenario, zones={1: "a", 2: "a"}, peers={1: DeadPeers(), 2: DeadPeers()}
    )
    assert same
    assert list(gets.values()) == [1]  # the second serve came from its LRU
    assert stats["served_chunks"] == 2
    assert stats["peer_failures"] == 0


# ------------------------------------------------------------------- bad owners
def split_by_owner(fleet: Fleet) -> tuple[LogService, int, list[str]]:
    """(a reader, the other reader, the keys that other one owns): chunk 0 of the first
    segment decides who is the owner, so it owns at least one chunk."""
    keys = fleet.store.segments()
    owner_id = fleet.owner(keys[0])
    assert owner_id is not None
    (reader_id,) = set(fleet.readers) - {owner_id}
    return fleet.readers[reader_id], owner_id, [k for k in keys if fleet.owner(k) == owner_id]


@pytest.mark.parametrize("link", [HangingPeers, DeadPeers], ids=["slow", "dead"])
def test_shared_cache_a_bad_owner_costs_one_wait_then_the_store_is_read(settings, link):
    links = {1: link(), 2: link()}

    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(SEGMENTS)
        reader, owner_id, owned = split_by_owner(fleet)
        result = await read_all(reader)
        asked = list(links[reader.node_id].calls)
        return result, reader.stats(), owner_id, owned, asked

    result, stats, owner_id, owned, asked = run(
        settings, scenario, zones={1: "a", 2: "a"}, peers=links
    )
    assert values(result.records) == expected()
    assert result.error is None
    assert len(asked) == 1  # the owner is suspect after its first failure
    assert asked[0][0] == owner_id
    assert asked[0][1] in owned
    assert stats["peer_failures"] == 1
    assert stats["gets"] == SEGMENTS  # every chunk came from the store
    assert stats["peer_chunks"] == 0


def test_shared_cache_an_object_gone_at_the_owner_fails_the_partition(settings):
    links = {1: Peers(), 2: Peers()}

    async def scenario(fleet: Fleet) -> Any:
        await fleet.produce(1)
        reader, owner_id, (key,) = split_by_owner(fleet)
        fleet.store.delete(key)  # e.g. compaction removed it after the locate
        result = await read_all(reader)
        asked = links[reader.node_id].calls
        return result, reader.stats(), owner_id, key, asked, dict(fleet.store.segment_gets)

    result, stats, owner_id, key, asked, gets = run(
        settings, scenario, zones={1: "a", 2: "a"}, peers=links
    )
    assert isinstance(result.error, NotFound)
    assert result.records == b""
    assert asked == [(owner_id, key, 0)]
    assert gets == {key: 1}  # the owner's GET only: its answer was final, no store retry
    assert stats["peer_failures"] == 0  # gone is not a peer failure
