"""Kafka's consumer-protocol payloads: ConsumerProtocolSubscription (the metadata of a
JoinGroup protocol) and ConsumerProtocolAssignment (a member's SyncGroup assignment).

Each is an int16 version followed by that version's schema (Kafka's ``ConsumerProtocol``).
The bodies are kio's generated schemas (``kio.schema.consumer_protocol_*``), written and
read by kio's entity writer and reader; the version prefix by kio's int16 writer/reader.

Rules this module keeps:

1. Write version 3, the newest, as Kafka's Java client does; librdkafka and the Java
   client read it. Assignments carry no user data (range and roundrobin need none).
2. Read any version >= 0. A version newer than 3 is read as 3: Kafka's compatibility
   rule for these payloads is that newer versions only append fields.
3. A member's bytes are untrusted (another client wrote them): lengths are bounds-checked
   (``bounds.check_body``) before kio's native reader sees them, and anything that does
   not decode raises ``CorruptData``.

Never: I/O, clocks, or group logic (assignors live in ``core/assignor.py``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kio.schema.consumer_protocol_assignment.v0 import data as assignment_v0
from kio.schema.consumer_protocol_assignment.v1 import data as assignment_v1
from kio.schema.consumer_protocol_assignment.v2 import data as assignment_v2
from kio.schema.consumer_protocol_assignment.v3 import data as assignment_v3
from kio.schema.consumer_protocol_subscription.v0 import data as subscription_v0
from kio.schema.consumer_protocol_subscription.v1 import data as subscription_v1
from kio.schema.consumer_protocol_subscription.v2 import data as subscription_v2
from kio.schema.consumer_protocol_subscription.v3 import data as subscription_v3
from kio.schema.types import TopicName
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import SerialError
from kio.serial.readers import read_int16
from kio.serial.writers import write_int16
from kio.static.primitive import i16, i32

from ray_stream.core.types import TopicPartition
from ray_stream.errors import CorruptData
from ray_stream.kafka.bounds import check_body

__all__ = [
    "CONSUMER_PROTOCOL_TYPE",
    "Subscription",
    "decode_assignment",
    "decode_subscription",
    "encode_assignment",
    "encode_subscription",
]

CONSUMER_PROTOCOL_TYPE = "consumer"  # JoinGroup's protocol_type for consumer groups

_SUBSCRIPTIONS: tuple[Any, ...] = (
    subscription_v0.ConsumerProtocolSubscription,
    subscription_v1.ConsumerProtocolSubscription,
    subscription_v2.ConsumerProtocolSubscription,
    subscription_v3.ConsumerProtocolSubscription,
)
_ASSIGNMENTS: tuple[Any, ...] = (
    assignment_v0.ConsumerProtocolAssignment,
    assignment_v1.ConsumerProtocolAssignment,
    assignment_v2.ConsumerProtocolAssignment,
    assignment_v3.ConsumerProtocolAssignment,
)
_WRITE_VERSION = 3
_READ_ERRORS = (SerialError, ValueError, TypeError, OverflowError, UnicodeDecodeError, KeyError)


@dataclass(frozen=True, slots=True)
class Subscription:
    """A member's subscription as its JoinGroup metadata carries it.

    Attributes:
        topics: the topics it wants to consume.
        owned_partitions: what it owns now (v1+; eager assignors ignore it).
        generation_id: the generation it owns them in (v2+; -1 when none).
        rack_id: its rack, Kafka's ``client.rack`` (v3+; here the client's zone).
        user_data: assignor-specific bytes (None: none).
    """

    topics: tuple[str, ...]
    owned_partitions: tuple[TopicPartition, ...] = ()
    generation_id: int = -1
    rack_id: str | None = None
    user_data: bytes | None = None


def encode_subscription(subscription: Subscription) -> bytes:
    """The ConsumerProtocolSubscription v3 bytes of ``subscription``."""
    cls = subscription_v3.ConsumerProtocolSubscription
    body = cls(
        topics=tuple(subscription.topics),
        user_data=subscription.user_data,
        owned_partitions=tuple(
            subscription_v3.TopicPartition(topic=TopicName(topic), partitions=parts)
            for topic, parts in _by_topic(subscription.owned_partitions)
        ),
        generation_id=i32(subscription.generation_id),
        rack_id=subscription.rack_id,
    )
    return _write(cls, body)


def decode_subscription(data: bytes) -> Subscription:
    """Read a ConsumerProtocolSubscription of any version (rule 2).

    Raises:
        CorruptData: the bytes are not a subscription.
    """
    _, body = _read(_SUBSCRIPTIONS, data, "subscription")
    owned = tuple(
        TopicPartition(str(tp.topic), int(p))
        for tp in getattr(body, "owned_partitions", ())
        for p in tp.partitions
    )
    return Subscription(
        topics=tuple(str(t) for t in body.topics),
        owned_partitions=owned,
        generation_id=int(getattr(body, "generation_id", -1)),
        rack_id=getattr(body, "rack_id", None),
        user_data=body.user_data,
    )


def encode_assignment(partitions: Iterable[TopicPartition]) -> bytes:
    """The ConsumerProtocolAssignment v3 bytes assigning ``partitions``."""
    cls = assignment_v3.ConsumerProtocolAssignment
    body = cls(
        assigned_partitions=tuple(
            assignment_v3.TopicPartition(topic=TopicName(topic), partitions=parts)
            for topic, parts in _by_topic(partitions)
        ),
        user_data=None,
    )
    return _write(cls, body)


def decode_assignment(data: bytes) -> list[TopicPartition]:
    """The partitions a ConsumerProtocolAssignment of any version assigns. Empty bytes
    (a member the leader assigned nothing, as some leaders send it) assign nothing.

    Raises:
        CorruptData: the bytes are not an assignment.
    """
    if not data:
        return []
    _, body = _read(_ASSIGNMENTS, data, "assignment")
    return [
        TopicPartition(str(tp.topic), int(p))
        for tp in body.assigned_partitions
        for p in tp.partitions
    ]


def _by_topic(partitions: Iterable[TopicPartition]) -> list[tuple[str, tuple[i32, ...]]]:
    grouped: dict[str, list[int]] = {}
    for tp in partitions:
        grouped.setdefault(tp.topic, []).append(tp.partition)
    return [(topic, tuple(i32(p) for p in sorted(ps))) for topic, ps in sorted(grouped.items())]


def _write(cls: Any, body: Any) -> bytes:
    buffer = io.BytesIO()
    write_int16(buffer, i16(_WRITE_VERSION))
    entity_writer(cls)(buffer, body)
    return buffer.getvalue()


def _read(schemas: tuple[Any, ...], data: bytes, what: str) -> tuple[int, Any]:
    """(version, body) of a versioned payload (rules 2 and 3)."""
    try:
        version, offset = read_int16(data, 0)
        if version < 0:
            raise CorruptData(f"consumer protocol {what} has version {version}")
        cls = schemas[min(version, len(schemas) - 1)]
        check_body(cls, data, offset)
        body, _ = entity_reader(cls)(data, offset)
    except _READ_ERRORS as exc:
        raise CorruptData(f"consumer protocol {what} does not decode: {exc!r}") from exc
    return version, body
