"""Group handlers in-process: FindCoordinator, Join/Sync/Heartbeat/Leave, offsets,
List/Describe/DeleteGroups (the real MetadataService with its group service, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import Unavailable
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, run_handlers


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), max_record_bytes=4096)


# ---------------------------------------------------------------------------- groups
def test_handlers_find_coordinator_answers_this_agent_also_batched(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        v1 = await agent.call(ApiKey.FIND_COORDINATOR, 1, {"key": "g", "key_type": 0})
        v4 = await agent.call(
            ApiKey.FIND_COORDINATOR, 4, {"key_type": 0, "coordinator_keys": ["g1", "g2"]}
        )
        txn = await agent.call(
            ApiKey.FIND_COORDINATOR, 4, {"key_type": 1, "coordinator_keys": ["tx"]}
        )
        return v1, v4, txn

    v1, v4, txn = run_handlers(settings, scenario, brokers=3)
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

    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 2)
        c1 = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit("g1", 5))
        c2 = await agent.call(ApiKey.OFFSET_COMMIT, 2, commit("g2", 7))
        huge = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit("g1", 6, "x" * 5000))
        no_id = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit("", 1))
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
        listed = await agent.meta.list_groups()
        return c1, c2, huge, no_id, multi, single, listed

    c1, c2, huge, no_id, multi, single, listed = run_handlers(settings, scenario)
    assert c1.topics[0].partitions[0].error_code == ErrorCode.none
    assert c2.topics[0].partitions[0].error_code == ErrorCode.none
    assert huge.topics[0].partitions[0].error_code == ErrorCode.offset_metadata_too_large
    assert no_id.topics[0].partitions[0].error_code == ErrorCode.invalid_group_id
    assert sorted(g.group_id for g in listed) == ["g1", "g2"]  # the refused commit made none
    g1, g2 = multi.groups
    assert [(p.partition_index, p.committed_offset) for p in g1.topics[0].partitions] == [
        (0, 5),
        (1, -1),
    ]
    assert g1.topics[0].partitions[0].metadata == "m"
    assert [(p.partition_index, p.committed_offset) for p in g2.topics[0].partitions] == [(0, 7)]
    assert single.topics[0].partitions[0].committed_offset == 7


def test_handlers_group_lifecycle_join_sync_heartbeat_describe_leave_delete(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.meta.create_topic("t", 1)
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
        committed = await agent.call(
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
        before = await agent.meta.fetch_offsets("g")
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
        return (
            first,
            joined,
            sync,
            beat,
            stale,
            listed,
            described,
            busy,
            committed,
            before,
            left,
            deleted,
            offsets,
        )

    (
        first,
        joined,
        sync,
        beat,
        stale,
        listed,
        described,
        busy,
        committed,
        before,
        left,
        deleted,
        offsets,
    ) = run_handlers(settings, scenario)
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
    assert committed.topics[0].partitions[0].error_code == ErrorCode.none  # a member's commit
    assert before == {TopicPartition("t", 0): CommittedOffset(3, "", -1)}
    assert left.error_code == ErrorCode.none
    assert left.members[0].error_code == ErrorCode.none
    assert deleted.results[0].error_code == ErrorCode.none
    assert offsets == {}  # DeleteGroups also dropped the committed offsets


def test_handlers_group_service_down_means_coordinator_not_available(settings, monkeypatch):
    async def scenario(agent: HandlerHarness) -> Any:
        async def down(*args: Any, **kwargs: Any) -> Any:
            raise Unavailable("metadata actor restarting")

        monkeypatch.setattr(agent.meta, "heartbeat", down)  # the handlers share this object
        return await agent.call(
            ApiKey.HEARTBEAT,
            4,
            {"group_id": "g", "generation_id": 1, "member_id": "m", "group_instance_id": None},
        )

    assert run_handlers(settings, scenario).error_code == ErrorCode.coordinator_not_available


def test_handlers_find_coordinator_before_the_listener_is_registered(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        agent.backend.address = None
        return await agent.call(ApiKey.FIND_COORDINATOR, 3, {"key": "g", "key_type": 0})

    response = run_handlers(settings, scenario)
    assert (response.error_code, response.node_id) == (ErrorCode.coordinator_not_available, -1)
