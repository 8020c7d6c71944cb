"""ray_stream errors -> Kafka error codes.

Responsibility: the one place where ray_stream's error kinds become wire error codes
(STYLE.md section 6); handlers call ``error_code(exc)`` and never pick numbers
themselves.

Invariants: every exception maps to some code (unknown ones to UNKNOWN_SERVER_ERROR);
the most specific class wins (the table is searched along the exception's MRO, so a
``RayTaskError`` that subclasses the original error maps like the original). Transient
failures map to codes clients retry: the data is safe to resend because produce is
idempotent or at-least-once by Kafka's own contract.
"""

from __future__ import annotations

import logging

from kio.schema.errors import ErrorCode

from ray_stream import errors

__all__ = ["error_code", "error_message", "note_unexpected"]

log = logging.getLogger("ray_stream.kafka.handlers")

_BY_CLASS: dict[type[BaseException], ErrorCode] = {
    errors.UnknownTopicOrPartition: ErrorCode.unknown_topic_or_partition,
    errors.InvalidTopic: ErrorCode.invalid_topic_exception,
    errors.InvalidPartitions: ErrorCode.invalid_partitions,
    errors.TopicAlreadyExists: ErrorCode.topic_already_exists,
    errors.RecordTooLarge: ErrorCode.message_too_large,
    errors.OffsetOutOfRange: ErrorCode.offset_out_of_range,
    errors.OutOfOrderSequence: ErrorCode.out_of_order_sequence_number,
    errors.DuplicateSequence: ErrorCode.duplicate_sequence_number,
    errors.InvalidProducerEpoch: ErrorCode.invalid_producer_epoch,
    errors.InvalidConfig: ErrorCode.invalid_config,
    errors.InvalidRequest: ErrorCode.invalid_request,
    # An agent group restricted to other roles (produce, consume): not retriable there.
    errors.RoleNotServed: ErrorCode.policy_violation,
    # SASL: wrong credentials or a broken exchange; the connection is closed after it.
    errors.AuthenticationFailed: ErrorCode.sasl_authentication_failed,
    # Authorization (core/acl.py): the codes every Kafka client turns into its own
    # *AuthorizationException and does not retry.
    errors.TopicAuthorizationFailed: ErrorCode.topic_authorization_failed,
    errors.GroupAuthorizationFailed: ErrorCode.group_authorization_failed,
    errors.ClusterAuthorizationFailed: ErrorCode.cluster_authorization_failed,
    errors.SecurityDisabled: ErrorCode.security_disabled,
    # Retriable: the object store failed or a segment vanished under a racing
    # compaction; KAFKA_STORAGE_ERROR makes clients refresh metadata and retry.
    errors.StorageUnavailable: ErrorCode.kafka_storage_error,
    errors.NotFound: ErrorCode.kafka_storage_error,
    errors.Unavailable: ErrorCode.request_timed_out,
    errors.Conflict: ErrorCode.request_timed_out,
    # A newer metadata actor took over: retry against it (clients refresh routing).
    errors.Fenced: ErrorCode.not_leader_or_follower,
    errors.CorruptData: ErrorCode.corrupt_message,
    # The group coordinator's answers (a GroupError's class name is its Kafka name).
    errors.CoordinatorNotAvailable: ErrorCode.coordinator_not_available,
    errors.UnknownMemberId: ErrorCode.unknown_member_id,
    errors.IllegalGeneration: ErrorCode.illegal_generation,
    errors.RebalanceInProgress: ErrorCode.rebalance_in_progress,
    errors.MemberIdRequired: ErrorCode.member_id_required,
    errors.InconsistentGroupProtocol: ErrorCode.inconsistent_group_protocol,
    errors.FencedInstanceId: ErrorCode.fenced_instance_id,
    errors.InvalidGroupId: ErrorCode.invalid_group_id,
    errors.InvalidSessionTimeout: ErrorCode.invalid_session_timeout,
    errors.GroupIdNotFound: ErrorCode.group_id_not_found,
    errors.NonEmptyGroup: ErrorCode.non_empty_group,
}


def error_code(exc: BaseException | None) -> ErrorCode:
    """The Kafka error code for ``exc`` (``NONE`` for None)."""
    if exc is None:
        return ErrorCode.none
    for cls in type(exc).__mro__:
        code = _BY_CLASS.get(cls)
        if code is not None:
            return code
    return ErrorCode.unknown_server_error


def error_message(exc: BaseException | None) -> str | None:
    """A short message for the response's ``error_message`` field (None on success)."""
    if exc is None:
        return None
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:1000]


def note_unexpected(exc: Exception, what: str) -> Exception:
    """Return ``exc`` for mapping to a code; log it first unless it is a ray_stream error.

    ray_stream errors are expected answers (unknown topic, offset out of range, ...);
    anything else is a bug or an unwrapped foreign error and deserves a traceback.
    """
    if not isinstance(exc, errors.RayStreamError):
        log.error("unexpected error in %s", what, exc_info=exc)
    return exc
