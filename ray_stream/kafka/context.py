"""What every Kafka handler module shares: the backend they call, the handler signature,
the topic-id cache and the cluster's identity.

``handlers.py``, ``admin_handlers.py`` and ``group_handlers.py`` each import this module
and nothing of each other but what ``handlers.py`` assembles, so there is no import
circle among them.

Never: import asyncio, sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ray_stream.config import Settings
from ray_stream.core.acl import Authorizer
from ray_stream.core.fleet import AgentRecord
from ray_stream.core.metadata_api import MetadataClient
from ray_stream.core.types import BatchResult, BrokerInfo, FetchResult, TopicInfo
from ray_stream.errors import RoleNotServed

if TYPE_CHECKING:
    from ray_stream.kafka.protocol import Request

__all__ = [
    "ANONYMOUS",
    "NO_AUTHORIZED_OPERATIONS",
    "AclSource",
    "Handler",
    "KafkaBackend",
    "Peer",
    "TopicNames",
    "cluster_id",
    "own_broker",
    "role_error",
]

NO_AUTHORIZED_OPERATIONS = -(2**31)  # Kafka's "not requested" sentinel
ANONYMOUS = "User:ANONYMOUS"  # Kafka's principal for an unauthenticated connection


@dataclass(slots=True)
class Peer:
    """Who sent a request: one per connection, handed to every handler.

    ``host`` is the client's address as Kafka prints it ("/127.0.0.1"); ``principal``
    is Kafka's ``User:<name>`` form, ``ANONYMOUS`` until the connection authenticates
    (SASL) or presents a client certificate (TLS). The server sets it; handlers read it.
    """

    host: str
    principal: str = ANONYMOUS


class AclSource(Protocol):
    """The agent's copy of the ACLs (``agent/acl_cache.py``): no metadata call per check."""

    async def authorizer(self) -> Authorizer:
        """The current ACLs (allow-all when authorization is off)."""
        ...

    async def refresh(self) -> None:
        """Reload now if they changed (after an ACL request through this agent)."""
        ...


class KafkaBackend(Protocol):
    """What the handlers need from an agent (``agent/log_service.py``'s ``LogService``).

    ``produce`` must take its entries in (buffer them) before its first suspension
    point: the server starts one connection's handlers in request order, and that is
    what keeps an idempotent producer's pipelined batches in sequence order; it also
    validates every batch (size, CRC), so the handlers never do. ``brokers(zone)`` lists
    the agents a client of that zone should see (core/fleet.py rule 1), and must include
    this agent (``node_id``) once its listener is up unless the zone has agents of its
    own. ``record`` says which roles this agent serves. ``acls`` answers who may do what.
    """

    node_id: int
    settings: Settings
    meta: MetadataClient
    address: BrokerInfo | None  # this agent's listener, once it is up

    @property
    def acls(self) -> AclSource: ...

    @property
    def record(self) -> AgentRecord: ...

    async def brokers(self, zone: str | None = None) -> list[BrokerInfo]: ...

    async def produce(
        self, entries: Sequence[tuple[str, int, bytes | memoryview]], acks: int = -1
    ) -> list[BatchResult]: ...

    async def fetch(
        self,
        requests: Sequence[tuple[str, int, int, int]],
        *,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = ...,
        client_zone: str | None = None,
    ) -> list[FetchResult]: ...


Handler = Callable[["Request", Peer], Awaitable["dict[str, Any] | None"]]


def cluster_id(settings: Settings) -> str:
    """A stable cluster id: one per Ray namespace (clients only compare it)."""
    return f"ray-stream-{settings.namespace}"


def role_error(backend: KafkaBackend, role: str) -> RoleNotServed | None:
    """The error for a client that asks this agent for a ``role`` it does not serve."""
    record = backend.record
    if record.serves(role):
        return None
    return RoleNotServed(
        f"agent group {record.group!r} serves {'/'.join(sorted(record.roles))}, not {role}: "
        f"bootstrap to the address of a group that serves {role}"
    )


async def own_broker(backend: KafkaBackend, zone: str | None = None) -> BrokerInfo | None:
    """The agent a client of ``zone`` should use as coordinator or controller: this one
    unless the client's zone has agents and this is not one of them (then the first of
    them: every agent serves group and admin requests), or None while this agent's
    listener is not up yet."""
    me = backend.address
    if me is None or not zone:
        return me
    listed = sorted(await backend.brokers(zone), key=lambda b: b.node_id)
    if not listed or any(b.node_id == me.node_id for b in listed):
        return me
    return listed[0]


class TopicNames:
    """Topic id -> name, for the APIs that address topics by id (Fetch v13+,
    DeleteTopics v6+, Metadata by id).

    ``remember(..., complete=True)`` (a full ``list_topics``) replaces the cache, so ids
    of topics deleted through other agents disappear at the next Metadata request here;
    in between, a stale id is still resolved and the backend answers for the name.
    """

    def __init__(self, meta: MetadataClient) -> None:
        self._meta = meta
        self._by_id: dict[str, str] = {}

    def remember(self, topics: Sequence[TopicInfo], *, complete: bool = False) -> None:
        if complete:
            self._by_id = {t.topic_id: t.name for t in topics}
        else:
            self._by_id.update((t.topic_id, t.name) for t in topics)

    def forget(self, topic_id: str) -> None:
        self._by_id.pop(topic_id, None)

    async def name_for_id(self, topic_id: Any) -> str | None:
        """The name of the topic with this kio UUID, or None if unknown."""
        key = topic_id.hex if topic_id is not None else ""
        if key not in self._by_id:
            self.remember(await self._meta.list_topics(), complete=True)
        return self._by_id.get(key)
