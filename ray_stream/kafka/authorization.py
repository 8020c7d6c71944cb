"""What the Kafka handlers ask the authorizer, phrased as Kafka's request checks.

Responsibility: one ``Access`` per request, binding the agent's current ``Authorizer``
(core/acl.py, through the backend's ``AclSource``: no metadata call) to the request's
``Peer`` (principal and host). Handlers ask it per resource and answer a denial with
the resource's error (``TopicAuthorizationFailed``, ``GroupAuthorizationFailed``,
``ClusterAuthorizationFailed``, mapped to codes 29/30/31 by ``errors_map``).

Rules the handlers keep with it (Kafka's ``KafkaApis``):

1. A topic the principal may not DESCRIBE is never revealed: Metadata leaves it out of
   a full listing, and a request naming it gets TOPIC_AUTHORIZATION_FAILED whether it
   exists or not.
2. Nothing of a denied resource is written or read: the handler checks before it calls
   the backend, and leaves denied items out of the call.

Never: import asyncio, sockets or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_stream.core.acl import CLUSTER_NAME, Authorizer, Operation, ResourceType
from ray_stream.errors import (
    ClusterAuthorizationFailed,
    GroupAuthorizationFailed,
    TopicAuthorizationFailed,
)
from ray_stream.kafka.context import KafkaBackend, Peer

__all__ = ["Access", "Operation", "access_for"]


@dataclass(frozen=True, slots=True)
class Access:
    """The checks of one request: ``authorizer`` applied to ``peer``."""

    authorizer: Authorizer
    peer: Peer

    @property
    def enabled(self) -> bool:
        return self.authorizer.enabled

    def topic(self, operation: int, name: str) -> bool:
        return self._check(operation, ResourceType.TOPIC, name)

    def group(self, operation: int, group_id: str) -> bool:
        return self._check(operation, ResourceType.GROUP, group_id)

    def cluster(self, operation: int) -> bool:
        return self._check(operation, ResourceType.CLUSTER, CLUSTER_NAME)

    def may_create_topic(self, name: str) -> bool:
        """Kafka: CREATE on the cluster, or else on the topic."""
        return self.cluster(Operation.CREATE) or self.topic(Operation.CREATE, name)

    def may_write_some_topic(self) -> bool:
        """Kafka's check for an idempotent producer's InitProducerId: IDEMPOTENT_WRITE
        on the cluster, or WRITE on any topic."""
        peer = self.peer
        return self.cluster(Operation.IDEMPOTENT_WRITE) or self.authorizer.authorize_any(
            peer.principal, peer.host, Operation.WRITE, ResourceType.TOPIC
        )

    def topic_operations(self, name: str) -> int:
        return self._operations(ResourceType.TOPIC, name)

    def group_operations(self, group_id: str) -> int:
        return self._operations(ResourceType.GROUP, group_id)

    def cluster_operations(self) -> int:
        return self._operations(ResourceType.CLUSTER, CLUSTER_NAME)

    def topic_denied(self, name: str, what: str) -> TopicAuthorizationFailed:
        return TopicAuthorizationFailed(f"not authorized to {what} topic {name!r}")

    def group_denied(self, group_id: str, what: str) -> GroupAuthorizationFailed:
        return GroupAuthorizationFailed(f"not authorized to {what} group {group_id!r}")

    def cluster_denied(self, what: str) -> ClusterAuthorizationFailed:
        return ClusterAuthorizationFailed(f"not authorized to {what} on the cluster")

    def _check(self, operation: int, resource_type: int, name: str) -> bool:
        peer = self.peer
        return self.authorizer.authorize(peer.principal, peer.host, operation, resource_type, name)

    def _operations(self, resource_type: int, name: str) -> int:
        peer = self.peer
        return self.authorizer.authorized_operations(peer.principal, peer.host, resource_type, name)


async def access_for(backend: KafkaBackend, peer: Peer) -> Access:
    """The checks for one request from ``peer`` (no metadata call once ACLs are loaded).

    Returns at once, without suspending, when the ACLs are loaded or authorization is
    off: a produce handler still reaches ``backend.produce`` without suspending.
    """
    return Access(await backend.acls.authorizer(), peer)
