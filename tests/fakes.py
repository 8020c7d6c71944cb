"""Test doubles: an in-memory agent (``FakeBackend``) and a Kafka test cluster on a thread.

``FakeBackend`` implements the ``KafkaBackend`` protocol with the agent's semantics but
no object store: ``produce`` commits each call's batches as one fake segment through a
*real* ``MetadataActor`` (so offsets, idempotence and watermarks are the real ones) and
keeps the segment bytes in a dict; ``fetch`` uses ``meta.locate`` + ``set_base_offset``
and long-polls with ``meta.wait_for_data`` (woken by commits, not a timer).

``KafkaTestCluster`` runs one or more fake agents, sharing one metadata actor, each with
a real Kafka listener on 127.0.0.1, in a background thread's event loop, so real client
libraries (confluent-kafka, kafka-python, aiokafka) can talk to it from the test thread.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ray_stream.actors.metadata import MetadataActor
from ray_stream.config import Settings
from ray_stream.core.types import BatchEntry, BatchResult, BrokerInfo, CommitRequest, FetchResult
from ray_stream.errors import OffsetOutOfRange, UnknownTopicOrPartition
from ray_stream.kafka.framing import encode_frame
from ray_stream.kafka.handlers import KafkaHandlers
from ray_stream.kafka.protocol import Request, build, encode_response, request_class, response_class
from ray_stream.kafka.records import parse_batch_header, set_base_offset
from ray_stream.kafka.versions import ApiKey

T = TypeVar("T")


def make_meta(settings: Settings) -> MetadataActor:
    """A real MetadataActor (on ``settings.data_dir``), used directly: no Ray."""
    return MetadataActor(settings)


class FakeBackend:
    """An agent without an object store (see module docstring).

    Args:
        settings: cluster settings (``data_dir`` must be a temp dir).
        meta: the shared metadata (``make_meta``).
        node_id: this agent's broker id.
        segments: shared ``segment key -> bytes`` store (agents of one cluster share it).
        peers: the other agents' listeners, for ``brokers()``.
    """

    _keys = itertools.count()

    def __init__(
        self,
        settings: Settings,
        meta: Any,
        *,
        node_id: int = 0,
        segments: dict[str, bytes] | None = None,
        peers: list[BrokerInfo] | None = None,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.node_id = node_id
        self.segments = segments if segments is not None else {}
        self.peers = peers if peers is not None else []
        self.address: BrokerInfo | None = None
        self.produce_calls: list[tuple[list[tuple[str, int, bytes]], int]] = []
        self.fetch_calls: list[dict[str, Any]] = []

    async def brokers(self) -> list[BrokerInfo]:
        own = [self.address] if self.address is not None else []
        return own + [p for p in self.peers if p.node_id != self.node_id]

    async def produce(self, entries: list[tuple[str, int, bytes]], acks: int) -> list[BatchResult]:
        self.produce_calls.append((entries, acks))
        batches, position, parts = [], 0, []
        for topic, partition, data in entries:
            header = parse_batch_header(data)
            batches.append(
                BatchEntry(
                    topic=topic,
                    partition=partition,
                    position=position,
                    length=len(data),
                    record_count=header.last_offset_delta + 1,
                    first_timestamp=header.first_timestamp,
                    max_timestamp=header.max_timestamp,
                    producer_id=header.producer_id,
                    producer_epoch=header.producer_epoch,
                    base_sequence=header.base_sequence,
                )
            )
            parts.append(data)
            position += len(data)
        key = f"segments/fake-{next(self._keys):08d}.arrow"
        self.segments[key] = b"".join(parts)  # "PUT" before the commit, like the agent
        results: list[BatchResult] = await self.meta.commit(
            CommitRequest(segment_key=key, segment_bytes=position, batches=tuple(batches))
        )
        return results

    async def fetch(
        self,
        requests: list[tuple[str, int, int, int]],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
    ) -> list[FetchResult]:
        self.fetch_calls.append(
            {
                "requests": requests,
                "max_wait_ms": max_wait_ms,
                "min_bytes": min_bytes,
                "max_bytes": max_bytes,
            }
        )
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
        results, budget = [], max_bytes
        for topic, partition, offset, partition_max in requests:
            try:
                located = await self.meta.locate(topic, partition, offset, partition_max)
            except (UnknownTopicOrPartition, OffsetOutOfRange) as exc:
                results.append(FetchResult(topic, partition, exc, -1, -1))
                continue
            chosen = []
            for ref in located.batches if budget > 0 else ():
                if chosen and ref.length > budget:
                    break
                raw = self.segments[ref.segment_key][ref.position : ref.position + ref.length]
                chosen.append(set_base_offset(raw, ref.base_offset))
                budget -= ref.length
            results.append(
                FetchResult(
                    topic,
                    partition,
                    None,
                    located.high_watermark,
                    located.log_start_offset,
                    b"".join(chosen),
                )
            )
        return results


class KafkaTestCluster:
    """Fake agents with real Kafka listeners on 127.0.0.1, run by a background loop.

    Use as a context manager; ``bootstrap`` is the clients' ``bootstrap.servers``.
    """

    def __init__(self, settings: Settings, *, agents: int = 1) -> None:
        self.settings = settings
        self.agents = agents
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kafka-test-loop", daemon=True
        )
        self.backends: list[FakeBackend] = []
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
        return ",".join(f"{b.address.host}:{b.address.port}" for b in self.backends if b.address)

    @property
    def ports(self) -> list[int]:
        return [b.address.port for b in self.backends if b.address]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the cluster's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from ray_stream.server.kafka_server import start_kafka_server

        self.meta = make_meta(self.settings)
        segments: dict[str, bytes] = {}
        peers: list[BrokerInfo] = []
        for node_id in range(self.agents):
            backend = FakeBackend(
                self.settings, self.meta, node_id=node_id, segments=segments, peers=peers
            )
            server = await start_kafka_server(backend, host="127.0.0.1", port=0)
            port = server.sockets[0].getsockname()[1]
            backend.address = BrokerInfo(node_id=node_id, host="127.0.0.1", port=port)
            peers.append(backend.address)
            self.backends.append(backend)
            self.servers.append(server)

    async def _stop(self) -> None:
        for server in self.servers:
            server.close()
        groups = getattr(self.meta, "groups", None)
        if groups is not None:
            await groups.close()
        # Connections outlive server.close() (Python 3.11): cancel them and every other
        # task (long polls, handlers) so the loop stops clean.
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
    """One FakeBackend (peers ``1..brokers-1`` listed too) plus its KafkaHandlers.

    ``call`` builds a request of any version from a plain dict, runs its handler, then
    encodes and decodes the response, so tests assert what a client would read.
    Create it inside a running loop (``run_handlers``).
    """

    def __init__(self, settings: Settings, *, brokers: int = 1) -> None:
        meta = make_meta(settings)
        self.backend = FakeBackend(settings, meta, node_id=0)
        self.backend.address = BrokerInfo(0, "127.0.0.1", 9092)
        self.backend.peers = [BrokerInfo(i, "127.0.0.1", 9092 + i) for i in range(1, brokers)]
        self.handlers = KafkaHandlers(self.backend)
        self.meta = meta

    async def call(self, api_key: int, version: int, values: dict[str, Any]) -> Any:
        body = build(request_class(api_key, version), values)
        request = Request(api_key, version, 11, "test-client", body)
        response = await self.handlers.handle(request, client_host="/127.0.0.1")
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
        try:
            return await scenario(harness)
        finally:
            await harness.meta.close()

    return asyncio.run(main())
