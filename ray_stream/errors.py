"""The ray_stream error hierarchy.

Tree::

    RayStreamError
    ├── InvalidRequest          fix the input; never retried
    │   ├── InvalidTopic
    │   ├── InvalidPartitions
    │   ├── UnknownTopicOrPartition
    │   ├── TopicAlreadyExists
    │   ├── RecordTooLarge
    │   ├── OffsetOutOfRange
    │   ├── OutOfOrderSequence
    │   ├── InvalidProducerEpoch
    │   └── InvalidConfig
    ├── Unavailable             transient; retry (maybe elsewhere)
    │   ├── StorageUnavailable
    │   └── Overloaded          not accepted (buffer full): safe to resend
    ├── Conflict                re-read, retry
    │   └── PreconditionFailed
    ├── NotFound                an object or entity does not exist
    ├── Fenced                  a newer epoch won; stop
    ├── CorruptData             bytes failed a check; do not retry
    └── InternalError

Rules: exceptions cross Ray processes, so every class takes picklable positional args
only (the message). The *kind* is API; the message is free-form. Translation to Kafka
error codes lives in ``kafka/handlers.py``, never here.
"""

from __future__ import annotations


class RayStreamError(Exception):
    """Base of every error ray_stream raises on purpose."""

    retryable: bool = False


class InvalidRequest(RayStreamError):
    """The caller sent something that can never succeed as sent."""


class InvalidTopic(InvalidRequest):
    """A topic name breaks Kafka's rules (1-249 chars of [a-zA-Z0-9._-], not '.' or '..')."""


class InvalidPartitions(InvalidRequest):
    """A partition count or partition index is out of range."""


class UnknownTopicOrPartition(InvalidRequest):
    """The topic or partition does not exist."""


class TopicAlreadyExists(InvalidRequest):
    """create_topic for a name that exists."""


class RecordTooLarge(InvalidRequest):
    """A record or batch is over the configured size limit."""


class OffsetOutOfRange(InvalidRequest):
    """A fetch or seek offset is outside [log_start_offset, high_watermark]."""


class OutOfOrderSequence(InvalidRequest):
    """An idempotent producer skipped a sequence number."""


class InvalidProducerEpoch(InvalidRequest):
    """An idempotent producer used an epoch older than the current one."""


class InvalidConfig(InvalidRequest):
    """A setting or topic config has an invalid value; the message names the key."""


class Unavailable(RayStreamError):
    """A component is down or overloaded; the same call may succeed later."""

    retryable = True


class StorageUnavailable(Unavailable):
    """The object store failed or timed out."""


class Overloaded(Unavailable):
    """The server is at its buffer limit and did not accept the request.

    Unlike a plain Unavailable, nothing of the request was taken in, so resending it
    can never duplicate data.
    """


class Conflict(RayStreamError):
    """A concurrent change won; re-read and retry."""

    retryable = True


class PreconditionFailed(Conflict):
    """A create-only or If-Match write found the object in another state."""


class NotFound(RayStreamError):
    """An object, topic or group does not exist."""


class Fenced(RayStreamError):
    """A newer epoch of a singleton took over; this one must stop."""


class CorruptData(RayStreamError):
    """Bytes failed a CRC or format check."""


class InternalError(RayStreamError):
    """A bug: an invariant did not hold."""
