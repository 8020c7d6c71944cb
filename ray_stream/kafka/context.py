"""What every Kafka handler module shares: the backend they call, the handler signature,
the topic-id cache and the cluster's identity.

``handlers.py``, ``admin_handlers.py`` and ``group_handlers.py`` each import this module
and nothing of each other but what ``handlers.py`` assembles, so there is no import
circle among them.

Never: import asyncio, sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ray_stream.config import Settings
from ray_stream.core.metadata_api import MetadataClient
from ray_stream.core.types import BatchResult, BrokerInfo, FetchResult, TopicInfo

if TYPE_CHECKING:
    from ray_stream.kafka.protocol import Request

__all__ = [
    "NO_AUTHORIZED_OPERATIONS",
    "Handler",
    "KafkaBackend",
    "TopicNames",
    "cluster_id",
    "own_broker",
]

NO_AUTHORIZED_OPERATIONS = -(2**31)  # Kafka's "not requested" sentinel


class KafkaBackend(Protocol):
    """What the handlers need from an agent (``agent/log_service.py``'s ``LogService``).

    ``produce`` must take its entries in (buffer them) before its first suspension
    point: the server starts one connection's handlers in request order, and that is
    what keeps an idempotent producer's pipelined batches in sequence order; it also
    validates every batch (size, CRC), so the handlers never do. ``brokers()`` must
    include this agent (``node_id``) once its listener is up.
    """

    node_id: int
    settings: Settings
    meta: MetadataClient

    async def brokers(self) -> list[BrokerInfo]: ...

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
    ) -> list[FetchResult]: ...


Handler = Callable[["Request", str], Awaitable["dict[str, Any] | None"]]


def cluster_id(settings: Settings) -> str:
    """A stable cluster id: one per Ray namespace (clients only compare it)."""
    return f"ray-stream-{settings.namespace}"


async def own_broker(backend: KafkaBackend) -> BrokerInfo | None:
    """This agent's listener, or None while it is not registered yet."""
    for broker in await backend.brokers():
        if broker.node_id == backend.node_id:
            return broker
    return None


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
