"""Admin handlers in-process: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs, DescribeCluster (the real agent core and metadata service in-process,
``tests/fakes.py`` ``HandlerHarness``; no sockets)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, run_handlers


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), max_record_bytes=4096)


# ---------------------------------------------------------------------- admin APIs
def test_handlers_create_list_delete_topics(settings):
    async def scenario(agent: HandlerHarness) -> Any:
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

    create, again, grow, delete, names, info = run_handlers(settings, scenario)
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
    async def scenario(agent: HandlerHarness) -> Any:
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

    results = run_handlers(settings, scenario).results
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
    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(
            ApiKey.DESCRIBE_CLUSTER,
            1,
            {"include_cluster_authorized_operations": False, "endpoint_type": 1},
        )

    response = run_handlers(settings, scenario, brokers=2)
    assert [(b.broker_id, b.port) for b in response.brokers] == [(0, 9092), (1, 9093)]
    assert response.cluster_id
    assert response.controller_id == 0
