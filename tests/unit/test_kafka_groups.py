"""Consumer groups over real TCP with real clients (real in-process agents and metadata
service, no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ray_stream.config import Settings
from ray_stream.core.types import TopicPartition
from tests.fakes import KafkaTestCluster

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaException, Producer  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[KafkaTestCluster]:
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("kafka-groups")))
    with KafkaTestCluster(settings, agents=2) as running:
        yield running


def _topic(cluster: KafkaTestCluster, partitions: int) -> str:
    name = "g" + uuid.uuid4().hex[:10]
    cluster.run(cluster.meta.create_topic(name, partitions))
    return name


def _produce(cluster: KafkaTestCluster, topic: str, values: range) -> None:
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 2})
    for i in values:
        producer.produce(topic, key=b"%d" % i, value=b"%d" % i)
    assert producer.flush(20) == 0


def _consumer(cluster: KafkaTestCluster, group: str, topic: str) -> Any:
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 200,
            # This loop polls the members from one thread and commits synchronously: a
            # commit can queue behind its member's own blocking JoinGroup (requests are
            # answered in order per connection, as Kafka does) while the other members
            # wait to be polled. A short rebalance timeout bounds that stall.
            "max.poll.interval.ms": 10000,
            "fetch.wait.max.ms": 100,
            "partition.assignment.strategy": "cooperative-sticky",
            "check.crcs": True,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _poll_until(
    consumers: list[Any],
    seen: dict[tuple[int, int], bytes],
    done: Callable[[], bool],
    timeout: float = 90,
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"only {len(seen)} records consumed"
        for consumer in consumers:
            message = consumer.poll(0.05)
            if message is None or message.error():
                continue
            seen[(message.partition(), message.offset())] = message.value()
            # A rebalance may race the commit: the record may then come again (at-least-once).
            with contextlib.suppress(KafkaException):
                consumer.commit(message=message, asynchronous=False)


def _assignments(consumers: list[Any]) -> list[list[int]]:
    return [sorted(tp.partition for tp in c.assignment()) for c in consumers]


def test_groups_three_consumers_share_six_partitions_through_leave_join_and_restart(cluster):
    topic, group = _topic(cluster, 6), "grp-" + uuid.uuid4().hex[:8]
    _produce(cluster, topic, range(300))
    members = [_consumer(cluster, group, topic) for _ in range(3)]
    seen: dict[tuple[int, int], bytes] = {}
    _poll_until(members, seen, lambda: len(seen) >= 300)
    _poll_until(members, seen, lambda: sorted(map(len, _assignments(members))) == [2, 2, 2])

    members.pop().close()  # one member leaves ...
    members.append(_consumer(cluster, group, topic))  # ... and another joins
    _produce(cluster, topic, range(300, 600))
    _poll_until(members, seen, lambda: len(seen) >= 600)
    _poll_until(members, seen, lambda: sorted(map(len, _assignments(members))) == [2, 2, 2])
    assert sorted(int(v) for v in seen.values()) == list(
        range(600)
    )  # every record, once per offset
    for consumer in members:
        consumer.close()

    committed = cluster.run(cluster.meta.fetch_offsets(group))
    latest = cluster.run(cluster.meta.list_offsets([(topic, p, -1) for p in range(6)]))
    assert [answer.error for answer in latest] == [None] * 6
    ends = {p: answer.offset for p, answer in enumerate(latest)}
    assert {p: committed[TopicPartition(topic, p)].offset for p in range(6)} == ends

    _produce(cluster, topic, range(600, 660))
    restarted = [_consumer(cluster, group, topic)]
    after: dict[tuple[int, int], bytes] = {}
    _poll_until(restarted, after, lambda: len(after) >= 60)
    settle = time.monotonic() + 0.5  # keep polling: nothing older may show up
    _poll_until(restarted, after, lambda: time.monotonic() > settle)
    restarted[0].close()
    assert sorted(int(v) for v in after.values()) == list(range(600, 660))  # resumed, nothing old


def test_groups_admin_lists_describes_and_deletes_a_group(cluster):
    from confluent_kafka.admin import AdminClient

    topic, group = _topic(cluster, 2), "adm-" + uuid.uuid4().hex[:8]
    _produce(cluster, topic, range(10))
    consumer = _consumer(cluster, group, topic)
    seen: dict[tuple[int, int], bytes] = {}
    _poll_until([consumer], seen, lambda: len(seen) >= 10)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    assert group in {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    description = admin.describe_consumer_groups([group])[group].result(10)
    assert str(description.state).endswith("STABLE")
    assert sorted(tp.partition for tp in description.members[0].assignment.topic_partitions) == [
        0,
        1,
    ]
    consumer.close()
    assert cluster.run(cluster.meta.fetch_offsets(group))  # it committed what it read
    assert admin.delete_consumer_groups([group])[group].result(10) is None
    assert cluster.run(cluster.meta.fetch_offsets(group)) == {}


def test_groups_kafka_python_range_group_of_two(cluster):
    import kafka

    topic, group = _topic(cluster, 4), "kp-" + uuid.uuid4().hex[:8]
    _produce(cluster, topic, range(40))
    consumers = [
        kafka.KafkaConsumer(
            topic,
            bootstrap_servers=cluster.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            heartbeat_interval_ms=200,
            session_timeout_ms=6000,
        )
        for _ in range(2)
    ]
    seen: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 40
    while len(seen) < 40 or any(len(c.assignment()) != 2 for c in consumers):
        assert time.monotonic() < deadline, (
            f"{len(seen)} consumed, {[c.assignment() for c in consumers]}"
        )
        for consumer in consumers:
            for records in consumer.poll(100).values():
                seen.update({(r.partition, r.offset): r.value for r in records})
    for consumer in consumers:
        consumer.commit()
        consumer.close()
    assert sorted(int(v) for v in seen.values()) == list(range(40))
    committed = cluster.run(cluster.meta.fetch_offsets(group))
    assert sum(c.offset for c in committed.values()) == 40


def test_groups_aiokafka_group_consumer(cluster):
    from aiokafka import AIOKafkaConsumer

    topic, group = _topic(cluster, 3), "aio-" + uuid.uuid4().hex[:8]
    _produce(cluster, topic, range(30))

    async def scenario() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=cluster.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            heartbeat_interval_ms=200,
            session_timeout_ms=6000,
        )
        await consumer.start()
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [r.value for r in records]
        await consumer.commit()
        await consumer.stop()
        return got

    got = asyncio.run(scenario())
    assert sorted(int(v) for v in got) == list(range(30))
    committed = cluster.run(cluster.meta.fetch_offsets(group))
    assert sum(c.offset for c in committed.values()) == 30
