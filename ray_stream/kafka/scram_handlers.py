"""SCRAM credential admin APIs: DescribeUserScramCredentials, AlterUserScramCredentials.

Responsibility: what ``kafka-configs --alter --add-config 'SCRAM-SHA-256=[...]'`` and
``AdminClient.alter_user_scram_credentials`` need (KIP-554). The client sends a salted
password (never the password); this module derives the stored keys from it
(``core/scram.py``) and hands them to the metadata in one write. Kafka's checks, per
user: a user named twice for one mechanism (upserted or deleted twice, or both) is
DUPLICATE_RESOURCE; an unknown mechanism UNSUPPORTED_SASL_MECHANISM;
iterations outside [4096, 16384] or a malformed credential UNACCEPTABLE_CREDENTIAL;
deleting a credential that does not exist RESOURCE_NOT_FOUND. Describing needs
DESCRIBE on the cluster, altering ALTER (when the ACL authorizer is on).

Never: import asyncio, sockets or clocks; put a salt or key in a response.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from ray_stream.core.acl import Operation
from ray_stream.core.scram import (
    MECHANISMS,
    ScramCredential,
    credential_from_salted_password,
    mechanism_code,
    mechanism_name,
)
from ray_stream.errors import InvalidRequest
from ray_stream.kafka.authorization import access_for
from ray_stream.kafka.context import Handler, KafkaBackend, Peer
from ray_stream.kafka.errors_map import error_code, error_message, note_unexpected
from ray_stream.kafka.protocol import Request
from ray_stream.kafka.versions import ApiKey

__all__ = ["ScramHandlers"]

_Result = tuple[ErrorCode, str | None]


class ScramHandlers:
    """The two SCRAM credential APIs for one agent.

    Args:
        backend: the agent (its ``meta`` stores the credentials).
    """

    def __init__(self, backend: KafkaBackend) -> None:
        self._backend = backend
        self._meta = backend.meta

    def dispatch(self) -> dict[int, Handler]:
        return {
            ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: self._describe,
            ApiKey.ALTER_USER_SCRAM_CREDENTIALS: self._alter,
            # The listener answers these with the connection's SaslSession (kafka/sasl.py)
            # and never reaches here; without a connection there is no login to run.
            ApiKey.SASL_HANDSHAKE: self._no_session,
            ApiKey.SASL_AUTHENTICATE: self._no_session,
        }

    async def _no_session(self, request: Request, peer: Peer) -> dict[str, Any]:
        if request.api_key == ApiKey.SASL_HANDSHAKE:
            return {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": []}
        return {
            "error_code": ErrorCode.illegal_sasl_state,
            "error_message": "no SASL session on this connection",
            "auth_bytes": b"",
        }

    async def _describe(self, request: Request, peer: Peer) -> dict[str, Any]:
        access = await access_for(self._backend, peer)
        if not access.cluster(Operation.DESCRIBE):
            denied = access.cluster_denied("describe SCRAM credentials")
            return _describe_error(denied)
        wanted = [u.name for u in request.body.users or ()]
        try:
            found = await self._meta.describe_scram_credentials(wanted or None)
        except Exception as exc:
            return _describe_error(note_unexpected(exc, "describe_scram_credentials"))
        by_user: dict[str, list[dict[str, int]]] = {}
        for info in found:
            entry = {"mechanism": mechanism_code(info.mechanism), "iterations": info.iterations}
            by_user.setdefault(info.user, []).append(entry)
        counts = Counter(wanted)
        results = []
        for user in dict.fromkeys(wanted) if wanted else sorted(by_user):
            code, message = ErrorCode.none, None
            if counts[user] > 1:
                code, message = ErrorCode.duplicate_resource, f"user {user!r} named twice"
            elif user not in by_user:
                code, message = ErrorCode.resource_not_found, f"no SCRAM credential for {user!r}"
            results.append(
                {
                    "user": user,
                    "error_code": code,
                    "error_message": message,
                    "credential_infos": by_user.get(user, []) if code == ErrorCode.none else [],
                }
            )
        return {"error_code": ErrorCode.none, "error_message": None, "results": results}

    async def _alter(self, request: Request, peer: Peer) -> dict[str, Any]:
        body = request.body
        users = list(
            dict.fromkeys([d.name for d in body.deletions] + [u.name for u in body.upsertions])
        )
        access = await access_for(self._backend, peer)
        if not access.cluster(Operation.ALTER):
            denied = access.cluster_denied("alter SCRAM credentials")
            return _alter_results({u: (error_code(denied), error_message(denied)) for u in users})
        outcome: dict[str, _Result] = {}
        seen = Counter((d.name, d.mechanism) for d in body.deletions)
        seen.update((u.name, u.mechanism) for u in body.upsertions)
        for (user, mechanism), count in seen.items():
            if count > 1:  # twice for one mechanism, or both upserted and deleted
                message = f"user {user!r} named twice for mechanism {mechanism}"
                outcome[user] = (ErrorCode.duplicate_resource, message)
        deletions = await self._deletions(body.deletions, outcome)
        upserts = self._upserts(body.upsertions, outcome)
        deletions = [d for d in deletions if d[0] not in outcome]
        upserts = [c for c in upserts if c.user not in outcome]
        if deletions or upserts:
            try:
                await self._meta.alter_scram_credentials(upserts, deletions)
            except Exception as exc:
                failure = note_unexpected(exc, "alter_scram_credentials")
                for user in {c.user for c in upserts} | {u for u, _ in deletions}:
                    outcome[user] = (error_code(failure), error_message(failure))
        return _alter_results({u: outcome.get(u, (ErrorCode.none, None)) for u in users})

    async def _deletions(self, items: Any, outcome: dict[str, _Result]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for item in items:
            if item.name in outcome:
                continue
            mechanism = _mechanism(item.name, item.mechanism, outcome)
            if mechanism is None:
                continue
            if await self._meta.scram_credential(item.name, mechanism) is None:
                message = f"no {mechanism} credential for user {item.name!r}"
                outcome[item.name] = (ErrorCode.resource_not_found, message)
                continue
            found.append((item.name, mechanism))
        return found

    def _upserts(self, items: Any, outcome: dict[str, _Result]) -> list[ScramCredential]:
        made = []
        for item in items:
            if item.name in outcome:
                continue
            mechanism = _mechanism(item.name, item.mechanism, outcome)
            if mechanism is None:
                continue
            try:
                made.append(
                    credential_from_salted_password(
                        item.name,
                        mechanism,
                        salt=bytes(item.salt),
                        iterations=item.iterations,
                        salted=bytes(item.salted_password),
                    )
                )
            except InvalidRequest as exc:
                outcome[item.name] = (ErrorCode.unacceptable_credential, str(exc))
        return made


def _mechanism(user: str, code: int, outcome: dict[str, _Result]) -> str | None:
    if code not in MECHANISMS.values():
        outcome[user] = (ErrorCode.unsupported_sasl_mechanism, f"unknown SCRAM mechanism {code}")
        return None
    return mechanism_name(code)


def _describe_error(exc: Exception) -> dict[str, Any]:
    return {"error_code": error_code(exc), "error_message": error_message(exc), "results": []}


def _alter_results(outcome: dict[str, _Result]) -> dict[str, Any]:
    return {
        "results": [
            {"user": user, "error_code": code, "error_message": message}
            for user, (code, message) in outcome.items()
        ]
    }
