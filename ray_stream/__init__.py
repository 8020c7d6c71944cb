"""ray_stream: a WarpStream-style streaming log on Ray.

Start the embedded cluster with :func:`start_local`, attach to a running one with
:func:`connect`; both return a :class:`Cluster`.
"""

from __future__ import annotations

from ray_stream.client.cluster import Cluster, connect, start_local
from ray_stream.client.consumer import Consumer, ConsumerRecord
from ray_stream.client.producer import Producer, RecordMetadata
from ray_stream.config import Settings
from ray_stream.core.types import TopicInfo, TopicPartition
from ray_stream.errors import (
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

__all__ = [
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
