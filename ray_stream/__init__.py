"""ray_stream: a WarpStream-style streaming log on Ray.

Start the embedded cluster with :func:`start_local`, attach to a running one with
:func:`connect` (again after the cluster restarts); both return a :class:`Cluster`, a
context manager: ``close()`` detaches, ``shutdown()`` also stops a cluster it started.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_stream.client.cluster import Cluster, connect, start_local
    from ray_stream.client.consumer import Consumer, ConsumerRecord
    from ray_stream.client.producer import Producer, RecordMetadata
    from ray_stream.config import Settings
    from ray_stream.core.acl import AclBinding, AclFilter
    from ray_stream.core.types import TopicInfo, TopicPartition
    from ray_stream.errors import (
        BufferFull,
        Conflict,
        CorruptData,
        Fenced,
        InternalError,
        InvalidConfig,
        InvalidPartitions,
        InvalidRequest,
        InvalidTopic,
        NotFound,
        OffsetOutOfRange,
        RayStreamError,
        RecordTooLarge,
        TopicAlreadyExists,
        Unavailable,
        UnknownTopicOrPartition,
    )

# Public names -> the module that defines them. Imported on first use (PEP 562), so
# ``import ray_stream.core`` (or any pure module) never imports Ray or the client.
_HOMES = {
    "Cluster": "ray_stream.client.cluster",
    "connect": "ray_stream.client.cluster",
    "start_local": "ray_stream.client.cluster",
    "Consumer": "ray_stream.client.consumer",
    "ConsumerRecord": "ray_stream.client.consumer",
    "Producer": "ray_stream.client.producer",
    "RecordMetadata": "ray_stream.client.producer",
    "Settings": "ray_stream.config",
    "AclBinding": "ray_stream.core.acl",
    "AclFilter": "ray_stream.core.acl",
    "TopicInfo": "ray_stream.core.types",
    "TopicPartition": "ray_stream.core.types",
    **{
        name: "ray_stream.errors"
        for name in (
            "BufferFull",
            "Conflict",
            "CorruptData",
            "Fenced",
            "InternalError",
            "InvalidConfig",
            "InvalidPartitions",
            "InvalidRequest",
            "InvalidTopic",
            "NotFound",
            "OffsetOutOfRange",
            "RayStreamError",
            "RecordTooLarge",
            "TopicAlreadyExists",
            "Unavailable",
            "UnknownTopicOrPartition",
        )
    },
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ray_stream' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "AclBinding",
    "AclFilter",
    "BufferFull",
    "Cluster",
    "Conflict",
    "Consumer",
    "ConsumerRecord",
    "CorruptData",
    "Fenced",
    "InternalError",
    "InvalidConfig",
    "InvalidPartitions",
    "InvalidRequest",
    "InvalidTopic",
    "NotFound",
    "OffsetOutOfRange",
    "Producer",
    "RayStreamError",
    "RecordMetadata",
    "RecordTooLarge",
    "Settings",
    "TopicAlreadyExists",
    "TopicInfo",
    "TopicPartition",
    "Unavailable",
    "UnknownTopicOrPartition",
    "connect",
    "start_local",
]
__version__ = "0.1.0"
