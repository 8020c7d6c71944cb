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
5. **Authentication before anything else** (docs/design/0008-authentication.md). With
   TLS (``server/tls.py``) the handshake must finish within ``tls_handshake_timeout_s``
   and a verified client certificate names the principal. With SASL, the connection's
   ``SaslSession`` (``kafka/sasl.py``) answers the SASL APIs one step at a time (the
   next frame is read only once a step is answered: a v0 handshake makes it a raw
   token), frames stay under ``MAX_AUTH_FRAME_BYTES`` until the login completes, and
   any other request but ApiVersions closes the connection, as does not having logged
   in within ``LOGIN_TIMEOUT_S`` of connecting. A failed login is held
   back by a delay that grows per client address (``core/login_failures.py``), then
   answered and the connection closed; the log line names the user, never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from ray_stream.clock import Clock, SystemClock
from ray_stream.core.login_failures import LoginFailures
from ray_stream.core.metadata_api import Credentials
from ray_stream.errors import AuthenticationFailed, RayStreamError
from ray_stream.kafka.context import KafkaBackend, Peer
from ray_stream.kafka.framing import LENGTH_PREFIX_BYTES, encode_frame, frame_size
from ray_stream.kafka.handlers import KafkaHandlers
from ray_stream.kafka.protocol import (
    Request,
    api_versions_fallback,
    build_response,
    encode_response_parts,
    parse_request,
    preload,
)
from ray_stream.kafka.sasl import MAX_AUTH_FRAME_BYTES, SASL_KEYS, SaslSession
from ray_stream.kafka.versions import ApiKey
from ray_stream.server.tls import certificate_principal, server_context

__all__ = ["LOGIN_TIMEOUT_S", "MAX_IN_FLIGHT", "MAX_IN_FLIGHT_BYTES", "start_kafka_server"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
_STREAM_LIMIT = 4 * 1024 * 1024  # StreamReader buffer before it pauses the socket
_LINGER_S = 1.0  # how long a refused SASL client is given to close first
# A connection must complete its SASL login this soon after it was accepted. Kafka only
# drops idle connections (connections.max.idle.ms, 10 min); a client that has not logged
# in is cheaper to drop sooner, and librdkafka's login takes milliseconds.
LOGIN_TIMEOUT_S = 30.0

# (request, its handler task or ready answer, frame size)
_Work = tuple[Request, "asyncio.Task[Any] | bytes", int]
# Stands for a raw SASL token answer (after a v0 SaslHandshake) in the write queue.
_RAW_TOKEN = Request(ApiKey.SASL_AUTHENTICATE, -1, -1, None, None)


@dataclass(slots=True)
class _Security:
    """What a listener's connections share for authentication (rule 5)."""

    mechanisms: tuple[str, ...] = ()
    credentials: Credentials | None = None
    failures: LoginFailures = field(default_factory=LoginFailures)
    clock: Clock = field(default_factory=SystemClock)

    def session(self) -> SaslSession:
        return SaslSession(
            self.mechanisms,
            credentials=self.credentials,
            new_nonce=lambda: secrets.token_urlsafe(24),  # RFC 5802: printable, no ','
            offload=asyncio.to_thread,
        )


async def start_kafka_server(
    backend: KafkaBackend, *, host: str, port: int, clock: Clock | None = None
) -> asyncio.AbstractServer:
    """Listen for Kafka clients on ``host:port`` (0 picks a free port) in this loop.

    Args:
        clock: times failed logins (``core/login_failures.py``); the system clock
            by default.

    Returns:
        The started asyncio server; ``server.sockets[0].getsockname()`` is the address.
        Closing it stops accepting; open connections end when their clients leave.

    Raises:
        InvalidConfig: the TLS certificate, key or CA in the settings does not load.
    """
    await asyncio.to_thread(preload)
    handlers = KafkaHandlers(backend)
    settings = backend.settings
    max_frame = settings.max_request_bytes
    tls = server_context(settings)
    security = _Security(
        settings.sasl_mechanisms, backend.meta, LoginFailures(), clock or SystemClock()
    )

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(
            handlers, reader, writer, max_frame_bytes=max_frame, security=security
        )
        try:
            await connection.run()
        except asyncio.CancelledError:
            # The loop is shutting down. Ending quietly also sidesteps Python 3.11's
            # StreamReaderProtocol callback, which calls task.exception() on a
            # cancelled task and logs a spurious traceback.
            return
        except Exception:  # rule 2: the listener outlives any connection
            log.exception("kafka connection %s failed", connection.peer)

    return await asyncio.start_server(
        on_connect,
        host,
        port,
        limit=_STREAM_LIMIT,
        ssl=tls,
        ssl_handshake_timeout=settings.tls_handshake_timeout_s if tls else None,
    )


class _Connection:
    """One client connection: a reader loop feeding an ordered writer loop."""

    def __init__(
        self,
        handlers: KafkaHandlers,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_bytes: int,
        security: _Security | None = None,
    ) -> None:
        self._handlers = handlers
        self._reader = reader
        self._writer = writer
        self._max_frame_bytes = max_frame_bytes
        self._queue: asyncio.Queue[_Work | None] = asyncio.Queue(MAX_IN_FLIGHT)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.who = Peer(host="/" + (peer[0] if isinstance(peer, tuple) else str(peer)))
        self._security = security = security or _Security()  # default: no authentication
        self._auth = security.session()
        principal = certificate_principal(writer.get_extra_info("peercert"))
        if principal is not None:  # a verified client certificate (rule 5)
            self.who.principal = principal
        self._aborted = False
        self._current: _Work | None = None  # the request whose answer is awaited
        self._inflight_bytes = 0
        self._space = asyncio.Event()  # set whenever in-flight bytes went down

    async def run(self) -> None:
        writing = asyncio.create_task(self._write_loop())
        deadline = None
        if not self._auth.authenticated:
            deadline = asyncio.get_running_loop().call_later(LOGIN_TIMEOUT_S, self._login_late)
        try:
            bad_input = await self._read_loop()
            if bad_input and not writing.done():  # answer what was asked before it
                await self._queue.put(None)
                await writing
            if self._auth.closing:
                await self._let_client_close()
        finally:
            # On EOF the client is gone: its pending answers (a long poll, say) are
            # dropped, as Kafka drops them, instead of holding the connection open.
            writing.cancel()
            if deadline is not None:
                deadline.cancel()
            self._cancel_queued()
            self._writer.close()

    def _login_late(self) -> None:
        """Rule 5: a connection that has not logged in by ``LOGIN_TIMEOUT_S`` is dropped."""
        if not self._auth.authenticated and not self._aborted:
            log.warning(
                "kafka client %s did not complete a SASL login within %.0f s; closing",
                self.peer,
                LOGIN_TIMEOUT_S,
            )
            self._abort()

    async def _let_client_close(self) -> None:
        """After a SASL refusal, give the client a moment to read it and hang up first:
        a client that sees the TLS close before it parsed the answer (kafka-python)
        reports a lost connection instead of the authentication error."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(_LINGER_S):
                while await self._reader.read(4096):
                    pass  # nothing more is served: discard until EOF

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
                frame = await reader.readexactly(frame_size(prefix, self._frame_limit()))
                if self._auth.raw_token_next:  # KIP-152: a raw token after handshake v0
                    if await self._raw_token(frame):
                        continue
                    return True
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
            gate = self._auth.gate(request.api_key)
            if gate == "refuse":
                log.warning(
                    "kafka client %s sent %s before authenticating (only ApiVersions and "
                    "the SASL APIs may come first); closing",
                    self.peer,
                    request.api_name,
                )
                return True
            await self._reserve(len(frame))
            if self._aborted:
                break
            work = self._start(request, len(frame))
            await self._queue.put(work)
            if gate == "sasl" and isinstance(work[1], asyncio.Task):
                # One login step at a time: its outcome decides how the next frame is read.
                await asyncio.wait([work[1]])
                if self._auth.closing:
                    return True
        return False

    def _frame_limit(self) -> int:
        """Kafka's ``sasl.server.max.receive.size`` until the login completes."""
        if self._auth.authenticated:
            return self._max_frame_bytes
        return min(self._max_frame_bytes, MAX_AUTH_FRAME_BYTES)

    async def _sasl(self, request: Request) -> Any:
        """Answer a SaslHandshake / SaslAuthenticate with this connection's session."""
        auth = self._auth
        values = await auth.answer(request.api_key, request.api_version, request.body)
        if auth.login_failed:
            await self._login_failed(values.get("error_message") or "")
        elif auth.closing:
            log.warning(
                "kafka client %s: %s refused (error %s %s); closing",
                self.peer,
                request.api_name,
                int(values["error_code"]),
                auth.attempted_user or values.get("error_message") or "",
            )
        elif auth.user is not None and auth.authenticated:  # this step completed the login
            self._logged_in(auth.user)
        return build_response(request, values)

    async def _raw_token(self, frame: bytes) -> bool:
        """A raw SASL token (after SaslHandshake v0); False when the login failed."""
        try:
            token = await self._auth.authenticate_raw(frame)
        except AuthenticationFailed as exc:
            await self._login_failed(str(exc))
            return False
        if self._auth.user is not None:
            self._logged_in(self._auth.user)
        await self._queue.put((_RAW_TOKEN, encode_frame(token), 0))
        return True

    def _logged_in(self, user: str) -> None:
        self.who.principal = f"User:{user}"
        self._security.failures.succeeded(self.who.host)
        log.debug("kafka client %s authenticated as User:%s", self.peer, user)

    async def _login_failed(self, reason: str) -> None:
        """Log (no secret: kafka/sasl.py rule 3), then hold the refusal back (rule 5)."""
        security = self._security
        delay_s = security.failures.failed(self.who.host, now_s=security.clock.monotonic_s())
        log.warning(
            "kafka client %s failed SASL authentication (%s); refusing in %.1f s and closing",
            self.peer,
            reason,
            delay_s,
        )
        await asyncio.sleep(delay_s)

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
        if request.api_key in SASL_KEYS:
            return request, asyncio.create_task(self._sasl(request)), size
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
