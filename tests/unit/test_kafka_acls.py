"""Authorization in the Kafka handlers, without Ray.

First the handlers in-process (``tests/fakes.HandlerHarness``: the real agent core and
metadata service; responses are encoded and decoded as a client reads them), with the
principal of the request's ``Peer`` chosen by the test: ``User:ANONYMOUS`` (what every
PLAINTEXT connection is until it authenticates) or a super-user. Then real clients
(confluent-kafka, kafka-python) over TCP to ``KafkaTestCluster`` listeners on 127.0.0.1,
as ``User:ANONYMOUS``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from ray_stream.kafka.context import ANONYMOUS, Peer
from ray_stream.kafka.records import Record, encode_batch
from ray_stream.kafka.versions import ApiKey
from tests.fakes import HandlerHarness, KafkaTestCluster, fetch_request, run_handlers

ADMIN = "User:admin"
T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
ALLOW, DENY = Permission.ALLOW, Permission.DENY
AUTHZ_TOPIC = ErrorCode.topic_authorization_failed
AUTHZ_GROUP = ErrorCode.group_authorization_failed
AUTHZ_CLUSTER = ErrorCode.cluster_authorization_failed


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), authorizer="acl", super_users=(ADMIN,))


def acl(name, op, *, rtype=T, perm=ALLOW, who=ANONYMOUS, pattern=PatternType.LITERAL):
    return AclBinding(rtype, name, pattern, who, "*", op, perm)


def as_(principal: str) -> Peer:
    return Peer(host="/127.0.0.1", principal=principal)


async def grant(agent: HandlerHarness, *bindings: AclBinding) -> None:
    """Store ACLs and make this agent see them now (as an ACL request through it would)."""
    await agent.service.create_acls(list(bindings))
    await agent.backend.acls.refresh()


def batch(*values: bytes) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=1_700_000_000_000)


async def produce(agent: HandlerHarness, topic: str, *, peer: Peer | None = None) -> Any:
    values = {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 0, "records": batch(b"v")}]}],
    }
    response = await agent.call(ApiKey.PRODUCE, 9, values, peer=peer)
    return response.responses[0].partition_responses[0]


async def high_watermark(agent: HandlerHarness, topic: str) -> int:
    (answer,) = await agent.service.list_offsets([(topic, 0, -1)])
    return answer.offset


def metadata(*names: str, ops: bool = False) -> dict[str, Any]:
    return {
        "topics": [{"name": n, "topic_id": None} for n in names] if names else None,
        "allow_auto_topic_creation": True,
        "include_cluster_authorized_operations": ops,
        "include_topic_authorized_operations": ops,
    }


# ------------------------------------------------------------------------ produce
def test_acl_produce_without_write_is_refused_and_writes_nothing(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("orders", 1)
        refused = await produce(agent, "orders")
        written = await high_watermark(agent, "orders")
        await grant(agent, acl("orders", Operation.WRITE))
        accepted = await produce(agent, "orders")
        return refused, written, accepted, agent.produce_calls

    refused, written, accepted, calls = run_handlers(settings, scenario)
    assert refused.error_code == AUTHZ_TOPIC
    assert written == 0
    assert accepted.error_code == ErrorCode.none
    assert len(calls) == 1  # the refused request never reached the backend


def test_acl_deny_beats_allow_and_super_user_bypasses(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("orders", 1)
        await grant(
            agent,
            acl("orders", Operation.ALL),
            acl("ord", Operation.WRITE, perm=DENY, pattern=PatternType.PREFIXED),
        )
        return await produce(agent, "orders"), await produce(agent, "orders", peer=as_(ADMIN))

    anonymous, admin = run_handlers(settings, scenario)
    assert anonymous.error_code == AUTHZ_TOPIC
    assert admin.error_code == ErrorCode.none


def test_acl_authorizer_off_allows_everything_as_before(tmp_path):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("orders", 1)
        return await produce(agent, "orders")

    assert run_handlers(Settings(data_dir=str(tmp_path)), scenario).error_code == ErrorCode.none


# ----------------------------------------------------------------------- metadata
def test_acl_metadata_hides_topics_without_describe(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        for name in ("visible", "hidden"):
            await agent.service.create_topic(name, 1)
        await grant(agent, acl("visible", Operation.READ))
        listed = await agent.call(ApiKey.METADATA, 10, metadata(ops=True))  # v10: cluster ops
        named = await agent.call(ApiKey.METADATA, 12, metadata("hidden", "missing"))
        return listed, named

    listed, named = run_handlers(settings, scenario)
    assert [t.name for t in listed.topics] == ["visible"]
    read_describe = (1 << Operation.READ) | (1 << Operation.DESCRIBE)
    assert listed.topics[0].topic_authorized_operations == read_describe
    assert listed.cluster_authorized_operations == 0
    # existing or not, the same answer: nothing leaks
    assert [(t.name, t.error_code) for t in named.topics] == [
        ("hidden", AUTHZ_TOPIC),
        ("missing", AUTHZ_TOPIC),
    ]


def test_acl_metadata_auto_create_needs_create(settings):
    settings = replace(settings, auto_create_topics=True)

    async def scenario(agent: HandlerHarness) -> Any:
        await grant(agent, acl("new", Operation.DESCRIBE), acl("new2", Operation.DESCRIBE))
        await grant(agent, acl("new2", Operation.CREATE))
        answer = await agent.call(ApiKey.METADATA, 12, metadata("new", "new2"))
        return answer, [t.name for t in await agent.service.list_topics()]

    answer, created = run_handlers(settings, scenario)
    assert [t.error_code for t in answer.topics] == [AUTHZ_TOPIC, ErrorCode.none]
    assert created == ["new2"]


# ------------------------------------------------------------------ fetch/offsets
def test_acl_fetch_and_list_offsets_need_read_and_describe(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("t", 1)
        fetch = await agent.call(ApiKey.FETCH, 11, fetch_request("t", 0, 0, 0, 1))
        offsets = await agent.call(
            ApiKey.LIST_OFFSETS,
            5,
            {
                "replica_id": -1,
                "isolation_level": 0,
                "topics": [{"name": "t", "partitions": [{"partition_index": 0, "timestamp": -1}]}],
            },
        )
        await grant(agent, acl("t", Operation.READ))
        fetch_ok = await agent.call(ApiKey.FETCH, 11, fetch_request("t", 0, 0, 0, 1))
        return fetch, offsets, fetch_ok

    fetch, offsets, fetch_ok = run_handlers(settings, scenario)
    assert fetch.responses[0].partitions[0].error_code == AUTHZ_TOPIC
    assert offsets.topics[0].partitions[0].error_code == AUTHZ_TOPIC
    assert fetch_ok.responses[0].partitions[0].error_code == ErrorCode.none


def test_acl_init_producer_id_needs_idempotent_write_or_write_on_a_topic(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        values = {"transactional_id": None, "transaction_timeout": 60000}
        refused = await agent.call(ApiKey.INIT_PRODUCER_ID, 4, values)
        await grant(agent, acl("some-topic", Operation.WRITE))
        return refused, await agent.call(ApiKey.INIT_PRODUCER_ID, 4, values)

    refused, accepted = run_handlers(settings, scenario)
    assert refused.error_code == AUTHZ_CLUSTER
    assert accepted.error_code == ErrorCode.none


# -------------------------------------------------------------------------- admin
def test_acl_admin_apis_need_create_delete_alter_describe_configs(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("t", 1)
        create = await agent.call(
            ApiKey.CREATE_TOPICS,
            7,
            {
                "topics": [
                    {
                        "name": "n",
                        "num_partitions": 1,
                        "replication_factor": 1,
                        "assignments": [],
                        "configs": [],
                    }
                ],
                "timeout": 5000,
                "validate_only": False,
            },
        )
        delete = await agent.call(ApiKey.DELETE_TOPICS, 5, {"topic_names": ["t"], "timeout": 5000})
        parts = await agent.call(
            ApiKey.CREATE_PARTITIONS,
            3,
            {
                "topics": [{"name": "t", "count": 2, "assignments": None}],
                "timeout": 5000,
                "validate_only": False,
            },
        )
        configs = await agent.call(
            ApiKey.DESCRIBE_CONFIGS,
            4,
            {
                "resources": [
                    {"resource_type": 2, "resource_name": "t", "configuration_keys": None},
                    {"resource_type": 4, "resource_name": "0", "configuration_keys": None},
                ],
                "include_synonyms": False,
                "include_documentation": False,
            },
        )
        topics = [t.name for t in await agent.service.list_topics()]
        return create, delete, parts, configs, topics

    create, delete, parts, configs, topics = run_handlers(settings, scenario)
    assert create.topics[0].error_code == AUTHZ_TOPIC
    assert delete.responses[0].error_code == AUTHZ_TOPIC
    assert parts.results[0].error_code == AUTHZ_TOPIC
    assert [r.error_code for r in configs.results] == [AUTHZ_TOPIC, AUTHZ_CLUSTER]
    assert topics == ["t"]


# ------------------------------------------------------------------------- groups
def test_acl_group_apis_need_the_group_and_topic_acls(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await agent.service.create_topic("t", 1)
        find = await agent.call(ApiKey.FIND_COORDINATOR, 3, {"key": "g", "key_type": 0})
        join = await agent.call(
            ApiKey.JOIN_GROUP,
            5,
            {
                "group_id": "g",
                "session_timeout": 10000,
                "rebalance_timeout": 10000,
                "member_id": "",
                "group_instance_id": None,
                "protocol_type": "consumer",
                "protocols": [{"name": "range", "metadata": b""}],
            },
        )
        commit_values = {
            "group_id": "g",
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "group_instance_id": None,
            "topics": [
                {
                    "name": "t",
                    "partitions": [
                        {
                            "partition_index": 0,
                            "committed_offset": 0,
                            "committed_leader_epoch": -1,
                            "committed_metadata": "",
                        }
                    ],
                }
            ],
        }
        commit_no_group = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit_values)
        await grant(agent, acl("g", Operation.READ, rtype=G))
        commit_no_topic = await agent.call(ApiKey.OFFSET_COMMIT, 8, commit_values)
        described = await agent.call(
            ApiKey.DESCRIBE_GROUPS,
            5,
            {"groups": ["g", "other"], "include_authorized_operations": True},
        )
        listed = await agent.call(ApiKey.LIST_GROUPS, 4, {"states_filter": []})
        stored = await agent.service.fetch_offsets("g")
        return find, join, commit_no_group, commit_no_topic, described, listed, stored

    find, join, no_group, no_topic, described, listed, stored = run_handlers(settings, scenario)
    assert find.error_code == AUTHZ_GROUP
    assert join.error_code == AUTHZ_GROUP
    assert no_group.topics[0].partitions[0].error_code == AUTHZ_GROUP
    assert no_topic.topics[0].partitions[0].error_code == AUTHZ_TOPIC
    assert stored == {}
    g, other = described.groups
    assert g.error_code == ErrorCode.none
    assert g.authorized_operations == (1 << Operation.READ) | (1 << Operation.DESCRIBE)
    assert other.error_code == AUTHZ_GROUP
    assert listed.error_code == ErrorCode.none


# ---------------------------------------------------------------------- ACL APIs
CREATE = {
    "creations": [
        {
            "resource_type": 2,
            "resource_name": "orders",
            "resource_pattern_type": 3,
            "principal": "User:alice",
            "host": "*",
            "operation": 4,
            "permission_type": 3,
        },
        {
            "resource_type": 2,
            "resource_name": "x",
            "resource_pattern_type": 3,
            "principal": "alice",  # not a principal: this one alone fails
            "host": "*",
            "operation": 4,
            "permission_type": 3,
        },
    ]
}
ANY_FILTER = {
    "resource_type_filter": 1,
    "resource_name_filter": None,
    "pattern_type_filter": 1,
    "principal_filter": None,
    "host_filter": None,
    "operation": 1,
    "permission_type": 1,
}


def test_acl_apis_need_cluster_alter_and_describe(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        created = await agent.call(ApiKey.CREATE_ACLS, 3, CREATE)
        described = await agent.call(ApiKey.DESCRIBE_ACLS, 3, ANY_FILTER)
        deleted = await agent.call(ApiKey.DELETE_ACLS, 3, {"filters": [ANY_FILTER]})
        return created, described, deleted, await agent.service.describe_acls(AclFilter())

    created, described, deleted, stored = run_handlers(settings, scenario)
    assert [r.error_code for r in created.results] == [AUTHZ_CLUSTER, AUTHZ_CLUSTER]
    assert described.error_code == AUTHZ_CLUSTER
    assert described.resources == ()
    assert deleted.filter_results[0].error_code == AUTHZ_CLUSTER
    assert stored == []


def test_acl_apis_create_describe_delete_as_a_super_user(settings):
    admin = as_(ADMIN)

    async def scenario(agent: HandlerHarness) -> Any:
        created = await agent.call(ApiKey.CREATE_ACLS, 3, CREATE, peer=admin)
        described = await agent.call(ApiKey.DESCRIBE_ACLS, 1, ANY_FILTER, peer=admin)
        deleted = await agent.call(ApiKey.DELETE_ACLS, 2, {"filters": [ANY_FILTER]}, peer=admin)
        return created, described, deleted, await agent.service.describe_acls(AclFilter())

    created, described, deleted, stored = run_handlers(settings, scenario)
    assert [r.error_code for r in created.results] == [ErrorCode.none, ErrorCode.invalid_request]
    assert "principal" in created.results[1].error_message
    (resource,) = described.resources
    assert (resource.resource_type, resource.resource_name) == (2, "orders")
    assert [(a.principal, a.operation, a.permission_type) for a in resource.acls] == [
        ("User:alice", 4, 3)
    ]
    assert [m.principal for m in deleted.filter_results[0].matching_acls] == ["User:alice"]
    assert stored == []


def test_acl_apis_answer_security_disabled_when_the_authorizer_is_off(tmp_path):
    async def scenario(agent: HandlerHarness) -> Any:
        return await agent.call(ApiKey.DESCRIBE_ACLS, 3, ANY_FILTER)

    answer = run_handlers(Settings(data_dir=str(tmp_path)), scenario)
    assert answer.error_code == ErrorCode.security_disabled


def test_acl_cluster_acl_grants_acl_management(settings):
    async def scenario(agent: HandlerHarness) -> Any:
        await grant(agent, acl(CLUSTER_NAME, Operation.ALTER, rtype=C))
        created = await agent.call(ApiKey.CREATE_ACLS, 3, CREATE)
        described = await agent.call(ApiKey.DESCRIBE_ACLS, 3, ANY_FILTER)  # implied by ALTER
        return created, described

    created, described = run_handlers(settings, scenario)
    assert created.results[0].error_code == ErrorCode.none
    assert described.error_code == ErrorCode.none
    assert len(described.resources) == 2


# ------------------------------------------------------------ real clients, no Ray
confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import KafkaError, KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import (  # noqa: E402
    AclBinding as KafkaAclBinding,
)
from confluent_kafka.admin import (  # noqa: E402
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
)
from confluent_kafka.admin import (  # noqa: E402
    ResourceType as KafkaResourceType,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    data = tmp_path_factory.mktemp("acl-cluster")
    settings = Settings(data_dir=str(data), authorizer="acl", linger_ms=5)
    with KafkaTestCluster(settings) as running:
        yield running


def _produce_error(bootstrap: str, topic: str) -> Any:
    """The delivery error of one record (None: delivered)."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000})
    outcome: list[Any] = []
    producer.produce(topic, b"v", on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(15)
    return outcome[0] if outcome else "no delivery report"


def test_acl_confluent_produce_refused_then_allowed_and_deny_wins(cluster):
    cluster.run(cluster.meta.create_topic("orders", 1))
    error = _produce_error(cluster.bootstrap, "orders")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    (hw,) = cluster.run(cluster.meta.list_offsets([("orders", 0, -1)]))
    assert hw.offset == 0  # nothing written

    allow = acl("orders", Operation.WRITE)
    cluster.run(cluster.meta.create_acls([allow]))
    cluster.run(_until_agents_see(cluster))
    assert _produce_error(cluster.bootstrap, "orders") is None

    deny = acl("ord", Operation.WRITE, perm=DENY, pattern=PatternType.PREFIXED)
    cluster.run(cluster.meta.create_acls([deny]))
    cluster.run(_until_agents_see(cluster))
    error = _produce_error(cluster.bootstrap, "orders")
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    cluster.run(cluster.meta.delete_acls([AclFilter(T, "orders"), AclFilter(T, "ord")]))


async def _until_agents_see(cluster: KafkaTestCluster) -> None:
    """The agents' long poll brings a change in milliseconds; wait for it (bounded)."""
    version = (await cluster.meta.watch_acls(-1, 0)).version
    async with asyncio.timeout(10):
        while any(a.acls.version != version for a in cluster.agents):
            await asyncio.sleep(0.005)


def test_acl_confluent_admin_acls_need_cluster_alter(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    binding = KafkaAclBinding(
        KafkaResourceType.TOPIC,
        "payments",
        ResourcePatternType.PREFIXED,
        "User:bob",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    (future,) = admin.create_acls([binding]).values()
    with pytest.raises(KafkaException) as refused:
        future.result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    cluster.run(cluster.meta.create_acls([acl(CLUSTER_NAME, Operation.ALTER, rtype=C)]))
    cluster.run(_until_agents_see(cluster))
    (future,) = admin.create_acls([binding]).values()
    future.result(timeout=15)
    wanted = AclBindingFilter(
        KafkaResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        "User:bob",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    found = admin.describe_acls(wanted).result(timeout=15)
    assert [(b.name, b.resource_pattern_type, b.principal) for b in found] == [
        ("payments", ResourcePatternType.PREFIXED, "User:bob")
    ]
    (deleting,) = admin.delete_acls([wanted]).values()
    assert len(deleting.result(timeout=15)) == 1
    stored = cluster.run(cluster.meta.describe_acls(AclFilter(principal="User:bob")))
    assert stored == []
    cluster.run(cluster.meta.delete_acls([AclFilter(C)]))


def test_acl_kafka_python_metadata_hides_topics(cluster):
    from kafka import KafkaConsumer

    for name in ("shown-a", "secret-b"):
        cluster.run(cluster.meta.create_topic(name, 1))
    cluster.run(
        cluster.meta.create_acls([acl("shown-", Operation.READ, pattern=PatternType.PREFIXED)])
    )
    cluster.run(_until_agents_see(cluster))
    consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap)
    try:
        topics = consumer.topics()
    finally:
        consumer.close()
    assert "shown-a" in topics
    assert "secret-b" not in topics


def _group_poll(cluster: KafkaTestCluster, group: str, topic: str) -> tuple[list[bytes], list[int]]:
    """(values consumed, error codes seen) of a confluent-kafka group consumer."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    errors: list[int] = []
    for _ in range(40):
        msg = consumer.poll(0.5)
        if msg is None:
            if values or errors:
                break
            continue
        if msg.error():
            errors.append(msg.error().code())
            break
        values.append(msg.value())
    consumer.close()
    return values, errors


def test_acl_confluent_group_consumer_needs_read_on_group_and_topic(cluster):
    topic = "grp-topic"
    cluster.run(cluster.meta.create_topic(topic, 1))
    cluster.run(cluster.meta.create_acls([acl(topic, Operation.ALL)]))
    cluster.run(_until_agents_see(cluster))
    assert _produce_error(cluster.bootstrap, topic) is None
    _, errors = _group_poll(cluster, "no-acl-group", topic)
    assert errors == [KafkaError.GROUP_AUTHORIZATION_FAILED]
    cluster.run(cluster.meta.create_acls([acl("ok-group", Operation.READ, rtype=G)]))
    cluster.run(_until_agents_see(cluster))
    values, errors = _group_poll(cluster, "ok-group", topic)
    assert errors == []
    assert values == [b"v"]
    cluster.run(cluster.meta.delete_acls([AclFilter(T, topic), AclFilter(G)]))


# ------------------------------------------------------- real SCRAM users (SASL)
@pytest.fixture(scope="module")
def scram_cluster(tmp_path_factory):
    """SCRAM-SHA-256 over plaintext (no TLS: the principal is what matters here)."""
    scram = pytest.importorskip("ray_stream.core.scram")
    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("acl-scram")),
        authorizer="acl",
        sasl_mechanisms=("SCRAM-SHA-256",),
        allow_plaintext_sasl=True,
        linger_ms=5,
    )
    with KafkaTestCluster(settings) as running:
        creds = [
            scram.credential_from_password(
                user, "SCRAM-SHA-256", "pw-" + user, salt=user.encode() * 4, iterations=4096
            )
            for user in ("alice", "bob")
        ]
        running.run(running.meta.alter_scram_credentials(creds, []))
        yield running


def _scram_producer_error(cluster: KafkaTestCluster, user: str, topic: str) -> Any:
    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": user,
            "sasl.password": "pw-" + user,
            "message.timeout.ms": 10000,
        }
    )
    outcome: list[Any] = []
    producer.produce(topic, user.encode(), on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(15)
    return outcome[0] if outcome else "no delivery report"


def test_acl_scram_users_get_their_own_acls(scram_cluster):
    cluster = scram_cluster
    cluster.run(cluster.meta.create_topic("ledger", 1))
    cluster.run(cluster.meta.create_acls([acl("ledger", Operation.WRITE, who="User:alice")]))
    cluster.run(_until_agents_see(cluster))
    assert _scram_producer_error(cluster, "alice", "ledger") is None
    refused = _scram_producer_error(cluster, "bob", "ledger")
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    (hw,) = cluster.run(cluster.meta.list_offsets([("ledger", 0, -1)]))
    assert hw.offset == 1  # alice's record only
