"""LogService, the agent core, in-process: real metadata service, memory store, no Ray.

What a user relies on here: produced batches come back with their offsets, the agent
answers fetches of what it knows without asking the metadata service (the one component
that cannot scale out), long polls cost one call, and a deleted-then-recreated topic
never serves the old topic's data.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ray_stream.config import Settings
from ray_stream.core.metadata_api import LocateRequest
from ray_stream.errors import CorruptData, NotFound, OffsetOutOfRange, UnknownTopicOrPartition
from ray_stream.kafka.records import Record, decode_batch, encode_batch, split_batches
from ray_stream.storage.memory import MemoryStore
from tests.fakes import CountingMetadata, make_agent, make_meta

NOW_MS = 1_700_000_000_000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def batch(*values: bytes) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS)


def values(records: bytes | bytearray) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.value) for b in split_batches(records) for r in decode_batch(b)]


def run(settings: Settings, scenario: Any, *, agents: int = 1) -> Any:
    """``scenario(service, counters, agents)`` with agents sharing one service and store;
    ``counters[i]`` counts agent ``i``'s metadata calls."""

    async def main() -> Any:
        store = MemoryStore()
        service = make_meta(settings, store=store)
        counters = [CountingMetadata(service) for _ in range(agents)]
        built = [make_agent(settings, c, store, node_id=i) for i, c in enumerate(counters)]
        try:
            return await scenario(service, counters, built)
        finally:
            for agent in built:
                await agent.close()
            await service.close()

    return asyncio.run(main())


def test_log_service_fetch_of_what_it_just_wrote_costs_no_metadata_call(settings):
    async def scenario(service, counters, agents) -> Any:
        (agent,), (calls,) = agents, counters
        await service.create_topic("t", 1)
        first = await agent.produce([("t", 0, batch(b"a", b"b")), ("t", 0, batch(b"c"))])
        calls.reset()
        (result,) = await agent.fetch([("t", 0, 0, 1 << 20)], max_wait_ms=500)
        return first, result, calls.per_request()

    first, result, calls = run(settings, scenario)
    assert [r.base_offset for r in first] == [0, 2]
    assert values(result.records) == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert result.high_watermark == 3
    assert calls == {}


def test_log_service_fetch_of_another_agents_data_costs_one_locate_then_none(settings):
    async def scenario(service, counters, agents) -> Any:
        reader, writer = agents
        await service.create_topic("t", 2)
        await writer.produce([("t", 1, batch(b"x")), ("t", 1, batch(b"y"))])
        counters[0].reset()
        (first,) = await reader.fetch([("t", 1, 0, 1 << 20)])
        after_first = counters[0].per_request()
        (second,) = await reader.fetch([("t", 1, 1, 1 << 20)])
        return first, second, after_first, counters[0].per_request()

    first, second, after_first, after_second = run(settings, scenario, agents=2)
    assert values(first.records) == [(0, b"x"), (1, b"y")]
    assert values(second.records) == [(1, b"y")]
    assert after_first == {"locate": 1}
    assert after_second == {"locate": 1}  # the second fetch was answered from the cache


def test_log_service_empty_long_poll_over_eight_partitions_is_one_call(settings):
    async def scenario(service, counters, agents) -> Any:
        reader, writer = agents
        await service.create_topic("t", 8)
        counters[0].reset()
        wanted = [("t", p, 0, 1 << 20) for p in range(8)]
        polling = asyncio.create_task(reader.fetch(wanted, max_wait_ms=30_000))
        await asyncio.sleep(0.05)
        await writer.produce([("t", 5, batch(b"wake"))])
        results = await asyncio.wait_for(polling, 10)  # woken by the commit, not the bound
        return results, counters[0].per_request()

    results, calls = run(settings, scenario, agents=2)
    assert [values(r.records) for r in results if r.records] == [[(0, b"wake")]]
    assert results[5].high_watermark == 1
    assert calls == {"locate": 1}


def test_log_service_long_poll_times_out_empty_with_one_call(settings):
    async def scenario(service, counters, agents) -> Any:
        (agent,) = agents
        await service.create_topic("t", 8)
        counters[0].reset()
        results = await agent.fetch([("t", p, 0, 1 << 20) for p in range(8)], max_wait_ms=20)
        return results, counters[0].per_request()

    results, calls = run(settings, scenario)
    assert [r.records for r in results] == [b""] * 8
    assert all(r.error is None and r.high_watermark == 0 for r in results)
    assert calls == {"locate": 1}


def test_log_service_fetch_errors_are_per_partition(settings):
    async def scenario(service, counters, agents) -> Any:
        (agent,) = agents
        await service.create_topic("t", 1)
        await agent.produce([("t", 0, batch(b"ok"))])
        return await agent.fetch(
            [("t", 0, 0, 1 << 20), ("t", 0, 5, 1 << 20), ("nope", 0, 0, 1 << 20)],
            max_wait_ms=10_000,
        )

    ok, out_of_range, unknown = run(settings, scenario)
    assert values(ok.records) == [(0, b"ok")]
    assert isinstance(out_of_range.error, OffsetOutOfRange)
    assert isinstance(unknown.error, UnknownTopicOrPartition)


def test_log_service_a_recreated_topic_never_serves_the_deleted_topics_data(settings):
    async def scenario(service, counters, agents) -> Any:
        cached, writer = agents
        await service.create_topic("t", 1)
        await cached.produce([("t", 0, batch(b"old"))])  # cached's location cache knows 0
        await asyncio.sleep(0)  # its catalog watch is running
        await service.delete_topic("t")
        await service.create_topic("t", 1)
        await writer.produce([("t", 0, batch(b"new"))])
        (result,) = await cached.fetch([("t", 0, 0, 1 << 20)])
        return result

    result = run(settings, scenario, agents=2)
    assert values(result.records) == [(0, b"new")]


def test_log_service_refuses_a_partitions_batches_together_when_one_is_corrupt(settings):
    bad = bytearray(batch(b"bad"))
    bad[-1] ^= 0xFF

    async def scenario(service, counters, agents) -> Any:
        (agent,) = agents
        await service.create_topic("t", 2)
        results = await agent.produce(
            [("t", 0, batch(b"good")), ("t", 0, bytes(bad)), ("t", 1, batch(b"other"))]
        )
        info = await service.describe_topic("t")
        return results, [p.high_watermark for p in info.partition_info]

    results, watermarks = run(settings, scenario)
    assert all(isinstance(r.error, CorruptData) for r in results[:2])
    assert results[2].error is None and results[2].base_offset == 0
    assert watermarks == [0, 1]  # nothing of partition 0 was written


def test_log_service_reports_the_time_of_each_write_stage(settings):
    async def scenario(service, counters, agents) -> Any:
        (agent,) = agents
        await service.create_topic("t", 1)
        for i in range(3):
            await agent.produce([("t", 0, batch(b"%d" % i))])
        return agent.stats()["stages_ms"]

    stages = run(settings, scenario)
    assert set(stages) == {"linger", "build", "put", "commit_wait", "commit", "produce_wait"}
    assert all(stage["calls"] == 3 for stage in stages.values())
    assert all(stage["p99"] >= stage["p50"] >= 0 for stage in stages.values())


def test_log_service_a_topic_recreated_during_a_long_poll_is_located_again(settings):
    """The cache answered one partition and a long poll waited for another when the topic
    was deleted and created again: the cached answer is asked again, never served."""

    async def scenario(service, counters, agents) -> Any:
        cached, writer = agents
        await service.create_topic("t", 2)
        await cached.produce([("t", 0, batch(b"old"))])
        polling = asyncio.create_task(
            cached.fetch(
                [("t", 0, 0, 1 << 20), ("t", 1, 0, 1 << 20)], max_wait_ms=30_000, min_bytes=1 << 20
            )
        )
        await asyncio.sleep(0.05)  # partition 0 came from the cache; the locate waits
        await service.delete_topic("t")
        await service.create_topic("t", 2)
        await writer.produce([("t", 0, batch(b"new"))])
        first, _ = await asyncio.wait_for(polling, 10)  # woken by the deletion
        (again,) = await cached.fetch([("t", 0, 0, 1 << 20)])
        return first, again

    first, again = run(settings, scenario, agents=2)
    assert (0, b"old") not in values(first.records)  # empty or the new topic's, never old
    assert values(again.records) == [(0, b"new")]


def test_log_service_a_missing_segment_fails_only_its_partition_and_is_forgotten(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "data"), cache_bytes=0)  # every read GETs

    async def scenario(service, counters, agents) -> Any:
        reader, writer = agents
        await service.create_topic("t", 2)
        await writer.produce([("t", 0, batch(b"gone")), ("t", 1, batch(b"kept"))])
        await writer.produce([("t", 1, batch(b"later"))])
        await reader.fetch([("t", 0, 0, 1 << 20)])  # the reader's cache learns partition 0
        (first_key,) = {
            r.segment_key
            for r in (await service.locate(LocateRequest((("t", 0, 0, 1 << 20),)))).batches(0)
        }
        reader.store.delete(first_key)
        counters[0].reset()
        gone, later = await reader.fetch([("t", 0, 0, 1 << 20), ("t", 1, 1, 1 << 20)])
        again = await reader.fetch([("t", 0, 0, 1 << 20)])
        return gone, later, again, counters[0].per_request()

    gone, later, (again,), calls = run(settings, scenario, agents=2)
    assert isinstance(gone.error, NotFound)
    assert values(later.records) == [(1, b"later")]
    assert isinstance(again.error, NotFound)  # asked again, not served from the cache
    assert calls == {"locate": 2}
