"""Core Kafka handlers in-process: ApiVersions, Metadata, Produce, Fetch, ListOffsets,
InitProducerId, and the error mapping (no sockets).

Each test runs one event loop with the real agent core (``LogService``) over a
``MemoryStore`` and the real ``MetadataService`` (``tests/fakes.py`` ``HandlerHarness``);
every response is encoded and decoded again, so what is asserted is what a client would
read off the wire. The fetch path's metadata-call budget is counted through
``HandlerHarness.meta`` (a ``CountingMetadata`` around the service).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.types import BrokerInfo
from ray_stream.errors import (
    InvalidTopic,
    OffsetOutOfRange,
    RebalanceInProgress,
    StorageUnavailable,
    UnknownMemberId,
)
from ray_stream.kafka.errors_map import error_code
from ray_stream.kafka.handlers import partition_leader
from ray_stream.kafka.records import Record, decode_batch, encode_batch, split_batches
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, fetch_request, make_agent, run_handlers

NOW_MS = 1_700_000_000_000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), max_record_bytes=4096)


def batch(*values: bytes, **kwargs: Any) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS, **kwargs)


def metadata_request(*names: str, auto: bool = True) -> dict[str, Any]:
    return {
        "topics": [{"name": n, "topic_id": None} for n in names],
        "allow_auto_topic_creation": auto,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }


# ----------------------------------------------------------------------- ApiVersions
def test_handlers_api_versions_lists_every_served_range(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(
            ApiKey.API_VERSIONS, 3, {"client_software_name": "x", "client_software_version": "1"}
        )

    response = run_handlers(settings, scenario)
    assert response.error_code == ErrorCode.none
    served = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert served[ApiKey.FETCH] == (4, 17)
    assert served[ApiKey.PRODUCE] == (3, 11)


# -------------------------------------------------------------------------- Metadata
def test_handlers_metadata_unknown_topic_without_auto_create(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(ApiKey.METADATA, 12, metadata_request("nope"))

    topic = run_handlers(settings, scenario).topics[0]
    assert topic.error_code == ErrorCode.unknown_topic_or_partition
    assert topic.partitions == ()


def test_handlers_metadata_auto_creates_when_enabled_and_allowed(tmp_path):
    settings = Settings(data_dir=str(tmp_path), auto_create_topics=True, default_partitions=3)

    async def scenario(agent: HandlerHarness) -> Any:
        refused = await agent.call(ApiKey.METADATA, 12, metadata_request("a", auto=False))
        created = await agent.call(ApiKey.METADATA, 12, metadata_request("a"))
        return refused, created, await agent.meta.describe_topic("a")

    refused, created, info = run_handlers(settings, scenario)
    assert refused.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    assert created.topics[0].error_code == ErrorCode.none
    assert len(created.topics[0].partitions) == 3
    assert created.topics[0].topic_id == uuid.UUID(hex=info.topic_id)


def test_handlers_metadata_spreads_leaders_round_robin_over_agents(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 6)
        return await agent.call(ApiKey.METADATA, 12, metadata_request("t"))

    response = run_handlers(settings, scenario, brokers=3)
    assert sorted(b.node_id for b in response.brokers) == [0, 1, 2]
    leaders = [p.leader_id for p in response.topics[0].partitions]
    assert sorted(leaders) == [0, 0, 1, 1, 2, 2]
    assert all(leaders[i] != leaders[i + 1] for i in range(5))  # consecutive differ
    assert all(p.leader_epoch == -1 for p in response.topics[0].partitions)


def test_handlers_metadata_v0_empty_list_and_v1_null_mean_all_topics(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("x", 1)
        await agent.meta.create_topic("y", 2)
        v0 = await agent.call(ApiKey.METADATA, 0, {"topics": []})
        v1 = await agent.call(ApiKey.METADATA, 1, {"topics": None})
        v1_none = await agent.call(ApiKey.METADATA, 1, {"topics": []})
        return v0, v1, v1_none

    v0, v1, v1_none = run_handlers(settings, scenario)
    assert [t.name for t in v0.topics] == ["x", "y"]
    assert [t.name for t in v1.topics] == ["x", "y"]
    assert v1_none.topics == ()


def test_handlers_partition_leader_is_stable_and_total():
    brokers = [BrokerInfo(i, "h", 1) for i in range(4)]
    assert partition_leader("t", 5, brokers) == partition_leader("t", 5, brokers)
    assert {partition_leader("t", p, brokers) for p in range(4)} == {0, 1, 2, 3}
    assert partition_leader("t", 0, []) == -1


# --------------------------------------------------------------------------- Produce
def test_handlers_produce_then_fetch_round_trips_bytes_with_offsets(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        first = await agent.produce("t", 0, batch(b"a", b"b"))
        second = await agent.produce("t", 0, batch(b"c"))
        return first, second, await agent.fetch("t", 0, 0)

    first, second, fetched = run_handlers(settings, scenario)
    assert (first.error_code, first.base_offset) == (ErrorCode.none, 0)
    assert (second.error_code, second.base_offset) == (ErrorCode.none, 2)
    assert fetched.high_watermark == 3
    batches = split_batches(fetched.records)
    assert [r.offset for b in batches for r in decode_batch(b)] == [0, 1, 2]
    assert [r.value for b in batches for r in decode_batch(b)] == [b"a", b"b", b"c"]


def test_handlers_produce_rejects_a_corrupt_crc(settings):
    data = bytearray(batch(b"payload"))
    data[-1] ^= 0xFF

    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        response = await agent.produce("t", 0, bytes(data))
        await agent.backend.drain()
        latest = (await agent.meta.list_offsets([("t", 0, -1)]))[0]
        return response, latest, await agent.fetch("t", 0, 0)

    response, latest, fetched = run_handlers(settings, scenario)
    assert response.error_code == ErrorCode.corrupt_message
    assert response.base_offset == -1
    assert (latest.error, latest.offset) == (None, 0)  # nothing was committed
    assert (fetched.error_code, fetched.high_watermark, fetched.records) == (0, 0, b"")


def test_handlers_produce_corrupt_batch_refuses_its_partition_only(settings):
    corrupt = bytearray(batch(b"bad"))
    corrupt[-1] ^= 0xFF

    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 2)
        response = await agent.call(
            ApiKey.PRODUCE,
            9,
            {
                "transactional_id": None,
                "acks": -1,
                "timeout": 5000,
                "topic_data": [
                    {
                        "name": "t",
                        "partition_data": [
                            {"index": 0, "records": batch(b"good") + bytes(corrupt)},
                            {"index": 1, "records": batch(b"other")},
                        ],
                    }
                ],
            },
        )
        latest = await agent.meta.list_offsets([("t", 0, -1), ("t", 1, -1)])
        return response.responses[0].partition_responses, [a.offset for a in latest]

    parts, latest = run_handlers(settings, scenario)
    assert [(p.index, p.error_code, p.base_offset) for p in parts] == [
        (0, ErrorCode.corrupt_message, -1),
        (1, ErrorCode.none, 0),
    ]
    assert latest == [0, 1]  # partition 0's good batch was refused with its record set


def test_handlers_produce_rejects_garbage_records(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        return await agent.produce("t", 0, b"\x00" * 70)

    assert run_handlers(settings, scenario).error_code == ErrorCode.corrupt_message


def test_handlers_produce_size_limits(settings):
    big = batch(b"x" * 5000)  # over max_record_bytes=4096
    two = batch(b"y" * 2500) + batch(b"z" * 2500)  # each fits, together they do not

    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        return await agent.produce("t", 0, big), await agent.produce("t", 0, two)

    too_big, too_many = run_handlers(settings, scenario)
    assert too_big.error_code == ErrorCode.message_too_large
    assert too_many.error_code == ErrorCode.record_list_too_large


def test_handlers_produce_sends_all_partitions_in_one_backend_call(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 2)
        await agent.meta.create_topic("u", 1)
        response = await agent.call(
            ApiKey.PRODUCE,
            7,
            {
                "transactional_id": None,
                "acks": 1,
                "timeout": 1000,
                "topic_data": [
                    {
                        "name": "t",
                        "partition_data": [
                            {"index": 0, "records": batch(b"1")},
                            {"index": 1, "records": batch(b"2")},
                        ],
                    },
                    {
                        "name": "u",
                        "partition_data": [
                            {"index": 0, "records": batch(b"3")},
                            {"index": 5, "records": batch(b"4")},
                        ],
                    },
                ],
            },
        )
        return response, agent.produce_calls

    response, calls = run_handlers(settings, scenario)
    assert len(calls) == 1
    assert [(t, p) for t, p, _ in calls[0][0]] == [
        ("t", 0),
        ("t", 1),
        ("u", 0),
        ("u", 5),
    ]
    codes = {
        (t.name, p.index): p.error_code for t in response.responses for p in t.partition_responses
    }
    assert codes == {
        ("t", 0): 0,
        ("t", 1): 0,
        ("u", 0): 0,
        ("u", 5): ErrorCode.unknown_topic_or_partition,
    }


def test_handlers_produce_acks_zero_has_no_response_but_is_written(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        response = await agent.produce("t", 0, batch(b"fire"), acks=0)
        await agent.backend.drain()  # acks=0 is answered before the flush; wait it out
        return response, (await agent.meta.list_offsets([("t", 0, -1)]))[0].offset

    response, latest = run_handlers(settings, scenario)
    assert response is None
    assert latest == 1


def test_handlers_produce_idempotent_retry_is_acknowledged_once(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        init = await agent.call(
            ApiKey.INIT_PRODUCER_ID,
            4,
            {
                "transactional_id": None,
                "transaction_timeout": 60000,
                "producer_id": -1,
                "producer_epoch": -1,
            },
        )
        pid, epoch = init.producer_id, init.producer_epoch
        first = await agent.produce(
            "t", 0, batch(b"a", producer_id=pid, producer_epoch=epoch, base_sequence=0)
        )
        again = await agent.produce(
            "t", 0, batch(b"a", producer_id=pid, producer_epoch=epoch, base_sequence=0)
        )
        gap = await agent.produce(
            "t", 0, batch(b"c", producer_id=pid, producer_epoch=epoch, base_sequence=5)
        )
        latest = (await agent.meta.list_offsets([("t", 0, -1)]))[0].offset
        return init, first, again, gap, latest

    init, first, again, gap, latest = run_handlers(settings, scenario)
    assert init.error_code == ErrorCode.none
    assert init.producer_id >= 0
    assert first.base_offset == again.base_offset == 0
    assert again.error_code == ErrorCode.none
    assert gap.error_code == ErrorCode.out_of_order_sequence_number
    assert latest == 1


def test_handlers_produce_backend_failure_fails_only_that_request(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)

        async def broken(entries: Any, acks: int) -> Any:
            raise StorageUnavailable("PUT failed")

        agent.backend.produce = broken  # type: ignore[method-assign,assignment]
        return await agent.produce("t", 0, batch(b"a"))

    response = run_handlers(settings, scenario)
    assert response.error_code == ErrorCode.kafka_storage_error
    assert response.base_offset == -1


# ----------------------------------------------------------------------------- Fetch
def test_handlers_fetch_out_of_range_and_unknown_topic(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        await agent.produce("t", 0, batch(b"a"))
        return await agent.fetch("t", 0, 5), await agent.fetch("missing", 0, 0)

    out_of_range, unknown = run_handlers(settings, scenario)
    assert out_of_range.error_code == ErrorCode.offset_out_of_range
    assert unknown.error_code == ErrorCode.unknown_topic_or_partition


def test_handlers_fetch_passes_wait_and_sizes_to_the_backend(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        await agent.fetch("t", 0, 0, max_wait_ms=20, min_bytes=7)
        return agent.fetch_calls[-1]

    call = run_handlers(settings, scenario)
    assert call == {
        "requests": [("t", 0, 0, 1 << 20)],
        "max_wait_ms": 20,
        "min_bytes": 7,
        "max_bytes": 1 << 20,
        "client_zone": None,
    }


async def until_locating(agent: HandlerHarness, waiting: asyncio.Task[Any]) -> None:
    """Yield to the loop until the fetch ``waiting`` is inside its ``locate`` call."""
    for _ in range(1000):
        if agent.meta.calls.get("locate") or waiting.done():
            break
        await asyncio.sleep(0)
    for _ in range(10):  # let the call reach the service's long poll
        await asyncio.sleep(0)
    assert agent.meta.calls.get("locate") == 1
    assert not waiting.done()  # it is long-polling, not answered empty


def test_handlers_fetch_long_poll_is_woken_by_a_commit(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        agent.meta.reset()
        waiting = asyncio.create_task(agent.fetch("t", 0, 0, max_wait_ms=600_000))
        await until_locating(agent, waiting)
        await agent.produce("t", 0, batch(b"wake"))
        # Bounded far below max_wait: only the commit can have answered it in time.
        return await asyncio.wait_for(waiting, 10)

    result = run_handlers(settings, scenario)
    assert (result.error_code, result.high_watermark) == (ErrorCode.none, 1)
    assert [r.value for r in decode_batch(result.records)] == [b"wake"]


# ------------------------------------------------- Fetch: metadata calls per request
def fetch_partitions(topic: str, offsets: dict[int, int], *, max_wait_ms: int) -> dict[str, Any]:
    """A Fetch v11 request for several partitions of one topic (partition -> offset)."""
    request = fetch_request(topic, 0, 0, max_wait_ms, 1)
    template = request["topics"][0]["partitions"][0]
    request["topics"][0]["partitions"] = [
        template | {"partition": p, "fetch_offset": o} for p, o in offsets.items()
    ]
    return request


def test_handlers_fetch_of_eight_caught_up_partitions_costs_one_locate(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 8)
        for p in range(8):
            assert (await agent.produce("t", p, batch(b"%d" % p))).error_code == 0
        agent.meta.reset()
        response = await agent.call(
            ApiKey.FETCH, 11, fetch_partitions("t", dict.fromkeys(range(8), 1), max_wait_ms=50)
        )
        return response, agent.meta.per_request()

    response, calls = run_handlers(settings, scenario)
    parts = response.responses[0].partitions
    assert [(p.partition_index, p.error_code, p.high_watermark) for p in parts] == [
        (p, 0, 1) for p in range(8)
    ]
    assert all(p.records in (None, b"") for p in parts)  # nothing new: the long poll ran out
    assert sum(calls.values()) <= 2  # the budget
    assert calls == {"locate": 1}  # one for all 8 partitions, waiting inside it


def test_handlers_fetch_of_what_the_agent_just_wrote_costs_no_metadata_call(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        await agent.produce("t", 0, batch(b"a", b"b"))
        await agent.produce("t", 0, batch(b"c"))
        agent.meta.reset()
        fetched = await agent.fetch("t", 0, 0, max_wait_ms=500)
        return fetched, agent.meta.per_request()

    fetched, calls = run_handlers(settings, scenario)
    assert (fetched.error_code, fetched.high_watermark) == (ErrorCode.none, 3)
    values = [r.value for b in split_batches(fetched.records) for r in decode_batch(b)]
    assert values == [b"a", b"b", b"c"]
    assert calls == {}


def test_handlers_fetch_of_another_agents_data_costs_one_locate_then_none(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        other = make_agent(settings, agent.service, agent.store, node_id=1)
        results = await other.produce([("t", 0, batch(b"x", b"y")), ("t", 0, batch(b"z"))])
        assert [r.error for r in results] == [None, None]
        agent.meta.reset()
        first = await agent.fetch("t", 0, 0, max_wait_ms=500)
        first_calls = agent.meta.per_request()
        agent.meta.reset()
        second = await agent.fetch("t", 0, 0, max_wait_ms=500)
        return first, first_calls, second, agent.meta.per_request()

    first, first_calls, second, second_calls = run_handlers(settings, scenario)
    for fetched in (first, second):
        assert (fetched.error_code, fetched.high_watermark) == (ErrorCode.none, 3)
        values = [r.value for b in split_batches(fetched.records) for r in decode_batch(b)]
        assert values == [b"x", b"y", b"z"]
    assert first_calls == {"locate": 1}
    assert second_calls == {}  # the first locate taught the agent the locations


def test_handlers_fetch_v13_addresses_topics_by_id(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        info = await agent.meta.create_topic("t", 1)
        await agent.produce("t", 0, batch(b"id"))
        known = await agent.call(
            ApiKey.FETCH, 16, fetch_request(uuid.UUID(hex=info.topic_id), 0, 0, 0, 1)
        )
        unknown = await agent.call(ApiKey.FETCH, 16, fetch_request(uuid.uuid4(), 0, 0, 0, 1))
        return info, known, unknown

    info, known, unknown = run_handlers(settings, scenario)
    assert known.responses[0].topic_id == uuid.UUID(hex=info.topic_id)
    assert known.responses[0].partitions[0].error_code == ErrorCode.none
    assert decode_batch(known.responses[0].partitions[0].records)[0].value == b"id"
    assert unknown.responses[0].partitions[0].error_code == ErrorCode.unknown_topic_id


def test_handlers_fetch_with_a_session_id_we_never_issued(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        request = fetch_request("t", 0, 0, 0, 1) | {"session_id": 99, "session_epoch": 1}
        return await agent.call(ApiKey.FETCH, 11, request)

    assert run_handlers(settings, scenario).error_code == ErrorCode.fetch_session_id_not_found


# ----------------------------------------------------------------------- ListOffsets
def test_handlers_list_offsets_earliest_latest_max_and_by_time(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
        early = encode_batch([Record(b"a", timestamp_ms=1000)], now_ms=NOW_MS)
        late = encode_batch(
            [Record(b"b", timestamp_ms=2000), Record(b"c", timestamp_ms=3000)], now_ms=NOW_MS
        )
        await agent.produce("t", 0, early)
        await agent.produce("t", 0, late)
        response = await agent.call(
            ApiKey.LIST_OFFSETS,
            7,
            {
                "replica_id": -1,
                "isolation_level": 0,
                "topics": [
                    {
                        "name": "t",
                        "partitions": [
                            {"partition_index": 0, "current_leader_epoch": -1, "timestamp": ts}
                            for ts in (-2, -1, -3, -4, 1500, 9999)
                        ],
                    },
                    {
                        "name": "nope",
                        "partitions": [
                            {"partition_index": 0, "current_leader_epoch": -1, "timestamp": -1}
                        ],
                    },
                ],
            },
        )
        return response

    response = run_handlers(settings, scenario)
    got = [(p.offset, p.timestamp) for p in response.topics[0].partitions]
    assert got[0][0] == 0  # earliest
    assert got[1][0] == 3  # latest = high watermark
    assert got[2] == (2, 3000)  # max timestamp: last record
    assert got[3][0] == 0  # earliest-local = earliest
    assert got[4] == (1, 3000)  # first batch whose max timestamp >= 1500
    assert got[5] == (-1, -1)  # nothing that late
    assert response.topics[1].partitions[0].error_code == ErrorCode.unknown_topic_or_partition


# ------------------------------------------------------------------------ errors_map
def test_errors_map_maps_kinds_and_names():
    assert error_code(None) == ErrorCode.none
    assert error_code(OffsetOutOfRange("x")) == ErrorCode.offset_out_of_range
    assert error_code(InvalidTopic("x")) == ErrorCode.invalid_topic_exception
    assert error_code(StorageUnavailable("x")) == ErrorCode.kafka_storage_error
    assert error_code(KeyError("bug")) == ErrorCode.unknown_server_error

    class Wrapped(OffsetOutOfRange):  # how a RayTaskError subclasses the original
        pass

    assert error_code(Wrapped("x")) == ErrorCode.offset_out_of_range
    assert error_code(RebalanceInProgress("x")) == ErrorCode.rebalance_in_progress
    assert error_code(UnknownMemberId("x")) == ErrorCode.unknown_member_id


def test_handlers_cover_every_served_api(settings):
    from ray_stream.kafka.versions import SUPPORTED_VERSIONS

    async def scenario(agent: HandlerHarness) -> Any:
        return set(agent.handlers._dispatch)

    assert run_handlers(settings, scenario) == set(SUPPORTED_VERSIONS)
