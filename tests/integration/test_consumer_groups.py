"""Consumer groups on a real local Ray: the Python consumer's ``subscribe`` in the group
coordinator Kafka clients use, next to confluent-kafka and next to itself.

Every scenario reads a 6-partition topic and checks what a group promises: each
partition owned by exactly one member at a time, every record consumed once, and a
member that leaves (``close``) or stalls (no ``poll``) has its partitions taken over.
Waiting is ``wait_for`` on a condition; nothing here asserts how long anything took.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

import ray_stream
from ray_stream.actors import handles
from ray_stream.core.types import TopicPartition
from ray_stream.errors import InvalidSessionTimeout, UnknownMemberId
from ray_stream.kafka.consumer_protocol import Subscription, encode_assignment, encode_subscription
from ray_stream.kafka.versions import ApiKey
from tests.fakes import RawClient, decode_response, encode_request
from tests.fixtures_ray import wait_for

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")

PARTITIONS = 6
# Fast group reactions keep the scenarios short; the session stays within the cluster's
# default bounds (6 s .. 30 min).
FAST = {"heartbeat_interval_ms": 300, "session_timeout_ms": 10_000}


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory):
    real = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("groups")),
        namespace="groups-" + uuid.uuid4().hex[:8],
        kafka_port=-1,
        agents=2,
        linger_ms=20,
    )
    yield real
    real.shutdown()


@pytest.fixture
def topic(cluster) -> str:
    name = "g" + uuid.uuid4().hex[:10]
    cluster.create_topic(name, PARTITIONS)
    return name


def produce(cluster: Any, topic: str, count: int, *, first: int = 0) -> None:
    with cluster.producer() as producer:
        for i in range(first, first + count):
            producer.send(topic, f"r{i}".encode(), partition=i % PARTITIONS)


class Reads:
    """Who read which record: (partition, offset) -> the readers' names."""

    def __init__(self) -> None:
        self.by_record: dict[tuple[int, int], list[str]] = {}

    def add(self, who: str, partition: int, offset: int) -> None:
        self.by_record.setdefault((partition, offset), []).append(who)

    def python(self, who: str, consumer: Any) -> Callable[[], None]:
        def pump() -> None:
            for r in consumer.poll(timeout=0.1):
                self.add(who, r.partition, r.offset)

        return pump

    def confluent(self, who: str, consumer: Any) -> Callable[[], None]:
        def pump() -> None:
            for m in consumer.consume(500, 0.1):
                assert m.error() is None, m.error()
                self.add(who, m.partition(), m.offset())

        return pump

    def duplicates(self) -> dict[tuple[int, int], list[str]]:
        return {k: v for k, v in self.by_record.items() if len(v) > 1}

    def readers_of(self, partition: int) -> set[str]:
        return {w for (p, _), who in self.by_record.items() if p == partition for w in who}


def pump_until(pumps: list[Callable[[], None]], done: Callable[[], bool], timeout: float = 90):
    def step() -> bool:
        for pump in pumps:
            pump()
        return done()

    wait_for(step, timeout=timeout, interval=0.01)


def partitions_of(assignment: list[Any]) -> set[int]:
    return {tp.partition for tp in assignment}


def split_cleanly(*owned: set[int]) -> bool:
    """Every member owns something, no partition twice, all of them covered."""
    union = set().union(*owned)
    return all(owned) and sum(map(len, owned)) == len(union) == PARTITIONS


def test_python_and_confluent_consumers_share_a_group_and_take_over_on_close(cluster, topic):
    group = "mixed-" + topic
    events: list[tuple[str, list[TopicPartition]]] = []
    py = cluster.consumer(group_id=group, **FAST)
    py.subscribe(
        [topic],
        on_assign=lambda ps: events.append(("assign", ps)),
        on_revoke=lambda ps: events.append(("revoke", ps)),
    )
    kafka = confluent_kafka.Consumer(
        {
            "bootstrap.servers": cluster.bootstrap_servers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "heartbeat.interval.ms": 300,
        }
    )
    kafka.subscribe([topic])
    reads = Reads()
    pumps = [reads.python("py", py), reads.confluent("kafka", kafka)]
    pump_until(
        pumps,
        lambda: split_cleanly(partitions_of(py.assignment()), partitions_of(kafka.assignment())),
    )
    mine, theirs = partitions_of(py.assignment()), partitions_of(kafka.assignment())

    produce(cluster, topic, 600)
    pump_until(pumps, lambda: len(reads.by_record) >= 600)
    assert reads.duplicates() == {}
    assert len(reads.by_record) == 600
    for p in range(PARTITIONS):  # each partition read by its owner only
        assert reads.readers_of(p) == ({"py"} if p in mine else {"kafka"})
    assert all(py.position(TopicPartition(topic, p)) == 100 for p in mine)
    assert set(py.lag().values()) == {0}
    py.commit()
    kafka.commit(asynchronous=False)
    assert {py.committed((topic, p)) for p in range(PARTITIONS)} == {100}

    kafka.close()  # LeaveGroup: the Python consumer takes every partition over
    pump_until([reads.python("py", py)], lambda: partitions_of(py.assignment()) == set(range(6)))
    assert events[-2:] == [
        ("revoke", [TopicPartition(topic, p) for p in sorted(mine)]),
        ("assign", [TopicPartition(topic, p) for p in range(PARTITIONS)]),
    ]
    produce(cluster, topic, 60, first=600)  # read from the partitions' committed offsets
    pump_until([reads.python("py", py)], lambda: len(reads.by_record) >= 660)
    assert reads.duplicates() == {}
    assert len(reads.by_record) == 660
    assert all(reads.by_record[(p, 100)] == ["py"] for p in theirs)
    py.close()


def test_two_python_consumers_split_partitions_and_one_takes_over_on_close(cluster, topic):
    group = "py-" + topic
    events: dict[str, list[tuple[str, list[TopicPartition]]]] = {"a": [], "b": []}
    consumers = {}
    for name in ("a", "b"):
        consumers[name] = cluster.consumer(
            group_id=group, enable_auto_commit=True, auto_commit_interval_ms=200, **FAST
        )
        consumers[name].subscribe(
            topic,
            on_assign=lambda ps, n=name: events[n].append(("assign", ps)),
            on_revoke=lambda ps, n=name: events[n].append(("revoke", ps)),
        )
    a, b = consumers["a"], consumers["b"]
    reads = Reads()
    pumps = [reads.python("a", a), reads.python("b", b)]
    pump_until(
        pumps, lambda: split_cleanly(partitions_of(a.assignment()), partitions_of(b.assignment()))
    )
    owned_by_a = partitions_of(a.assignment())
    assert len(owned_by_a) == len(partitions_of(b.assignment())) == 3  # range: 6 / 2

    produce(cluster, topic, 600)
    pump_until(pumps, lambda: len(reads.by_record) >= 600)
    assert reads.duplicates() == {}
    for p in range(PARTITIONS):
        assert reads.readers_of(p) == ({"a"} if p in owned_by_a else {"b"})
    assert set(a.lag().values()) == set(b.lag().values()) == {0}

    a.close()  # auto-commit, on_revoke, LeaveGroup
    assert events["a"][-1] == ("revoke", [TopicPartition(topic, p) for p in sorted(owned_by_a)])
    assert {b.committed((topic, p)) for p in owned_by_a} == {100}
    pump_until([reads.python("b", b)], lambda: partitions_of(b.assignment()) == set(range(6)))
    produce(cluster, topic, 60, first=600)
    pump_until([reads.python("b", b)], lambda: len(reads.by_record) >= 660)
    assert reads.duplicates() == {}
    assert all(reads.by_record[(p, 100)] == ["b"] for p in owned_by_a)
    b.close()


def test_seek_position_committed_and_lag_work_on_group_assigned_partitions(cluster, topic):
    group = "seek-" + topic
    produce(cluster, topic, 60)
    first = cluster.consumer(group_id=group, **FAST)
    first.subscribe([topic])
    reads = Reads()
    pump_until([reads.python("first", first)], lambda: len(reads.by_record) == 60)
    first.close()  # no auto-commit: nothing committed
    first = cluster.consumer(group_id=group, enable_auto_commit=True, **FAST)
    first.subscribe([topic])
    pump_until([reads.python("first", first)], lambda: len(reads.by_record[(0, 0)]) == 2)
    pump_until([reads.python("first", first)], lambda: set(first.lag().values()) == {0})
    first.close()  # auto-commits every partition at 10

    again = cluster.consumer(group_id=group, **FAST)
    again.subscribe([topic], on_assign=again.seek_to_beginning)  # despite the commits
    rereads = Reads()
    pump_until([rereads.python("again", again)], lambda: len(rereads.by_record) == 60)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    assert {again.position(tp) for tp in tps} == {10}
    assert {again.committed(tp) for tp in tps} == {10}
    again.seek_to_beginning([tps[0]])
    assert again.position(tps[0]) == 0
    assert again.lag()[tps[0]] == 10
    again.seek_to_end()
    assert set(again.lag().values()) == {0}
    again.close()


def test_a_stalled_python_member_is_replaced_its_commit_refused_and_it_rejoins(cluster, topic):
    group = "stall-" + topic
    lost: list[list[TopicPartition]] = []
    stalling = cluster.consumer(group_id=group, max_poll_interval_ms=2_000, **FAST)
    stalling.subscribe([topic], on_revoke=lost.append)
    steady = cluster.consumer(group_id=group, enable_auto_commit=True, **FAST)
    steady.subscribe([topic])
    reads = Reads()
    pump_until(
        [reads.python("stalling", stalling), reads.python("steady", steady)],
        lambda: split_cleanly(
            partitions_of(stalling.assignment()), partitions_of(steady.assignment())
        ),
    )
    held = stalling.assignment()
    produce(cluster, topic, 60)
    pump_until([reads.python("steady", steady)], lambda: len(steady.assignment()) == PARTITIONS)
    # The group moved on without the stalled member: its commit is refused...
    with pytest.raises(UnknownMemberId):
        stalling.commit({tp: 1 for tp in held})
    # ...and its next poll gives the lost partitions up and rejoins.
    pump_until(
        [reads.python("stalling", stalling), reads.python("steady", steady)],
        lambda: split_cleanly(
            partitions_of(stalling.assignment()), partitions_of(steady.assignment())
        ),
    )
    assert lost[0] == held
    assert reads.duplicates() == {}  # the steady member committed before giving any up
    stalling.close()
    steady.close()


def test_join_with_a_session_timeout_below_the_minimum_is_refused(cluster, topic):
    join = {
        "group_id": "short-" + topic,
        "session_timeout": 1,
        "rebalance_timeout": 10_000,
        "member_id": "",
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
        "reason": None,
    }
    client = RawClient(cluster.brokers()[0].port)
    try:
        client.send(encode_request(ApiKey.JOIN_GROUP, 9, join))
        _, answer = decode_response(ApiKey.JOIN_GROUP, 9, client.read_frame())
    finally:
        client.close()
    assert answer.error_code == ErrorCode.invalid_session_timeout

    consumer = cluster.consumer(
        group_id="short-py-" + topic, session_timeout_ms=1_000, heartbeat_interval_ms=100
    )
    consumer.subscribe([topic])

    def refused() -> bool:
        try:
            consumer.poll(timeout=0.2)
        except InvalidSessionTimeout:
            return True
        return False

    wait_for(refused, timeout=30)
    consumer.close()


class RawMember:
    """A group member speaking raw Kafka frames, so a test decides when it answers."""

    def __init__(self, port: int, group: str) -> None:
        self.client = RawClient(port)
        self.group = group
        self.member_id = ""
        self.correlation_id = 0

    def call(self, api_key: int, version: int, body: dict[str, Any]) -> Any:
        self.correlation_id += 1
        self.client.send(encode_request(api_key, version, body, correlation_id=self.correlation_id))
        _, answer = decode_response(api_key, version, self.client.read_frame())
        return answer

    def join_and_lead(self, topic: str) -> None:
        """Join (KIP-394: twice), then as the leader assign itself every partition."""
        join = {
            "group_id": self.group,
            "session_timeout": 60_000,
            "rebalance_timeout": 60_000,
            "member_id": "",
            "group_instance_id": None,
            "protocol_type": "consumer",
            "protocols": [
                {"name": "range", "metadata": encode_subscription(Subscription((topic,)))}
            ],
            "reason": None,
        }
        self.member_id = self.call(ApiKey.JOIN_GROUP, 9, join).member_id
        joined = self.call(ApiKey.JOIN_GROUP, 9, join | {"member_id": self.member_id})
        assert (joined.error_code, joined.leader) == (ErrorCode.none, self.member_id)
        everything = encode_assignment(TopicPartition(topic, p) for p in range(PARTITIONS))
        synced = self.call(
            ApiKey.SYNC_GROUP,
            5,
            {
                "group_id": self.group,
                "generation_id": joined.generation_id,
                "member_id": self.member_id,
                "group_instance_id": None,
                "protocol_type": "consumer",
                "protocol_name": "range",
                "assignments": [{"member_id": self.member_id, "assignment": everything}],
            },
        )
        assert synced.error_code == ErrorCode.none

    def leave(self) -> None:
        member = {"member_id": self.member_id, "group_instance_id": None, "reason": None}
        self.call(ApiKey.LEAVE_GROUP, 5, {"group_id": self.group, "members": [member]})
        self.client.close()


def test_poll_stays_responsive_while_the_join_waits_for_a_silent_member(cluster, topic):
    group = "silent-" + topic
    silent = RawMember(cluster.brokers()[0].port, group)
    silent.join_and_lead(topic)  # then never heartbeats or rejoins: its session is 60 s
    consumer = cluster.consumer(group_id=group, **FAST)
    consumer.subscribe([topic])

    def state() -> str:
        (described,) = handles.get(cluster.metadata.describe_groups.remote([group]))
        return str(described.state)

    wait_for(lambda: state() == "PreparingRebalance")  # our JoinGroup is parked
    for _ in range(3):  # each poll returns by its own timeout, the join still parked
        assert consumer.poll(timeout=0.3) == []
        assert consumer.assignment() == []
    assert state() == "PreparingRebalance"
    silent.leave()  # the rebalance completes without it
    pump_until([Reads().python("c", consumer)], lambda: len(consumer.assignment()) == PARTITIONS)
    consumer.close()
