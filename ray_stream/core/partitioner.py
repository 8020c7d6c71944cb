"""Kafka's default key partitioner: murmur2 of the serialized key.

Invariant: ``partition_for_key`` picks the same partition as Kafka's Java client
(``BuiltInPartitioner.partitionForKey``: ``toPositive(Utils.murmur2(key)) % n``) and
librdkafka's ``murmur2_random`` partitioner, so data produced through the Python API and
through any Kafka client with the same key lands in the same partition.

Pure: no I/O, no randomness (keyless records are the producer's choice, not this module's).
"""

from __future__ import annotations

from ray_stream.errors import InvalidPartitions

__all__ = ["murmur2", "partition_for_key"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: MurmurHash2 (32-bit, seed 0x9747b28c) as a signed int32.

    Java does the arithmetic in wrapping int32 with ``>>>`` shifts; here every step is
    masked to 32 bits, which is the same thing on the unsigned representation.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = length - whole
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner assigns to ``key``.

    Returns:
        ``(murmur2(key) & 0x7fffffff) % num_partitions``.

    Raises:
        InvalidPartitions: ``num_partitions`` is below 1.
    """
    if num_partitions < 1:
        raise InvalidPartitions(f"num_partitions must be at least 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
