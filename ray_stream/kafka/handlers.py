"""Kafka request handlers: one per API, each a decoded request -> KafkaBackend calls -> response.

Responsibility: the meaning of every served API (see ``versions.py`` for which versions).
Handlers build one plain dict per response and ``protocol.build`` shapes it for the
request's version, so each API is written once for all versions.

Rules:

- Handlers talk only to a ``KafkaBackend`` (``kafka/context.py``; the agent's
  ``LogService``): data through ``produce``/``fetch``, everything else through the typed
  ``backend.meta`` (``core/metadata_api.py``), one call per request where the API allows.
- ray_stream errors become Kafka codes only through ``errors_map``; a failing backend
  call fails the partitions or resources it concerned, never the whole connection.
- Produce keeps batches opaque: split them and pass the bytes through; the backend
  validates each batch once (size, CRC). A request's partitions go to the backend in one
  ``produce`` call; acks=0 gets no response. Any agent serves any partition; "leaders"
  in Metadata only spread load, over the agents of the client's group and zone
  (``client.id`` ``ray_stream_az=<zone>``, core/fleet.py) with the zone as ``rack``.
- An agent whose group does not serve a role (produce, consume) answers that role's
  requests with POLICY_VIOLATION and a message naming the group.
- Any agent coordinates any group (group state lives with the metadata service), so
  FindCoordinator always answers with this agent.

Never: import asyncio, sockets or clocks (long polls are the backend's job).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from ray_stream.core.acl import Operation
from ray_stream.core.fleet import client_zone
from ray_stream.core.metadata_api import OffsetAnswer
from ray_stream.core.types import BatchResult, BrokerInfo, FetchResult, TopicInfo
from ray_stream.errors import (
    CorruptData,
    RayStreamError,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from ray_stream.kafka.acl_handlers import AclHandlers
from ray_stream.kafka.admin_handlers import AdminHandlers
from ray_stream.kafka.authorization import access_for
from ray_stream.kafka.context import (
    NO_AUTHORIZED_OPERATIONS,
    Handler,
    KafkaBackend,
    Peer,
    TopicNames,
    cluster_id,
    role_error,
)
from ray_stream.kafka.errors_map import error_code, error_message, note_unexpected
from ray_stream.kafka.group_handlers import GroupHandlers
from ray_stream.kafka.protocol import Request, build_response, supported_api_keys
from ray_stream.kafka.records import split_views
from ray_stream.kafka.scram_handlers import ScramHandlers
from ray_stream.kafka.versions import ApiKey

__all__ = ["KafkaHandlers", "partition_leader"]

TIMESTAMP_EARLIEST, TIMESTAMP_EARLIEST_LOCAL = -2, -4


class KafkaHandlers:
    """Answers decoded requests for one agent; one instance serves all its connections.

    Args:
        backend: the agent's ``LogService`` (any ``KafkaBackend``).
    """

    def __init__(self, backend: KafkaBackend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.meta = backend.meta
        self.names = TopicNames(backend.meta)
        self._dispatch: dict[int, Handler] = {
            ApiKey.API_VERSIONS: self._api_versions,
            ApiKey.METADATA: self._metadata,
            ApiKey.PRODUCE: self._produce,
            ApiKey.FETCH: self._fetch,
            ApiKey.LIST_OFFSETS: self._list_offsets,
            ApiKey.INIT_PRODUCER_ID: self._init_producer_id,
            **AdminHandlers(backend, self.names).dispatch(),
            **AclHandlers(backend).dispatch(),
            **ScramHandlers(backend).dispatch(),
            **GroupHandlers(backend).dispatch(),
        }

    async def handle(self, request: Request, *, peer: Peer) -> Any | None:
        """The kio response entity for ``request``, or None when none is due (acks=0).

        Raises:
            Whatever a handler did not expect (a bug); the server logs it and closes
            only that connection.
        """
        values = await self._dispatch[request.api_key](request, peer)
        if values is None:
            return None
        values.setdefault("throttle_time", 0)
        return build_response(request, values)

    # ------------------------------------------------------------- ApiVersions
    async def _api_versions(self, request: Request, peer: Peer) -> dict[str, Any]:
        return {"error_code": 0, "api_keys": supported_api_keys()}

    # ---------------------------------------------------------------- Metadata
    async def _metadata(self, request: Request, peer: Peer) -> dict[str, Any]:
        body, version = request.body, request.api_version
        access = await access_for(self.backend, peer)
        zone = client_zone(request.client_id)
        brokers = sorted(await self.backend.brokers(zone), key=lambda b: b.node_id)
        topics = await self.meta.list_topics()
        self.names.remember(topics, complete=True)
        by_name = {t.name: t for t in topics}
        by_id = {t.topic_id: t for t in topics}
        wanted = body.topics
        with_ops = getattr(body, "include_topic_authorized_operations", False)

        def entry(info: TopicInfo) -> dict[str, Any]:
            ops = access.topic_operations(info.name) if with_ops else NO_AUTHORIZED_OPERATIONS
            return _metadata_topic(info, brokers, ops)

        if wanted is None or (version == 0 and not wanted):
            # rule 1 of kafka/authorization.py: undescribable topics are left out
            entries = [entry(t) for t in topics if access.topic(Operation.DESCRIBE, t.name)]
        else:
            auto = self.settings.auto_create_topics and getattr(
                body, "allow_auto_topic_creation", True
            )
            entries = []
            for item in wanted:
                topic_id = getattr(item, "topic_id", None)
                info: TopicInfo | Exception | None
                if item.name is None and topic_id is not None and topic_id.int:
                    info = by_id.get(topic_id.hex)
                    if info is None:
                        entries.append(_topic_error(None, ErrorCode.unknown_topic_id, topic_id.hex))
                        continue
                    if not access.topic(Operation.DESCRIBE, info.name):
                        info = access.topic_denied(topic_id.hex, "describe")
                elif not access.topic(Operation.DESCRIBE, item.name):
                    info = access.topic_denied(item.name, "describe")
                else:
                    info = by_name.get(item.name)
                    if info is None and auto and not access.may_create_topic(item.name):
                        info = access.topic_denied(item.name, "create")
                    info = info or await self._auto_create(item.name, auto)
                if isinstance(info, TopicInfo):
                    entries.append(entry(info))
                else:
                    entries.append(_topic_error(item.name, error_code(info)))
        cluster_ops = NO_AUTHORIZED_OPERATIONS
        if getattr(body, "include_cluster_authorized_operations", False):
            cluster_ops = access.cluster_operations()
        return {
            "brokers": [
                {"node_id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack}
                for b in brokers
            ],
            "cluster_id": cluster_id(self.settings),
            "controller_id": _controller(self.backend.node_id, brokers),
            "topics": entries,
            "cluster_authorized_operations": cluster_ops,
        }

    async def _auto_create(self, name: str, allowed: bool) -> TopicInfo | Exception:
        if not allowed:
            return UnknownTopicOrPartition(f"topic {name!r} does not exist")
        try:
            info: TopicInfo = await self.meta.create_topic(name, self.settings.default_partitions)
        except TopicAlreadyExists:
            return await self.meta.describe_topic(name)
        except RayStreamError as exc:
            return exc
        self.names.remember([info])
        return info

    # ----------------------------------------------------------------- Produce
    async def _produce(self, request: Request, peer: Peer) -> dict[str, Any] | None:
        body = request.body
        access = await access_for(self.backend, peer)  # no suspension once loaded
        entries: list[tuple[str, int, bytes | memoryview]] = []
        slots: list[tuple[str, int, Any, str | None, int, int]] = []
        for topic in body.topic_data:
            allowed = access.topic(Operation.WRITE, topic.name)  # else nothing is written
            for part in topic.partition_data:
                if allowed:
                    batches, code, message = self._check_records(part.records)
                else:
                    batches, code, message = [], ErrorCode.topic_authorization_failed, None
                slots.append((topic.name, part.index, code, message, len(entries), len(batches)))
                entries.extend((topic.name, part.index, batch) for batch in batches)
        failure: Exception | None = role_error(self.backend, "produce")
        results: list[BatchResult] = []
        if entries and failure is None:
            try:
                results = await self.backend.produce(entries, body.acks)
            except Exception as exc:
                failure = note_unexpected(exc, "produce")
        if body.acks == 0:
            return None
        responses: dict[str, list[dict[str, Any]]] = {}
        for name, index, code, message, start, count in slots:
            part_results = results[start : start + count] if failure is None else []
            if code is None:
                bad = failure or next((r.error for r in part_results if r.error), None)
                code, message = error_code(bad), error_message(bad)
            ok = code == ErrorCode.none and bool(part_results)
            responses.setdefault(name, []).append(
                {
                    "index": index,
                    "error_code": code,
                    "base_offset": part_results[0].base_offset if ok else -1,
                    "log_start_offset": part_results[-1].log_start_offset if ok else -1,
                    "record_errors": [],
                    "error_message": message,
                }
            )
        return {
            "responses": [
                {"name": name, "partition_responses": parts} for name, parts in responses.items()
            ]
        }

    def _check_records(self, records: bytes | None) -> tuple[list[memoryview], Any, str | None]:
        """(batches, None, None) if the record set splits, else ([], error code, message).

        Each batch's own size and CRC are the backend's to check (once, rule 2 of
        ``agent/segment_writer.py``); a set of several batches over the limit together
        is refused here, as Kafka does (RECORD_LIST_TOO_LARGE).
        """
        if not records:
            return [], ErrorCode.corrupt_message, "no record batches"
        try:
            batches = split_views(records)  # views: the request's bytes are not copied
        except CorruptData as exc:
            return [], ErrorCode.corrupt_message, error_message(exc)
        limit = self.settings.max_record_bytes
        if len(batches) > 1 and len(records) > limit:
            message = f"{len(batches)} batches of {len(records)} bytes together > {limit}"
            return [], ErrorCode.record_list_too_large, message
        return batches, None, None

    # ------------------------------------------------------------------- Fetch
    async def _fetch(self, request: Request, peer: Peer) -> dict[str, Any]:
        body, by_id = request.body, request.api_version >= 13
        if getattr(body, "session_id", 0) != 0:  # we never hand out fetch sessions
            return {"error_code": ErrorCode.fetch_session_id_not_found, "responses": []}
        access = await access_for(self.backend, peer)
        wanted: list[tuple[str, int, int, int]] = []
        layout: list[tuple[Any, str | None, list[int]]] = []  # (topic key, name, partitions)
        denied: set[str] = set()
        for topic in body.topics:
            name = await self.names.name_for_id(topic.topic_id) if by_id else topic.topic
            layout.append((topic.topic_id if by_id else topic.topic, name, []))
            if name is not None and not access.topic(Operation.READ, name):
                denied.add(name)
            for part in topic.partitions:
                layout[-1][2].append(part.partition)
                if name is not None and name not in denied:
                    wanted.append(
                        (name, part.partition, part.fetch_offset, part.partition_max_bytes)
                    )
        results = iter(await self._backend_fetch(wanted, body, client_zone(request.client_id)))
        responses = []
        for key, name, partitions in layout:
            parts = []
            for index in partitions:
                if name is None:
                    parts.append(_fetch_error(index, ErrorCode.unknown_topic_id))
                    continue
                if name in denied:
                    parts.append(_fetch_error(index, ErrorCode.topic_authorization_failed))
                    continue
                result = next(results)
                code = error_code(result.error)
                if by_id and code == ErrorCode.unknown_topic_or_partition:
                    code = ErrorCode.unknown_topic_id
                parts.append(_fetch_partition(index, code, result))
            responses.append({("topic_id" if by_id else "topic"): key, "partitions": parts})
        return {"error_code": 0, "session_id": 0, "responses": responses, "node_endpoints": []}

    async def _backend_fetch(
        self, wanted: list[tuple[str, int, int, int]], body: Any, zone: str | None
    ) -> list[FetchResult]:
        if not wanted:
            return []
        refused = role_error(self.backend, "consume")
        if refused is not None:
            return [FetchResult(t, p, refused, -1, -1) for t, p, _, _ in wanted]
        try:
            return await self.backend.fetch(
                wanted,
                max_wait_ms=max(0, int(body.max_wait.total_seconds() * 1000)),
                min_bytes=max(0, body.min_bytes),
                max_bytes=max(1, getattr(body, "max_bytes", 52428800)),
                client_zone=zone,
            )
        except Exception as exc:
            failure = note_unexpected(exc, "fetch")
            return [FetchResult(t, p, failure, -1, -1) for t, p, _, _ in wanted]

    # ------------------------------------------------------------- ListOffsets
    async def _list_offsets(self, request: Request, peer: Peer) -> dict[str, Any]:
        access = await access_for(self.backend, peer)
        denied = {
            t.name for t in request.body.topics if not access.topic(Operation.DESCRIBE, t.name)
        }
        queries = [
            (topic.name, part.partition_index, _timestamp(part.timestamp))
            for topic in request.body.topics
            if topic.name not in denied
            for part in topic.partitions
        ]
        failure: Exception | None = None
        try:
            answers = await self.meta.list_offsets(queries) if queries else []
        except Exception as exc:
            failure = note_unexpected(exc, "list_offsets")
            answers = [OffsetAnswer(-1, -1) for _ in queries]
        found = iter(answers)
        topics = []
        for topic in request.body.topics:
            parts = []
            for part in topic.partitions:
                if topic.name in denied:
                    answer = OffsetAnswer(-1, -1)
                    error: Exception | None = access.topic_denied(topic.name, "describe")
                else:
                    answer = next(found)
                    error = failure or answer.error
                parts.append(
                    {
                        "partition_index": part.partition_index,
                        "error_code": error_code(error),
                        "timestamp": answer.timestamp if error is None else -1,
                        "offset": answer.offset if error is None else -1,
                        "leader_epoch": -1,
                    }
                )
            topics.append({"name": topic.name, "partitions": parts})
        return {"topics": topics}

    # ---------------------------------------------------------- InitProducerId
    async def _init_producer_id(self, request: Request, peer: Peer) -> dict[str, Any]:
        access = await access_for(self.backend, peer)
        if not access.may_write_some_topic():
            # Kafka: IDEMPOTENT_WRITE on the cluster or WRITE on some topic; transactional
            # ids are checked the same way (no TRANSACTIONAL_ID resources are stored).
            denied = access.cluster_denied("init a producer id (IdempotentWrite)")
            return {"error_code": error_code(denied), "producer_id": -1, "producer_epoch": -1}
        try:
            identity = await self.meta.init_producer_id(request.body.transactional_id)
        except Exception as exc:
            code = error_code(note_unexpected(exc, "init_producer_id"))
            return {"error_code": code, "producer_id": -1, "producer_epoch": -1}
        return {
            "error_code": ErrorCode.none,
            "producer_id": identity.producer_id,
            "producer_epoch": identity.epoch,
        }


# ----------------------------------------------------------------- module helpers
def _timestamp(timestamp: int) -> int:
    """Everything is "local" here: earliest-local (-4) is earliest (-2)."""
    return TIMESTAMP_EARLIEST if timestamp == TIMESTAMP_EARLIEST_LOCAL else timestamp


def partition_leader(topic: str, partition: int, brokers: Sequence[BrokerInfo]) -> int:
    """The routing hint for one partition: round-robin over agents, offset per topic."""
    if not brokers:
        return -1
    return brokers[(zlib.crc32(topic.encode()) + partition) % len(brokers)].node_id


def _metadata_topic(
    info: TopicInfo, brokers: Sequence[BrokerInfo], ops: int = NO_AUTHORIZED_OPERATIONS
) -> dict[str, Any]:
    partitions = []
    for index in range(info.partitions):
        leader = partition_leader(info.name, index, brokers)
        partitions.append(
            {
                "error_code": ErrorCode.none if leader >= 0 else ErrorCode.leader_not_available,
                "partition_index": index,
                "leader_id": leader,
                "leader_epoch": -1,  # no epochs: clients then skip leader-epoch validation
                "replica_nodes": [leader],
                "isr_nodes": [leader],
                "offline_replicas": [],
            }
        )
    return {
        "error_code": 0,
        "name": info.name,
        "topic_id": info.topic_id,
        "is_internal": False,
        "partitions": partitions,
        "topic_authorized_operations": ops,
    }


def _topic_error(name: str | None, code: ErrorCode, topic_id: str | None = None) -> dict[str, Any]:
    return {
        "error_code": code,
        "name": name,
        "topic_id": topic_id,
        "is_internal": False,
        "partitions": [],
        "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS,
    }


def _fetch_partition(index: int, code: Any, result: FetchResult) -> dict[str, Any]:
    return {
        "partition_index": index,
        "error_code": code,
        "high_watermark": result.high_watermark,
        "last_stable_offset": result.high_watermark,
        "log_start_offset": result.log_start_offset,
        "aborted_transactions": None,
        "preferred_read_replica": -1,
        "records": result.records if code == ErrorCode.none else b"",
    }


def _fetch_error(index: int, code: ErrorCode) -> dict[str, Any]:
    return _fetch_partition(index, code, FetchResult("", index, None, -1, -1))


def _controller(node_id: int, brokers: list[BrokerInfo]) -> int:
    """This agent, unless the client's zone lists others only (then the first of them:
    every agent serves admin requests)."""
    if not brokers or any(b.node_id == node_id for b in brokers):
        return node_id
    return brokers[0].node_id
