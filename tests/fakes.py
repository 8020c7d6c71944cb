"""Test harnesses around the real, Ray-free agent and metadata service.

Nothing here copies product logic: ``make_agent`` builds the real ``LogService``
(agent/log_service.py) over a shared ``MemoryStore`` and the real ``MetadataService``
(metadata/service.py), in-process, so the Kafka-server and handler suites exercise the
agent's own produce, fetch, location cache and long-poll code.

``KafkaTestCluster`` runs one or more agents, sharing one metadata service, each with a
real Kafka listener on 127.0.0.1, in a background thread's event loop, so real client
libraries (confluent-kafka, kafka-python, aiokafka) can talk to it from the test thread.

``CountingMetadata`` wraps a metadata client and counts calls per method (the fetch
path's call budget is asserted with it); ``record_calls`` spies on an agent's
``produce``/``fetch`` calls without changing them.
"""

from __future__ import annotations

import asyncio
import io
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from ray_stream.agent.log_service import LogService
from ray_stream.clock import Clock, SystemClock
from ray_stream.config import Settings
from ray_stream.core.fleet import AgentRecord
from ray_stream.kafka.context import Peer
from ray_stream.kafka.framing import encode_frame
from ray_stream.kafka.handlers import KafkaHandlers
from ray_stream.kafka.protocol import Request, build, encode_response, request_class, response_class
from ray_stream.kafka.versions import ApiKey
from ray_stream.metadata.service import MetadataService
from ray_stream.storage.memory import MemoryStore

T = TypeVar("T")

TEST_LINGER_MS = 0  # agents in unit tests flush at once: no test waits out a linger


def make_meta(
    settings: Settings, *, store: Any = None, clock: Clock | None = None
) -> MetadataService:
    """The real metadata service (SQLite cache under ``settings.data_dir``), no Ray."""
    return MetadataService(
        settings, store=store if store is not None else MemoryStore(), clock=clock
    )


class CountingMetadata:
    """A metadata client that counts the calls made through it, per method name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await target(*args, **kwargs)

        return counted

    def total(self) -> int:
        return sum(self.calls.values())

    def per_request(self) -> dict[str, int]:
        """The calls made on behalf of requests: without the agent's one background
        ``watch_catalog`` long poll (one per agent every 30 s, not per fetch)."""
        return {k: v for k, v in self.calls.items() if k != "watch_catalog"}

    def reset(self) -> None:
        self.calls.clear()


def make_agent(
    settings: Settings,
    meta: Any,
    store: Any,
    *,
    node_id: int = 0,
    clock: Clock | None = None,
    linger_ms: int = TEST_LINGER_MS,
    record: AgentRecord | None = None,
    peers: Any = None,
) -> LogService:
    """The real agent core over ``store`` and ``meta``; it sees the other agents once it
    ``join``s the fleet (``record``: its zone and group; ``peers``: its PeerLink)."""
    return LogService(
        replace(settings, linger_ms=linger_ms),
        node_id=node_id,
        store=store,
        metadata=meta,
        clock=clock or SystemClock(),
        rand=random.Random(node_id),
        record=record,
        peers=peers,
    )


def record_calls(agent: LogService) -> tuple[list[Any], list[dict[str, Any]]]:
    """Spy on ``agent.produce`` and ``agent.fetch``: lists of their calls' arguments."""
    produce_calls: list[Any] = []
    fetch_calls: list[dict[str, Any]] = []
    produce, fetch = agent.produce, agent.fetch

    async def recorded_produce(entries: Any, acks: int = -1, **kwargs: Any) -> Any:
        produce_calls.append((list(entries), acks))
        return await produce(entries, acks, **kwargs)

    async def recorded_fetch(requests: Any, **kwargs: Any) -> Any:
        fetch_calls.append({"requests": list(requests), **kwargs})
        return await fetch(requests, **kwargs)

    agent.produce = recorded_produce  # type: ignore[method-assign]
    agent.fetch = recorded_fetch  # type: ignore[method-assign]
    return produce_calls, fetch_calls


class KafkaTestCluster:
    """Real agents with Kafka listeners on 127.0.0.1, run by a background loop.

    Use as a context manager; ``bootstrap`` is the clients' ``bootstrap.servers``.
    ``meta`` is the shared metadata service (call it through ``run``);
    ``produce_calls`` / ``fetch_calls`` hold one list per agent (``record_calls``).
    """

    def __init__(self, settings: Settings, *, agents: int = 1) -> None:
        self.settings = settings
        self.agent_count = agents
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kafka-test-loop", daemon=True
        )
        self.store = MemoryStore()
        self.agents: list[LogService] = []
        self.produce_calls: list[Any] = []  # per agent: its produce calls' arguments
        self.fetch_calls: list[Any] = []  # per agent: its fetch calls' arguments
        self.servers: list[asyncio.AbstractServer] = []
        self.meta: Any = None

    def __enter__(self) -> KafkaTestCluster:
        self._thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{a.address.host}:{a.address.port}" for a in self.agents if a.address)

    @property
    def ports(self) -> list[int]:
        return [a.address.port for a in self.agents if a.address]

    def fetches_seen(self, index: int) -> int:
        """How many fetches agent ``index`` has been asked for so far."""
        return len(self.fetch_calls[index])

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the cluster's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from ray_stream.server.kafka_server import start_kafka_server

        self.meta = make_meta(self.settings, store=self.store)
        for node_id in range(self.agent_count):
            agent = make_agent(self.settings, self.meta, self.store, node_id=node_id)
            calls, fetches = record_calls(agent)
            self.produce_calls.append(calls)
            self.fetch_calls.append(fetches)
            server = await start_kafka_server(agent, host="127.0.0.1", port=0)
            port = server.sockets[0].getsockname()[1]
            await agent.join("127.0.0.1", port)
            self.agents.append(agent)
            self.servers.append(server)

    async def _stop(self) -> None:
        for server in self.servers:
            server.close()
        if self.meta is not None:
            await self.meta.close()
        # Connections outlive server.close() (Python 3.11): cancel them and every other
        # task (long polls, handlers, flushers) so the loop stops clean.
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self._stop(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


# ----------------------------------------------------------------------------- wire
def encode_request(
    api_key: int,
    version: int,
    values: dict[str, Any],
    *,
    correlation_id: int = 1,
    client_id: str | None = "ray-stream-test",
) -> bytes:
    """A length-prefixed request frame, as a client would send it (header v1 or v2)."""
    from kio.serial import entity_writer

    cls = request_class(api_key, version)
    header_cls = cls.__header_schema__
    buffer = io.BytesIO()
    entity_writer(header_cls)(
        buffer,
        header_cls(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=correlation_id,
            client_id=client_id,
        ),
    )
    entity_writer(cls)(buffer, build(cls, values))
    return encode_frame(buffer.getvalue())


def decode_response(api_key: int, version: int, frame: bytes) -> tuple[int, Any]:
    """(correlation_id, response entity) of a response frame without its length prefix."""
    from kio.serial import entity_reader

    cls = response_class(api_key, version)
    header, size = entity_reader(cls.__header_schema__)(frame, 0)
    body, _ = entity_reader(cls)(frame, size)
    return header.correlation_id, body


class RawClient:
    """A blocking socket speaking raw Kafka frames (for bad-input and ordering tests)."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes | None:
        """The next response frame body, or None if the server closed the connection."""
        prefix = self._read_exactly(4)
        if prefix is None:
            return None
        (size,) = struct.unpack(">i", prefix)
        return self._read_exactly(size)

    def is_closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _read_exactly(self, size: int) -> bytes | None:
        chunks, remaining = [], size
        while remaining:
            try:
                chunk = self.sock.recv(remaining)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ handler harness
class HandlerHarness:
    """One real agent (peers ``1..brokers-1`` listed too) plus its KafkaHandlers.

    ``call`` builds a request of any version from a plain dict, runs its handler, then
    encodes and decodes the response, so tests assert what a client would read.
    ``meta`` counts the calls the agent and handlers make. Create it inside a running
    loop (``run_handlers``).
    """

    def __init__(self, settings: Settings, *, brokers: int = 1) -> None:
        self.store = MemoryStore()
        self.service = make_meta(settings, store=self.store)
        self.meta = CountingMetadata(self.service)
        self.brokers = brokers
        self.backend = make_agent(settings, self.meta, self.store)
        self.produce_calls, self.fetch_calls = record_calls(self.backend)
        self.handlers = KafkaHandlers(self.backend)

    async def start(self) -> None:
        """Register the listed peers (``1..brokers-1``, as their heartbeats would) and
        join agent 0 to the fleet on 127.0.0.1:9092."""
        for i in range(1, self.brokers):
            await self.service.agent_heartbeat(AgentRecord(i, "127.0.0.1", 9092 + i), -1, 30.0)
        await self.backend.join("127.0.0.1", 9092)
        self.meta.reset()

    async def call(
        self,
        api_key: int,
        version: int,
        values: dict[str, Any],
        *,
        client_id: str | None = "test-client",
        peer: Peer | None = None,
    ) -> Any:
        body = build(request_class(api_key, version), values)
        request = Request(api_key, version, 11, client_id, body)
        response = await self.handlers.handle(request, peer=peer or Peer(host="/127.0.0.1"))
        if response is None:
            return None
        correlation_id, decoded = decode_response(
            api_key, version, encode_response(request, response)[4:]
        )
        assert correlation_id == 11
        return decoded

    async def produce(
        self, topic: str, partition: int, records: bytes, *, version: int = 9, acks: int = -1
    ) -> Any:
        response = await self.call(
            ApiKey.PRODUCE,
            version,
            {
                "transactional_id": None,
                "acks": acks,
                "timeout": 5000,
                "topic_data": [
                    {"name": topic, "partition_data": [{"index": partition, "records": records}]}
                ],
            },
        )
        return None if response is None else response.responses[0].partition_responses[0]

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        version: int = 11,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
    ) -> Any:
        response = await self.call(
            ApiKey.FETCH, version, fetch_request(topic, partition, offset, max_wait_ms, min_bytes)
        )
        return response.responses[0].partitions[0]


def fetch_request(
    topic: Any, partition: int, offset: int, max_wait_ms: int, min_bytes: int
) -> dict[str, Any]:
    return {
        "replica_id": -1,
        "max_wait": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "topic_id": topic,
                "partitions": [
                    {
                        "partition": partition,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "last_fetched_epoch": -1,
                        "log_start_offset": -1,
                        "partition_max_bytes": 1 << 20,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


def run_handlers(
    settings: Settings, scenario: Callable[[HandlerHarness], Awaitable[Any]], *, brokers: int = 1
) -> Any:
    """Run ``scenario(harness)`` in a fresh event loop and return its result."""

    async def main() -> Any:
        harness = HandlerHarness(settings, brokers=brokers)
        await harness.start()
        try:
            return await scenario(harness)
        finally:
            await harness.backend.membership.close(deregister=False)
            await harness.service.close()

    return asyncio.run(main())
