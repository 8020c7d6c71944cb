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

from ray_stream.core.acl import Operation
from ray_stream.core.fleet import client_zone
from ray_stream.core.group import GroupDescription
from ray_stream.core.metadata_api import (
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    OffsetCommitRequest,
    SyncRequest,
)
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import GroupAuthorizationFailed, GroupError, Unavailable
from ray_stream.kafka.authorization import Access, access_for
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
        access = await access_for(self._backend, peer)
        if request.api_version >= 4:
            return {
                "coordinators": [
                    {"key": key, **_coordinator(access, key, key_type, entry)}
                    for key in body.coordinator_keys
                ]
            }
        return _coordinator(access, body.key, key_type, entry)

    async def _join_group(self, request: Request, peer: Peer) -> dict[str, Any]:
        body, version = request.body, request.api_version
        denied = await self._group_denied(peer, body.group_id, "join")
        if denied is not None:
            return {
                "error_code": denied,
                "generation_id": -1,
                "protocol_type": None,
                "protocol_name": None,
                "leader": "",
                "member_id": body.member_id,
                "members": [],
            }
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
        denied = await self._group_denied(peer, body.group_id, "sync")
        if denied is not None:
            return {"error_code": denied, "assignment": b""}
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
        denied = await self._group_denied(peer, body.group_id, "heartbeat in")
        if denied is not None:
            return {"error_code": denied}
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
        denied = await self._group_denied(peer, body.group_id, "leave")
        if denied is not None:
            return {"error_code": denied, "members": []}
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
        access = await access_for(self._backend, peer)
        offsets: dict[TopicPartition, CommittedOffset] = {}
        too_large: set[tuple[str, int]] = set()
        refused: dict[str, ErrorCode] = {}  # topic -> why none of its offsets was stored
        group_allowed = access.group(Operation.READ, body.group_id)
        if not group_allowed:
            denied = error_code(access.group_denied(body.group_id, "commit offsets of"))
            refused = {t.name: denied for t in body.topics}
        for topic in body.topics:
            if topic.name not in refused and not access.topic(Operation.READ, topic.name):
                refused[topic.name] = error_code(access.topic_denied(topic.name, "read"))
            if topic.name in refused:
                continue
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
            if group_allowed and (offsets or not refused):
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
                            "error_code": refused.get(topic.name)
                            or (
                                ErrorCode.offset_metadata_too_large
                                if (topic.name, p.partition_index) in too_large
                                else code
                            ),
                        }
                        for p in topic.partitions
                    ],
                }
                for topic in body.topics
            ]
        }

    async def _offset_fetch(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        access = await access_for(self._backend, peer)
        if request.api_version >= 8:
            groups = [await self._group_offsets(access, g.group_id, g.topics) for g in body.groups]
            return {"groups": groups}
        answer = await self._group_offsets(access, body.group_id, body.topics)
        return {"topics": answer["topics"], "error_code": answer["error_code"]}

    async def _group_offsets(self, access: Access, group_id: str, topics: Any) -> dict[str, Any]:
        if not access.group(Operation.DESCRIBE, group_id):
            denied = error_code(access.group_denied(group_id, "fetch offsets of"))
            return {"group_id": group_id, "topics": [], "error_code": denied}
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
        describable: dict[str, bool] = {}
        for tp in keys:
            if tp.topic not in describable:
                describable[tp.topic] = access.topic(Operation.DESCRIBE, tp.topic)
            if not describable[tp.topic]:
                if wanted is not None:  # named: refused; listing all: left out (Kafka)
                    by_topic.setdefault(tp.topic, []).append(_offset_denied(access, tp))
                continue
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
        access = await access_for(self._backend, peer)
        if not access.cluster(Operation.DESCRIBE):  # Kafka: else only describable groups
            groups = [g for g in groups if access.group(Operation.DESCRIBE, g.group_id)]
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
        access = await access_for(self._backend, peer)
        group_ids = list(request.body.groups)
        allowed = [g for g in group_ids if access.group(Operation.DESCRIBE, g)]
        try:
            descriptions = await self._meta.describe_groups(allowed) if allowed else []
        except Exception as exc:
            code = _service_error(exc, "describe_groups")
            return {"groups": [_dead_group(g, code) for g in group_ids]}
        with_ops = getattr(request.body, "include_authorized_operations", False)
        described = {d.group_id: d for d in descriptions}
        denied = error_code(GroupAuthorizationFailed("not authorized to describe the group"))
        return {
            "groups": [
                _group_description(described[g], access, with_ops)
                if g in described
                else _dead_group(g, denied)
                for g in group_ids
            ]
        }

    async def _delete_groups(self, request: Request, peer: Peer) -> dict[str, Any]:
        access = await access_for(self._backend, peer)
        group_ids = list(request.body.groups_names)
        allowed = [g for g in group_ids if access.group(Operation.DELETE, g)]
        try:
            outcomes = await self._meta.delete_groups(allowed) if allowed else []
        except Exception as exc:
            code = _service_error(exc, "delete_groups")
            return {"results": [{"group_id": g, "error_code": code} for g in group_ids]}
        codes = {o.group_id: error_code(o.error) for o in outcomes}
        denied = error_code(GroupAuthorizationFailed("not authorized to delete the group"))
        return {"results": [{"group_id": g, "error_code": codes.get(g, denied)} for g in group_ids]}

    async def _group_denied(self, peer: Peer, group_id: str, what: str) -> ErrorCode | None:
        """GROUP_AUTHORIZATION_FAILED unless the peer may READ the group (Kafka's check
        for the membership APIs)."""
        access = await access_for(self._backend, peer)
        if access.group(Operation.READ, group_id):
            return None
        return error_code(access.group_denied(group_id, what))


def _ms(value: Any, default: int = 0) -> int:
    """A kio timedelta (or None) as whole milliseconds."""
    if value is None:
        return default
    return int(value.total_seconds() * 1000)


def _coordinator(access: Access, key: str, key_type: int, entry: dict[str, Any]) -> dict[str, Any]:
    """FindCoordinator's answer for one group: ``entry``, unless the peer may not
    DESCRIBE the group (GROUP_AUTHORIZATION_FAILED)."""
    if key_type != KEY_TYPE_GROUP or access.group(Operation.DESCRIBE, key):
        return entry
    denied = access.group_denied(key, "describe")
    return {
        "node_id": -1,
        "host": "",
        "port": -1,
        "error_code": error_code(denied),
        "error_message": str(denied),
    }


def _offset_denied(access: Access, tp: TopicPartition) -> dict[str, Any]:
    return {
        "partition_index": tp.partition,
        "committed_offset": -1,
        "committed_leader_epoch": -1,
        "metadata": "",
        "error_code": error_code(access.topic_denied(tp.topic, "describe")),
    }


def _group_description(d: GroupDescription, access: Access, with_ops: bool) -> dict[str, Any]:
    return {
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
        "authorized_operations": access.group_operations(d.group_id)
        if with_ops
        else NO_AUTHORIZED_OPERATIONS,
    }


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
