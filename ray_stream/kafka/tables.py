"""Kafka records as Arrow tables: the schema a topic is read as, and the decoder.

Schema of a read: offset int64, partition int32, timestamp timestamp[ms, UTC], key binary,
value binary, headers list<struct<key: string, value: binary>>.

Never: do I/O; this turns fetched RecordBatch v2 bytes into rows and nothing else.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ray_stream.kafka.records import decode_batch, split_batches

__all__ = ["HEADER_TYPE", "SCHEMA", "decode_to_table"]

HEADER_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("partition", pa.int32()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("headers", HEADER_TYPE),
    ]
)


def decode_to_table(partition: int, records: bytes | bytearray, start: int, end: int) -> pa.Table:
    """Decode fetched batches to rows with offsets in ``[start, end)``.

    Raises:
        CorruptData: a batch is malformed.
    """
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for batch in split_batches(records):
        for rec in decode_batch(batch):
            if not start <= rec.offset < end:
                continue
            cols["offset"].append(rec.offset)
            cols["partition"].append(partition)
            cols["timestamp"].append(rec.timestamp_ms)
            cols["key"].append(rec.key)
            cols["value"].append(rec.value)
            cols["headers"].append([{"key": k, "value": v} for k, v in rec.headers])
    return pa.Table.from_pydict(cols, schema=SCHEMA)
