"""Admin API handlers: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
DescribeCluster.

Responsibility: what admin clients (AdminClient, kafka-topics-style CLIs) need to manage
topics. Every topic/resource in a request gets its own result; one failing never fails
the others. Same rules as ``handlers.py``: only ``backend.meta`` calls, error codes only
through ``errors_map``, one plain dict per response shaped by ``protocol.build``.

Never: import asyncio, sockets or clocks.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.acl import Operation
from ray_stream.core.fleet import client_zone
from ray_stream.core.topic_name import validate_topic_name
from ray_stream.core.types import TopicInfo
from ray_stream.errors import (
    InvalidPartitions,
    InvalidRequest,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)
from ray_stream.kafka.authorization import Access, access_for
from ray_stream.kafka.context import (
    NO_AUTHORIZED_OPERATIONS,
    Handler,
    KafkaBackend,
    Peer,
    TopicNames,
    cluster_id,
)
from ray_stream.kafka.errors_map import error_code, error_message, note_unexpected
from ray_stream.kafka.protocol import Request
from ray_stream.kafka.versions import ApiKey

__all__ = ["AdminHandlers", "broker_defaults", "topic_config_defaults"]

RESOURCE_TOPIC, RESOURCE_BROKER = 2, 4
CONFIG_SOURCE_TOPIC, CONFIG_SOURCE_STATIC_BROKER, CONFIG_SOURCE_DEFAULT = 1, 4, 5
CONFIG_TYPE_STRING = 2
ENDPOINT_TYPE_BROKERS = 1


def topic_config_defaults(settings: Settings) -> dict[str, str]:
    """Kafka topic configs every topic reports unless it overrides them."""
    return {
        "cleanup.policy": "delete",
        "compression.type": "producer",
        "max.message.bytes": str(settings.max_record_bytes),
        "message.timestamp.type": "CreateTime",
        "min.insync.replicas": "1",
        "retention.bytes": "-1",
        "retention.ms": "604800000",
        "segment.bytes": "1073741824",
        "unclean.leader.election.enable": "false",
    }


def broker_defaults(settings: Settings, node_id: int) -> dict[str, str]:
    """Broker configs admin tools commonly read (all static: nothing is alterable)."""
    return {
        "broker.id": str(node_id),
        "auto.create.topics.enable": str(settings.auto_create_topics).lower(),
        "num.partitions": str(settings.default_partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "message.max.bytes": str(settings.max_record_bytes),
        "socket.request.max.bytes": str(settings.max_request_bytes),
        "log.retention.ms": "604800000",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "group.initial.rebalance.delay.ms": "0",
    }


class AdminHandlers:
    """Topic administration and cluster description for one agent.

    Args:
        backend: the agent.
        names: the topic-id cache shared with the other handlers.
    """

    def __init__(self, backend: KafkaBackend, names: TopicNames) -> None:
        self._backend = backend
        self._names = names
        self._meta = backend.meta
        self._settings = backend.settings

    def dispatch(self) -> dict[int, Handler]:
        return {
            ApiKey.CREATE_TOPICS: self._create_topics,
            ApiKey.DELETE_TOPICS: self._delete_topics,
            ApiKey.CREATE_PARTITIONS: self._create_partitions,
            ApiKey.DESCRIBE_CONFIGS: self._describe_configs,
            ApiKey.DESCRIBE_CLUSTER: self._describe_cluster,
        }

    async def _create_topics(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        access = await access_for(self._backend, peer)
        names = [t.name for t in body.topics]
        results = []
        for topic in body.topics:
            count = len(topic.assignments) if topic.assignments else topic.num_partitions
            count = self._settings.default_partitions if count == -1 else count
            config = {c.name: c.value for c in topic.configs if c.value is not None}
            info: TopicInfo | None = None
            failure: Exception | None = None
            try:
                if names.count(topic.name) > 1:
                    raise InvalidRequest(f"topic {topic.name!r} appears more than once")
                if not access.may_create_topic(topic.name):
                    raise access.topic_denied(topic.name, "create")
                if body.validate_only:
                    await self._check_absent(topic.name)
                else:
                    info = await self._meta.create_topic(topic.name, count, config or None)
                    self._names.remember([info])
            except Exception as exc:
                failure = note_unexpected(exc, "create_topic")
            ok = failure is None
            # Kafka returns the configs only to who may DESCRIBE_CONFIGS the topic
            shown = ok and access.topic(Operation.DESCRIBE_CONFIGS, topic.name)
            results.append(
                {
                    "name": topic.name,
                    "topic_id": info.topic_id if info else None,
                    "error_code": error_code(failure),
                    "error_message": error_message(failure),
                    "num_partitions": count if ok else -1,
                    "replication_factor": 1 if ok else -1,
                    "configs": _config_entries(config, self._settings) if shown else None,
                    "topic_config_error_code": ErrorCode.none
                    if shown or not ok
                    else ErrorCode.topic_authorization_failed,
                }
            )
        return {"topics": results}

    async def _check_absent(self, name: str) -> None:
        validate_topic_name(name)
        try:
            await self._meta.describe_topic(name)
        except UnknownTopicOrPartition:
            return
        raise TopicAlreadyExists(f"topic {name!r} already exists")

    async def _delete_topics(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        access = await access_for(self._backend, peer)
        if request.api_version >= 6:
            wanted = [(t.name, t.topic_id) for t in body.topics]
        else:
            wanted = [(name, None) for name in body.topic_names]
        responses = []
        for name, topic_id in wanted:
            by_id = name is None and topic_id is not None
            resolved = await self._names.name_for_id(topic_id) if by_id else name
            failure: Exception | None = None
            try:
                if resolved is None or (by_id and not access.topic(Operation.DESCRIBE, resolved)):
                    raise UnknownTopicOrPartition(f"unknown topic id {topic_id}")
                if not access.topic(Operation.DELETE, resolved):
                    raise access.topic_denied(resolved, "delete")
                info = await self._meta.describe_topic(resolved)
                await self._meta.delete_topic(resolved)
                self._names.forget(info.topic_id)
                topic_id = info.topic_id
            except Exception as exc:
                failure = note_unexpected(exc, "delete_topic")
            code = error_code(failure)
            if by_id and code == ErrorCode.unknown_topic_or_partition:
                code = ErrorCode.unknown_topic_id
            responses.append(
                {
                    "name": resolved,
                    "topic_id": topic_id,
                    "error_code": code,
                    "error_message": error_message(failure),
                }
            )
        return {"responses": responses}

    async def _create_partitions(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        access = await access_for(self._backend, peer)
        results = []
        for topic in body.topics:
            failure: Exception | None = None
            try:
                if not access.topic(Operation.ALTER, topic.name):
                    raise access.topic_denied(topic.name, "alter")
                if body.validate_only:
                    info = await self._meta.describe_topic(topic.name)
                    if topic.count <= info.partitions:
                        raise InvalidPartitions(
                            f"topic {topic.name!r} has {info.partitions} partitions; "
                            f"cannot grow to {topic.count}"
                        )
                else:
                    await self._meta.create_partitions(topic.name, topic.count)
            except Exception as exc:
                failure = note_unexpected(exc, "create_partitions")
            results.append(
                {
                    "name": topic.name,
                    "error_code": error_code(failure),
                    "error_message": error_message(failure),
                }
            )
        return {"results": results}

    async def _describe_configs(self, request: Request, peer: Peer) -> dict[str, Any]:
        access = await access_for(self._backend, peer)
        results = []
        for resource in request.body.resources:
            keys = resource.configuration_keys or None  # Kafka: null or empty = all
            entries: list[dict[str, Any]] = []
            failure: Exception | None = None
            try:
                _check_describe_configs(access, resource.resource_type, resource.resource_name)
                configs = await self._configs(resource.resource_type, resource.resource_name)
                entries = [e for e in configs if keys is None or e["name"] in keys]
            except Exception as exc:
                failure = note_unexpected(exc, "describe_configs")
            results.append(
                {
                    "error_code": error_code(failure),
                    "error_message": error_message(failure),
                    "resource_type": resource.resource_type,
                    "resource_name": resource.resource_name,
                    "configs": entries,
                }
            )
        return {"results": results}

    async def _configs(self, resource_type: int, name: str) -> list[dict[str, Any]]:
        if resource_type == RESOURCE_TOPIC:
            info = await self._meta.describe_topic(name)
            return _config_entries(info.config, self._settings)
        if resource_type == RESOURCE_BROKER:
            values = broker_defaults(self._settings, self._backend.node_id)
            return [
                _config_entry(k, v, CONFIG_SOURCE_STATIC_BROKER) for k, v in sorted(values.items())
            ]
        raise InvalidRequest(f"describe_configs: resource type {resource_type} is not supported")

    async def _describe_cluster(self, request: Request, peer: Peer) -> dict[str, Any]:
        backend = self._backend
        access = await access_for(backend, peer)
        cluster_ops = NO_AUTHORIZED_OPERATIONS
        if getattr(request.body, "include_cluster_authorized_operations", False):
            cluster_ops = access.cluster_operations()
        zone = client_zone(request.client_id)
        brokers = sorted(await backend.brokers(zone), key=lambda b: b.node_id)
        return {
            "error_code": 0,
            "cluster_id": cluster_id(self._settings),
            "controller_id": brokers[0].node_id
            if brokers and all(b.node_id != backend.node_id for b in brokers)
            else backend.node_id,
            "endpoint_type": getattr(request.body, "endpoint_type", ENDPOINT_TYPE_BROKERS),
            "brokers": [
                {"broker_id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack}
                for b in brokers
            ],
            "cluster_authorized_operations": cluster_ops,
        }


def _check_describe_configs(access: Access, resource_type: int, name: str) -> None:
    """Kafka: DESCRIBE_CONFIGS on the topic, or on the cluster for a broker."""
    if resource_type == RESOURCE_TOPIC and not access.topic(Operation.DESCRIBE_CONFIGS, name):
        raise access.topic_denied(name, "describe the configs of")
    if resource_type == RESOURCE_BROKER and not access.cluster(Operation.DESCRIBE_CONFIGS):
        raise access.cluster_denied("describe broker configs (DescribeConfigs)")


def _config_entry(name: str, value: str | None, source: int) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "read_only": source != CONFIG_SOURCE_TOPIC,
        "config_source": source,
        "is_sensitive": False,
        "synonyms": [],
        "config_type": CONFIG_TYPE_STRING,
        "documentation": None,
    }


def _config_entries(config: dict[str, str], settings: Settings) -> list[dict[str, Any]]:
    merged = {k: (v, CONFIG_SOURCE_DEFAULT) for k, v in topic_config_defaults(settings).items()}
    merged.update({k: (v, CONFIG_SOURCE_TOPIC) for k, v in config.items()})
    return [_config_entry(k, v, source) for k, (v, source) in sorted(merged.items())]
