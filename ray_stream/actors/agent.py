"""AgentActor: the Ray shell around one agent's ``LogService``.

The agent's work (buffering, segment PUTs, commits, fetches, its fleet membership) is
``LogService`` (agent/log_service.py), which has no Ray in it. This shell binds it to
Ray and to the Kafka listener: it builds the service with the Ray metadata adapter,
serves the Python API's ``produce`` and ``fetch`` calls and its zone peers'
``serve_chunk`` calls, listens for Kafka clients, and finds its zone from its Ray node.
It keeps nothing that survives it except its listener address.

Zones (docs/design/0004-agent-fleet.md): a zone the fleet assigned (simulated zones)
wins; else the node's custom resource ``zone:<name>``; else its label
``ray.io/availability-zone``; else none. Chunks travel between agents as numpy arrays,
which Ray moves through its object store (shared memory on one node) rather than
pickling them.

Agents are detached actors owned by no driver (actors/fleet.py creates them); one whose
cluster is gone (its metadata actor no longer exists for ``ORPHAN_EXIT_S``) exits.

Recovery (docs/design/0002-metadata-durability.md): Ray restarts a dead agent
(``max_restarts=-1``) by re-running ``__init__``, which Ray runs inside the actor's
event loop: the Kafka listener starts from there, on the same port (for
``kafka_port=-1``: the port the metadata service saw it register last).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray

from ray_stream.actors import ray_calls
from ray_stream.actors.metadata_client import RayMetadataClient
from ray_stream.actors.metrics import RayMetricsSink
from ray_stream.actors.process import PauseMonitor, settle_heap
from ray_stream.agent.log_service import LogService
from ray_stream.clock import SystemClock
from ray_stream.config import METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.core.fleet import AgentRecord
from ray_stream.core.metadata_api import MetadataClient
from ray_stream.core.types import BatchResult, BrokerInfo, FetchResult
from ray_stream.server.kafka_server import start_kafka_server
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)

REBIND_WAIT_S = 20.0
ORPHAN_EXIT_S = 30.0
ZONE_LABEL = "ray.io/availability-zone"
ZONE_RESOURCE_PREFIX = "zone:"


def _restarted() -> bool:
    """True in an actor process Ray started again after the previous one died."""
    if not ray.is_initialized():  # get_runtime_context() would start a Ray
        return False
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # outside an actor
        return False


class AgentActor:
    """A stateless agent: ``LogService`` plus its Kafka listener (see the module doc).

    Args:
        settings: cluster settings.
        index: this agent's number (its name is ``agent-<index>``, its broker id
            ``index``).
        placement: its group, roles, zone ("": from the node), node and slot, and in
            ``port`` the listener port (0: none, -1: any free one); default: the
            default group on ``settings.kafka_port + index``.
        autostart: start the Kafka listener from ``__init__`` when a loop runs, so a
            restarted agent serves again with no manual step.
        metadata: the metadata service (default: the Ray adapter to the named actor;
            tests pass the service itself).
    """

    def __init__(
        self,
        settings: Settings,
        index: int,
        *,
        placement: AgentRecord | None = None,
        autostart: bool = True,
        metadata: MetadataClient | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        if placement is None:
            port = settings.kafka_port + index if settings.kafka_port > 0 else settings.kafka_port
            placement = AgentRecord(index, "", port, slot=index)
        self._port = placement.port
        record = replace(placement, host="", port=0, zone=placement.zone or _node_zone())
        self.store = open_store(settings.resolved_object_store)
        self._clock = SystemClock()
        self._meta: MetadataClient = metadata or RayMetadataClient(
            namespace=settings.namespace, retry_s=settings.metadata_retry_s
        )
        self.log = LogService(
            settings,
            node_id=index,
            store=self.store,
            metadata=self._meta,
            clock=self._clock,
            rand=random.Random(),
            record=record,
            peers=_RayPeers(settings.namespace),
            metrics=RayMetricsSink() if ray.is_initialized() else None,
        )
        self._pauses = PauseMonitor()
        self._warm = False
        self._start_lock = asyncio.Lock()
        self._server: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._autostart: asyncio.Task[None] | None = None
        if autostart:
            try:
                loop = asyncio.get_running_loop()  # Ray runs an async actor's __init__ in it
            except RuntimeError:
                loop = None
            if loop is not None:
                self._autostart = loop.create_task(self._start_quietly())

    # ----------------------------------------------------------------- the API
    async def produce(
        self,
        entries: Sequence[tuple[str, int, bytes | memoryview]],
        acks: int = -1,
        *,
        session: str | None = None,
        seq: int = 0,
    ) -> list[BatchResult]:
        """``LogService.produce`` for the Python producer."""
        return await self.log.produce(entries, acks, session=session, seq=seq)

    async def fetch(
        self,
        requests: Sequence[tuple[str, int, int, int]],
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 50 * 1024 * 1024,
        client_zone: str | None = None,
    ) -> list[FetchResult]:
        """``LogService.fetch`` for the Python consumer and ``read_table``."""
        return await self.log.fetch(
            requests,
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            client_zone=client_zone,
        )

    async def serve_chunk(self, key: str, index: int) -> Any:
        """A chunk this agent owns, for a peer of its zone (a numpy array: Ray moves
        it through its object store). Raises NotFound, StorageUnavailable."""
        import numpy as np

        chunk = await self.log.serve_chunk(key, index)
        return np.frombuffer(chunk, dtype=np.uint8)

    async def record(self) -> AgentRecord:
        """This agent as it registers itself with the fleet."""
        return self.log.record

    async def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """``LogService.stats``, the metadata calls this agent made (by method), and its
        process's event-loop lag and garbage-collection pauses, over the last
        ``window_s`` seconds where timed (default: the latest samples)."""
        return {
            **self.log.stats(window_s),
            "metadata_calls": dict(getattr(self._meta, "calls", {})),
            **self._pauses.report(window_s),
        }

    async def kafka_address(self) -> BrokerInfo | None:
        return self.log.address

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> BrokerInfo | None:
        """Start the Kafka listener when configured. Idempotent.

        Raises:
            OSError: the Kafka port is taken.
        """
        async with self._start_lock:
            if self._server is None and self._port != 0:
                await self._listen()
            elif not self.log.membership.joined:
                await self._join(0)
            if not self._warm:
                await self.log.warm_up()
                self._warm = True
            return self.log.address

    async def stop(self) -> None:
        """Flush what is buffered, wait for in-flight flushes, leave the fleet, close
        the listener."""
        await self.log.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _listen(self) -> None:
        host = self.settings.kafka_host
        if self._port == -1:
            port = await self._previous_port()
            try:
                self._server = await self._bind(host, port)
            except OSError:
                if port == 0:
                    raise
                self._server = await start_kafka_server(self.log, host=host, port=0)
        else:
            self._server = await self._bind(host, self._port)
        # Joining also records the listener with the metadata service (its heartbeat),
        # where this agent's next incarnation finds its port (_previous_port).
        await self._join(self._server.sockets[0].getsockname()[1])

    async def _join(self, port: int) -> None:
        try:
            await self.log.join(self._advertised(), port)
        except Exception as exc:  # the metadata service is away: the lease loop retries
            log.warning("agent-%d could not register yet: %s", self.index, exc)

    async def _previous_port(self) -> int:
        """The port this agent's previous incarnation registered (0 if unknown)."""
        try:
            info = await asyncio.wait_for(self._meta.agent_address(self.index), 2)
        except Exception:  # no metadata actor (yet): any free port
            return 0
        return info.port if info is not None and info.host == self._advertised() else 0

    def _advertised(self) -> str:
        """The host clients should connect to for this agent (Settings.advertised_host)."""
        node_ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return self.settings.advertised_host(node_ip)

    async def _bind(self, host: str, port: int) -> Any:
        """Listen on ``port``, waiting out a predecessor process that still holds it
        (after a restart, clients only know the old address)."""
        wait_s = REBIND_WAIT_S if port and _restarted() else 0.0
        deadline = self._clock.monotonic_s() + wait_s
        while True:
            try:
                return await start_kafka_server(self.log, host=host, port=port)
            except OSError:
                if self._clock.monotonic_s() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _start_quietly(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # an explicit start() raises it again for the caller
            log.warning("agent-%d could not start on its own: %s", self.index, exc)
        settle_heap()  # the listener's schemas are loaded: freeze what start-up built
        self._pauses.start()
        self._watchdog = asyncio.get_running_loop().create_task(self._exit_when_orphaned())

    async def _exit_when_orphaned(self) -> None:
        """Exit once the cluster is gone: heartbeats have failed for ``ORPHAN_EXIT_S``
        and no metadata actor exists (a restarting one still does), twice in a row."""
        gone = 0
        while True:
            await asyncio.sleep(5)
            since = self.log.membership.failing_since
            if since is None or self._clock.monotonic_s() - since < ORPHAN_EXIT_S:
                gone = 0
                continue
            try:
                exists = await asyncio.to_thread(
                    ray_calls.actor_exists, METADATA_ACTOR_NAME, self.settings.namespace
                )
            except Exception as exc:  # the GCS is away: unknown, keep serving
                log.info("agent-%d: cannot tell whether the cluster exists: %r", self.index, exc)
                continue
            gone = 0 if exists else gone + 1
            if gone >= 2:
                log.warning("agent-%d: the cluster is gone, exiting", self.index)
                ray.actor.exit_actor()


def _node_zone() -> str:
    """This Ray node's zone: resource ``zone:<name>``, else label
    ``ray.io/availability-zone``, else "" (outside Ray, or none named)."""
    if not ray.is_initialized():
        return ""
    try:
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n.get("NodeID") == node_id)
    except Exception:  # outside an actor, or the GCS is away: no zone
        return ""
    for name in node.get("Resources", {}):
        if name.startswith(ZONE_RESOURCE_PREFIX) and len(name) > len(ZONE_RESOURCE_PREFIX):
            return str(name[len(ZONE_RESOURCE_PREFIX) :])
    return str((node.get("Labels") or {}).get(ZONE_LABEL, ""))


class _RayPeers:
    """``PeerLink`` over Ray: agent ``n`` is the named actor ``agent-<n>``."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._handles: dict[int, Any] = {}

    async def fetch_chunk(self, agent_id: int, key: str, index: int) -> bytes:
        handle: Any = self._handles.get(agent_id)
        if handle is None:  # a GCS call: off the event loop, within the caller's timeout
            handle = await asyncio.to_thread(
                ray_calls.lookup, agent_name(agent_id), self._namespace
            )
            self._handles[agent_id] = handle
        try:
            array = await ray_calls.call(handle.serve_chunk.remote(key, index))
        except Exception:
            self._handles.pop(agent_id, None)  # looked up again: it may have been re-created
            raise
        return bytes(array.data)  # one copy, so the object store's memory is released
