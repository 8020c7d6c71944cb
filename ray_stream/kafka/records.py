"""Kafka RecordBatch v2 (magic 2): header parsing, splitting, CRC, offset rewrite, codec.

Layout of the 61-byte header (big endian, KIP-98 / DefaultRecordBatch.java)::

    0  baseOffset            int64   \\ "log overhead": outside the CRC, and
    8  batchLength           int32   /  batchLength counts the bytes after it
    12 partitionLeaderEpoch  int32   outside the CRC (the broker assigns it)
    16 magic                 int8
    17 crc                   uint32  CRC-32C of bytes 21..end
    21 attributes            int16   bits 0-2 compression, 3 timestamp type,
    23 lastOffsetDelta       int32        4 transactional, 5 control
    27 baseTimestamp         int64
    35 maxTimestamp          int64
    43 producerId            int64
    51 producerEpoch         int16
    53 baseSequence          int32
    57 recordsCount          int32
    61 records...

Invariants this module owns:

- Stored batches are the producer's bytes exactly; the only edits ever made are
  ``baseOffset`` (and optionally ``partitionLeaderEpoch``) in ``set_base_offset``, both
  outside the CRC, so a rewritten batch still passes ``verify_crc``.
- Every malformed input raises ``CorruptData`` (never ``struct.error``, ``IndexError``
  or a codec's own exception); a missing compression library is ``InvalidRequest``.
- Record encoding/decoding is delegated to aiokafka's C-accelerated codec
  (``DefaultRecordBatchBuilder`` / ``DefaultRecordBatch``); CRCs are computed with the
  ``crc32c`` package (hardware accelerated).

Never: import I/O or clocks. Records without a timestamp take the caller's ``now_ms``
(aiokafka's builder would read ``time.time()``, so it is never handed ``None``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c
from aiokafka import codec as _codec
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from ray_stream.errors import CorruptData, InvalidRequest, RecordTooLarge

__all__ = [
    "COMPRESSION_CODES",
    "HEADER_SIZE",
    "BatchHeader",
    "DecodedRecord",
    "Record",
    "available_compressions",
    "decode_batch",
    "encode_batch",
    "parse_batch_header",
    "set_base_offset",
    "split_batches",
    "split_views",
    "verify_crc",
]

_HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = _HEADER.size  # 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: not counted in batchLength
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD  # 49: a header with zero records
CRC_START = 21  # the CRC covers attributes..end
_MAGIC_AT = 16
_INT64 = struct.Struct(">q")
_INT32 = struct.Struct(">i")

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20

# Kafka's attribute codes (CompressionType.java).
COMPRESSION_CODES: dict[str, int] = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_CODEC_NAMES = {code: name for name, code in COMPRESSION_CODES.items()}
# aiokafka needs cramjam for snappy, lz4 and zstd; gzip is in the standard library.
_CODEC_AVAILABLE = {
    0: lambda: True,
    1: _codec.has_gzip,
    2: _codec.has_snappy,
    3: _codec.has_lz4,
    4: _codec.has_zstd,
}
_MAX_BATCH_BYTES = 2**31 - 1  # batchLength is an int32

# What aiokafka's reader and the decompressors raise on bytes that passed the CRC but
# are still malformed (a buggy producer): gzip raises OSError/EOFError/zlib.error, the
# varint and UTF-8 decoders ValueError/IndexError.
_DECODE_ERRORS = (CorruptRecordException, EOFError, OSError, zlib.error, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed 61-byte header of one RecordBatch v2."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def total_size(self) -> int:
        """Bytes of the whole batch: log overhead (12) plus ``batch_length``."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def compression(self) -> int:
        """Kafka compression code: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_MASK)


@dataclass(frozen=True, slots=True)
class Record:
    """One record to encode. ``value=None`` is a tombstone; ``timestamp_ms=None`` means now."""

    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """One record read back from a batch, with its absolute offset."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def parse_batch_header(data: bytes | memoryview, offset: int = 0) -> BatchHeader:
    """Parse the header of the batch starting at ``data[offset]``.

    Only the header is checked (presence, magic, batchLength, recordsCount); whether the
    whole batch is present is the caller's business (see ``split_batches``).

    Raises:
        CorruptData: fewer than 61 bytes, magic other than 2, batchLength below 49
            or a negative recordsCount.
    """
    available = len(data) - offset
    if offset < 0 or available < _MAGIC_AT + 1:
        raise CorruptData(
            f"truncated record batch at byte {offset}: {max(available, 0)} bytes, "
            f"need at least {_MAGIC_AT + 1} to read magic"
        )
    magic = struct.unpack_from(">b", data, offset + _MAGIC_AT)[0]
    if magic != 2:
        raise CorruptData(
            f"record batch at byte {offset} has magic {magic}; only magic 2 (RecordBatch v2) "
            "is supported"
        )
    batch_length = _INT32.unpack_from(data, offset + 8)[0]
    if batch_length < MIN_BATCH_LENGTH:
        raise CorruptData(
            f"record batch at byte {offset} has batchLength {batch_length}, "
            f"below the minimum {MIN_BATCH_LENGTH}"
        )
    if available < HEADER_SIZE:
        raise CorruptData(
            f"truncated record batch header at byte {offset}: {available} bytes, need {HEADER_SIZE}"
        )
    header = BatchHeader(*_HEADER.unpack_from(data, offset))
    if header.record_count < 0:
        raise CorruptData(
            f"record batch at byte {offset} has negative recordsCount {header.record_count}"
        )
    return header


def split_batches(records: bytes | bytearray | memoryview) -> list[bytes]:
    """Split a Kafka ``records`` field (concatenated RecordBatch v2) into batches.

    Args:
        records: the bytes of a ProduceRequest partition's ``records``; may be empty.

    Returns:
        Each batch's bytes, in order; their concatenation equals ``records``.

    Raises:
        CorruptData: a header is malformed (see ``parse_batch_header``) or the last
            batch is cut short.
    """
    return [bytes(view) for view in split_views(records)]


def split_views(records: bytes | bytearray | memoryview) -> list[memoryview]:
    """``split_batches`` without copying: read-only views into ``records``.

    Raises:
        As ``split_batches``.
    """
    whole = memoryview(records).toreadonly()
    views: list[memoryview] = []
    position = 0
    end = len(whole)
    while position < end:
        header = parse_batch_header(whole, position)
        batch_end = position + header.total_size
        if batch_end > end:
            raise CorruptData(
                f"truncated record batch at byte {position}: batchLength "
                f"{header.batch_length} needs {header.total_size} bytes, "
                f"{end - position} remain"
            )
        views.append(whole[position:batch_end])
        position = batch_end
    return views


def verify_crc(batch: bytes | memoryview) -> bool:
    """True if the stored CRC-32C matches bytes 21..end of ``batch``.

    ``batch`` must be exactly one batch (trailing bytes make the check fail). A buffer
    too short to hold a header returns False.
    """
    if len(batch) < HEADER_SIZE:
        return False
    stored: int = struct.unpack_from(">I", batch, 17)[0]
    return stored == crc32c.crc32c(memoryview(batch)[CRC_START:])


def set_base_offset(
    batch: bytes | memoryview, base_offset: int, leader_epoch: int | None = None
) -> bytes:
    """Return a copy of ``batch`` with baseOffset (bytes 0-8) replaced.

    When ``leader_epoch`` is given, partitionLeaderEpoch (bytes 12-16) is replaced too.
    Both fields lie before the CRC-covered range, so the CRC stays valid.

    Raises:
        CorruptData: ``batch`` is shorter than a batch header.
        InvalidRequest: ``base_offset`` is not an int64 or ``leader_epoch`` not an int32.
    """
    if len(batch) < HEADER_SIZE:
        raise CorruptData(f"record batch of {len(batch)} bytes is shorter than its header")
    if not -(2**63) <= base_offset < 2**63:
        raise InvalidRequest(f"base_offset {base_offset} does not fit in int64")
    view = memoryview(batch)
    if leader_epoch is None:
        return _INT64.pack(base_offset) + view[8:]
    if not -(2**31) <= leader_epoch < 2**31:
        raise InvalidRequest(f"leader_epoch {leader_epoch} does not fit in int32")
    return b"".join((_INT64.pack(base_offset), view[8:12], _INT32.pack(leader_epoch), view[16:]))


def available_compressions() -> tuple[str, ...]:
    """Names of the compression codecs usable in this process (always 'none' and 'gzip')."""
    return tuple(name for name, code in COMPRESSION_CODES.items() if _CODEC_AVAILABLE[code]())


def _compression_code(compression: str | None) -> int:
    name = "none" if compression is None else compression.lower()
    code = COMPRESSION_CODES.get(name)
    if code is None:
        raise InvalidRequest(
            f"unknown compression {compression!r}; expected one of {sorted(COMPRESSION_CODES)}"
        )
    _require_codec(code)
    return code


def _require_codec(code: int) -> None:
    if not _CODEC_AVAILABLE[code]():
        raise InvalidRequest(
            f"compression codec {_CODEC_NAMES[code]!r} is not available: aiokafka needs the "
            "'cramjam' package for snappy, lz4 and zstd"
        )


def _check_range(name: str, value: int, bits: int) -> None:
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise InvalidRequest(f"{name} {value} does not fit in int{bits}")


def encode_batch(
    records: Sequence[Record],
    *,
    now_ms: int,
    compression: str | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """Encode ``records`` as one RecordBatch v2 with base offset 0 and offset deltas 0..n-1.

    Args:
        records: at least one record.
        now_ms: timestamp for records whose ``timestamp_ms`` is None.
        compression: None/"none", "gzip", "snappy", "lz4" or "zstd". If compressing
            does not make the records smaller, the batch is written uncompressed
            (aiokafka's behaviour, which Kafka accepts).
        producer_id, producer_epoch, base_sequence: idempotent-producer fields
            (-1 when not idempotent).

    Returns:
        The batch bytes; ``verify_crc`` is true for them.

    Raises:
        InvalidRequest: no records, a key/value/header of the wrong type, an out-of-range
            producer field, an unknown compression name or a codec whose library is missing.
        RecordTooLarge: the batch would exceed 2 GiB.
    """
    if not records:
        raise InvalidRequest("encode_batch needs at least one record")
    code = _compression_code(compression)
    _check_range("producer_id", producer_id, 64)
    _check_range("producer_epoch", producer_epoch, 16)
    _check_range("base_sequence", base_sequence, 32)
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=code,
        is_transactional=0,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=_MAX_BATCH_BYTES,
    )
    append = builder.append
    for index, record in enumerate(records):
        timestamp = now_ms if record.timestamp_ms is None else record.timestamp_ms
        headers = list(record.headers) if record.headers else []
        try:
            written = append(index, timestamp, record.key, record.value, headers)
        except (TypeError, OverflowError, UnicodeEncodeError) as exc:
            raise InvalidRequest(f"record {index} cannot be encoded: {exc}") from exc
        if written is None:
            raise RecordTooLarge(f"record {index} would make the batch larger than 2 GiB")
    return bytes(builder.build())


def encode_columns(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    timestamps: Sequence[int | None] | None = None,
    headers: Sequence[Sequence[tuple[str, bytes | None]] | None] | None = None,
    now_ms: int,
    compression: str | None = None,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """``encode_batch`` for column lists (the Arrow path): no Record object per row.

    Raises:
        InvalidRequest: no rows, a value of the wrong type, an out-of-range producer
            field, an unknown compression.
        RecordTooLarge: the batch would exceed 2 GiB.
    """
    if not values:
        raise InvalidRequest("encode_columns needs at least one row")
    _check_range("producer_id", producer_id, 64)
    _check_range("producer_epoch", producer_epoch, 16)
    _check_range("base_sequence", base_sequence, 32)
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=_compression_code(compression),
        is_transactional=0,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=_MAX_BATCH_BYTES,
    )
    append = builder.append
    no_headers: list[tuple[str, bytes | None]] = []
    try:
        for index, value in enumerate(values):
            key = keys[index] if keys is not None else None
            ts = timestamps[index] if timestamps is not None else None
            hdrs = headers[index] if headers is not None else None
            written = append(
                index,
                now_ms if ts is None else ts,
                key,
                value,
                list(hdrs) if hdrs else no_headers,
            )
            if written is None:
                raise RecordTooLarge(f"row {index} would make the batch larger than 2 GiB")
    except (TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise InvalidRequest(f"row cannot be encoded: {exc}") from exc
    return bytes(builder.build())


def decode_batch(batch: bytes | memoryview) -> list[DecodedRecord]:
    """Decode one RecordBatch v2 (any supported compression) after checking its CRC.

    Offsets are absolute: ``base_offset + offset_delta``. Control batches (transaction
    markers) hold no user records and decode to an empty list, as consumers skip them.

    Raises:
        CorruptData: malformed header, length mismatch, CRC mismatch, an unknown
            compression code or records that do not parse.
        InvalidRequest: the batch uses a codec whose library is not installed.
    """
    header = parse_batch_header(batch)
    if header.total_size != len(batch):
        raise CorruptData(
            f"record batch declares {header.total_size} bytes but {len(batch)} were given"
        )
    if not verify_crc(batch):
        raise CorruptData(
            f"record batch at base offset {header.base_offset} failed its CRC-32C check"
        )
    if header.is_control:
        return []
    if header.compression not in _CODEC_AVAILABLE:
        raise CorruptData(f"record batch has unknown compression code {header.compression}")
    _require_codec(header.compression)
    try:
        return [
            DecodedRecord(
                offset=record.offset,
                timestamp_ms=record.timestamp,
                key=record.key,
                value=record.value,
                headers=tuple(record.headers),
            )
            for record in DefaultRecordBatch(bytes(batch))
        ]
    except _DECODE_ERRORS as exc:
        raise CorruptData(
            f"records of the batch at base offset {header.base_offset} do not parse: {exc}"
        ) from exc
