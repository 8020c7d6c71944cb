"""Ray tasks that read partitions in parallel, for ``Cluster.read_dataset``."""

from __future__ import annotations

from typing import Any

import ray

from ray_stream.actors.handles import get_agent


@ray.remote(num_cpus=0)
def read_partition_task(namespace: str, agents: int, topic: str, partition: int, start: int, end: int) -> Any:
    from ray_stream.client.table import read_partition

    return read_partition(get_agent(namespace, partition % agents), topic, partition, start, end)


def dataset_from_partitions(
    namespace: str, agents: int, topic: str, ranges: list[tuple[int, int, int]]
) -> Any:
    """One Dataset block per partition range ``(partition, start, end)``."""
    import ray.data

    from ray_stream.client.table import SCHEMA

    refs = [read_partition_task.remote(namespace, agents, topic, p, s, e) for p, s, e in ranges]
    if not refs:
        return ray.data.from_arrow(SCHEMA.empty_table())
    return ray.data.from_arrow_refs(refs)
