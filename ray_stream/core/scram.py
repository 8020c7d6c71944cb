"""SCRAM (RFC 5802, RFC 7677) server side and its stored credentials: pure, no I/O.

Responsibility: derive what the metadata stores for a user (salt, iterations, StoredKey,
ServerKey per mechanism: never the password nor the salted password), run the server
half of one SCRAM exchange, and check a PLAIN password against the same stored keys.

Rules this module keeps:

1. **No secret leaves this module in a message.** Error messages name the user and the
   step, never a password, proof or key.
2. **Randomness is injected.** The server nonce comes from the caller (the listener
   draws it with ``secrets``), so tests replay RFC 7677's exchange byte for byte.
3. **A nonce is used once.** A ``ScramServer`` answers one client-first and one
   client-final, in that order; a client-final must carry exactly the nonce this server
   issued, so a client-final replayed from another exchange fails.
4. Comparisons of keys and proofs are constant-time (``hmac.compare_digest``).

Never: touch sockets, clocks or the ``random`` module; log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ray_stream.core.types import wire
from ray_stream.errors import AuthenticationFailed, InvalidRequest

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_ITERATIONS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "ScramCredential",
    "ScramServer",
    "ScramUserInfo",
    "credential_from_password",
    "credential_from_salted_password",
    "mechanism_code",
    "mechanism_name",
    "verify_password",
]

# Kafka's ScramMechanism ids (AlterUserScramCredentials / DescribeUserScramCredentials).
MECHANISMS: Final = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
_HASHES: Final[dict[str, Callable[..., hashlib._Hash]]] = {
    "SCRAM-SHA-256": hashlib.sha256,
    "SCRAM-SHA-512": hashlib.sha512,
}
# Kafka's bounds (ScramMechanism.minIterations / maxIterations): fewer iterations make a
# stolen credential cheap to brute-force, more make every PLAIN login and `users add` slow.
MIN_ITERATIONS: Final = 4096
MAX_ITERATIONS: Final = 16384
DEFAULT_ITERATIONS: Final = 8192
_MAX_MESSAGE_BYTES: Final = 4096  # a SCRAM message is ~100-200 bytes; anything far over is junk


@wire
@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the metadata stores for one user and mechanism (RFC 5802 section 3).

    ``stored_key`` is H(ClientKey) and ``server_key`` HMAC(SaltedPassword, "Server Key"):
    enough to verify a client's proof and prove the server's identity, not enough to
    log in as the user.
    """

    user: str
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@wire
@dataclass(frozen=True, slots=True)
class ScramUserInfo:
    """What may be shown about a stored credential (DescribeUserScramCredentials,
    ``ray-stream users list``): no salt, no keys."""

    user: str
    mechanism: str
    iterations: int


def mechanism_name(code: int) -> str:
    """``SCRAM-SHA-256`` for Kafka's mechanism id 1, ...

    Raises:
        InvalidRequest: an id Kafka does not define (0 is UNKNOWN).
    """
    for name, value in MECHANISMS.items():
        if value == code:
            return name
    raise InvalidRequest(f"unknown SCRAM mechanism id {code} (1: SCRAM-SHA-256, 2: SCRAM-SHA-512)")


def mechanism_code(name: str) -> int:
    """Kafka's id of mechanism ``name``. Raises InvalidRequest for an unknown name."""
    if name not in MECHANISMS:
        raise InvalidRequest(f"unknown SCRAM mechanism {name!r}; known: {sorted(MECHANISMS)}")
    return MECHANISMS[name]


def _hash(mechanism: str) -> Callable[..., hashlib._Hash]:
    mechanism_code(mechanism)
    return _HASHES[mechanism]


def _hmac(mechanism: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, _hash(mechanism)).digest()


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i) of RFC 5802 (PBKDF2-HMAC; SASLprep is not
    applied, as Kafka's own ScramFormatter does not apply it either)."""
    name = _hash(mechanism)().name
    return hashlib.pbkdf2_hmac(name, password.encode(), salt, iterations)


def credential_from_salted_password(
    user: str, mechanism: str, *, salt: bytes, iterations: int, salted: bytes
) -> ScramCredential:
    """The stored keys for a salted password (what AlterUserScramCredentials carries).

    Raises:
        InvalidRequest: unknown mechanism, iterations outside Kafka's bounds, an empty
            user name or salt, or a salted password of the wrong length.
    """
    digest = _hash(mechanism)
    if not user:
        raise InvalidRequest("a SCRAM user name must not be empty")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise InvalidRequest(
            f"SCRAM iterations {iterations} for user {user!r} outside "
            f"[{MIN_ITERATIONS}, {MAX_ITERATIONS}]"
        )
    if not salt:
        raise InvalidRequest(f"SCRAM salt for user {user!r} is empty")
    if len(salted) != digest().digest_size:
        raise InvalidRequest(
            f"salted password for user {user!r} has {len(salted)} bytes, "
            f"{mechanism} needs {digest().digest_size}"
        )
    client_key = _hmac(mechanism, salted, b"Client Key")
    return ScramCredential(
        user=user,
        mechanism=mechanism,
        salt=salt,
        iterations=iterations,
        stored_key=digest(client_key).digest(),
        server_key=_hmac(mechanism, salted, b"Server Key"),
    )


def credential_from_password(
    user: str, mechanism: str, password: str, *, salt: bytes, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredential:
    """The stored keys for ``password`` (``ray-stream users add``; the salt is the
    caller's, drawn with ``secrets``). Raises InvalidRequest as the salted variant."""
    salted = salted_password(mechanism, password, salt, iterations)
    return credential_from_salted_password(
        user, mechanism, salt=salt, iterations=iterations, salted=salted
    )


def verify_password(credential: ScramCredential, password: str) -> bool:
    """True if ``password`` is the one ``credential`` was derived from (SASL/PLAIN
    checks against the stored SCRAM keys: derive with their salt and iterations)."""
    salted = salted_password(credential.mechanism, password, credential.salt, credential.iterations)
    client_key = _hmac(credential.mechanism, salted, b"Client Key")
    stored = _hash(credential.mechanism)(client_key).digest()
    return hmac.compare_digest(stored, credential.stored_key)


# ----------------------------------------------------------------- the exchange
def _attributes(message: bytes, step: str) -> list[tuple[str, str]]:
    """``a=value,b=value`` as pairs. Raises AuthenticationFailed on anything else."""
    if len(message) > _MAX_MESSAGE_BYTES:
        raise AuthenticationFailed(f"SCRAM {step} of {len(message)} bytes is too long")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthenticationFailed(f"SCRAM {step} is not UTF-8") from exc
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise AuthenticationFailed(f"SCRAM {step} is malformed (attribute {part[:16]!r})")
        pairs.append((part[0], part[2:]))
    return pairs


def _username(saslname: str) -> str:
    """RFC 5802 saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is invalid."""
    out, i = [], 0
    while i < len(saslname):
        if saslname[i] == "=":
            escape = saslname[i : i + 3]
            if escape not in ("=2C", "=3D"):
                raise AuthenticationFailed("SCRAM user name has an invalid '=' escape")
            out.append("," if escape == "=2C" else "=")
            i += 3
        else:
            out.append(saslname[i])
            i += 1
    if not out:
        raise AuthenticationFailed("SCRAM client-first names no user")
    return "".join(out)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthenticationFailed(f"SCRAM {what} is not valid base64") from exc


class ScramServer:
    """The server half of one SCRAM exchange (RFC 5802 section 5), as a state machine.

    ``receive_client_first`` -> user name; the caller looks the credential up and calls
    ``server_first(credential)``; ``receive_client_final`` checks the proof and returns
    the server-final message. Any step out of order, or after a failure, raises.

    Args:
        mechanism: ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.
        server_nonce: fresh printable random characters (no ``,``), one per exchange.

    Raises:
        InvalidRequest: unknown mechanism or an unusable nonce (a caller bug).
    """

    def __init__(self, mechanism: str, *, server_nonce: str) -> None:
        _hash(mechanism)
        if not server_nonce or "," in server_nonce or not server_nonce.isprintable():
            raise InvalidRequest("a SCRAM server nonce must be printable and contain no ','")
        self.mechanism = mechanism
        self._server_nonce = server_nonce
        self._state = "client-first"
        self.user = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._credential: ScramCredential | None = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _expect(self, state: str) -> None:
        if self._state != state:
            current, self._state = self._state, "failed"
            raise AuthenticationFailed(
                f"SCRAM message out of order: expected {state}, at {current}"
            )

    def receive_client_first(self, message: bytes) -> str:
        """Parse ``gs2-header client-first-message-bare``; returns the user name.

        Raises:
            AuthenticationFailed: malformed, channel binding asked for, an authzid other
                than the user, or a ``tokenauth`` extension (no delegation tokens here).
        """
        self._expect("client-first")
        self._state = "failed"
        text = message.decode("utf-8", "replace")
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            raise AuthenticationFailed(
                "SCRAM client-first must start with 'n,' (no channel binding)"
            )
        authzid = parts[1]
        bare = parts[2]
        attributes = _attributes(bare.encode(), "client-first")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise AuthenticationFailed("SCRAM client-first must be n=<user>,r=<nonce>")
        user = _username(attributes[0][1])
        if any(key == "m" for key, _ in attributes):
            raise AuthenticationFailed("SCRAM mandatory extensions are not supported")
        if any(value.startswith("tokenauth") for _, value in attributes[2:]):
            raise AuthenticationFailed("SCRAM delegation tokens are not supported")
        if authzid and (not authzid.startswith("a=") or _username(authzid[2:]) != user):
            raise AuthenticationFailed(f"SCRAM authzid may only name the user itself ({user!r})")
        client_nonce = attributes[1][1]
        if not client_nonce or not client_nonce.isprintable():
            raise AuthenticationFailed("SCRAM client nonce is empty or not printable")
        self.user = user
        self._gs2_header = f"{parts[0]},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._state = "server-first"
        return user

    def server_first(self, credential: ScramCredential | None) -> bytes:
        """``r=<nonce>,s=<salt>,i=<iterations>`` for the user's stored credential.

        Raises:
            AuthenticationFailed: no credential (an unknown user, or none for this
                mechanism): the message does not say which.
        """
        self._expect("server-first")
        self._state = "failed"
        if credential is None or credential.mechanism != self.mechanism:
            raise AuthenticationFailed(
                f"authentication failed for user {self.user!r} with {self.mechanism}"
            )
        self._credential = credential
        salt = base64.b64encode(credential.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credential.iterations}"
        self._state = "client-final"
        return self._server_first.encode()

    def receive_client_final(self, message: bytes) -> bytes:
        """Check ``c=...,r=...,p=...``; returns ``v=<server signature>``.

        Raises:
            AuthenticationFailed: malformed, a nonce other than this exchange's (a replay),
                a channel-binding mismatch, or a wrong proof (a wrong password).
        """
        self._expect("client-final")
        self._state = "failed"
        assert self._credential is not None  # set by server_first
        attributes = _attributes(message, "client-final")
        if len(attributes) < 3 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise AuthenticationFailed("SCRAM client-final must be c=...,r=...,...,p=...")
        if attributes[-1][0] != "p":
            raise AuthenticationFailed("SCRAM client-final must end with the proof p=...")
        if _b64(attributes[0][1], "channel binding") != self._gs2_header.encode():
            raise AuthenticationFailed("SCRAM channel binding does not match the client-first")
        if not hmac.compare_digest(attributes[1][1].encode(), self._nonce.encode()):
            raise AuthenticationFailed(
                f"SCRAM nonce mismatch for user {self.user!r} (a replayed or forged message)"
            )
        proof = _b64(attributes[-1][1], "proof")
        without_proof = message.decode()[: message.decode().rindex(",p=")]
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        credential = self._credential
        signature = _hmac(self.mechanism, credential.stored_key, auth_message.encode())
        if len(proof) != len(signature):
            raise AuthenticationFailed(f"authentication failed for user {self.user!r}")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        stored = _hash(self.mechanism)(client_key).digest()
        if not hmac.compare_digest(stored, credential.stored_key):
            raise AuthenticationFailed(
                f"authentication failed for user {self.user!r} with {self.mechanism}"
            )
        server_signature = _hmac(self.mechanism, credential.server_key, auth_message.encode())
        self._state = "done"
        return b"v=" + base64.b64encode(server_signature)
