"""RecordBatch v2: header parsing, splitting, CRC, base-offset rewrite and the codec."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch as KafkaPythonBatch
from kafka.record.default_records import DefaultRecordBatchBuilder as KafkaPythonBuilder

from ray_stream.errors import CorruptData, InvalidRequest
from ray_stream.kafka.records import (
    HEADER_SIZE,
    BatchHeader,
    DecodedRecord,
    Record,
    available_compressions,
    decode_batch,
    encode_batch,
    parse_batch_header,
    set_base_offset,
    split_batches,
    verify_crc,
)

NOW_MS = 1_700_000_000_000
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_values = st.one_of(st.none(), st.binary(max_size=16))
records_strategy = st.lists(
    st.builds(
        Record,
        value=st.one_of(st.none(), st.binary(max_size=200)),
        key=st.one_of(st.none(), st.binary(max_size=32)),
        timestamp_ms=st.one_of(st.none(), st.integers(0, 2**42)),
        headers=st.lists(st.tuples(st.text(max_size=8), header_values), max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=20,
)


def _batch(n: int = 3, *, value_size: int = 10, compression: str | None = None) -> bytes:
    records = [
        Record(value=bytes([i % 256]) * value_size, key=b"k%d" % i, timestamp_ms=NOW_MS + i)
        for i in range(n)
    ]
    return encode_batch(records, now_ms=NOW_MS, compression=compression)


def _with_fixed_crc(batch: bytearray) -> bytes:
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
    return bytes(batch)


@FAST
@given(records=records_strategy, compression=st.sampled_from([None, "gzip"]))
def test_encode_decode_round_trip(records, compression):
    batch = encode_batch(records, now_ms=NOW_MS, compression=compression)

    decoded = decode_batch(batch)

    assert verify_crc(batch)
    assert decoded == [
        DecodedRecord(
            offset=i,
            timestamp_ms=NOW_MS if r.timestamp_ms is None else r.timestamp_ms,
            key=r.key,
            value=r.value,
            headers=r.headers,
        )
        for i, r in enumerate(records)
    ]


def test_encode_header_fields():
    records = [Record(value=b"a", timestamp_ms=50), Record(value=b"b", timestamp_ms=20)]

    batch = encode_batch(records, now_ms=NOW_MS, producer_id=77, producer_epoch=3, base_sequence=41)
    header = parse_batch_header(batch)

    assert header == BatchHeader(
        base_offset=0,
        batch_length=len(batch) - 12,
        partition_leader_epoch=-1,
        magic=2,
        crc=header.crc,
        attributes=0,
        last_offset_delta=1,
        first_timestamp=50,
        max_timestamp=50,
        producer_id=77,
        producer_epoch=3,
        base_sequence=41,
        record_count=2,
    )
    assert header.total_size == len(batch)
    assert HEADER_SIZE == 61


def test_encode_gzip_sets_compression_attribute_and_shrinks():
    plain = _batch(50, value_size=200)
    compressed = _batch(50, value_size=200, compression="gzip")

    assert parse_batch_header(compressed).compression == 1
    assert len(compressed) < len(plain) // 4
    assert decode_batch(compressed) == decode_batch(plain)


def test_encode_rejects_empty_batch():
    with pytest.raises(InvalidRequest, match="at least one record"):
        encode_batch([], now_ms=NOW_MS)


def test_encode_rejects_unknown_compression():
    with pytest.raises(InvalidRequest, match="brotli"):
        encode_batch([Record(value=b"x")], now_ms=NOW_MS, compression="brotli")


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_encode_optional_codec_works_or_names_missing_library(codec):
    records = [Record(value=b"abc" * 100)] * 5
    if codec in available_compressions():
        batch = encode_batch(records, now_ms=NOW_MS, compression=codec)
        assert [r.value for r in decode_batch(batch)] == [b"abc" * 100] * 5
    else:
        with pytest.raises(InvalidRequest, match=codec):
            encode_batch(records, now_ms=NOW_MS, compression=codec)


def test_encode_rejects_str_value():
    with pytest.raises(InvalidRequest, match="record 1"):
        encode_batch([Record(value=b"ok"), Record(value="text")], now_ms=NOW_MS)  # type: ignore[arg-type]


def test_encode_rejects_out_of_range_producer_epoch():
    with pytest.raises(InvalidRequest, match="producer_epoch"):
        encode_batch([Record(value=b"x")], now_ms=NOW_MS, producer_epoch=2**15)


def test_kafka_python_reads_our_batches():
    batch = encode_batch(
        [Record(value=b"v", key=b"k", timestamp_ms=5, headers=(("h", b"1"), ("n", None)))],
        now_ms=NOW_MS,
    )
    batch = set_base_offset(batch, 100)

    reader = KafkaPythonBatch(batch)
    assert reader.validate_crc()
    [record] = list(reader)
    assert (record.offset, record.timestamp, record.key, record.value) == (100, 5, b"k", b"v")
    assert list(record.headers) == [("h", b"1"), ("n", None)]


def test_decode_reads_kafka_python_batches():
    builder = KafkaPythonBuilder(
        magic=2, compression_type=1, is_transactional=0, producer_id=9,
        producer_epoch=1, base_sequence=0, batch_size=1 << 20,
    )  # fmt: skip
    for i in range(20):
        builder.append(i, timestamp=1000 + i, key=None, value=b"payload" * 20, headers=[])
    batch = bytes(builder.build())

    decoded = decode_batch(batch)

    assert [(r.offset, r.timestamp_ms, r.key, r.value) for r in decoded] == [
        (i, 1000 + i, None, b"payload" * 20) for i in range(20)
    ]


@FAST
@given(sizes=st.lists(st.integers(1, 5), max_size=6))
def test_split_batches_splits_concatenation(sizes):
    batches = [_batch(n, value_size=i) for i, n in enumerate(sizes)]

    assert split_batches(b"".join(batches)) == batches
    assert split_batches(memoryview(b"".join(batches))) == batches


@FAST
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_split_batches_truncated_raises_corrupt(sizes, data):
    batches = [_batch(n) for n in sizes]
    records = b"".join(batches)
    boundaries = {sum(len(b) for b in batches[:i]) for i in range(len(batches) + 1)}
    cut = data.draw(st.integers(1, len(records) - 1).filter(lambda c: c not in boundaries))

    with pytest.raises(CorruptData, match="truncated"):
        split_batches(records[:cut])


def test_split_batches_cut_at_boundary_returns_whole_batches():
    first, second = _batch(2), _batch(3)

    assert split_batches(first + second) == [first, second]
    assert split_batches(first) == [first]
    assert split_batches(b"") == []


@FAST
@given(data=st.data())
def test_split_batches_mutated_input_raises_only_corrupt(data):
    records = bytearray(_batch(2) + _batch(3))
    for _ in range(data.draw(st.integers(1, 4))):
        records[data.draw(st.integers(0, len(records) - 1))] = data.draw(st.integers(0, 255))
    extra = data.draw(st.binary(max_size=70))

    try:
        batches = split_batches(bytes(records) + extra)
    except CorruptData:
        return
    assert b"".join(batches) == bytes(records) + extra


def test_split_batches_names_bad_magic():
    records = bytearray(_batch(1))
    records[16] = 1

    with pytest.raises(CorruptData, match="magic 1"):
        split_batches(bytes(records))


def test_split_batches_names_small_batch_length():
    records = bytearray(_batch(1))
    struct.pack_into(">i", records, 8, 48)

    with pytest.raises(CorruptData, match="batchLength 48"):
        split_batches(bytes(records))


def test_parse_batch_header_rejects_short_header():
    with pytest.raises(CorruptData, match="need 61"):
        parse_batch_header(_batch(1)[:60])


def test_parse_batch_header_at_offset():
    first, second = _batch(1), _batch(4)

    assert parse_batch_header(first + second, len(first)).record_count == 4


def test_verify_crc_detects_any_flipped_bit_in_covered_bytes():
    batch = _batch(2, value_size=4)
    for position in range(21, len(batch)):
        for bit in (0x01, 0x80):
            mutated = bytearray(batch)
            mutated[position] ^= bit
            assert not verify_crc(bytes(mutated)), (position, bit)
    assert verify_crc(batch)


def test_verify_crc_ignores_base_offset_and_leader_epoch():
    mutated = bytearray(_batch(2))
    mutated[0:8] = b"\x7f" * 8
    mutated[12:16] = b"\x01\x02\x03\x04"

    assert verify_crc(bytes(mutated))


def test_verify_crc_false_for_short_buffer():
    assert not verify_crc(b"\x00" * 60)


@FAST
@given(
    base_offset=st.integers(0, 2**63 - 1),
    leader_epoch=st.one_of(st.none(), st.integers(-1, 2**31 - 1)),
)
def test_set_base_offset_keeps_crc_and_shifts_offsets(base_offset, leader_epoch):
    assume(base_offset + 3 < 2**63)
    batch = _batch(4)

    moved = set_base_offset(batch, base_offset, leader_epoch)

    assert verify_crc(moved)
    assert moved[16:] == batch[16:]
    assert moved[8:12] == batch[8:12]
    header = parse_batch_header(moved)
    assert header.base_offset == base_offset
    expected_epoch = -1 if leader_epoch is None else leader_epoch
    assert header.partition_leader_epoch == expected_epoch
    assert [r.offset for r in decode_batch(moved)] == [base_offset + i for i in range(4)]


def test_set_base_offset_rejects_out_of_range():
    with pytest.raises(InvalidRequest, match="base_offset"):
        set_base_offset(_batch(1), 2**63)
    with pytest.raises(InvalidRequest, match="leader_epoch"):
        set_base_offset(_batch(1), 0, 2**31)


def test_set_base_offset_rejects_short_batch():
    with pytest.raises(CorruptData):
        set_base_offset(b"\x00" * 20, 5)


def test_decode_rejects_flipped_payload_byte():
    batch = bytearray(_batch(3))
    batch[-3] ^= 0xFF

    with pytest.raises(CorruptData, match="CRC"):
        decode_batch(bytes(batch))


def test_decode_rejects_trailing_bytes():
    with pytest.raises(CorruptData, match="declares"):
        decode_batch(_batch(2) + b"\x00")


@FAST
@given(data=st.data(), compression=st.sampled_from([None, "gzip"]))
def test_decode_malformed_records_raise_only_corrupt(data, compression):
    # The CRC is recomputed after mutating, so the record parser itself is exercised.
    batch = bytearray(_batch(4, value_size=30, compression=compression))
    for _ in range(data.draw(st.integers(1, 3))):
        batch[data.draw(st.integers(HEADER_SIZE, len(batch) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        struct.pack_into(">i", batch, 57, data.draw(st.integers(0, 10)))
    mutated = _with_fixed_crc(batch)

    try:
        decoded = decode_batch(mutated)
    except CorruptData:
        return
    assert all(isinstance(r, DecodedRecord) for r in decoded)


def test_decode_control_batch_is_empty():
    batch = bytearray(_batch(1))
    struct.pack_into(">h", batch, 21, 0x20)

    assert decode_batch(_with_fixed_crc(batch)) == []


def test_decode_unknown_compression_code_is_corrupt():
    batch = bytearray(_batch(1))
    struct.pack_into(">h", batch, 21, 0x07)

    with pytest.raises(CorruptData, match="compression code 7"):
        decode_batch(_with_fixed_crc(batch))
