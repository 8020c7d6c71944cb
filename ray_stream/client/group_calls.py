"""The group coordinator as a consumer's member thread calls it: blocking calls.

``GroupCalls`` is what ``client/group_member.py`` needs; ``RayGroupCalls`` answers it
through the metadata actor's handle (``metadata/service.py``: the same coordinator the
agents' Kafka group handlers call), translating Ray's errors at this boundary.
"""

from __future__ import annotations

from typing import Any, Protocol

from ray_stream.actors import handles
from ray_stream.core.group import JoinResult, SyncResult
from ray_stream.core.metadata_api import HeartbeatRequest, JoinRequest, LeaveRequest, SyncRequest

__all__ = ["REQUEST_TIMEOUT_S", "GroupCalls", "RayGroupCalls"]

REQUEST_TIMEOUT_S = 30.0  # Kafka's request.timeout.ms, for calls that do not long-poll


class GroupCalls(Protocol):
    """The group coordinator as the member thread calls it (blocking calls)."""

    def join_group(self, request: JoinRequest, *, timeout_s: float) -> JoinResult: ...

    def sync_group(self, request: SyncRequest, *, timeout_s: float) -> SyncResult: ...

    def heartbeat(self, request: HeartbeatRequest) -> None:
        """Raises a GroupError (RebalanceInProgress: rejoin; UnknownMemberId, ...)."""
        ...

    def leave_group(self, request: LeaveRequest) -> None: ...

    def partition_counts(self) -> dict[str, int]:
        """Every topic's partition count."""
        ...


class RayGroupCalls:
    """``GroupCalls`` through the metadata actor's handle.

    Every method raises ``Unavailable`` when the actor is unreachable or the call times
    out, and the coordinator's ``GroupError`` answers as they are.
    """

    def __init__(self, meta: Any) -> None:
        self._meta = meta

    def join_group(self, request: JoinRequest, *, timeout_s: float) -> JoinResult:
        result: JoinResult = handles.get(self._meta.join_group.remote(request), timeout_s=timeout_s)
        return result

    def sync_group(self, request: SyncRequest, *, timeout_s: float) -> SyncResult:
        result: SyncResult = handles.get(self._meta.sync_group.remote(request), timeout_s=timeout_s)
        return result

    def heartbeat(self, request: HeartbeatRequest) -> None:
        handles.get(self._meta.heartbeat.remote(request), timeout_s=REQUEST_TIMEOUT_S)

    def leave_group(self, request: LeaveRequest) -> None:
        handles.get(self._meta.leave_group.remote(request), timeout_s=REQUEST_TIMEOUT_S)

    def partition_counts(self) -> dict[str, int]:
        topics = handles.get(self._meta.list_topics.remote(), timeout_s=REQUEST_TIMEOUT_S)
        return {info.name: int(info.partitions) for info in topics}
