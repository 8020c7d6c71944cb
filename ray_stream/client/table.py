"""Topics as Arrow tables (and Ray Datasets), and Arrow tables as records to send.

The schema of a read is ``kafka/tables.py``'s ``SCHEMA``; partitions are read through
agents by ``actors/reader.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ray_stream.actors.reader import dataset_from_partitions, read_partition
from ray_stream.errors import InvalidRequest, Unavailable, UnknownTopicOrPartition
from ray_stream.kafka.tables import SCHEMA


def _ranges(
    cluster: Any,
    topic: str,
    partitions: list[int] | None,
    start: int | dict[int, int] | None,
    end: int | dict[int, int] | None,
) -> list[tuple[int, int, int]]:
    info = cluster.describe_topic(topic)
    chosen = list(range(info.partitions)) if partitions is None else list(partitions)
    bounds = {pi.partition: (pi.log_start_offset, pi.high_watermark) for pi in info.partition_info}
    out = []
    for p in chosen:
        if p not in bounds:
            raise UnknownTopicOrPartition(f"partition {p} does not exist in topic {topic!r}")
        lo, hi = bounds[p]
        s = start.get(p, lo) if isinstance(start, dict) else (lo if start is None else start)
        e = end.get(p, hi) if isinstance(end, dict) else (hi if end is None else end)
        if s < 0 or e < 0:
            raise InvalidRequest(f"start/end offsets must be >= 0, got start={s} end={e}")
        out.append((p, max(s, lo), min(e, hi)))
    return out


def read_table(
    cluster: Any,
    topic: str,
    *,
    partitions: list[int] | None,
    start: int | dict[int, int] | None,
    end: int | dict[int, int] | None,
) -> pa.Table:
    tables = [
        read_partition(cluster.agent(p), topic, p, s, e)
        for p, s, e in _ranges(cluster, topic, partitions, start, end)
        if s < e
    ]
    return pa.concat_tables([SCHEMA.empty_table(), *tables])


def read_dataset(cluster: Any, topic: str, *, partitions: list[int] | None) -> Any:
    ranges = [r for r in _ranges(cluster, topic, partitions, None, None) if r[1] < r[2]]
    agent_ids = [a.agent_id for a in cluster.agents(role="consume")]
    if not agent_ids:
        raise Unavailable("no live agent serves consume: `ray-stream status` shows the fleet")
    return dataset_from_partitions(cluster.settings.namespace, agent_ids, topic, ranges)


@dataclass(frozen=True, slots=True)
class TableColumns:
    """An Arrow table's rows as column lists, ready for ``encode_columns``."""

    values: list[bytes | None]
    keys: list[bytes | None] | None
    timestamps: list[int | None] | None
    headers: list[list[tuple[str, bytes | None]] | None] | None
    partitions: list[int | None] | None
    sizes: Any  # numpy int64 array: approximate encoded size of each row


def columns_from_table(table: Any, *, record_overhead: int) -> TableColumns:
    """Validate an Arrow table for ``send_batch`` and take its columns apart."""
    import numpy as np
    import pyarrow.compute as pc

    if not isinstance(table, pa.Table | pa.RecordBatch):
        raise InvalidRequest(f"send_batch needs a pyarrow Table, got {type(table).__name__}")
    names = set(table.schema.names)
    if "value" not in names:
        raise InvalidRequest("send_batch: the table needs a 'value' column (binary or string)")
    value_col = _binary(table, "value")
    key_col = _binary(table, "key") if "key" in names else None
    sizes = _lengths(value_col, pc, np) + record_overhead
    if key_col is not None:
        sizes += _lengths(key_col, pc, np)
    headers = None
    if "headers" in names:
        headers = [
            [(h["key"], h["value"]) for h in row] if row else None
            for row in table.column("headers").to_pylist()
        ]
        sizes += np.array(
            [sum(len(k) + len(v or b"") + 4 for k, v in h or ()) for h in headers], np.int64
        )
    partitions = None
    if "partition" in names:
        if not pa.types.is_integer(table.column("partition").type):
            raise InvalidRequest("send_batch: column 'partition' must be an integer column")
        partitions = table.column("partition").to_pylist()
    return TableColumns(
        values=value_col.to_pylist(),
        keys=key_col.to_pylist() if key_col is not None else None,
        timestamps=_timestamp_column(table) if "timestamp" in names else None,
        headers=headers,
        partitions=partitions,
        sizes=sizes,
    )


def _lengths(col: Any, pc: Any, np: Any) -> Any:
    return np.asarray(
        pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False), np.int64
    )


def _binary(table: Any, name: str) -> Any:
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.binary())
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise InvalidRequest(
            f"send_batch: column {name!r} must be binary or string, not {col.type}"
        )
    return col


def _timestamp_column(table: Any) -> list[int | None]:
    col = table.column("timestamp")
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("ms")).cast(pa.int64())
    elif not pa.types.is_integer(col.type):
        raise InvalidRequest(
            f"send_batch: column 'timestamp' must be int64 ms or a timestamp, not {col.type}"
        )
    return col.to_pylist()
