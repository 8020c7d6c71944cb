"""The cluster handle users hold: start or attach, topics, producers, consumers, tables.

``start_local`` runs the embedded cluster inside this process's Ray (starting Ray when
needed); ``connect`` attaches to one that runs elsewhere (``ray-stream start`` records
how to reach it in ``~/.ray_stream/cluster.json``).

Rules this module keeps:

1. A connected handle never calls into a dead Ray session: once its cluster is lost
   (stopped, restarted, replaced) every call raises ``Unavailable`` saying to call
   ``connect()`` again, and ``connect()`` reattaches to the cluster running now
   (actors/attachment.py has the how and the measurements).
2. A call waits at most ``timeout_s`` for the cluster (a restarting metadata actor),
   then raises ``Unavailable`` naming what to do. Reads are re-sent within that time;
   writes are sent once (a second create could answer TopicAlreadyExists for the first).
3. ``close()`` detaches and never stops a cluster; ``shutdown()`` stops a cluster this
   handle started (``start_local``) and only detaches a connected one.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray_stream.actors import handles
from ray_stream.actors.attachment import Attachment
from ray_stream.client.state import STATE_FILE, clear_state, pid_alive, read_state, write_state
from ray_stream.config import (
    DEFAULT_GROUP,
    METADATA_ACTOR_NAME,
    NAMESPACE,
    GroupSpec,
    Settings,
    parse_group,
    settings_from_env,
    unique_groups,
)
from ray_stream.core.acl import AclBinding, AclFilter, check_binding, check_filter
from ray_stream.core.backoff import Backoff
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.scram import (
    DEFAULT_ITERATIONS,
    MECHANISMS,
    ScramUserInfo,
    credential_from_password,
)
from ray_stream.core.types import BrokerInfo, TopicInfo
from ray_stream.errors import InvalidPartitions, InvalidRequest, Unavailable

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "STATE_FILE",
    "Cluster",
    "clear_state",
    "connect",
    "pid_alive",
    "read_state",
    "start_local",
    "write_state",
    "zone_totals",
]

log = logging.getLogger(__name__)

VIEW_TTL_S = 2.0  # how long the fleet view is reused for picking agents
# How long a call waits for the cluster (a metadata actor restarts in seconds) and how
# long connect() waits for a recorded cluster to answer: issue 12's bound.
DEFAULT_TIMEOUT_S = 30.0


class Cluster:
    """A handle on a running ray_stream cluster.

    Created by :func:`start_local` or :func:`connect`; usable from any process attached
    to the same Ray cluster. Methods raise ray_stream errors (``InvalidTopic``,
    ``UnknownTopicOrPartition``, ``Unavailable``, ...); each waits at most ``timeout_s``
    for the cluster. A context manager: leaving the ``with`` block stops a cluster this
    handle started and detaches from a connected one (``shutdown()``).

    Args:
        settings: the cluster's settings.
        owned: this handle started the cluster (``shutdown()`` stops it).
        started_ray: ``start_local`` started this process's Ray (stopped with it).
        actors: the metadata and fleet handles of a cluster this process created.
        attachment: the Ray session ``connect()`` attached (None: this process's Ray).
        timeout_s: how long a call waits for the cluster (module rule 2).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        owned: bool,
        started_ray: bool,
        actors: tuple[Any, Any] | None = None,
        attachment: Attachment | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._owned = owned
        self._started_ray = started_ray
        self._attachment = attachment
        # The creating handles must stay referenced: Ray destroys a non-detached actor
        # once its creator's handles are gone.
        if actors is not None:
            self._metadata, self._fleet = actors
        else:
            self._metadata = handles.get_metadata(settings.namespace)
            self._fleet = None
        self._view: FleetView | None = None
        self._view_at = 0.0
        self._closed = False

    # ------------------------------------------------------------------ topics

    def create_topic(
        self, name: str, partitions: int = 1, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic. Raises InvalidTopic, InvalidPartitions, TopicAlreadyExists."""
        if not isinstance(partitions, int) or isinstance(partitions, bool):
            raise InvalidPartitions(f"partitions must be an int, got {type(partitions).__name__}")
        return self._ask(lambda m: m.create_topic.remote(name, partitions, config or {}))

    def list_topics(self) -> list[TopicInfo]:
        return self._ask(lambda m: m.list_topics.remote(), resend=True)

    def describe_topic(self, name: str) -> TopicInfo:
        """Topic, config and each partition's offsets. Raises UnknownTopicOrPartition."""
        return self._ask(lambda m: m.describe_topic.remote(name), resend=True)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its offsets. Raises UnknownTopicOrPartition."""
        self._ask(lambda m: m.delete_topic.remote(name))

    def create_partitions(self, name: str, total: int) -> TopicInfo:
        return self._ask(lambda m: m.create_partitions.remote(name, total))

    # -------------------------------------------------------------------- acls
    # Not checked against the ACLs themselves: Ray's ports are the Python API's trust
    # boundary (README, "Securing it").

    def create_acls(self, bindings: list[AclBinding]) -> list[AclBinding]:
        """Store ACL bindings (existing ones are no-ops), all or none.

        Returns:
            The bindings as stored.

        Raises:
            InvalidRequest: a binding is malformed (the message names the field);
                nothing was stored.
        """
        checked = [check_binding(b) for b in bindings]
        outcomes = self._ask(lambda m: m.create_acls.remote(checked), resend=True)
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return checked

    def describe_acls(self, acl_filter: AclFilter | None = None) -> list[AclBinding]:
        """The bindings ``acl_filter`` matches (default: every one)."""
        wanted = acl_filter if acl_filter is not None else AclFilter()
        return self._ask(lambda m: m.describe_acls.remote(wanted), resend=True)

    def delete_acls(self, filters: list[AclFilter]) -> list[AclBinding]:
        """Delete every binding any of ``filters`` matches; returns those deleted.

        Raises:
            InvalidRequest: a filter has an UNKNOWN code (nothing was deleted).
        """
        for acl_filter in filters:
            check_filter(acl_filter)
        outcomes = self._ask(lambda m: m.delete_acls.remote(list(filters)), resend=True)
        deleted = dict.fromkeys(b for o in outcomes for b in o.bindings)
        return list(deleted)

    # ------------------------------------------------------------------- users
    # SASL users of the Kafka listeners (core/scram.py). The password never leaves this
    # process: only salts and derived keys reach the metadata actor.

    def add_user(self, name: str, password: str, *, iterations: int = DEFAULT_ITERATIONS) -> None:
        """Create ``name``, or replace its password: SCRAM-SHA-256 and SCRAM-SHA-512
        credentials (each with its own random salt), which PLAIN logins check too.

        Raises:
            InvalidRequest: an empty or unprintable name, an empty password, or
                iterations outside [4096, 16384].
        """
        if not name or not name.isprintable():
            raise InvalidRequest(f"user name {name!r} must be non-empty and printable")
        if not password:
            raise InvalidRequest(f"the password of user {name!r} is empty")
        credentials = [
            credential_from_password(
                name, mechanism, password, salt=secrets.token_bytes(16), iterations=iterations
            )
            for mechanism in MECHANISMS
        ]
        self._ask(lambda m: m.alter_scram_credentials.remote(credentials, []), resend=True)

    def list_users(self) -> list[ScramUserInfo]:
        """Every stored credential: user, mechanism and iterations (never a secret)."""
        return self._ask(lambda m: m.describe_scram_credentials.remote(None), resend=True)

    def delete_user(self, name: str) -> None:
        """Forget every credential of ``name`` (its open connections stay logged in).

        Raises:
            InvalidRequest: no such user.
        """
        found = self._ask(lambda m: m.describe_scram_credentials.remote([name]), resend=True)
        if not found:
            raise InvalidRequest(f"no user {name!r}")
        doomed = [(name, info.mechanism) for info in found]
        self._ask(lambda m: m.alter_scram_credentials.remote([], doomed), resend=True)

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

    def fleet(self, *, refresh: bool = False) -> FleetView:
        """The live agents (their ids, listeners, zones, groups), as the metadata
        service's registry has them."""
        now = time.monotonic()
        if self._view is None or refresh or now - self._view_at > VIEW_TTL_S:
            self._view = self._ask(lambda m: m.fleet.remote(), resend=True)
            self._view_at = now
        return self._view

    def agents(
        self, *, zone: str | None = None, role: str | None = None, group: str = DEFAULT_GROUP
    ) -> list[AgentRecord]:
        """The live agents of ``group`` that serve ``role``, of ``zone`` when it has any
        (core/fleet.py rule 1). Waits up to 60 s for a first agent to register."""
        deadline = time.monotonic() + 60
        while True:
            view = self.fleet(refresh=self._view is not None and not self._view.agents)
            found = [a for a in view.discover(group, zone) if role is None or a.serves(role)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
            self._view = None

    def agent(self, index: int, *, zone: str | None = None, role: str | None = None) -> Any:
        """The handle of live agent ``index`` (modulo their number) of the default group,
        of ``zone`` when it has agents.

        Raises:
            Unavailable: no agent is alive (or none serves ``role``).
        """
        found = self.agents(zone=zone, role=role)
        if not found:
            raise Unavailable(
                f"no live agent{' serves ' + role if role else ''}: is the cluster running? "
                "`ray-stream status` shows the fleet"
            )
        return self.agent_by_id(found[index % len(found)].agent_id)

    def agent_by_id(self, agent_id: int) -> Any:
        """The handle of agent ``agent_id`` (the actor ``agent-<id>``), alive or not.

        Raises:
            Unavailable: no such actor.
        """
        # Not cached: ids are reused (scale down then up, nodes that come and go), and
        # a handle outlives the actor it named.
        self._check_usable()
        return handles.get_agent(self.settings.namespace, agent_id)

    @property
    def agent_count(self) -> int:
        """How many agents of the default group are alive."""
        return len(self.agents())

    @property
    def metadata(self) -> Any:
        """The metadata actor's handle.

        Raises:
            Unavailable: the cluster is gone (call ``connect()`` again).
            InvalidRequest: the handle is closed.
        """
        self._check_usable()
        return self._metadata

    def brokers(self, zone: str | None = None, group: str = DEFAULT_GROUP) -> list[BrokerInfo]:
        """The Kafka listeners a client of ``zone`` bootstrapping to ``group`` sees."""
        return [a.broker for a in self.fleet(refresh=True).discover(group, zone) if a.port]

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,...`` of the default group's Kafka listeners ('' when disabled)."""
        return ",".join(f"{b.host}:{b.port}" for b in self.brokers())

    def scale(self, agents: int, group: str = DEFAULT_GROUP) -> list[AgentRecord]:
        """Run ``agents`` agents in ``group`` (an embedded cluster; new ones serve when
        this returns, removed ones flushed first).

        Raises:
            InvalidConfig: per-node clusters, unknown groups, no agent left.
        """
        self._check_usable()
        placed = handles.get(self._fleet_handle().scale.remote(agents, group), timeout_s=300)
        self.fleet(refresh=True)
        return placed

    def _fleet_handle(self) -> Any:
        if self._fleet is None:
            self._fleet = handles.get_fleet(self.settings.namespace)
        return self._fleet

    def status(self) -> dict[str, Any]:
        """The metadata actor, each live agent's counters, and their sums per zone."""
        meta = self._ask(lambda m: m.ping.remote(), resend=True)
        view = self.fleet(refresh=True)
        refs: list[Any] = []
        for a in view.agents:
            try:
                refs.append(self.agent_by_id(a.agent_id).stats.remote())
            except Exception as exc:  # listed until its lease ends, but gone
                refs.append(exc)
        agents = []
        for record, ref in zip(view.agents, refs, strict=True):
            try:
                if isinstance(ref, Exception):
                    raise ref
                agents.append(handles.get(ref, timeout_s=30))
            except Exception as exc:  # a dying agent: reported, not fatal
                agents.append({"agent_id": record.agent_id, "zone": record.zone, "error": str(exc)})
        lag = self._ask(lambda m: m.consumer_lag.remote(), resend=True)
        return {
            "namespace": self.settings.namespace,
            "object_store": self.settings.resolved_object_store,
            "data_dir": self.settings.resolved_data_dir,
            "kafka": self.bootstrap_servers,
            "metadata": meta,
            "agents": agents,
            "zones": zone_totals(agents),
            "lag": [{"group": g, "topic": t, "partition": p, "lag": n} for g, t, p, n in lag],
        }

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Detach this handle; the cluster keeps running (module rule 3).

        A connected handle lets go of its Ray session (the process's last connected
        handle shuts the session down; a session of the caller's own ``ray.init`` is left
        to them). A handle from ``start_local`` only stops being usable: the cluster runs
        on in this process's Ray until ``shutdown()`` or the process exits. Producers and
        consumers made from the handle stop working; close them first. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._attachment is not None:
            handles.release(self._attachment)

    def shutdown(self) -> None:
        """Stop the cluster if this handle started it (flushing agents first); a
        connected handle is only detached, as by ``close()``."""
        if self._closed:
            return
        if not self._owned:
            self.close()
            return
        self._closed = True
        try:
            handles.get(self._fleet_handle().stop_all.remote(), timeout_s=120)
        except Exception as exc:  # agents of a dead fleet exit once the cluster is gone
            log.warning("fleet stop failed: %s", exc)
        handles.kill(self._fleet_handle())
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

    # ------------------------------------------------------------- calls

    def _check_usable(self) -> None:
        if self._closed:
            raise InvalidRequest(
                "this Cluster handle is closed; call ray_stream.connect() for a new one"
            )
        if self._attachment is not None:
            self._attachment.check()

    def _ask(self, call: Callable[[Any], Any], *, resend: bool = False) -> Any:
        """``call(metadata_actor)``'s answer within ``timeout_s`` (``_call_metadata``)."""
        return _call_metadata(
            self._metadata,
            call,
            timeout_s=self.timeout_s,
            resend=resend,
            check=self._check_usable,
        )


def _call_metadata(
    metadata: Any,
    call: Callable[[Any], Any],
    *,
    timeout_s: float,
    resend: bool = False,
    check: Callable[[], None] = lambda: None,
) -> Any:
    """``call(metadata)``'s answer, waiting at most ``timeout_s`` for the cluster.

    Args:
        metadata: the metadata actor's handle.
        call: sends the call (``lambda m: m.list_topics.remote()``).
        timeout_s: the whole wait, resends included.
        resend: send again after Unavailable (reads only: module rule 2).
        check: raises when the handle can no longer be used (run before each send).

    Raises:
        Unavailable: no answer in time, or the cluster is gone (the message says what
            to do).
    """
    deadline = time.monotonic() + timeout_s
    for delay in Backoff():
        check()
        try:
            return handles.get(call(metadata), timeout_s=max(deadline - time.monotonic(), 0.01))
        except Unavailable as exc:
            check()  # gone: say so, not "timed out"
            if not resend or time.monotonic() + delay >= deadline:
                raise Unavailable(
                    f"the cluster did not answer within timeout_s={timeout_s:g} s ({exc}); "
                    "it may be restarting: retry, check `ray-stream status`, or call "
                    "ray_stream.connect() again if it was restarted"
                ) from exc
        time.sleep(delay)
    raise AssertionError("Backoff() is endless")  # pragma: no cover


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
    zones: list[str] | tuple[str, ...] | None = None,
    groups: list[GroupSpec | str] | None = None,
    agents_per_node: int | None = None,
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
        zones: simulated availability zones: agent n is in ``zones[n % len(zones)]``
            (default: each agent takes its Ray node's zone, or none).
        groups: agent groups besides ``default``: ``GroupSpec``s or
            ``"name:agents=N,port=P,roles=produce+consume"`` strings.
        agents_per_node: keep this many agents of each group on every alive Ray node
            (following nodes that join and leave) instead of a fixed number.

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
        zones=tuple(zones) if zones is not None else None,
        groups=unique_groups([parse_group(g) if isinstance(g, str) else g for g in groups])
        if groups is not None
        else None,
        agents_per_node=agents_per_node,
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
    fleet = handles.create_fleet(settings)
    try:
        handles.get(fleet.start.remote(), timeout_s=300)
    except Unavailable as exc:
        with contextlib.suppress(Exception):
            handles.get(fleet.stop_all.remote(), timeout_s=60)
        handles.kill(fleet)
        handles.kill(metadata)
        raise Unavailable(
            f"could not start the agents ({exc}); if a Kafka port is taken, pass "
            "--kafka-port with a free port (or 0 to disable)"
        ) from exc
    return Cluster(settings, owned=True, started_ray=started_ray, actors=(metadata, fleet))


def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Cluster:
    """Attach to a running cluster, dropping this process's Ray session first if its
    cluster was stopped or replaced (call it again after a restart).

    Args:
        address: a Ray address (``host:port`` of the GCS, or ``auto``). None reads the
            record ``ray-stream start`` left in ``~/.ray_stream/cluster.json``. A Ray
            session this process started itself (its own ``ray.init``, ``start_local``)
            is used as it is while it answers; one a previous ``connect()`` started is
            replaced when its cluster is gone or the record names another one.
        namespace: Ray namespace of the cluster (default from the record, else
            ``ray_stream``).
        timeout_s: how long connecting, and then each call of the handle, waits for the
            cluster (e.g. a restarting metadata actor) before raising Unavailable.

    Raises:
        Unavailable: no cluster is running there (the message says how to start one), or
            it did not answer within ``timeout_s``.
    """
    record = read_state()
    server_pid = None
    if address is None and record is not None:
        address = str(record["ray_address"])
        pid = record.get("pid")
        server_pid = pid if isinstance(pid, int) else None
    ns = namespace or (record or {}).get("namespace") or NAMESPACE
    attachment = handles.attach(address, namespace=ns, server_pid=server_pid)
    try:
        meta = handles.get_metadata(ns)
        settings: Settings = _call_metadata(
            meta, lambda m: m.settings.remote(), timeout_s=timeout_s, resend=True
        )
    except BaseException:
        handles.release(attachment)
        raise
    return Cluster(
        settings,
        owned=False,
        started_ray=False,
        actors=(meta, None),
        attachment=attachment,
        timeout_s=timeout_s,
    )


ZONE_COUNTERS = (
    "gets",
    "get_bytes",
    "cache_hits",
    "cache_misses",
    "peer_chunks",
    "peer_bytes",
    "served_chunks",
    "served_bytes",
    "client_bytes",
    "cross_zone_bytes",
)


def zone_totals(agents: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per zone ("" : none): agent count and the sums of the counters that cost money."""
    zones: dict[str, dict[str, int]] = {}
    for stats in agents:
        total = zones.setdefault(str(stats.get("zone", "")), {"agents": 0})
        total["agents"] += 1
        for key in ZONE_COUNTERS:
            total[key] = total.get(key, 0) + int(stats.get(key, 0) or 0)
    return zones
