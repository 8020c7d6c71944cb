"""Kafka's murmur2 partitioner, checked against Kafka's vectors and kafka-python."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from ray_stream.core.partitioner import murmur2, partition_for_key
from ray_stream.errors import InvalidPartitions

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_kafka_vectors(key, expected):
    assert murmur2(key) == expected


def test_murmur2_matches_kafka_python_on_random_keys():
    rng = random.Random(20240601)
    for _ in range(3000):
        key = rng.randbytes(rng.randint(0, 40))
        ours = murmur2(key)
        assert -(2**31) <= ours < 2**31
        assert ours & 0xFFFFFFFF == kafka_python_murmur2(key), key


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 1000))
def test_partition_for_key_matches_kafka_python(key, partitions):
    expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions

    assert partition_for_key(key, partitions) == expected


def test_partition_for_key_known_vector():
    # murmur2(b"foobar") = -790332482 -> toPositive = 1357151166
    assert partition_for_key(b"foobar", 7) == 1357151166 % 7


def test_partition_for_key_spreads_keys():
    counts = [0] * 8
    for i in range(8000):
        counts[partition_for_key(b"key-%d" % i, 8)] += 1

    assert min(counts) > 800


def test_partition_for_key_rejects_zero_partitions():
    with pytest.raises(InvalidPartitions, match="num_partitions"):
        partition_for_key(b"k", 0)
