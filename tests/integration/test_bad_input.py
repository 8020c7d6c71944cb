"""Bad input gets a clear error naming the problem, and the cluster keeps serving."""

from __future__ import annotations

import uuid

import pytest

import ray_stream
from ray_stream import (
    InvalidPartitions,
    InvalidRequest,
    InvalidTopic,
    RecordTooLarge,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory):
    c = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("bad")),
        namespace="ns-" + uuid.uuid4().hex[:8],
        kafka_port=0,
        linger_ms=10,
        max_record_bytes=64 * 1024,
    )
    c.create_topic("good", 2)
    yield c
    c.shutdown()


def _still_serves(cluster):
    with cluster.producer() as producer:
        meta = producer.send("good", b"ok").result(timeout=30)
    table = cluster.read_table("good", partitions=[meta.partition], start=meta.offset)
    assert table.column("value").to_pylist()[-1] == b"ok"


@pytest.mark.parametrize("name", ["", ".", "..", "has space", "slash/name", "x" * 250, "ünïcode"])
def test_invalid_topic_names_are_rejected(cluster, name):
    with pytest.raises(InvalidTopic, match="topic"):
        cluster.create_topic(name, 1)
    _still_serves(cluster)


@pytest.mark.parametrize("count", [0, -1, 100_001, "3", 2.5])
def test_invalid_partition_counts_are_rejected(cluster, count):
    with pytest.raises(InvalidPartitions, match="partition"):
        cluster.create_topic("t" + uuid.uuid4().hex[:6], count)
    _still_serves(cluster)


def test_duplicate_topic_is_rejected(cluster):
    with pytest.raises(TopicAlreadyExists, match="good"):
        cluster.create_topic("good", 1)


def test_unknown_topic_on_send_and_assign(cluster):
    producer = cluster.producer()
    with pytest.raises(UnknownTopicOrPartition, match="nope"):
        producer.send("nope", b"x")
    with pytest.raises(UnknownTopicOrPartition):
        producer.send("good", b"x", partition=2)
    consumer = cluster.consumer()
    with pytest.raises(UnknownTopicOrPartition, match="nope"):
        consumer.assign([("nope", 0)])
    with pytest.raises(UnknownTopicOrPartition):
        consumer.assign([("good", 5)])
    with pytest.raises(UnknownTopicOrPartition):
        cluster.delete_topic("nope")
    producer.close()
    _still_serves(cluster)


def test_record_over_size_limit_is_rejected(cluster):
    producer = cluster.producer()
    with pytest.raises(RecordTooLarge, match="max_record_bytes"):
        producer.send("good", b"x" * (65 * 1024))
    producer.close()
    _still_serves(cluster)


def test_oversized_raw_batch_fails_its_partition_and_nothing_else(cluster):
    """A partition's batches of one call are appended together or not at all (as Kafka
    appends a partition's record set): the small batch behind the oversized one is
    refused with it, so a resend keeps their order; another partition is written."""
    from ray_stream.kafka.records import Record, encode_batch

    cluster.create_topic("two-parts", 2)
    big = encode_batch([Record(value=b"y" * (70 * 1024))], now_ms=0)
    small = encode_batch([Record(value=b"fine")], now_ms=0)
    other = encode_batch([Record(value=b"other")], now_ms=0)
    results = ray_stream.actors.handles.get(
        cluster.agent(0).produce.remote(
            [("two-parts", 0, big), ("two-parts", 0, small), ("two-parts", 1, other)]
        )
    )
    assert isinstance(results[0].error, RecordTooLarge)
    assert isinstance(results[1].error, RecordTooLarge)
    assert results[2].error is None and results[2].base_offset == 0
    info = cluster.describe_topic("two-parts")
    assert [p.high_watermark for p in info.partition_info] == [0, 1]
    _still_serves(cluster)


def test_corrupt_raw_batch_is_rejected(cluster):
    from ray_stream import CorruptData
    from ray_stream.kafka.records import Record, encode_batch

    data = bytearray(encode_batch([Record(value=b"payload")], now_ms=0))
    data[-1] ^= 0xFF
    (result,) = ray_stream.actors.handles.get(
        cluster.agent(0).produce.remote([("good", 0, bytes(data))])
    )
    assert isinstance(result.error, CorruptData)
    _still_serves(cluster)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"value": "text"}, "value"),
        ({"value": 42}, "value"),
        ({"value": b"x", "key": 7}, "key"),
        ({"value": b"x", "timestamp": "now"}, "timestamp"),
        ({"value": b"x", "headers": [("h", "s")]}, "header"),
    ],
)
def test_non_bytes_fields_are_rejected(cluster, kwargs, field):
    producer = cluster.producer()
    with pytest.raises(InvalidRequest, match=field):
        producer.send("good", **kwargs)
    producer.close()
    _still_serves(cluster)


def test_unknown_partition_in_read_table(cluster):
    with pytest.raises(UnknownTopicOrPartition):
        cluster.read_table("good", partitions=[9])


@pytest.mark.parametrize(
    ("binding", "field"),
    [
        (("User:alice", 4, 3, 2, "t", 3, "*"), None),  # the valid one: stored
        (("alice", 4, 3, 2, "t", 3, "*"), "principal"),
        (("User:alice", 99, 3, 2, "t", 3, "*"), "operation"),
        (("User:alice", 4, 1, 2, "t", 3, "*"), "permission"),
        (("User:alice", 4, 3, 7, "t", 3, "*"), "resource_type"),
        (("User:alice", 4, 3, 2, "", 3, "*"), "resource_name"),
        (("User:alice", 4, 3, 2, "t", 2, "*"), "pattern_type"),
        (("User:alice", 4, 3, 4, "other", 3, "*"), "kafka-cluster"),
    ],
)
def test_malformed_acls_are_rejected_and_nothing_is_stored(cluster, binding, field):
    from ray_stream.core.acl import AclBinding, AclFilter

    principal, op, perm, rtype, name, pattern, host = binding
    made = AclBinding(rtype, name, pattern, principal, host, op, perm)
    before = cluster.describe_acls()
    if field is None:
        assert cluster.create_acls([made]) == [made]
        assert cluster.delete_acls([AclFilter(principal="User:alice")]) == [made]
    else:
        with pytest.raises(InvalidRequest, match=field):
            cluster.create_acls([made, AclBinding(2, "x", 3, "User:ok", "*", 4, 3)])
        assert cluster.describe_acls() == before  # all or none
    with pytest.raises(InvalidRequest, match="operation"):
        cluster.delete_acls([AclFilter(operation=0)])
    _still_serves(cluster)
