"""Kafka handlers driven in-process: requests in, decoded responses out (no sockets).

Each test runs one event loop with a real MetadataActor on a temp dir behind a
FakeBackend; every response is encoded and decoded again, so what is asserted is what a
client would read off the wire.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.types import BrokerInfo
from ray_stream.errors import InvalidTopic, OffsetOutOfRange, StorageUnavailable, Unavailable
from ray_stream.kafka.errors_map import error_code, group_error_code
from ray_stream.kafka.handlers import KafkaHandlers, partition_leader
from ray_stream.kafka.protocol import Request, build, encode_response, request_class
from ray_stream.kafka.records import Record, decode_batch, encode_batch, split_batches
from ray_stream.kafka.versions import ApiKey
from tests.fakes import FakeBackend, decode_response, make_meta

NOW_MS = 1_700_000_000_000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), max_record_bytes=4096)


class Agent:
    """One FakeBackend (optionally with peers) plus its handlers, inside a running loop."""

    def __init__(self, settings: Settings, *, brokers: int = 1) -> None:
        meta = make_meta(settings)
        self.backend = FakeBackend(settings, meta, node_id=0)
        self.backend.address = BrokerInfo(0, "127.0.0.1", 9092)
        self.backend.peers = [BrokerInfo(i, "127.0.0.1", 9092 + i) for i in range(1, brokers)]
        self.handlers = KafkaHandlers(self.backend)
        self.meta = meta

    async def call(self, api_key: int, version: int, values: dict[str, Any]) -> Any:
        body = build(request_class(api_key, version), values)
        request = Request(api_key, version, 11, "test-client", body)
        response = await self.handlers.handle(request, client_host="/127.0.0.1")
        if response is None:
            return None
        correlation_id, decoded = decode_response(
            api_key, version, encode_response(request, response)[4:]
        )
        assert correlation_id == 11
        return decoded

    async def produce(
        self, topic: str, partition: int, records: bytes, *, version: int = 9, acks: int = -1
    ) -> Any:
        response = await self.call(
            ApiKey.PRODUCE,
            version,
            {
                "transactional_id": None,
                "acks": acks,
                "timeout": 5000,
                "topic_data": [
                    {"name": topic, "partition_data": [{"index": partition, "records": records}]}
                ],
            },
        )
        return None if response is None else response.responses[0].partition_responses[0]

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        version: int = 11,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
    ) -> Any:
        response = await self.call(
            ApiKey.FETCH, version, _fetch_request(topic, partition, offset, max_wait_ms, min_bytes)
        )
        return response.responses[0].partitions[0]


def _fetch_request(
    topic: Any, partition: int, offset: int, max_wait_ms: int, min_bytes: int
) -> dict[str, Any]:
    return {
        "replica_id": -1,
        "max_wait": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "topic_id": topic,
                "partitions": [
                    {
                        "partition": partition,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "last_fetched_epoch": -1,
                        "log_start_offset": -1,
                        "partition_max_bytes": 1 << 20,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


def run(settings: Settings, scenario: Callable[[Agent], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        return await scenario(Agent(settings, **kwargs))

    return asyncio.run(main())


def batch(*values: bytes, **kwargs: Any) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS, **kwargs)


def metadata_request(*names: str, version: int = 12, auto: bool = True) -> dict[str, Any]:
    return {
        "topics": [{"name": n, "topic_id": None} for n in names],
        "allow_auto_topic_creation": auto,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }


# ----------------------------------------------------------------------- ApiVersions
def test_handlers_api_versions_lists_every_served_range(settings):
    async def scenario(agent: Agent) -> Any:
        return await agent.call(
            ApiKey.API_VERSIONS, 3, {"client_software_name": "x", "client_software_version": "1"}
        )

    response = run(settings, scenario)
    assert response.error_code == ErrorCode.none
    served = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert served[ApiKey.FETCH] == (4, 17)
    assert served[ApiKey.PRODUCE] == (3, 11)


# -------------------------------------------------------------------------- Metadata
def test_handlers_metadata_unknown_topic_without_auto_create(settings):
    async def scenario(agent: Agent) -> Any:
        return await agent.call(ApiKey.METADATA, 12, metadata_request("nope"))

    topic = run(settings, scenario).topics[0]
    assert topic.error_code == ErrorCode.unknown_topic_or_partition
    assert topic.partitions == ()


def test_handlers_metadata_auto_creates_when_enabled_and_allowed(tmp_path):
    settings = Settings(data_dir=str(tmp_path), auto_create_topics=True, default_partitions=3)

    async def scenario(agent: Agent) -> Any:
        refused = await agent.call(ApiKey.METADATA, 12, metadata_request("a", auto=False))
        created = await agent.call(ApiKey.METADATA, 12, metadata_request("a"))
        return refused, created, await agent.meta.describe_topic("a")

    refused, created, info = run(settings, scenario)
    assert refused.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    assert created.topics[0].error_code == ErrorCode.none
    assert len(created.topics[0].partitions) == 3
    assert created.topics[0].topic_id == uuid.UUID(hex=info.topic_id)


def test_handlers_metadata_spreads_leaders_round_robin_over_agents(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 6)
        return await agent.call(ApiKey.METADATA, 12, metadata_request("t"))

    response = run(settings, scenario, brokers=3)
    assert sorted(b.node_id for b in response.brokers) == [0, 1, 2]
    leaders = [p.leader_id for p in response.topics[0].partitions]
    assert sorted(leaders) == [0, 0, 1, 1, 2, 2]
    assert all(leaders[i] != leaders[i + 1] for i in range(5))  # consecutive differ
    assert all(p.leader_epoch == -1 for p in response.topics[0].partitions)


def test_handlers_metadata_v0_empty_list_and_v1_null_mean_all_topics(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("x", 1)
        await agent.meta.create_topic("y", 2)
        v0 = await agent.call(ApiKey.METADATA, 0, {"topics": []})
        v1 = await agent.call(ApiKey.METADATA, 1, {"topics": None})
        v1_none = await agent.call(ApiKey.METADATA, 1, {"topics": []})
        return v0, v1, v1_none

    v0, v1, v1_none = run(settings, scenario)
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
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        first = await agent.produce("t", 0, batch(b"a", b"b"))
        second = await agent.produce("t", 0, batch(b"c"))
        return first, second, await agent.fetch("t", 0, 0)

    first, second, fetched = run(settings, scenario)
    assert (first.error_code, first.base_offset) == (ErrorCode.none, 0)
    assert (second.error_code, second.base_offset) == (ErrorCode.none, 2)
    assert fetched.high_watermark == 3
    batches = split_batches(fetched.records)
    assert [r.offset for b in batches for r in decode_batch(b)] == [0, 1, 2]
    assert [r.value for b in batches for r in decode_batch(b)] == [b"a", b"b", b"c"]


def test_handlers_produce_rejects_a_corrupt_crc(settings):
    data = bytearray(batch(b"payload"))
    data[-1] ^= 0xFF

    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        return await agent.produce("t", 0, bytes(data)), agent.backend.produce_calls

    response, calls = run(settings, scenario)
    assert response.error_code == ErrorCode.corrupt_message
    assert calls == []  # nothing reached the agent


def test_handlers_produce_rejects_garbage_records(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        return await agent.produce("t", 0, b"\x00" * 70)

    assert run(settings, scenario).error_code == ErrorCode.corrupt_message


def test_handlers_produce_size_limits(settings):
    big = batch(b"x" * 5000)  # over max_record_bytes=4096
    two = batch(b"y" * 2500) + batch(b"z" * 2500)  # each fits, together they do not

    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        return await agent.produce("t", 0, big), await agent.produce("t", 0, two)

    too_big, too_many = run(settings, scenario)
    assert too_big.error_code == ErrorCode.message_too_large
    assert too_many.error_code == ErrorCode.record_list_too_large


def test_handlers_produce_sends_all_partitions_in_one_backend_call(settings):
    async def scenario(agent: Agent) -> Any:
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
        return response, agent.backend.produce_calls

    response, calls = run(settings, scenario)
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
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        response = await agent.produce("t", 0, batch(b"fire"), acks=0)
        return response, await agent.meta.list_offset("t", 0, -1)

    response, (latest, _) = run(settings, scenario)
    assert response is None
    assert latest == 1


def test_handlers_produce_idempotent_retry_is_acknowledged_once(settings):
    async def scenario(agent: Agent) -> Any:
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
        return init, first, again, gap, await agent.meta.list_offset("t", 0, -1)

    init, first, again, gap, (latest, _) = run(settings, scenario)
    assert init.error_code == ErrorCode.none
    assert init.producer_id >= 0
    assert first.base_offset == again.base_offset == 0
    assert again.error_code == ErrorCode.none
    assert gap.error_code == ErrorCode.out_of_order_sequence_number
    assert latest == 1


def test_handlers_produce_backend_failure_fails_only_that_request(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)

        async def broken(entries: Any, acks: int) -> Any:
            raise StorageUnavailable("PUT failed")

        agent.backend.produce = broken  # type: ignore[method-assign]
        return await agent.produce("t", 0, batch(b"a"))

    response = run(settings, scenario)
    assert response.error_code == ErrorCode.kafka_storage_error
    assert response.base_offset == -1


# ----------------------------------------------------------------------------- Fetch
def test_handlers_fetch_out_of_range_and_unknown_topic(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        await agent.produce("t", 0, batch(b"a"))
        return await agent.fetch("t", 0, 5), await agent.fetch("missing", 0, 0)

    out_of_range, unknown = run(settings, scenario)
    assert out_of_range.error_code == ErrorCode.offset_out_of_range
    assert unknown.error_code == ErrorCode.unknown_topic_or_partition


def test_handlers_fetch_passes_wait_and_sizes_to_the_backend(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        await agent.fetch("t", 0, 0, max_wait_ms=20, min_bytes=7)
        return agent.backend.fetch_calls[-1]

    call = run(settings, scenario)
    assert call == {
        "requests": [("t", 0, 0, 1 << 20)],
        "max_wait_ms": 20,
        "min_bytes": 7,
        "max_bytes": 1 << 20,
    }


def test_handlers_fetch_long_poll_is_woken_by_a_commit(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(agent.fetch("t", 0, 0, max_wait_ms=10_000))
        await asyncio.sleep(0.05)
        await agent.produce("t", 0, batch(b"wake"))
        result = await asyncio.wait_for(waiting, 5)
        return result, loop.time() - started

    result, elapsed = run(settings, scenario)
    assert result.high_watermark == 1
    assert result.records
    assert elapsed < 5  # answered by the commit, long before max_wait


def test_handlers_fetch_v13_addresses_topics_by_id(settings):
    async def scenario(agent: Agent) -> Any:
        info = await agent.meta.create_topic("t", 1)
        await agent.produce("t", 0, batch(b"id"))
        known = await agent.call(
            ApiKey.FETCH, 16, _fetch_request(uuid.UUID(hex=info.topic_id), 0, 0, 0, 1)
        )
        unknown = await agent.call(ApiKey.FETCH, 16, _fetch_request(uuid.uuid4(), 0, 0, 0, 1))
        return info, known, unknown

    info, known, unknown = run(settings, scenario)
    assert known.responses[0].topic_id == uuid.UUID(hex=info.topic_id)
    assert known.responses[0].partitions[0].error_code == ErrorCode.none
    assert decode_batch(known.responses[0].partitions[0].records)[0].value == b"id"
    assert unknown.responses[0].partitions[0].error_code == ErrorCode.unknown_topic_id


def test_handlers_fetch_with_a_session_id_we_never_issued(settings):
    async def scenario(agent: Agent) -> Any:
        request = _fetch_request("t", 0, 0, 0, 1) | {"session_id": 99, "session_epoch": 1}
        return await agent.call(ApiKey.FETCH, 11, request)

    assert run(settings, scenario).error_code == ErrorCode.fetch_session_id_not_found


# ----------------------------------------------------------------------- ListOffsets
def test_handlers_list_offsets_earliest_latest_max_and_by_time(settings):
    async def scenario(agent: Agent) -> Any:
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

    response = run(settings, scenario)
    got = [(p.offset, p.timestamp) for p in response.topics[0].partitions]
    assert got[0][0] == 0  # earliest
    assert got[1][0] == 3  # latest = high watermark
    assert got[2] == (2, 3000)  # max timestamp: last record
    assert got[3][0] == 0  # earliest-local = earliest
    assert got[4] == (1, 3000)  # first batch whose max timestamp >= 1500
    assert got[5] == (-1, -1)  # nothing that late
    assert response.topics[1].partitions[0].error_code == ErrorCode.unknown_topic_or_partition


# ---------------------------------------------------------------------- admin APIs
def test_handlers_create_list_delete_topics(settings):
    async def scenario(agent: Agent) -> Any:
        create = await agent.call(
            ApiKey.CREATE_TOPICS,
            7,
            {
                "topics": [
                    {
                        "name": "a",
                        "num_partitions": 4,
                        "replication_factor": -1,
                        "assignments": [],
                        "configs": [{"name": "retention.ms", "value": "1000"}],
                    },
                    {
                        "name": "bad name",
                        "num_partitions": 1,
                        "replication_factor": 1,
                        "assignments": [],
                        "configs": [],
                    },
                    {
                        "name": "d",
                        "num_partitions": -1,
                        "replication_factor": -1,
                        "assignments": [],
                        "configs": [],
                    },
                ],
                "timeout": 1000,
                "validate_only": False,
            },
        )
        again = await agent.call(
            ApiKey.CREATE_TOPICS,
            2,
            {
                "topics": [
                    {
                        "name": "a",
                        "num_partitions": 1,
                        "replication_factor": 1,
                        "assignments": [],
                        "configs": [],
                    }
                ],
                "timeout": 1000,
                "validate_only": False,
            },
        )
        grow = await agent.call(
            ApiKey.CREATE_PARTITIONS,
            3,
            {
                "topics": [
                    {"name": "a", "count": 6, "assignments": None},
                    {"name": "a", "count": 2, "assignments": None},
                ],
                "timeout": 1000,
                "validate_only": False,
            },
        )
        delete = await agent.call(
            ApiKey.DELETE_TOPICS,
            6,
            {
                "topics": [
                    {"name": "d", "topic_id": None},
                    {"name": None, "topic_id": uuid.uuid4()},
                ],
                "timeout": 1000,
            },
        )
        return (
            create,
            again,
            grow,
            delete,
            [t.name for t in await agent.meta.list_topics()],
            await agent.meta.describe_topic("a"),
        )

    create, again, grow, delete, names, info = run(settings, scenario)
    results = {t.name: t for t in create.topics}
    assert results["a"].error_code == ErrorCode.none
    assert results["a"].num_partitions == 4
    assert results["a"].topic_id == uuid.UUID(hex=info.topic_id)
    assert results["bad name"].error_code == ErrorCode.invalid_topic_exception
    assert results["d"].num_partitions == settings.default_partitions
    assert again.topics[0].error_code == ErrorCode.topic_already_exists
    assert [r.error_code for r in grow.results] == [ErrorCode.none, ErrorCode.invalid_partitions]
    assert [r.error_code for r in delete.responses] == [ErrorCode.none, ErrorCode.unknown_topic_id]
    assert names == ["a"]
    assert info.partitions == 6
    assert info.config == {"retention.ms": "1000"}


def test_handlers_describe_configs_topic_overrides_and_broker_defaults(settings):
    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 1, {"retention.ms": "5"})
        return await agent.call(
            ApiKey.DESCRIBE_CONFIGS,
            4,
            {
                "resources": [
                    {"resource_type": 2, "resource_name": "t", "configuration_keys": None},
                    {
                        "resource_type": 2,
                        "resource_name": "t",
                        "configuration_keys": ["cleanup.policy"],
                    },
                    {"resource_type": 4, "resource_name": "0", "configuration_keys": None},
                    {"resource_type": 2, "resource_name": "missing", "configuration_keys": None},
                ],
                "include_synonyms": False,
                "include_documentation": False,
            },
        )

    results = run(settings, scenario).results
    topic = {c.name: c for c in results[0].configs}
    assert topic["retention.ms"].value == "5"
    assert topic["retention.ms"].config_source == 1
    assert topic["cleanup.policy"].value == "delete"
    assert topic["cleanup.policy"].config_source == 5
    assert topic["max.message.bytes"].value == str(settings.max_record_bytes)
    assert [c.name for c in results[1].configs] == ["cleanup.policy"]
    assert {c.name: c.value for c in results[2].configs}["broker.id"] == "0"
    assert results[3].error_code == ErrorCode.unknown_topic_or_partition


def test_handlers_describe_cluster_lists_agents(settings):
    async def scenario(agent: Agent) -> Any:
        return await agent.call(
            ApiKey.DESCRIBE_CLUSTER,
            1,
            {"include_cluster_authorized_operations": False, "endpoint_type": 1},
        )

    response = run(settings, scenario, brokers=2)
    assert [(b.broker_id, b.port) for b in response.brokers] == [(0, 9092), (1, 9093)]
    assert response.cluster_id
    assert response.controller_id == 0


# ---------------------------------------------------------------------------- groups
def test_handlers_find_coordinator_answers_this_agent_also_batched(settings):
    async def scenario(agent: Agent) -> Any:
        v1 = await agent.call(ApiKey.FIND_COORDINATOR, 1, {"key": "g", "key_type": 0})
        v4 = await agent.call(
            ApiKey.FIND_COORDINATOR, 4, {"key_type": 0, "coordinator_keys": ["g1", "g2"]}
        )
        txn = await agent.call(
            ApiKey.FIND_COORDINATOR, 4, {"key_type": 1, "coordinator_keys": ["tx"]}
        )
        return v1, v4, txn

    v1, v4, txn = run(settings, scenario, brokers=3)
    assert (v1.error_code, v1.node_id, v1.port) == (ErrorCode.none, 0, 9092)
    assert [(c.key, c.node_id) for c in v4.coordinators] == [("g1", 0), ("g2", 0)]
    assert txn.coordinators[0].error_code == ErrorCode.invalid_request


def test_handlers_offset_commit_and_multi_group_fetch(settings):
    def commit(group: str, offset: int, metadata: str = "m") -> dict[str, Any]:
        return {
            "group_id": group,
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "group_instance_id": None,
            "topics": [
                {
                    "name": "t",
                    "partitions": [
                        {
                            "partition_index": 0,
                            "committed_offset": offset,
                            "committed_leader_epoch": -1,
                            "committed_metadata": metadata,
                        }
                    ],
                }
            ],
        }

    async def scenario(agent: Agent) -> Any:
        await agent.meta.create_topic("t", 2)
        c1 = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit("g1", 5))
        c2 = await agent.call(ApiKey.OFFSET_COMMIT, 2, commit("g2", 7))
        huge = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit("g1", 6, "x" * 5000))
        multi = await agent.call(
            ApiKey.OFFSET_FETCH,
            8,
            {
                "groups": [
                    {"group_id": "g1", "topics": [{"name": "t", "partition_indexes": [0, 1]}]},
                    {"group_id": "g2", "topics": None},
                ],
                "require_stable": False,
            },
        )
        single = await agent.call(
            ApiKey.OFFSET_FETCH,
            1,
            {"group_id": "g2", "topics": [{"name": "t", "partition_indexes": [0]}]},
        )
        return c1, c2, huge, multi, single

    c1, c2, huge, multi, single = run(settings, scenario)
    assert c1.topics[0].partitions[0].error_code == ErrorCode.none
    assert c2.topics[0].partitions[0].error_code == ErrorCode.none
    assert huge.topics[0].partitions[0].error_code == ErrorCode.offset_metadata_too_large
    g1, g2 = multi.groups
    assert [(p.partition_index, p.committed_offset) for p in g1.topics[0].partitions] == [
        (0, 5),
        (1, -1),
    ]
    assert g1.topics[0].partitions[0].metadata == "m"
    assert [(p.partition_index, p.committed_offset) for p in g2.topics[0].partitions] == [(0, 7)]
    assert single.topics[0].partitions[0].committed_offset == 7


def test_handlers_group_lifecycle_join_sync_heartbeat_describe_leave_delete(settings):
    async def scenario(agent: Agent) -> Any:
        join = {
            "group_id": "g",
            "session_timeout": 10000,
            "rebalance_timeout": 10000,
            "member_id": "",
            "group_instance_id": None,
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b"meta"}],
            "reason": None,
        }
        first = await agent.call(ApiKey.JOIN_GROUP, 9, join)  # v4+: MEMBER_ID_REQUIRED first
        joined = await agent.call(ApiKey.JOIN_GROUP, 9, join | {"member_id": first.member_id})
        sync = await agent.call(
            ApiKey.SYNC_GROUP,
            5,
            {
                "group_id": "g",
                "generation_id": joined.generation_id,
                "member_id": joined.member_id,
                "group_instance_id": None,
                "protocol_type": "consumer",
                "protocol_name": "range",
                "assignments": [{"member_id": joined.member_id, "assignment": b"assigned"}],
            },
        )
        beat = await agent.call(
            ApiKey.HEARTBEAT,
            4,
            {
                "group_id": "g",
                "generation_id": joined.generation_id,
                "member_id": joined.member_id,
                "group_instance_id": None,
            },
        )
        stale = await agent.call(
            ApiKey.HEARTBEAT,
            0,
            {"group_id": "g", "generation_id": 99, "member_id": joined.member_id},
        )
        listed = await agent.call(ApiKey.LIST_GROUPS, 4, {"states_filter": []})
        described = await agent.call(
            ApiKey.DESCRIBE_GROUPS, 5, {"groups": ["g"], "include_authorized_operations": False}
        )
        busy = await agent.call(ApiKey.DELETE_GROUPS, 2, {"groups_names": ["g"]})
        await agent.call(
            ApiKey.OFFSET_COMMIT,
            8,
            {
                "group_id": "g",
                "generation_id_or_member_epoch": joined.generation_id,
                "member_id": joined.member_id,
                "group_instance_id": None,
                "topics": [
                    {
                        "name": "t",
                        "partitions": [
                            {
                                "partition_index": 0,
                                "committed_offset": 3,
                                "committed_leader_epoch": -1,
                                "committed_metadata": "",
                            }
                        ],
                    }
                ],
            },
        )
        left = await agent.call(
            ApiKey.LEAVE_GROUP,
            5,
            {
                "group_id": "g",
                "members": [
                    {"member_id": joined.member_id, "group_instance_id": None, "reason": None}
                ],
            },
        )
        deleted = await agent.call(ApiKey.DELETE_GROUPS, 2, {"groups_names": ["g"]})
        offsets = await agent.meta.fetch_offsets("g")
        return first, joined, sync, beat, stale, listed, described, busy, left, deleted, offsets

    first, joined, sync, beat, stale, listed, described, busy, left, deleted, offsets = run(
        settings, scenario
    )
    assert first.error_code == ErrorCode.member_id_required
    assert first.member_id
    assert joined.error_code == ErrorCode.none
    assert joined.leader == joined.member_id
    assert [m.metadata for m in joined.members] == [b"meta"]
    assert (sync.error_code, sync.assignment) == (ErrorCode.none, b"assigned")
    assert beat.error_code == ErrorCode.none
    assert stale.error_code == ErrorCode.illegal_generation
    assert [(g.group_id, g.group_state) for g in listed.groups] == [("g", "Stable")]
    group = described.groups[0]
    assert (group.group_state, group.protocol_data) == ("Stable", "range")
    assert group.members[0].member_assignment == b"assigned"
    assert group.members[0].client_id == "test-client"
    assert group.members[0].client_host == "/127.0.0.1"
    assert busy.results[0].error_code == ErrorCode.non_empty_group
    assert left.error_code == ErrorCode.none
    assert left.members[0].error_code == ErrorCode.none
    assert deleted.results[0].error_code == ErrorCode.none
    assert offsets == {}  # DeleteGroups also dropped the committed offsets


def test_handlers_group_service_down_means_coordinator_not_available(settings):
    async def scenario(agent: Agent) -> Any:
        async def down(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable("metadata actor restarting")

        agent.meta.heartbeat = down  # the handlers share this object
        return await agent.call(
            ApiKey.HEARTBEAT,
            4,
            {"group_id": "g", "generation_id": 1, "member_id": "m", "group_instance_id": None},
        )

    assert run(settings, scenario).error_code == ErrorCode.coordinator_not_available


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
    assert group_error_code("REBALANCE_IN_PROGRESS") == ErrorCode.rebalance_in_progress
    assert group_error_code("NOT_A_REAL_ERROR") == ErrorCode.unknown_server_error
    assert group_error_code(None) == ErrorCode.none


def test_handlers_cover_every_served_api(settings):
    from ray_stream.kafka.versions import SUPPORTED_VERSIONS

    async def scenario(agent: Agent) -> Any:
        return set(agent.handlers._dispatch)

    assert run(settings, scenario) == set(SUPPORTED_VERSIONS)


def test_handlers_find_coordinator_before_the_listener_is_registered(settings):
    async def scenario(agent: Agent) -> Any:
        agent.backend.address = None
        return await agent.call(ApiKey.FIND_COORDINATOR, 3, {"key": "g", "key_type": 0})

    response = run(settings, scenario)
    assert (response.error_code, response.node_id) == (ErrorCode.coordinator_not_available, -1)
