"""One connection's SASL login: SaslHandshake, SaslAuthenticate and KIP-152 framing.

Responsibility: the meaning of the two SASL APIs for one connection and the mechanisms
behind them (PLAIN, RFC 4616; SCRAM-SHA-256/512 through ``core/scram.py``), ending in a
principal ``User:<name>`` the listener puts on the connection's ``Peer``.

Rules this module keeps:

1. **Nothing but ApiVersions and the SASL APIs before the login completes** when SASL
   is on (``gate``); the listener closes the connection on anything else, as Kafka does.
2. **KIP-152 framing.** After SaslHandshake v1 the tokens travel inside SaslAuthenticate
   requests; after v0 the next frames are raw length-prefixed tokens (``raw_token_next``),
   answered with raw tokens (``authenticate_raw``).
3. **A refusal ends the connection** (``closing``): an unknown mechanism, a request out
   of order, a failed login. A failed login answers SASL_AUTHENTICATION_FAILED with a
   message that never holds a secret; it is raised as ``AuthenticationFailed`` inside
   and turned into the answer here.
4. **Credentials come from the metadata** (``Credentials.scram_credential``); PLAIN
   checks its password against the user's stored SCRAM keys (SHA-256 first, then
   SHA-512), so one ``users add`` serves every mechanism.

Never: import asyncio or sockets, log, read clocks, draw random numbers (the server
nonce and the CPU-heavy password check come from the listener).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

from kio.schema.errors import ErrorCode

from ray_stream.core.metadata_api import Credentials
from ray_stream.core.scram import MECHANISMS, ScramCredential, ScramServer, verify_password
from ray_stream.errors import AuthenticationFailed, InternalError, RayStreamError
from ray_stream.kafka.errors_map import error_code
from ray_stream.kafka.versions import ApiKey

__all__ = ["MAX_AUTH_FRAME_BYTES", "SASL_KEYS", "SaslSession"]

SASL_KEYS: Final = frozenset({ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE})
# Kafka's sasl.server.max.receive.size: the largest frame read before a login completes.
MAX_AUTH_FRAME_BYTES: Final = 512 * 1024
_BEFORE_LOGIN: Final = frozenset({ApiKey.API_VERSIONS, *SASL_KEYS})

Offload = Callable[[Callable[[], bool]], Awaitable[bool]]


class SaslSession:
    """The SASL state of one connection (see the module doc).

    Args:
        mechanisms: the enabled mechanisms; empty means SASL is off (the connection
            counts as logged in, and the SASL APIs are refused).
        credentials: where SCRAM credentials are looked up (the metadata client);
            only needed when ``mechanisms`` is not empty.
        new_nonce: a fresh random SCRAM server nonce per call (printable, no ``,``).
        offload: runs the PLAIN password check (PBKDF2, milliseconds of CPU) off the
            event loop and returns its result.
    """

    def __init__(
        self,
        mechanisms: tuple[str, ...],
        *,
        credentials: Credentials | None,
        new_nonce: Callable[[], str],
        offload: Offload,
    ) -> None:
        if mechanisms and credentials is None:
            raise InternalError("a SASL session needs a credential lookup")
        self._mechanisms = mechanisms
        self._credentials = credentials
        self._new_nonce = new_nonce
        self._offload = offload
        self._state = "done" if not mechanisms else "handshake"
        self._mechanism = ""
        self._scram: ScramServer | None = None
        self.raw_token_next = False
        self.closing = False
        self.login_failed = False  # a login was refused (the listener delays the answer)
        self.user: str | None = None  # set once logged in
        self.attempted_user = ""  # for the log line of a failed login

    @property
    def authenticated(self) -> bool:
        """True once logged in (always, when SASL is off)."""
        return self._state == "done"

    def gate(self, api_key: int) -> str:
        """``serve`` (a normal request), ``sasl`` (answer with ``answer``, one at a time)
        or ``refuse`` (close the connection: rule 1)."""
        if api_key in SASL_KEYS:
            return "sasl"
        if self.authenticated or api_key in _BEFORE_LOGIN:
            return "serve"
        return "refuse"

    # ------------------------------------------------------------- requests
    async def answer(self, api_key: int, api_version: int, body: Any) -> dict[str, Any]:
        """The response values of a SaslHandshake or SaslAuthenticate request.

        Sets ``closing`` when the connection must end after this answer (rule 3).

        Raises:
            AuthenticationFailed: never; a failed login is answered (error 58).
        """
        if api_key == ApiKey.SASL_HANDSHAKE:
            return self._handshake(body.mechanism, api_version)
        if self._state != "authenticate" or self.raw_token_next:
            self.closing = True
            return _auth_error(ErrorCode.illegal_sasl_state, "SaslAuthenticate out of order")
        try:
            token = await self._step(bytes(body.auth_bytes))
        except AuthenticationFailed as exc:
            self.closing = self.login_failed = True
            return _auth_error(ErrorCode.sasl_authentication_failed, str(exc))
        except RayStreamError as exc:  # the credential could not be looked up
            self.closing = True
            return _auth_error(error_code(exc), f"login could not be checked: {exc}")
        return {
            "error_code": ErrorCode.none,
            "error_message": None,
            "auth_bytes": token,
            "session_lifetime": 0,  # no re-authentication (KIP-368)
        }

    async def authenticate_raw(self, token: bytes) -> bytes:
        """A raw token after SaslHandshake v0; returns the raw answer token.

        Raises:
            AuthenticationFailed: the login failed (Kafka then just closes: a raw
                exchange has no way to carry an error).
        """
        try:
            return await self._step(token)
        except AuthenticationFailed:
            self.closing = self.login_failed = True
            raise
        except RayStreamError as exc:  # the credential could not be looked up
            self.closing = True
            raise AuthenticationFailed(f"login could not be checked: {exc}") from exc

    def _handshake(self, mechanism: str, version: int) -> dict[str, Any]:
        if not self._mechanisms:  # SASL is off: say so (librdkafka names the empty list)
            self.closing = True
            return {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": ()}
        if self._state != "handshake":
            self.closing = True
            return {"error_code": ErrorCode.illegal_sasl_state, "mechanisms": self._mechanisms}
        if mechanism not in self._mechanisms:
            self.closing = True
            self.attempted_user = f"(mechanism {mechanism[:32]!r})"
            return {
                "error_code": ErrorCode.unsupported_sasl_mechanism,
                "mechanisms": self._mechanisms,
            }
        self._mechanism = mechanism
        if mechanism in MECHANISMS:
            self._scram = ScramServer(mechanism, server_nonce=self._new_nonce())
        self._state = "authenticate"
        self.raw_token_next = version == 0
        return {"error_code": ErrorCode.none, "mechanisms": self._mechanisms}

    # ----------------------------------------------------------- mechanisms
    async def _step(self, token: bytes) -> bytes:
        self._state = "failed"  # until this step succeeds
        if self._scram is None:
            await self._plain(token)
            return b""
        scram = self._scram
        if not scram.user:
            user = scram.receive_client_first(token)
            self.attempted_user = user
            credential = await self._lookup(user, scram.mechanism)
            answer = scram.server_first(credential)
            self._state = "authenticate"
            return answer
        answer = scram.receive_client_final(token)
        self._logged_in(scram.user)
        return answer

    async def _plain(self, token: bytes) -> None:
        """RFC 4616: ``authzid NUL authcid NUL passwd``."""
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise AuthenticationFailed("PLAIN token is not authzid\\0user\\0password")
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("PLAIN token is not UTF-8") from exc
        self.attempted_user = user
        if not user or (authzid and authzid != user):
            raise AuthenticationFailed(f"PLAIN authzid may only name the user itself ({user!r})")
        credential = await self._plain_credential(user)
        if credential is None or not await self._offload(
            partial(verify_password, credential, password)
        ):
            raise AuthenticationFailed(f"authentication failed for user {user!r} with PLAIN")
        self._logged_in(user)

    async def _plain_credential(self, user: str) -> ScramCredential | None:
        for mechanism in MECHANISMS:
            credential = await self._lookup(user, mechanism)
            if credential is not None:
                return credential
        return None

    async def _lookup(self, user: str, mechanism: str) -> ScramCredential | None:
        assert self._credentials is not None  # checked in __init__
        return await self._credentials.scram_credential(user, mechanism)

    def _logged_in(self, user: str) -> None:
        self._state = "done"
        self.raw_token_next = False
        self.user = user


def _auth_error(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"error_code": code, "error_message": message, "auth_bytes": b"", "session_lifetime": 0}
