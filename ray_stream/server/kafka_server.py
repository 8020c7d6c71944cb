"""The Kafka TCP listener: socket <-> framing/protocol <-> handlers, on the agent's loop.

Responsibility: accept connections and, per connection, cut frames, decode requests,
run their handlers and write the responses back.

Rules:

1. **Responses leave in request order** (Kafka requires it per connection), while the
   handlers run concurrently: a long-polling Fetch does not hold up a Heartbeat behind
   it on the wire more than ordering forces. Handler tasks are *started* in request
   order, and a produce handler reaches ``backend.produce`` without suspending, so one
   connection's produce requests are sequenced in the order they were sent (idempotent
   producers pipeline up to 5 requests and rely on that).
2. **Bad input costs only its own connection.** Garbage, a truncated frame, a length
   prefix over ``max_request_bytes``, an unknown API key or an unserved version, or a
   handler bug: log it, answer what is already due, close that connection. Nothing
   raised in one connection reaches the listener or another connection.
3. **Bounded memory per connection.** At most ``MAX_IN_FLIGHT`` requests, holding at
   most ``MAX_IN_FLIGHT_BYTES`` of request frames (or one frame, however large), are
   being handled at once; beyond that the connection is not read (TCP back-pressure).
4. When the client goes away (EOF), its unanswered requests are dropped (a long poll
   is cancelled), as Kafka drops them, except produce requests: they run to completion,
   because an acks=0 producer already counts them as sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray_stream.errors import RayStreamError
from ray_stream.kafka.context import KafkaBackend, Peer
from ray_stream.kafka.framing import LENGTH_PREFIX_BYTES, frame_size
from ray_stream.kafka.handlers import KafkaHandlers
from ray_stream.kafka.protocol import (
    Request,
    api_versions_fallback,
    encode_response_parts,
    parse_request,
    preload,
)
from ray_stream.kafka.versions import ApiKey

__all__ = ["MAX_IN_FLIGHT", "MAX_IN_FLIGHT_BYTES", "start_kafka_server"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
_STREAM_LIMIT = 4 * 1024 * 1024  # StreamReader buffer before it pauses the socket

# (request, its handler task or ready answer, frame size)
_Work = tuple[Request, "asyncio.Task[Any] | bytes", int]


async def start_kafka_server(
    backend: KafkaBackend, *, host: str, port: int
) -> asyncio.AbstractServer:
    """Listen for Kafka clients on ``host:port`` (0 picks a free port) in this loop.

    Returns:
        The started asyncio server; ``server.sockets[0].getsockname()`` is the address.
        Closing it stops accepting; open connections end when their clients leave.
    """
    await asyncio.to_thread(preload)
    handlers = KafkaHandlers(backend)
    max_frame = backend.settings.max_request_bytes

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(handlers, reader, writer, max_frame_bytes=max_frame)
        try:
            await connection.run()
        except asyncio.CancelledError:
            # The loop is shutting down. Ending quietly also sidesteps Python 3.11's
            # StreamReaderProtocol callback, which calls task.exception() on a
            # cancelled task and logs a spurious traceback.
            return
        except Exception:  # rule 2: the listener outlives any connection
            log.exception("kafka connection %s failed", connection.peer)

    return await asyncio.start_server(on_connect, host, port, limit=_STREAM_LIMIT)


class _Connection:
    """One client connection: a reader loop feeding an ordered writer loop."""

    def __init__(
        self,
        handlers: KafkaHandlers,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_bytes: int,
    ) -> None:
        self._handlers = handlers
        self._reader = reader
        self._writer = writer
        self._max_frame_bytes = max_frame_bytes
        self._queue: asyncio.Queue[_Work | None] = asyncio.Queue(MAX_IN_FLIGHT)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.who = Peer(host="/" + (peer[0] if isinstance(peer, tuple) else str(peer)))
        self._aborted = False
        self._current: _Work | None = None  # the request whose answer is awaited
        self._inflight_bytes = 0
        self._space = asyncio.Event()  # set whenever in-flight bytes went down

    async def run(self) -> None:
        writing = asyncio.create_task(self._write_loop())
        try:
            bad_input = await self._read_loop()
            if bad_input and not writing.done():  # answer what was asked before it
                await self._queue.put(None)
                await writing
        finally:
            # On EOF the client is gone: its pending answers (a long poll, say) are
            # dropped, as Kafka drops them, instead of holding the connection open.
            writing.cancel()
            self._cancel_queued()
            self._writer.close()

    async def _read_loop(self) -> bool:
        """Read and dispatch until EOF (False) or bad input (True).

        Frames are read whole with ``readexactly`` after their length prefix is checked
        (``framing.frame_size``): each byte is copied once out of the stream's buffer.
        """
        reader = self._reader
        while not self._aborted:
            started = False  # a frame's prefix was read: EOF from here truncates it
            try:
                prefix = await reader.readexactly(LENGTH_PREFIX_BYTES)
                started = True
                frame = await reader.readexactly(frame_size(prefix, self._max_frame_bytes))
                request = parse_request(frame)
            except asyncio.IncompleteReadError as exc:
                if started or exc.partial:
                    log.warning(
                        "kafka client %s closed mid-frame (%d bytes of a truncated frame)",
                        self.peer,
                        len(exc.partial) + (LENGTH_PREFIX_BYTES if started else 0),
                    )
                return False
            except (ConnectionError, OSError):
                return False
            except RayStreamError as exc:
                log.warning("kafka client %s sent bad input, closing: %s", self.peer, exc)
                return True
            await self._reserve(len(frame))
            if self._aborted:
                break
            await self._queue.put(self._start(request, len(frame)))
        return False

    async def _reserve(self, size: int) -> None:
        """Wait until ``size`` more frame bytes fit the budget (one frame always fits)."""
        while self._inflight_bytes and self._inflight_bytes + size > MAX_IN_FLIGHT_BYTES:
            if self._aborted:
                return
            self._space.clear()
            await self._space.wait()
        self._inflight_bytes += size

    def _release(self, size: int) -> None:
        self._inflight_bytes -= size
        self._space.set()

    def _start(self, request: Request, size: int) -> _Work:
        if request.body is None:  # an ApiVersions version we do not serve
            return request, api_versions_fallback(request), size
        task = asyncio.create_task(self._handlers.handle(request, peer=self.who))
        return request, task, size

    async def _write_loop(self) -> None:
        while (work := await self._queue.get()) is not None:
            request, pending, size = work
            data: list[bytes | bytearray | memoryview]
            if isinstance(pending, bytes):
                data = [pending]
            else:
                try:
                    self._current = work
                    # shield: cancelling this loop must not cancel a produce (rule 4)
                    body = await asyncio.shield(pending)
                    self._current = None
                    self._release(size)
                    size = 0
                    if body is None:  # acks=0 produce: no response
                        continue
                    data = encode_response_parts(request, body)
                except Exception:
                    log.exception(
                        "kafka %s v%d (correlation %d) from %s failed; closing",
                        request.api_name,
                        request.api_version,
                        request.correlation_id,
                        self.peer,
                    )
                    self._abort()
                    return
            self._release(size)
            try:
                for part in data:  # large parts (record batches) go out as they are
                    self._writer.write(part)
                await self._writer.drain()
            except (ConnectionError, OSError):
                self._abort()
                return

    def _abort(self) -> None:
        """Stop reading too: the reader's next ``read`` sees the closed transport."""
        self._aborted = True
        self._space.set()
        self._writer.transport.abort()
        self._cancel_queued()

    def _cancel_queued(self) -> None:
        """Drop unanswered requests; produce requests still run to completion.

        A produce may not even have started (its bytes and the EOF arrived together), and
        with acks=0 the client already counts it as sent: cancelling it would lose it.
        """
        unanswered: list[_Work | None] = [self._current]
        self._current = None
        while not self._queue.empty():
            unanswered.append(self._queue.get_nowait())
        for work in unanswered:
            if work is None or not isinstance(work[1], asyncio.Task):
                continue
            if work[0].api_key == ApiKey.PRODUCE:
                work[1].add_done_callback(_log_failure)
            else:
                work[1].cancel()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kafka produce of a closed connection failed", exc_info=task.exception())
