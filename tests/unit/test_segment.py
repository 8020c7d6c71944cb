"""Segment files: Arrow IPC layout, exact payload positions, ULID keys (core/keys.py)."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from itertools import pairwise

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_stream.core.keys import new_segment_key
from ray_stream.core.segment import (
    FORMAT_VERSION,
    SCHEMA,
    SegmentBatch,
    build_segment,
    read_segment,
)
from ray_stream.errors import CorruptData, InvalidRequest
from ray_stream.kafka.records import Record, decode_batch, encode_batch

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
KEY_PATTERN = re.compile(r"^segments/[0-9A-HJKMNP-TV-Z]{26}\.arrow$")

segment_batches = st.lists(
    st.builds(
        SegmentBatch,
        topic=st.sampled_from(["orders", "clicks", "a", "z-last"]),
        partition=st.integers(0, 3),
        payload=st.binary(min_size=0, max_size=300),
        record_count=st.integers(1, 100),
        first_timestamp=st.integers(0, 2**41),
        max_timestamp=st.integers(0, 2**41),
        producer_id=st.integers(-1, 2**40),
        producer_epoch=st.integers(-1, 2**15 - 1),
        base_sequence=st.integers(-1, 2**31 - 1),
    ),
    max_size=25,
)


def _decode_ulid(key: str) -> int:
    value = 0
    for char in key.removeprefix("segments/").removesuffix(".arrow"):
        value = value * 32 + CROCKFORD.index(char)
    return value


@settings(max_examples=80, deadline=None)
@given(batches=segment_batches)
def test_build_segment_positions_locate_every_payload(batches):
    data, positions = build_segment(batches)

    assert len(positions) == len(batches)
    for batch, (position, length) in zip(batches, positions, strict=True):
        assert length == len(batch.payload)
        assert data[position : position + length] == batch.payload


@settings(max_examples=80, deadline=None)
@given(batches=segment_batches)
def test_build_segment_partitions_are_contiguous_in_arrival_order(batches):
    _, positions = build_segment(batches)

    by_partition: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for batch, located in zip(batches, positions, strict=True):
        by_partition[(batch.topic, batch.partition)].append(located)
    previous_end = 0
    for key in sorted(by_partition):
        ranges = by_partition[key]
        for (pos, length), (next_pos, _) in pairwise(ranges):
            assert next_pos == pos + length  # back to back, in arrival order
        if any(length for _, length in ranges):
            assert ranges[0][0] >= previous_end  # partitions follow each other in key order
            previous_end = ranges[-1][0] + ranges[-1][1]


@settings(max_examples=60, deadline=None)
@given(batches=segment_batches)
def test_read_segment_rows_sorted_by_topic_partition_stable(batches):
    data, _ = build_segment(batches)

    table = read_segment(data)

    expected = sorted(batches, key=lambda b: (b.topic, b.partition))  # stable
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table.to_pylist() == [
        {
            "topic": b.topic,
            "partition": b.partition,
            "record_count": b.record_count,
            "first_timestamp": b.first_timestamp,
            "max_timestamp": b.max_timestamp,
            "producer_id": b.producer_id,
            "producer_epoch": b.producer_epoch,
            "base_sequence": b.base_sequence,
            "payload": b.payload,
        }
        for b in expected
    ]


def test_build_segment_is_arrow_ipc_file_with_one_uncompressed_batch():
    batches = [
        SegmentBatch("t", i % 2, encode_batch([Record(value=b"v" * 100)], now_ms=i), 1, i, i)
        for i in range(6)
    ]

    data, positions = build_segment(batches)

    assert data[:6] == b"ARROW1"
    assert data[-6:] == b"ARROW1"
    reader = pa.ipc.open_file(pa.BufferReader(data))
    assert reader.num_record_batches == 1
    assert reader.schema.metadata[b"format_version"] == str(FORMAT_VERSION).encode()
    for batch, (position, length) in zip(batches, positions, strict=True):
        # A byte range GET of one payload is a valid, CRC-checked Kafka batch.
        assert decode_batch(data[position : position + length])[0].value == b"v" * 100
        assert data[position : position + length] == batch.payload


def test_build_segment_empty_is_readable():
    data, positions = build_segment([])

    assert positions == []
    assert read_segment(data).num_rows == 0


def test_build_segment_rejects_partition_beyond_int32():
    batch = SegmentBatch("t", 2**31, b"x", 1, 0, 0)

    with pytest.raises(InvalidRequest, match="partition"):
        build_segment([batch])


def test_read_segment_rejects_garbage():
    with pytest.raises(CorruptData, match="Arrow IPC"):
        read_segment(b"not an arrow file at all")


def test_read_segment_rejects_truncated_file():
    data, _ = build_segment([SegmentBatch("t", 0, b"payload", 1, 0, 0)])

    with pytest.raises(CorruptData):
        read_segment(data[:-10])


def test_read_segment_rejects_unknown_format_version():
    table = pa.table({"payload": pa.array([b"x"])}).replace_schema_metadata(
        {"format_version": "999"}
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)

    with pytest.raises(CorruptData, match="format_version"):
        read_segment(sink.getvalue().to_pybytes())


def test_new_segment_key_shape_and_timestamp():
    key = new_segment_key(1_700_000_000_123, random.Random(7))

    assert KEY_PATTERN.match(key)
    assert _decode_ulid(key) >> 80 == 1_700_000_000_123


def test_new_segment_key_deterministic_for_seed():
    assert new_segment_key(5, random.Random(1)) == new_segment_key(5, random.Random(1))
    assert new_segment_key(5, random.Random(1)) != new_segment_key(5, random.Random(2))


@settings(max_examples=200, deadline=None)
@given(
    earlier=st.integers(0, 2**48 - 2),
    gap=st.integers(1, 2**40),
    seed_a=st.integers(),
    seed_b=st.integers(),
)
def test_new_segment_keys_sort_by_time(earlier, gap, seed_a, seed_b):
    later = min(earlier + gap, 2**48 - 1)

    first = new_segment_key(earlier, random.Random(seed_a))
    second = new_segment_key(later, random.Random(seed_b))

    assert first < second


@pytest.mark.parametrize("now_ms", [-1, 2**48])
def test_new_segment_key_rejects_out_of_range_time(now_ms):
    with pytest.raises(InvalidRequest, match="now_ms"):
        new_segment_key(now_ms, random.Random(0))
