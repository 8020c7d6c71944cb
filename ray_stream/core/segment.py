"""Segment files: the Arrow IPC object an agent PUTs once per flush.

Format (``FORMAT_VERSION`` 1, stored in the schema metadata as ``format_version``):
an Arrow IPC *file* (``ARROW1`` magic, footer) with no buffer compression and exactly one
record batch. One row per producer RecordBatch; columns ``topic`` utf8, ``partition``
int32, ``record_count`` int32, ``first_timestamp`` int64, ``max_timestamp`` int64,
``producer_id`` int64, ``producer_epoch`` int16, ``base_sequence`` int32 and ``payload``
binary (the RecordBatch v2 bytes exactly as received, CRC intact).

Invariants this module owns:

- Rows are sorted by (topic, partition), arrival order kept within a partition, so
  each partition's payloads are one contiguous byte range of the file.
- Arrow stores a binary column's values back to back in one uncompressed data buffer,
  so every payload sits verbatim in the file. ``build_segment`` returns each payload's
  (position, length) and checks ``file[position:position + length] == payload`` for every
  batch before returning; a reader may GET just that range and hand it to a client.

Never: compress IPC buffers (positions would stop being byte ranges of payloads), or
read clocks or randomness (segment keys come from ``core/keys.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import pyarrow as pa

from ray_stream.errors import CorruptData, InternalError, InvalidRequest, RecordTooLarge

__all__ = [
    "FORMAT_VERSION",
    "SCHEMA",
    "SegmentBatch",
    "build_segment",
    "read_segment",
]

FORMAT_VERSION = 1

SCHEMA = pa.schema(
    [
        pa.field("topic", pa.utf8(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("record_count", pa.int32(), nullable=False),
        pa.field("first_timestamp", pa.int64(), nullable=False),
        pa.field("max_timestamp", pa.int64(), nullable=False),
        pa.field("producer_id", pa.int64(), nullable=False),
        pa.field("producer_epoch", pa.int16(), nullable=False),
        pa.field("base_sequence", pa.int32(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
    ],
    metadata={"format_version": str(FORMAT_VERSION)},
)
_PAYLOAD_INDEX = SCHEMA.get_field_index("payload")
_MAX_PAYLOAD_BYTES = 2**31 - 1  # pa.binary() has int32 value offsets
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression=None, use_threads=False)


@dataclass(frozen=True, slots=True)
class SegmentBatch:
    """One producer RecordBatch to put in a segment, with the header fields indexed."""

    topic: str
    partition: int
    payload: bytes | memoryview
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1


def build_segment(batches: Sequence[SegmentBatch]) -> tuple[memoryview, list[tuple[int, int]]]:
    """Write ``batches`` as one segment file.

    Args:
        batches: in arrival order; may be empty (a valid file with no rows). Payloads
            may be any bytes-like objects (memoryviews of received requests).

    Returns:
        A read-only view of the file bytes (Arrow's buffer: no copy into a Python
        ``bytes``) and, in input order, each payload's (position, length) inside them:
        ``file[position:position + length] == batches[i].payload``.

    Raises:
        InvalidRequest: a field does not fit its column type.
        RecordTooLarge: the payloads add up to more than 2 GiB.
        InternalError: the written file does not hold the payloads at the computed
            positions (a pyarrow behaviour change; never expected).
    """
    order = sorted(range(len(batches)), key=lambda i: (batches[i].topic, batches[i].partition))
    rows = [batches[i] for i in order]
    lengths = [len(row.payload) for row in rows]
    total = sum(lengths)
    if total > _MAX_PAYLOAD_BYTES:
        raise RecordTooLarge(f"segment payloads total {total} bytes, over the 2 GiB limit")
    joined = b"".join(row.payload for row in rows)
    record_batch = _to_record_batch(rows, lengths, joined)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SCHEMA, options=_WRITE_OPTIONS) as writer:
        writer.write_batch(record_batch)
    file_buffer = sink.getvalue()
    start = _payload_start(file_buffer, len(rows))
    # One memcmp over the whole payload region: the payloads are back to back in the
    # file exactly as in ``joined``, so every (position, length) below holds its batch.
    if total and not file_buffer.slice(start, total).equals(pa.py_buffer(joined)):
        raise InternalError("segment payloads are not stored verbatim at the computed positions")
    positions: list[tuple[int, int]] = [(0, 0)] * len(batches)
    position = start
    for index, length in zip(order, lengths, strict=True):
        positions[index] = (position, length)
        position += length
    return memoryview(file_buffer).cast("B"), positions  # unsigned bytes, like bytes


def _to_record_batch(
    rows: Sequence[SegmentBatch], lengths: list[int], joined: bytes
) -> pa.RecordBatch:
    columns = {
        "topic": [row.topic for row in rows],
        "partition": [row.partition for row in rows],
        "record_count": [row.record_count for row in rows],
        "first_timestamp": [row.first_timestamp for row in rows],
        "max_timestamp": [row.max_timestamp for row in rows],
        "producer_id": [row.producer_id for row in rows],
        "producer_epoch": [row.producer_epoch for row in rows],
        "base_sequence": [row.base_sequence for row in rows],
    }
    arrays = []
    for field in SCHEMA:
        if field.name == "payload":
            arrays.append(_binary_array(lengths, joined))
            continue
        try:
            arrays.append(pa.array(columns[field.name], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
            raise InvalidRequest(
                f"segment column {field.name!r} ({field.type}) rejects a value: {exc}"
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _binary_array(lengths: list[int], joined: bytes) -> pa.Array:
    """A binary array over the joined payloads (no per-value append)."""
    offsets = list(accumulate(lengths, initial=0))
    return pa.Array.from_buffers(
        pa.binary(),
        len(lengths),
        [None, pa.py_buffer(struct.pack(f"<{len(offsets)}i", *offsets)), pa.py_buffer(joined)],
    )


def _payload_start(file_buffer: pa.Buffer, row_count: int) -> int:
    """Byte position of the payload column's data in the file, read back zero-copy.

    Reading an uncompressed IPC file from a buffer slices that buffer, so the payload
    column's data buffer address minus the file's address is its offset in the file.
    """
    if row_count == 0:
        return 0
    reader = pa.ipc.open_file(pa.BufferReader(file_buffer))
    if reader.num_record_batches != 1:
        raise InternalError(f"segment has {reader.num_record_batches} record batches, not 1")
    payload = reader.get_batch(0).column(_PAYLOAD_INDEX)
    data_buffer = payload.buffers()[2]
    if data_buffer is None or data_buffer.size == 0:  # every payload is empty
        return 0
    start = data_buffer.address - file_buffer.address
    if start < 0 or start + data_buffer.size > file_buffer.size or payload.offset != 0:
        raise InternalError("pyarrow copied the segment's payload buffer on read")
    return int(start)


def read_segment(data: bytes | memoryview) -> pa.Table:
    """Parse a whole segment file into a table (columns as in ``SCHEMA``).

    Raises:
        CorruptData: not an Arrow IPC file, or a missing/unsupported format_version.
    """
    try:
        reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(data)))
        table = reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise CorruptData(f"segment is not a readable Arrow IPC file: {exc}") from exc
    metadata = table.schema.metadata or {}
    version = metadata.get(b"format_version")
    if version != str(FORMAT_VERSION).encode():
        raise CorruptData(
            f"segment format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    return table
