"""AgentActor: the Ray shell around one agent's ``LogService``.

The agent's work (buffering, segment PUTs, commits, fetches) is ``LogService``
(agent/log_service.py), which has no Ray in it. This shell binds it to Ray and to the
Kafka listener: it builds the service with the Ray metadata adapter, serves the Python
API's ``produce`` and ``fetch`` calls, listens for Kafka clients, and finds its peers'
listeners for Metadata answers. It keeps nothing that survives it except its listener
address.

Recovery (docs/design/0002-metadata-durability.md): Ray restarts a dead agent
(``max_restarts=-1``) by re-running ``__init__``, which Ray runs inside the actor's
event loop: the Kafka listener starts from there, on the same port (for
``kafka_port=-1``: the port the metadata service saw it register last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

import ray

from ray_stream.actors import ray_calls
from ray_stream.actors.metadata_client import RayMetadataClient
from ray_stream.actors.process import PauseMonitor, settle_heap
from ray_stream.agent.log_service import LogService
from ray_stream.clock import SystemClock
from ray_stream.config import Settings, agent_name
from ray_stream.core.types import BatchResult, BrokerInfo, FetchResult
from ray_stream.server.kafka_server import start_kafka_server
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)

BROKERS_TTL_S = 10.0
PEER_TIMEOUT_S = 2.0  # a restarting peer is left out of the broker list, not waited for
REBIND_WAIT_S = 20.0


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
        autostart: start the Kafka listener from ``__init__`` when a loop runs, so a
            restarted agent serves again with no manual step.
    """

    def __init__(self, settings: Settings, index: int, *, autostart: bool = True) -> None:
        self.settings = settings
        self.index = index
        self.store = open_store(settings.resolved_object_store)
        self._clock = SystemClock()
        self._meta = RayMetadataClient(
            namespace=settings.namespace, retry_s=settings.metadata_retry_s
        )
        self.log = LogService(
            settings,
            node_id=index,
            store=self.store,
            metadata=self._meta,
            clock=self._clock,
            rand=random.Random(),
            brokers=self.brokers,
        )
        self._pauses = PauseMonitor()
        self._warm = False
        self._start_lock = asyncio.Lock()
        self._server: Any = None
        self._brokers: list[BrokerInfo] = []
        self._brokers_at = -1e9
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
    ) -> list[FetchResult]:
        """``LogService.fetch`` for the Python consumer and ``read_table``."""
        return await self.log.fetch(
            requests, max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes
        )

    async def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """``LogService.stats``, the metadata calls this agent made (by method), and its
        process's event-loop lag and garbage-collection pauses, over the last
        ``window_s`` seconds where timed (default: the latest samples)."""
        return {
            **self.log.stats(window_s),
            "metadata_calls": dict(self._meta.calls),
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
            if self._server is None and self.settings.kafka_port != 0:
                await self._listen()
            if not self._warm:
                await self.log.warm_up()
                self._warm = True
            return self.log.address

    async def stop(self) -> None:
        """Flush what is buffered, wait for in-flight flushes, close the listener."""
        await self.log.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def brokers(self) -> list[BrokerInfo]:
        """Every agent's Kafka listener (cached for a few seconds)."""
        now = self._clock.monotonic_s()
        if self._brokers and now - self._brokers_at < BROKERS_TTL_S:
            return self._brokers
        found: list[BrokerInfo] = []
        for i in range(self.settings.agents):
            info = self.log.address if i == self.index else await self._peer_address(i)
            if info is not None:
                found.append(info)
        self._brokers, self._brokers_at = found, now
        return found

    async def _peer_address(self, index: int) -> BrokerInfo | None:
        try:
            peer = ray_calls.lookup(agent_name(index), self.settings.namespace)
            call = ray_calls.call(peer.kafka_address.remote())
            address: BrokerInfo | None = await asyncio.wait_for(call, PEER_TIMEOUT_S)
        except Exception as exc:  # a dead or restarting peer is left out, not fatal
            log.warning("agent-%d not reachable for broker list: %s", index, exc)
            return None
        return address

    async def _listen(self) -> None:
        host = self.settings.kafka_host
        if self.settings.kafka_port == -1:
            port = await self._previous_port()
            try:
                self._server = await self._bind(host, port)
            except OSError:
                if port == 0:
                    raise
                self._server = await start_kafka_server(self.log, host=host, port=0)
        else:
            self._server = await self._bind(host, self.settings.kafka_port + self.index)
        bound = self._server.sockets[0].getsockname()
        self.log.address = BrokerInfo(node_id=self.index, host=self._advertised(), port=bound[1])
        if self.settings.kafka_port == -1:  # remembered for this agent's next incarnation
            with contextlib.suppress(Exception):  # best effort: only a later restart needs it
                register = self._meta.register_agent(self.index, self.log.address)
                await asyncio.wait_for(register, 5)

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
