"""AgentActor: the stateless front of the cluster.

The agent serves the Kafka protocol (server/kafka_server.py) and the Python API's
``produce`` and ``fetch``, and keeps nothing that survives it except its listener address.

- Write path: ``SegmentWriter`` (actors/segment_writer.py) buffers batches, PUTs one
  segment per flush and commits through a ``CommitQueue`` (actors/commit_queue.py) in
  flush order; ``CallOrder`` (actors/call_order.py) first puts a pipelining producer's
  calls back in the order it sent them.
- Read path: ``fetch`` asks the metadata actor where the batches from an offset live,
  reads them through a ``ChunkCache`` (actors/chunk_cache.py) and long-polls the metadata
  actor when there is nothing new (woken by commits, not by a timer).

Recovery (docs/design/0002-metadata-durability.md): PUTs and commits are retried by the
writer and the commit queue; Ray restarts a dead agent (``max_restarts=-1``) by re-running
``__init__``, which Ray runs inside the actor's event loop: the Kafka listener starts from
there, on the same port (for ``kafka_port=-1``: the port the metadata actor saw it
register last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from typing import Any

from ray_stream.actors.call_order import CallOrder
from ray_stream.actors.chunk_cache import ChunkCache
from ray_stream.actors.handles import MetadataProxy, call, get_agent
from ray_stream.actors.segment_writer import SegmentWriter
from ray_stream.clock import SystemClock
from ray_stream.config import Settings, agent_name
from ray_stream.core.types import BatchRef, BatchResult, BrokerInfo, CommitRequest, FetchResult
from ray_stream.errors import InvalidRequest, OffsetOutOfRange, UnknownTopicOrPartition
from ray_stream.storage.url import open_store

log = logging.getLogger(__name__)

BROKERS_TTL_S = 10.0
PEER_TIMEOUT_S = 2.0  # a restarting peer is left out of the broker list, not waited for
REBIND_WAIT_S = 20.0


class _KafkaFront:
    """The agent as ``KafkaBackend``: its broker id is ``node_id`` there, while the
    actor's own ``node_id()`` method answers the Ray node (for the chaos harness)."""

    def __init__(self, agent: AgentActor) -> None:
        self.node_id = agent.index
        self.settings = agent.settings
        self.meta = agent.meta
        self.brokers = agent.brokers
        self.produce = agent.produce  # bound directly: no extra await before buffering
        self.fetch = agent.fetch


def _restarted() -> bool:
    """True in an actor process Ray started again after the previous one died."""
    import ray

    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # outside an actor (unit tests)
        return False


class AgentActor:
    """A stateless agent. See the module docstring for the write and read paths."""

    def __init__(self, settings: Settings, index: int, *, autostart: bool = True) -> None:
        """Open the object store; inside an event loop (as under Ray) also ``start()``.

        Args:
            settings: cluster settings.
            index: this agent's number (its name is ``agent-<index>``).
            autostart: start the flusher and Kafka listener from here when a loop runs,
                so a restarted agent serves again with no manual step.
        """
        self.settings = settings
        self.index = index
        self.store = open_store(settings.resolved_object_store)
        ns = settings.namespace
        self.meta = MetadataProxy(namespace=ns, retry_s=settings.metadata_retry_s)
        self._meta_once = MetadataProxy(namespace=ns)  # the commit queue retries itself
        self._clock = SystemClock()
        self._start_lock = asyncio.Lock()
        self._cache = ChunkCache(self._get_range, capacity_bytes=settings.cache_bytes)
        self._writer = SegmentWriter(
            settings,
            name=agent_name(index),
            put=self._put,
            send_commits=self._send_commits,
            on_written=self._cache.put_object,
            clock=self._clock,
            rand=random.Random(),
        )
        self._order = CallOrder(self._clock)
        self._fetches = 0
        self._server: Any = None
        self._address: BrokerInfo | None = None
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

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> BrokerInfo | None:
        """Start the Kafka listener when configured (the writer starts on first use). Idempotent.

        Raises:
            OSError: the Kafka port is taken.
        """
        async with self._start_lock:
            if self._server is None and self.settings.kafka_port != 0:
                await self._listen()
            return self._address

    async def _listen(self) -> None:
        from ray_stream.server.kafka_server import start_kafka_server

        host = self.settings.kafka_host
        if self.settings.kafka_port == -1:
            port = await self._previous_port()
            try:
                self._server = await self._bind(host, port)
            except OSError:
                if port == 0:
                    raise
                self._server = await start_kafka_server(_KafkaFront(self), host=host, port=0)
        else:
            port = self.settings.kafka_port + self.index
            self._server = await self._bind(host, port)
        bound = self._server.sockets[0].getsockname()
        self._address = BrokerInfo(node_id=self.index, host=self._advertised(), port=bound[1])
        if self.settings.kafka_port == -1:  # remembered for this agent's next incarnation
            with contextlib.suppress(Exception):  # best effort: only a later restart needs it
                register = self._meta_once.register_agent(self.index, self._address)
                await asyncio.wait_for(register, 5)

    async def _previous_port(self) -> int:
        """The port this agent's previous incarnation registered (0 if unknown)."""
        try:
            info = await asyncio.wait_for(self._meta_once.agent_address(self.index), 2)
        except Exception:  # no metadata actor (yet): any free port
            return 0
        return info.port if info is not None and info.host == self._advertised() else 0

    def _advertised(self) -> str:
        """The host clients should connect to for this agent (Settings.advertised_host)."""
        import ray

        node_ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return self.settings.advertised_host(node_ip)

    async def _bind(self, host: str, port: int) -> Any:
        """Listen on ``port``, waiting out a predecessor process that still holds it
        (after a restart, clients only know the old address)."""
        from ray_stream.server.kafka_server import start_kafka_server

        wait_s = REBIND_WAIT_S if port and _restarted() else 0.0
        deadline = self._clock.monotonic_s() + wait_s
        while True:
            try:
                return await start_kafka_server(_KafkaFront(self), host=host, port=port)
            except OSError:
                if self._clock.monotonic_s() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _start_quietly(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # an explicit start() raises it again for the caller
            log.warning("agent-%d could not start on its own: %s", self.index, exc)

    async def stop(self) -> None:
        """Flush what is buffered, wait for in-flight flushes, close the listener."""
        await self._writer.drain()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def kafka_address(self) -> BrokerInfo | None:
        return self._address

    async def brokers(self) -> list[BrokerInfo]:
        """Every agent's Kafka listener (cached for a few seconds)."""
        now = self._clock.monotonic_s()
        if self._brokers and now - self._brokers_at < BROKERS_TTL_S:
            return self._brokers
        found: list[BrokerInfo] = []
        for i in range(self.settings.agents):
            if i == self.index:
                info = self._address
            else:
                try:
                    peer = get_agent(self.settings.namespace, i)
                    info = await asyncio.wait_for(call(peer.kafka_address.remote()), PEER_TIMEOUT_S)
                except Exception as exc:  # a dead or restarting peer is left out, not fatal
                    log.warning("agent-%d not reachable for broker list: %s", i, exc)
                    info = None
            if info is not None:
                found.append(info)
        self._brokers, self._brokers_at = found, now
        return found

    async def stats(self) -> dict[str, Any]:
        return {
            **self._writer.report(),
            "gets": self._cache.gets,
            "get_bytes": self._cache.get_bytes,
            "fetches": self._fetches,
            "cache_hits": self._cache.hits,
            "cache_misses": self._cache.misses,
            "cache_bytes": self._cache.size_bytes,
        }

    async def inject_faults(self, spec: dict[str, Any]) -> dict[str, int]:
        """Configure this agent's ``FaultyStore`` (chaos testing); returns its counts.

        Raises:
            InvalidRequest: the object store is not a ``faulty+`` one.
            InvalidConfig: a bad spec key or value.
        """
        store = self._faulty_store()
        store.configure(spec)
        return dict(store.counts_dict())

    async def fault_counts(self) -> dict[str, int]:
        """Faults fired so far by this agent's ``FaultyStore``. Raises InvalidRequest."""
        return dict(self._faulty_store().counts_dict())

    def _faulty_store(self) -> Any:
        from ray_stream.storage.faults import FaultyStore

        if not isinstance(self.store, FaultyStore):
            raise InvalidRequest(
                f"object store {self.store.url!r} is not fault-injecting (use a 'faulty+' URL)"
            )
        return self.store

    async def pid(self) -> int:
        return os.getpid()

    async def node_id(self) -> str:
        """The Ray node this agent runs on ('' outside Ray)."""
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""

    # ---------------------------------------------------------------- write path

    async def produce(
        self,
        entries: list[tuple[str, int, bytes]],
        acks: int = -1,
        *,
        session: str | None = None,
        seq: int = 0,
    ) -> list[BatchResult]:
        """Buffer batches until the next flush; answer with their base offsets.

        Args:
            entries: ``(topic, partition, RecordBatch v2 bytes)``, one batch each.
            acks: 0 answers at once with an empty list (fire and forget); 1 and -1 wait
                for the durable metadata commit.

            session / seq: a caller that pipelines calls numbers them 0, 1, 2, ... under
                one session id; Ray does not run an async actor's calls in submission
                order, so each call waits here until its predecessor is buffered.

        Returns:
            One BatchResult per entry, in order. Entries that fail validation carry
            RecordTooLarge or CorruptData without holding up the others.
        """
        if session is None:
            return await self._writer.write(entries, acks)
        late = await self._order.wait_turn(session, seq)
        if late is not None:
            return [BatchResult(base_offset=-1, error=late) for _ in entries]
        try:
            waiter = self._writer.write(entries, acks)
        finally:
            self._order.next_turn(session, seq)
        return await waiter

    def _put(self, key: str, body: bytes) -> None:
        self.store.put(key, body)

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        return self.store.get_range(key, start, length)

    async def _send_commits(self, requests: list[CommitRequest]) -> tuple[list[Any], int]:
        answers, epoch = await self._meta_once.commit_many_with_epoch(requests)
        return list(answers), int(epoch)

    # ----------------------------------------------------------------- read path

    async def fetch(
        self,
        requests: list[tuple[str, int, int, int]],
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = 50 * 1024 * 1024,
    ) -> list[FetchResult]:
        """Read batches from the given offsets, waiting up to ``max_wait_ms`` for data.

        Args:
            requests: ``(topic, partition, offset, partition_max_bytes)``.
            max_wait_ms: long-poll bound when fewer than ``min_bytes`` are available;
                woken by metadata commits, not by a timer.
            min_bytes: answer as soon as this many bytes are available.
            max_bytes: soft bound on the whole answer (the first batch always comes).

        Returns:
            One FetchResult per request, in order.
        """
        self._fetches += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_ms / 1000
        while True:
            results = await self._fetch_once(requests, max_bytes)
            got = sum(len(r.records) for r in results)
            remaining = deadline - loop.time()
            if got >= min_bytes or remaining <= 0 or any(r.error for r in results):
                return results
            positions = [
                (t, p, max(o, r.high_watermark))
                for (t, p, o, _), r in zip(requests, results, strict=True)
            ]
            await self.meta.wait_for_data(positions, remaining)

    async def _fetch_once(
        self, requests: list[tuple[str, int, int, int]], max_bytes: int
    ) -> list[FetchResult]:
        located = await asyncio.gather(
            *(self.meta.locate(t, p, o, pmax) for t, p, o, pmax in requests),
            return_exceptions=True,
        )
        results: list[FetchResult] = []
        budget = max_bytes
        for (topic, partition, _, _), loc in zip(requests, located, strict=True):
            if isinstance(loc, UnknownTopicOrPartition | OffsetOutOfRange):
                results.append(FetchResult(topic, partition, loc, -1, -1))
                continue
            if isinstance(loc, BaseException):
                raise loc
            refs = list(loc.batches)
            if budget <= 0:
                refs = []
            chosen: list[BatchRef] = []
            for ref in refs:
                if chosen and ref.length > budget:
                    break
                chosen.append(ref)
                budget -= ref.length
            data = await self._cache.read_batches(chosen)
            results.append(
                FetchResult(topic, partition, None, loc.high_watermark, loc.log_start_offset, data)
            )
        return results
