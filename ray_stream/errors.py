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
    │   ├── DuplicateSequence   a resend of a batch written earlier than remembered
    │   ├── InvalidProducerEpoch
    │   ├── InvalidConfig
    │   ├── RoleNotServed       this agent's group does not serve produce (or consume)
    │   ├── AuthenticationFailed  SASL: unknown user, wrong password, broken exchange
    │   ├── SecurityDisabled    an ACL call on a cluster started without --authorizer
    │   └── AuthorizationFailed the principal may not (Topic/Group/Cluster...Failed)
    ├── Unavailable             transient; retry (maybe elsewhere)
    │   ├── StorageUnavailable
    │   ├── Overloaded          not accepted (buffer full): safe to resend
    │   ├── BufferFull          a client's own send buffer is full (nothing was queued)
    │   └── CoordinatorNotAvailable
    ├── GroupError              the group coordinator's answer; the member acts on it
    │   ├── UnknownMemberId, IllegalGeneration, RebalanceInProgress, MemberIdRequired,
    │   ├── InconsistentGroupProtocol, FencedInstanceId, InvalidGroupId,
    │   └── InvalidSessionTimeout, GroupIdNotFound, NonEmptyGroup
    ├── Conflict                re-read, retry
    │   └── PreconditionFailed
    ├── NotFound                an object or entity does not exist
    ├── Fenced                  a newer epoch won; stop
    ├── CorruptData             bytes failed a check; do not retry
    └── InternalError

Rules: exceptions cross Ray processes, so every class takes picklable positional args
only (the message). The *kind* is API; the message is free-form. Translation to Kafka
error codes lives in ``kafka/errors_map.py``, never here. A group error's class name,
in UPPER_SNAKE_CASE, is the Kafka error it stands for.
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


class DuplicateSequence(InvalidRequest):
    """An idempotent producer resent a batch that was committed before the oldest batch
    the metadata actor still remembers for it: it is in the log exactly once, at an
    offset no longer known (Kafka's DUPLICATE_SEQUENCE_NUMBER; clients count the batch
    as written)."""


class InvalidProducerEpoch(InvalidRequest):
    """An idempotent producer used an epoch older than the current one."""


class InvalidConfig(InvalidRequest):
    """A setting or topic config has an invalid value; the message names the key."""


class RoleNotServed(InvalidRequest):
    """The agent's group is restricted to other roles: use that role's group address."""


class AuthenticationFailed(InvalidRequest):
    """A SASL exchange failed: unknown user, wrong password, or a malformed or replayed
    message (Kafka's SASL_AUTHENTICATION_FAILED). The message never holds a secret."""


class SecurityDisabled(InvalidRequest):
    """A Kafka ACL request to a cluster whose authorizer is off (Kafka's
    SECURITY_DISABLED): start it with ``--authorizer acl``."""


class AuthorizationFailed(InvalidRequest):
    """The principal is not allowed the operation (core/acl.py); the subclass names the
    resource kind, as Kafka's error codes do."""


class TopicAuthorizationFailed(AuthorizationFailed):
    """Not allowed on the topic (or, for DESCRIBE, not allowed to know it exists)."""


class GroupAuthorizationFailed(AuthorizationFailed):
    """Not allowed on the consumer group."""


class ClusterAuthorizationFailed(AuthorizationFailed):
    """Not allowed on the cluster resource (ACL management, idempotent producers)."""


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


class BufferFull(Unavailable):
    """A producer's ``buffer_bytes`` are taken by records waiting for acknowledgement;
    the record was not queued. Flush, wait, or raise ``buffer_bytes``."""


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


class CoordinatorNotAvailable(Unavailable):
    """The group coordinator cannot answer now (it is restarting); find it again, retry."""


class GroupError(RayStreamError):
    """The group coordinator refused a member's request; the member acts on the kind as
    Kafka's classic group protocol says (rejoin, retry with its new member id, stop)."""


class UnknownMemberId(GroupError):
    """The member is not (or no longer) in the group: rejoin with an empty member id."""


class IllegalGeneration(GroupError):
    """The request names an older generation of the group: rejoin."""


class RebalanceInProgress(GroupError):
    """The group is rebalancing: rejoin."""


class MemberIdRequired(GroupError):
    """A new member must join again with the member id this answer assigned it."""


class InconsistentGroupProtocol(GroupError):
    """The member's protocol type or protocols do not match the group's."""


class FencedInstanceId(GroupError):
    """A newer member with the same static instance id took over."""


class InvalidGroupId(GroupError):
    """The group id is empty or not a string."""


class InvalidSessionTimeout(GroupError):
    """The session timeout is outside the coordinator's bounds."""


class GroupIdNotFound(GroupError):
    """The group does not exist."""


class NonEmptyGroup(GroupError):
    """The group still has members (it cannot be deleted)."""
