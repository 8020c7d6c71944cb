"""Reading partitions through agents: one partition in this process, or many as Ray
tasks for ``Cluster.read_dataset``."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from ray_stream.actors.handles import get, get_agent
from ray_stream.kafka.tables import SCHEMA, decode_to_table

__all__ = ["dataset_from_partitions", "read_partition"]

READ_CHUNK_BYTES = 32 * 1024 * 1024


def read_partition(agent: Any, topic: str, partition: int, start: int, end: int) -> pa.Table:
    """Read ``[start, end)`` of one partition through ``agent`` (an actor handle).

    Raises:
        UnknownTopicOrPartition, OffsetOutOfRange, Unavailable, StorageUnavailable.
    """
    tables = [SCHEMA.empty_table()]
    position = start
    while position < end:
        (result,) = get(agent.fetch.remote([(topic, partition, position, READ_CHUNK_BYTES)], 0))
        if result.error is not None:
            raise result.error
        if not result.records:
            break
        table = decode_to_table(partition, result.records, position, end)
        if table.num_rows == 0:
            break
        tables.append(table)
        position = int(table.column("offset")[-1].as_py()) + 1
    return pa.concat_tables(tables)


@ray.remote(num_cpus=0)
def read_partition_task(
    namespace: str, agent_ids: list[int], topic: str, partition: int, start: int, end: int
) -> Any:
    agent = get_agent(namespace, agent_ids[partition % len(agent_ids)])
    return read_partition(agent, topic, partition, start, end)


def dataset_from_partitions(
    namespace: str, agent_ids: list[int], topic: str, ranges: list[tuple[int, int, int]]
) -> Any:
    """One Dataset block per partition range ``(partition, start, end)``, read through
    the agents ``agent_ids`` in turn."""
    import ray.data

    refs = [read_partition_task.remote(namespace, agent_ids, topic, p, s, e) for p, s, e in ranges]
    if not refs:
        return ray.data.from_arrow(SCHEMA.empty_table())
    return ray.data.from_arrow_refs(refs)
