"""ACLs on a real local Ray: real Kafka clients over TCP on 127.0.0.1 against AgentActors
started with ``--authorizer acl``, the Python API (not checked: Ray is its boundary)
managing ACLs, ``cluster.read_table`` showing what reached the log, a killed metadata
actor, a full restart, and ``ray-stream acls``.

Every Kafka client here is ``User:ANONYMOUS`` (a PLAINTEXT connection that did not
authenticate), so ACLs for that principal decide what it may do.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import ray_stream
from ray_stream.core.acl import (
    AclBinding,
    AclFilter,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from ray_stream.kafka.context import ANONYMOUS
from tests.fixtures_ray import wait_for

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import KafkaError, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

T = ResourceType.TOPIC


def acl(name: str, op: Operation, *, perm=Permission.ALLOW, pattern=PatternType.LITERAL):
    return AclBinding(T, name, pattern, ANONYMOUS, "*", op, perm)


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory):
    c = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("acls")),
        namespace="acls-" + uuid.uuid4().hex[:8],
        kafka_port=-1,
        linger_ms=10,
        authorizer="acl",
        super_users=("User:admin",),
    )
    yield c
    c.shutdown()


@pytest.fixture
def topic(cluster) -> str:
    name = "t" + uuid.uuid4().hex[:8]
    cluster.create_topic(name, 1)  # the Python API is not checked
    return name


def produce_error(cluster, topic: str) -> Any:
    """The delivery error of one record from confluent-kafka (None: delivered)."""
    producer = Producer(
        {"bootstrap.servers": cluster.bootstrap_servers, "message.timeout.ms": 15000}
    )
    outcome: list[Any] = []
    producer.produce(topic, b"v", on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(20)
    return outcome[0] if outcome else "no delivery report"


def log_size(cluster, topic: str) -> int:
    return cluster.read_table(topic).num_rows


def test_acls_write_needs_an_acl_and_a_refused_produce_writes_nothing(cluster, topic):
    error = produce_error(cluster, topic)
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert log_size(cluster, topic) == 0

    cluster.create_acls([acl(topic, Operation.WRITE)])
    # agents learn of it by their long poll (milliseconds); a produce sent before then
    # fails, so poll until one is delivered
    wait_for(lambda: produce_error(cluster, topic) is None, timeout=30, interval=0.2)
    assert log_size(cluster, topic) >= 1
    cluster.delete_acls([AclFilter(T, topic)])


def test_acls_deny_beats_allow_and_prefixed_acls_match_with_aiokafka(cluster):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError

    prefix = "p" + uuid.uuid4().hex[:6] + "-"
    allowed, denied = prefix + "open", prefix + "closed"
    for name in (allowed, denied):
        cluster.create_topic(name, 1)
    cluster.create_acls(
        [
            acl(prefix, Operation.ALL, pattern=PatternType.PREFIXED),
            acl(denied, Operation.WRITE, perm=Permission.DENY),
        ]
    )

    async def send(name: str) -> Any:
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap_servers, request_timeout_ms=10000
        )
        await producer.start()
        try:
            return await producer.send_and_wait(name, b"aio")
        except TopicAuthorizationFailedError as exc:
            return exc
        finally:
            await producer.stop()

    def delivered() -> bool:
        return not isinstance(asyncio.run(send(allowed)), Exception)

    wait_for(delivered, timeout=30, interval=0.2)
    assert isinstance(asyncio.run(send(denied)), TopicAuthorizationFailedError)
    assert log_size(cluster, denied) == 0
    assert log_size(cluster, allowed) >= 1
    cluster.delete_acls([AclFilter(T, prefix), AclFilter(T, denied)])


def test_acls_metadata_hides_undescribable_topics(cluster):
    shown, hidden = "shown" + uuid.uuid4().hex[:6], "hidden" + uuid.uuid4().hex[:6]
    for name in (shown, hidden):
        cluster.create_topic(name, 1)
    cluster.create_acls([acl(shown, Operation.READ)])
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})

    def listed() -> set[str]:
        return set(admin.list_topics(timeout=10).topics)

    wait_for(lambda: shown in listed(), timeout=30, interval=0.2)
    assert hidden not in listed()
    assert hidden in {t.name for t in cluster.list_topics()}  # the Python API sees all
    cluster.delete_acls([AclFilter(T, shown)])


def test_acls_survive_a_metadata_failover(cluster, topic):
    import ray

    cluster.create_acls([acl(topic, Operation.WRITE)])
    before = cluster.describe_acls()
    meta = cluster.metadata
    epoch = ray.get(meta.ping.remote(), timeout=30)["epoch"]
    ray.kill(meta, no_restart=False)

    def new_epoch() -> bool:
        try:
            return ray.get(meta.ping.remote(), timeout=5)["epoch"] > epoch
        except Exception:
            return False

    wait_for(new_epoch, timeout=90, interval=0.5)
    assert cluster.describe_acls() == before
    # the agents reloaded from the new incarnation: the ACL still lets the write through
    wait_for(lambda: produce_error(cluster, topic) is None, timeout=60, interval=0.5)
    cluster.delete_acls([AclFilter(T, topic)])
    wait_for(
        lambda: (
            (e := produce_error(cluster, topic)) is not None
            and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        ),
        timeout=30,
        interval=0.2,
    )


def test_acls_cli_add_list_delete(cluster, tmp_path, monkeypatch, capsys):
    from ray_stream.cli import main
    from ray_stream.client.cluster import write_state

    monkeypatch.setenv("RAY_STREAM_STATE_DIR", str(tmp_path / "state"))
    write_state(cluster)  # what `ray-stream start` records; the commands connect() to it
    name = "cli" + uuid.uuid4().hex[:6]
    assert (
        main(
            [
                "acls",
                "add",
                "--allow-principal",
                "User:alice",
                "--operation",
                "Write",
                "--operation",
                "describe-configs",
                "--topic",
                name,
                "--resource-pattern-type",
                "prefixed",
            ]
        )
        == 0
    )
    assert "added 2 ACL(s)" in capsys.readouterr().out
    stored = cluster.describe_acls(AclFilter(principal="User:alice"))
    assert {(b.resource_name, b.pattern_type, b.operation) for b in stored} == {
        (name, PatternType.PREFIXED, Operation.WRITE),
        (name, PatternType.PREFIXED, Operation.DESCRIBE_CONFIGS),
    }
    assert main(["acls", "list", "--topic", name]) == 0
    out = capsys.readouterr().out
    assert f"name={name}, patternType=PREFIXED" in out
    assert "(principal=User:alice, host=*, operation=WRITE, permissionType=ALLOW)" in out
    assert (
        main(["acls", "add", "--allow-principal", "alice", "--operation", "Write", "--topic", "x"])
        == 2
    )
    assert "principal" in capsys.readouterr().err
    argv = ["acls", "delete", "--topic", name, "--resource-pattern-type", "prefixed"]
    assert main(argv) == 0
    assert "deleted 2 ACL(s)" in capsys.readouterr().out
    assert cluster.describe_acls(AclFilter(principal="User:alice")) == []


def test_acls_survive_a_full_restart(ray_session, tmp_path):
    data = str(tmp_path / "data")
    namespace = "aclr-" + uuid.uuid4().hex[:8]
    first = ray_stream.start_local(
        data_dir=data, namespace=namespace, kafka_port=0, authorizer="acl"
    )
    binding = acl("kept", Operation.READ)
    first.create_acls([binding])
    first.shutdown()
    second = ray_stream.start_local(
        data_dir=data, namespace=namespace, kafka_port=0, authorizer="acl"
    )
    try:
        assert second.describe_acls() == [binding]
    finally:
        second.shutdown()
