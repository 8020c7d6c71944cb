"""Kafka's ConsumerProtocol payloads through kio (kafka/consumer_protocol.py): round trips,
bytes captured from librdkafka, other versions, and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_stream.core.types import TopicPartition
from ray_stream.errors import CorruptData
from ray_stream.kafka.consumer_protocol import (
    Subscription,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)

# Captured from confluent-kafka 2.16.1 (librdkafka) in a group on topic "t6": its
# JoinGroup metadata (ConsumerProtocolSubscription v3) and, as the leader, the
# assignment it sent another member (ConsumerProtocolAssignment v0) for t6[3, 4, 5].
LIBRDKAFKA_SUBSCRIPTION = bytes.fromhex("000300000001000274360000000000000000ffffffff0000")
LIBRDKAFKA_ASSIGNMENT = bytes.fromhex(
    "000000000001000274360000000300000003000000040000000500000000"
)


def test_consumer_protocol_reads_what_librdkafka_sends():
    sub = decode_subscription(LIBRDKAFKA_SUBSCRIPTION)
    assert sub == Subscription(topics=("t6",), generation_id=-1, rack_id="", user_data=b"")
    assert decode_assignment(LIBRDKAFKA_ASSIGNMENT) == [TopicPartition("t6", p) for p in (3, 4, 5)]


def test_consumer_protocol_writes_version_3_like_the_java_client():
    data = encode_assignment(
        [TopicPartition("t6", 5), TopicPartition("t6", 4), TopicPartition("t6", 3)]
    )
    # Version 3 of an assignment has version 0's fields; ours has null user data where
    # librdkafka sends empty bytes.
    assert data == b"\x00\x03" + LIBRDKAFKA_ASSIGNMENT[2:-4] + b"\xff\xff\xff\xff"
    assert encode_subscription(Subscription(("t6",)))[:2] == b"\x00\x03"


names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)
partitions = st.lists(st.builds(TopicPartition, names, st.integers(0, 2**31 - 1)), unique=True)


@given(
    st.lists(names, unique=True).map(tuple),
    partitions,
    st.integers(-1, 2**31 - 1),
    st.none() | names,
)
def test_consumer_protocol_subscription_round_trips(topics, owned, generation, rack):
    sub = Subscription(
        topics, tuple(sorted(owned, key=lambda tp: (tp.topic, tp.partition))), generation, rack
    )
    assert decode_subscription(encode_subscription(sub)) == sub


@given(partitions)
def test_consumer_protocol_assignment_round_trips(parts):
    back = decode_assignment(encode_assignment(parts))
    assert back == sorted(parts, key=lambda tp: (tp.topic, tp.partition))


def test_consumer_protocol_reads_a_newer_version_as_version_3():
    v3 = encode_subscription(Subscription(("t",), generation_id=4, rack_id="a"))
    newer = b"\x00\x07" + v3[2:] + b"fields a later version appended"
    assert decode_subscription(newer) == decode_subscription(v3)


def test_consumer_protocol_reads_version_0_without_the_later_fields():
    v0 = bytes.fromhex("000000000002000161000162ffffffff")  # [a, b], no user data
    assert decode_subscription(v0) == Subscription(topics=("a", "b"))


def test_consumer_protocol_empty_assignment_assigns_nothing():
    assert decode_assignment(b"") == []
    assert decode_assignment(encode_assignment([])) == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",  # no room for the version
        b"\xff\xff" + b"\x00" * 8,  # negative version
        b"\x00\x00\x7f\xff\xff\xff",  # 2**31 topics claimed: must not allocate them
        b"\x00\x03\x00\x00\x00\x01\x00\x05ab",  # a topic name longer than the bytes left
    ],
)
def test_consumer_protocol_garbage_is_corrupt_data(data):
    with pytest.raises(CorruptData):
        decode_subscription(data)
    with pytest.raises(CorruptData):
        decode_assignment(data)
