"""Consumer-group API handlers: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.

Responsibility: translate the classic group protocol between the wire and the typed
``Groups`` protocol of ``backend.meta`` (``core/metadata_api.py``), one call per request.
Group state lives with the metadata service, so every agent coordinates every group:
FindCoordinator always names this agent. The coordinator's answers are ``GroupError``
values; they become codes here through ``errors_map.error_code``. A failure to reach the
service (the metadata actor restarting) becomes COORDINATOR_NOT_AVAILABLE, which makes
clients rediscover the coordinator and retry.

Never: import asyncio, sockets or clocks; keep group state (the service owns it).
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from ray_stream.core.fleet import client_zone
from ray_stream.core.metadata_api import (
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    OffsetCommitRequest,
    SyncRequest,
)
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import GroupError, Unavailable
from ray_stream.kafka.context import (
    NO_AUTHORIZED_OPERATIONS,
    Handler,
    KafkaBackend,
    Peer,
    own_broker,
)
from ray_stream.kafka.errors_map import error_code, note_unexpected
from ray_stream.kafka.protocol import Request
from ray_stream.kafka.versions import ApiKey

__all__ = ["MAX_OFFSET_METADATA_BYTES", "GroupHandlers"]

MAX_OFFSET_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes default
KEY_TYPE_GROUP = 0
CLASSIC = "classic"


def _service_error(exc: Exception, what: str) -> ErrorCode:
    """The code for a failed call: the coordinator's own answer (a GroupError), or for
    any failure to reach it COORDINATOR_NOT_AVAILABLE (clients retry via FindCoordinator)."""
    if isinstance(exc, GroupError):
        return error_code(exc)
    note_unexpected(exc, what)
    code = error_code(exc)
    if isinstance(exc, Unavailable) or code == ErrorCode.unknown_server_error:
        return ErrorCode.coordinator_not_available
    return code


class GroupHandlers:
    """The group APIs of one agent."""

    def __init__(self, backend: KafkaBackend) -> None:
        self._backend = backend
        self._meta = backend.meta

    def dispatch(self) -> dict[int, Handler]:
        return {
            ApiKey.FIND_COORDINATOR: self._find_coordinator,
            ApiKey.JOIN_GROUP: self._join_group,
            ApiKey.SYNC_GROUP: self._sync_group,
            ApiKey.HEARTBEAT: self._heartbeat,
            ApiKey.LEAVE_GROUP: self._leave_group,
            ApiKey.OFFSET_COMMIT: self._offset_commit,
            ApiKey.OFFSET_FETCH: self._offset_fetch,
            ApiKey.LIST_GROUPS: self._list_groups,
            ApiKey.DESCRIBE_GROUPS: self._describe_groups,
            ApiKey.DELETE_GROUPS: self._delete_groups,
        }

    async def _find_coordinator(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        me = await own_broker(self._backend, client_zone(request.client_id))
        key_type = getattr(body, "key_type", KEY_TYPE_GROUP)
        code, message = ErrorCode.none, None
        if key_type != KEY_TYPE_GROUP:  # transactions and share groups are not served
            code, message = ErrorCode.invalid_request, f"key type {key_type} is not served"
        elif me is None:  # our listener is not registered yet: the client retries
            code, message = ErrorCode.coordinator_not_available, "agent is starting"
        entry: dict[str, Any] = {"node_id": -1, "host": "", "port": -1}
        if code == ErrorCode.none and me is not None:
            entry = {"node_id": me.node_id, "host": me.host, "port": me.port}
        entry.update(error_code=code, error_message=message)
        if request.api_version >= 4:
            return {"coordinators": [{"key": key, **entry} for key in body.coordinator_keys]}
        return entry

    async def _join_group(self, request: Request, peer: Peer) -> dict[str, Any]:
        body, version = request.body, request.api_version
        session_ms = _ms(body.session_timeout)
        join = JoinRequest(
            group_id=body.group_id,
            member_id=body.member_id,
            group_instance_id=getattr(body, "group_instance_id", None),
            protocol_type=body.protocol_type,
            protocols=tuple((p.name, p.metadata) for p in body.protocols),
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=_ms(getattr(body, "rebalance_timeout", None), session_ms),
            client_id=request.client_id or "",
            client_host=peer.host,
            require_known_member_id=version >= 4,
        )
        try:
            result = await self._meta.join_group(join)
        except Exception as exc:
            return {
                "error_code": _service_error(exc, "join_group"),
                "generation_id": -1,
                "leader": "",
                "member_id": body.member_id,
                "members": [],
            }
        return {
            "error_code": error_code(result.error),
            "generation_id": result.generation_id,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "leader": result.leader,
            "skip_assignment": result.skip_assignment,
            "member_id": result.member_id,
            "members": [
                {"member_id": m, "group_instance_id": instance, "metadata": metadata}
                for m, instance, metadata in result.members
            ],
        }

    async def _sync_group(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        sync = SyncRequest(
            group_id=body.group_id,
            generation_id=body.generation_id,
            member_id=body.member_id,
            group_instance_id=getattr(body, "group_instance_id", None),
            protocol_type=getattr(body, "protocol_type", None),
            protocol_name=getattr(body, "protocol_name", None),
            assignments=tuple((a.member_id, a.assignment) for a in body.assignments),
        )
        try:
            result = await self._meta.sync_group(sync)
        except Exception as exc:
            return {"error_code": _service_error(exc, "sync_group"), "assignment": b""}
        return {
            "error_code": error_code(result.error),
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "assignment": result.assignment,
        }

    async def _heartbeat(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        beat = HeartbeatRequest(
            body.group_id,
            body.generation_id,
            body.member_id,
            getattr(body, "group_instance_id", None),
        )
        try:
            await self._meta.heartbeat(beat)
        except Exception as exc:
            return {"error_code": _service_error(exc, "heartbeat")}
        return {"error_code": ErrorCode.none}

    async def _leave_group(self, request: Request, peer: Peer) -> dict[str, Any]:
        body, version = request.body, request.api_version
        if version >= 3:
            members = tuple((m.member_id, m.group_instance_id) for m in body.members)
        else:
            members = ((body.member_id, None),)
        try:
            result = await self._meta.leave_group(LeaveRequest(body.group_id, members))
        except Exception as exc:
            return {"error_code": _service_error(exc, "leave_group"), "members": []}
        error = result.error
        if version < 3 and error is None and result.members:
            error = result.members[0].error  # one member: its error is the answer
        return {
            "error_code": error_code(error),
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "error_code": error_code(m.error),
                }
                for m in result.members
            ],
        }

    async def _offset_commit(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        offsets: dict[TopicPartition, CommittedOffset] = {}
        too_large: set[tuple[str, int]] = set()
        for topic in body.topics:
            for part in topic.partitions:
                metadata = part.committed_metadata or ""
                key = (topic.name, part.partition_index)
                if len(metadata.encode()) > MAX_OFFSET_METADATA_BYTES:
                    too_large.add(key)
                    continue
                epoch = getattr(part, "committed_leader_epoch", -1)
                offsets[TopicPartition(*key)] = CommittedOffset(
                    part.committed_offset, metadata, epoch
                )
        commit = OffsetCommitRequest(
            body.group_id,
            offsets,
            generation_id=getattr(body, "generation_id_or_member_epoch", -1),
            member_id=getattr(body, "member_id", ""),
        )
        try:
            await self._meta.commit_offsets(commit)
            code = ErrorCode.none
        except Exception as exc:
            code = _service_error(exc, "offset_commit")
        return {
            "topics": [
                {
                    "name": topic.name,
                    "partitions": [
                        {
                            "partition_index": p.partition_index,
                            "error_code": ErrorCode.offset_metadata_too_large
                            if (topic.name, p.partition_index) in too_large
                            else code,
                        }
                        for p in topic.partitions
                    ],
                }
                for topic in body.topics
            ]
        }

    async def _offset_fetch(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        if request.api_version >= 8:
            groups = [await self._group_offsets(g.group_id, g.topics) for g in body.groups]
            return {"groups": groups}
        answer = await self._group_offsets(body.group_id, body.topics)
        return {"topics": answer["topics"], "error_code": answer["error_code"]}

    async def _group_offsets(self, group_id: str, topics: Any) -> dict[str, Any]:
        wanted = (
            None
            if topics is None
            else [TopicPartition(t.name, p) for t in topics for p in t.partition_indexes]
        )
        try:
            committed = await self._meta.fetch_offsets(group_id, wanted)
        except Exception as exc:
            return {
                "group_id": group_id,
                "topics": [],
                "error_code": _service_error(exc, "offset_fetch"),
            }
        keys = wanted if wanted is not None else sorted(committed)
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for tp in keys:
            found = committed.get(tp)
            by_topic.setdefault(tp.topic, []).append(
                {
                    "partition_index": tp.partition,
                    "committed_offset": found.offset if found else -1,
                    "committed_leader_epoch": found.leader_epoch if found else -1,
                    "metadata": found.metadata if found else "",
                    "error_code": 0,
                }
            )
        return {
            "group_id": group_id,
            "topics": [{"name": n, "partitions": parts} for n, parts in by_topic.items()],
            "error_code": 0,
        }

    async def _list_groups(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        states = list(getattr(body, "states_filter", ()) or ()) or None
        types = {t.lower() for t in getattr(body, "types_filter", ()) or ()}
        if types and CLASSIC not in types:
            return {"error_code": 0, "groups": []}
        try:
            groups = await self._meta.list_groups(states)
        except Exception as exc:
            return {"error_code": _service_error(exc, "list_groups"), "groups": []}
        return {
            "error_code": 0,
            "groups": [
                {
                    "group_id": g.group_id,
                    "protocol_type": g.protocol_type,
                    "group_state": g.state,
                    "group_type": CLASSIC,
                }
                for g in groups
            ],
        }

    async def _describe_groups(self, request: Request, peer: Peer) -> dict[str, Any]:
        group_ids = list(request.body.groups)
        try:
            descriptions = await self._meta.describe_groups(group_ids)
        except Exception as exc:
            code = _service_error(exc, "describe_groups")
            return {"groups": [_dead_group(g, code) for g in group_ids]}
        return {
            "groups": [
                {
                    "error_code": error_code(d.error),
                    "error_message": None,
                    "group_id": d.group_id,
                    "group_state": d.state,
                    "protocol_type": d.protocol_type,
                    "protocol_data": d.protocol,
                    "members": [
                        {
                            "member_id": m.member_id,
                            "group_instance_id": m.group_instance_id,
                            "client_id": m.client_id,
                            "client_host": m.client_host,
                            "member_metadata": m.metadata,
                            "member_assignment": m.assignment,
                        }
                        for m in d.members
                    ],
                    "authorized_operations": NO_AUTHORIZED_OPERATIONS,
                }
                for d in descriptions
            ]
        }

    async def _delete_groups(self, request: Request, peer: Peer) -> dict[str, Any]:
        group_ids = list(request.body.groups_names)
        try:
            outcomes = await self._meta.delete_groups(group_ids)
        except Exception as exc:
            code = _service_error(exc, "delete_groups")
            return {"results": [{"group_id": g, "error_code": code} for g in group_ids]}
        return {
            "results": [
                {"group_id": o.group_id, "error_code": error_code(o.error)} for o in outcomes
            ]
        }


def _ms(value: Any, default: int = 0) -> int:
    """A kio timedelta (or None) as whole milliseconds."""
    if value is None:
        return default
    return int(value.total_seconds() * 1000)


def _dead_group(group_id: str, code: ErrorCode) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_message": None,
        "group_id": group_id,
        "group_state": "Dead",
        "protocol_type": "",
        "protocol_data": "",
        "members": [],
        "authorized_operations": NO_AUTHORIZED_OPERATIONS,
    }
