"""The cluster handle users hold: start or attach, topics, producers, consumers, tables.

``start_local`` runs the embedded cluster inside this process's Ray (starting Ray when
needed); ``connect`` attaches to one that runs elsewhere (``ray-stream start`` records
how to reach it in ``~/.ray_stream/cluster.json``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ray_stream.actors import handles
from ray_stream.config import METADATA_ACTOR_NAME, NAMESPACE, Settings, settings_from_env, state_dir
from ray_stream.core.types import BrokerInfo, TopicInfo
from ray_stream.errors import InvalidPartitions, InvalidRequest, Unavailable

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


class Cluster:
    """A handle on a running ray_stream cluster.

    Created by :func:`start_local` or :func:`connect`; usable from any process attached
    to the same Ray cluster. Methods raise ray_stream errors (``InvalidTopic``,
    ``UnknownTopicOrPartition``, ``Unavailable``, ...).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        owned: bool,
        started_ray: bool,
        actors: tuple[Any, list[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self._owned = owned
        self._started_ray = started_ray
        # The creating handles must stay referenced: Ray destroys a non-detached actor
        # once its creator's handles are gone.
        if actors is not None:
            self._metadata, self._agents = actors
        else:
            self._metadata = handles.get_metadata(settings.namespace)
            self._agents = [
                handles.get_agent(settings.namespace, i) for i in range(settings.agents)
            ]
        self._brokers: list[BrokerInfo] | None = None
        self._closed = False

    # ------------------------------------------------------------------ topics

    def create_topic(
        self, name: str, partitions: int = 1, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic. Raises InvalidTopic, InvalidPartitions, TopicAlreadyExists."""
        if not isinstance(partitions, int) or isinstance(partitions, bool):
            raise InvalidPartitions(f"partitions must be an int, got {type(partitions).__name__}")
        return handles.get(self._metadata.create_topic.remote(name, partitions, config or {}))

    def list_topics(self) -> list[TopicInfo]:
        return handles.get(self._metadata.list_topics.remote())

    def describe_topic(self, name: str) -> TopicInfo:
        """Topic, config and each partition's offsets. Raises UnknownTopicOrPartition."""
        return handles.get(self._metadata.describe_topic.remote(name))

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its offsets. Raises UnknownTopicOrPartition."""
        handles.get(self._metadata.delete_topic.remote(name))

    def create_partitions(self, name: str, total: int) -> TopicInfo:
        return handles.get(self._metadata.create_partitions.remote(name, total))

    # ------------------------------------------------------------- clients

    def producer(self, **options: Any) -> Any:
        """A :class:`~ray_stream.client.producer.Producer` (see its options)."""
        from ray_stream.client.producer import Producer

        return Producer(self, **options)

    def consumer(self, group_id: str | None = None, **options: Any) -> Any:
        """A :class:`~ray_stream.client.consumer.Consumer` (see its options)."""
        from ray_stream.client.consumer import Consumer

        return Consumer(self, group_id=group_id, **options)

    def read_table(
        self,
        topic: str,
        partitions: list[int] | None = None,
        start: int | dict[int, int] | None = None,
        end: int | dict[int, int] | None = None,
    ) -> Any:
        """Read offsets ``[start, end)`` of a topic as a pyarrow Table.

        Columns: offset, partition, timestamp, key, value, headers. ``start``/``end``
        are an offset for every partition or a ``{partition: offset}`` dict; the
        defaults are each partition's log start and its high watermark at call time.
        """
        from ray_stream.client.table import read_table

        return read_table(self, topic, partitions=partitions, start=start, end=end)

    def read_dataset(self, topic: str, partitions: list[int] | None = None) -> Any:
        """The topic as a Ray Dataset, one read task per partition."""
        from ray_stream.client.table import read_dataset

        return read_dataset(self, topic, partitions=partitions)

    # ------------------------------------------------------------- plumbing

    def agent(self, index: int) -> Any:
        return self._agents[index % len(self._agents)]

    @property
    def metadata(self) -> Any:
        return self._metadata

    def brokers(self) -> list[BrokerInfo]:
        if self._brokers is None:
            found = [handles.get(a.kafka_address.remote()) for a in self._agents]
            self._brokers = [b for b in found if b is not None]
        return self._brokers

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,...`` of the agents' Kafka listeners ('' when disabled)."""
        return ",".join(f"{b.host}:{b.port}" for b in self.brokers())

    def status(self) -> dict[str, Any]:
        meta = handles.get(self._metadata.ping.remote())
        agents = [handles.get(a.stats.remote()) for a in self._agents]
        return {
            "namespace": self.settings.namespace,
            "object_store": self.settings.resolved_object_store,
            "data_dir": self.settings.resolved_data_dir,
            "kafka": self.bootstrap_servers,
            "metadata": meta,
            "agents": agents,
        }

    def shutdown(self) -> None:
        """Stop the cluster if this handle started it (flushing agents first)."""
        if self._closed:
            return
        self._closed = True
        if not self._owned:
            return
        for agent in self._agents:
            try:
                handles.get(agent.stop.remote(), timeout_s=30)
            except Exception as exc:  # a dead agent has nothing left to flush
                log.warning("agent stop failed: %s", exc)
        for agent in self._agents:
            handles.kill(agent)
        try:
            handles.get(self._metadata.close.remote(), timeout_s=30)
        except Exception as exc:
            log.warning("metadata close failed: %s", exc)
        handles.kill(self._metadata)
        if self._started_ray:
            import ray

            ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def start_local(
    *,
    data_dir: str | None = None,
    object_store: str | None = None,
    agents: int | None = None,
    linger_ms: int | None = None,
    flush_bytes: int | None = None,
    kafka_port: int | None = None,
    namespace: str | None = None,
    settings: Settings | None = None,
    address: str | None = None,
    **extra: Any,
) -> Cluster:
    """Start the embedded cluster in this process's Ray and return its handle.

    Args:
        data_dir: where metadata (SQLite) and, by default, segment files live.
        object_store: ``file:///dir``, ``s3://bucket/prefix?endpoint_url=...`` or
            ``memory://`` (default: ``<data_dir>/objects``).
        agents: number of agent actors (default 1).
        linger_ms / flush_bytes: agent flush policy (default 250 ms / 8 MiB).
        kafka_port: first agent's Kafka port (default 9092; 0 disables; -1 any free).
        namespace: Ray namespace for the named actors (default ``ray_stream``).
        settings: a full Settings; the keyword arguments above override it.
        address: run the cluster's actors in an existing Ray cluster (``auto`` or
            ``host:port``, as on a ``ray up`` head node) instead of a new local Ray.

    Raises:
        InvalidConfig: a setting is out of range (the message names it).
        InvalidRequest: a cluster already runs in that namespace (use connect()).
    """
    overrides: dict[str, Any] = dict(
        data_dir=data_dir,
        object_store=object_store,
        agents=agents,
        linger_ms=linger_ms,
        flush_bytes=flush_bytes,
        kafka_port=kafka_port,
        namespace=namespace,
        **extra,
    )
    if settings is not None:
        settings = settings.with_overrides(**overrides)
    else:
        settings = settings_from_env(**overrides)
    Path(settings.resolved_data_dir).mkdir(parents=True, exist_ok=True)
    started_ray = handles.ensure_ray(address=address, namespace=settings.namespace)
    if handles.actor_exists(METADATA_ACTOR_NAME, settings.namespace):
        raise InvalidRequest(
            f"a ray_stream cluster already runs in Ray namespace {settings.namespace!r}; "
            "attach with ray_stream.connect() or pass another namespace"
        )
    metadata = handles.create_metadata(settings)
    handles.get(metadata.ping.remote(), timeout_s=120)
    agents_ = [handles.create_agent(settings, i) for i in range(settings.agents)]
    try:
        for agent in agents_:
            handles.get(agent.start.remote(), timeout_s=120)
    except OSError as exc:
        for agent in agents_:
            handles.kill(agent)
        handles.kill(metadata)
        raise Unavailable(
            f"could not listen for Kafka clients on {settings.kafka_host}:{settings.kafka_port}: "
            f"{exc}; pass --kafka-port with a free port (or 0 to disable)"
        ) from exc
    return Cluster(settings, owned=True, started_ray=started_ray, actors=(metadata, agents_))


def connect(address: str | None = None, *, namespace: str | None = None) -> Cluster:
    """Attach to a running cluster.

    Args:
        address: a Ray address (``host:port`` of the GCS, or ``auto``). None reads the
            record ``ray-stream start`` left in ``~/.ray_stream/cluster.json``, or uses
            the Ray this process already runs in.
        namespace: Ray namespace of the cluster (default from the record, else
            ``ray_stream``).

    Raises:
        Unavailable: no cluster is running there (the message says how to start one).
    """
    import ray

    record = read_state()
    if address is None and not ray.is_initialized():
        if record is None:
            raise Unavailable(
                "no running ray_stream cluster found: start one with `ray-stream start` "
                "(or pass connect(address=...))"
            )
        address = record["ray_address"]
    ns = namespace or (record or {}).get("namespace") or NAMESPACE
    if not ray.is_initialized():
        handles.ensure_ray(address=address, namespace=ns)
    meta = handles.get_metadata(ns)
    settings: Settings = handles.get(meta.settings.remote())
    return Cluster(settings, owned=False, started_ray=False)


def write_state(cluster: Cluster) -> Path:
    path = state_dir() / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "ray_address": handles.gcs_address(),
        "namespace": cluster.settings.namespace,
        "kafka": cluster.bootstrap_servers,
        "data_dir": cluster.settings.resolved_data_dir,
        "pid": os.getpid(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


def read_state() -> dict[str, Any] | None:
    path = state_dir() / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        return None
    return record


def clear_state() -> None:
    path = state_dir() / STATE_FILE
    try:
        record = json.loads(path.read_text())
        if record.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
