"""ACL API handlers: CreateAcls, DescribeAcls, DeleteAcls (what ``kafka-acls`` and
AdminClient.create_acls/describe_acls/delete_acls send).

Responsibility: translate between the wire and the typed ACL calls of ``backend.meta``
(metadata/acl_service.py stores, validates and versions them). Kafka's rules:

- With the authorizer off, every request is answered SECURITY_DISABLED (54), as a Kafka
  broker without an authorizer does; ACLs are then managed through the Python API
  (``ray-stream acls``) only.
- CreateAcls and DeleteAcls need ALTER on the cluster, DescribeAcls DESCRIBE on it;
  otherwise CLUSTER_AUTHORIZATION_FAILED (31) for every item.
- Each creation and each delete filter gets its own result; an invalid one
  (INVALID_REQUEST) never fails the others.
- After a change through this agent, its own ACL copy is refreshed before answering,
  so the client's next request here sees it.

Never: import asyncio, sockets or clocks.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from ray_stream.core.acl import AclBinding, AclFilter, Operation
from ray_stream.errors import SecurityDisabled
from ray_stream.kafka.authorization import access_for
from ray_stream.kafka.context import Handler, KafkaBackend, Peer
from ray_stream.kafka.errors_map import error_code, error_message, note_unexpected
from ray_stream.kafka.protocol import Request
from ray_stream.kafka.versions import ApiKey

__all__ = ["AclHandlers"]


class AclHandlers:
    """The ACL APIs of one agent."""

    def __init__(self, backend: KafkaBackend) -> None:
        self._backend = backend
        self._meta = backend.meta

    def dispatch(self) -> dict[int, Handler]:
        return {
            ApiKey.CREATE_ACLS: self._create_acls,
            ApiKey.DESCRIBE_ACLS: self._describe_acls,
            ApiKey.DELETE_ACLS: self._delete_acls,
        }

    async def _refused(self, peer: Peer, operation: int, what: str) -> Exception | None:
        """The error every item gets, or None when the request may proceed."""
        access = await access_for(self._backend, peer)
        if not access.enabled:
            return SecurityDisabled(
                "no authorizer is configured on this cluster (start it with --authorizer acl)"
            )
        if not access.cluster(operation):
            return access.cluster_denied(what)
        return None

    async def _create_acls(self, request: Request, peer: Peer) -> dict[str, Any]:
        creations = request.body.creations
        refused = await self._refused(peer, Operation.ALTER, "create ACLs (Alter)")
        errors: list[Exception | None]
        if refused is None:
            bindings = [
                AclBinding(
                    c.resource_type,
                    c.resource_name,
                    getattr(c, "resource_pattern_type", 3),
                    c.principal,
                    c.host,
                    c.operation,
                    c.permission_type,
                )
                for c in creations
            ]
            try:
                outcomes = await self._meta.create_acls(bindings)
                errors = [o.error for o in outcomes]
                await self._refresh()
            except Exception as exc:
                errors = [note_unexpected(exc, "create_acls")] * len(creations)
        else:
            errors = [refused] * len(creations)
        return {
            "results": [
                {"error_code": error_code(e), "error_message": error_message(e)} for e in errors
            ]
        }

    async def _describe_acls(self, request: Request, peer: Peer) -> dict[str, Any]:
        failure = await self._refused(peer, Operation.DESCRIBE, "describe ACLs (Describe)")
        found: list[AclBinding] = []
        if failure is None:
            try:
                found = await self._meta.describe_acls(_filter(request.body))
            except Exception as exc:
                failure = note_unexpected(exc, "describe_acls")
        resources: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
        for b in found:
            resources.setdefault((b.resource_type, b.resource_name, b.pattern_type), []).append(
                {
                    "principal": b.principal,
                    "host": b.host,
                    "operation": b.operation,
                    "permission_type": b.permission,
                }
            )
        return {
            "error_code": error_code(failure),
            "error_message": error_message(failure),
            "resources": [
                {"resource_type": t, "resource_name": n, "pattern_type": p, "acls": acls}
                for (t, n, p), acls in resources.items()
            ],
        }

    async def _delete_acls(self, request: Request, peer: Peer) -> dict[str, Any]:
        filters = request.body.filters
        refused = await self._refused(peer, Operation.ALTER, "delete ACLs (Alter)")
        results: list[dict[str, Any]]
        if refused is not None:
            results = [_filter_result(refused, ()) for _ in filters]
            return {"filter_results": results}
        try:
            wanted = [_filter(f) for f in filters]
            outcomes = await self._meta.delete_acls(wanted)
            results = [_filter_result(o.error, o.bindings) for o in outcomes]
            await self._refresh()
        except Exception as exc:
            failure = note_unexpected(exc, "delete_acls")
            results = [_filter_result(failure, ()) for _ in filters]
        return {"filter_results": results}

    async def _refresh(self) -> None:
        try:
            await self._backend.acls.refresh()
        except Exception as exc:  # the background watch catches up instead
            note_unexpected(exc, "acl refresh")


def _filter(body: Any) -> AclFilter:
    """An ``AclFilter`` from a DescribeAcls request or a DeleteAcls filter (v0 of both
    had no pattern type: LITERAL, as Kafka reads it)."""
    return AclFilter(
        body.resource_type_filter,
        body.resource_name_filter,
        getattr(body, "pattern_type_filter", 3),
        body.principal_filter,
        body.host_filter,
        body.operation,
        body.permission_type,
    )


def _filter_result(failure: Exception | None, bindings: Any) -> dict[str, Any]:
    return {
        "error_code": error_code(failure),
        "error_message": error_message(failure),
        "matching_acls": [
            {
                "error_code": ErrorCode.none,
                "error_message": None,
                "resource_type": b.resource_type,
                "resource_name": b.resource_name,
                "pattern_type": b.pattern_type,
                "principal": b.principal,
                "host": b.host,
                "operation": b.operation,
                "permission_type": b.permission,
            }
            for b in bindings
        ],
    }
