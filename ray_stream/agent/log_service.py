"""LogService: one agent's core, with no Ray in it.

It owns the agent's write path (``SegmentWriter``: buffer, one segment PUT per flush,
commits in flush order through a ``CommitQueue``), the call order of pipelining
producers (``CallOrder``), and the read path (``LocationCache`` + ``ChunkCache``). It is
built from settings, an object store, a ``MetadataClient`` and a clock, so the same code
runs in-process in unit tests and inside ``AgentActor`` (actors/agent.py), the thin shell
that binds it to Ray and to the Kafka listener. It is the ``KafkaBackend`` the Kafka
handlers call.

Rules this module keeps:

1. **At most two metadata calls per fetch, none when the agent already knows.** A fetch
   first asks the ``LocationCache`` (what this agent committed or located recently);
   every partition it cannot answer goes to the metadata service in one ``locate``,
   which also long-polls there when nothing at all is available. Only an answer whose
   catalog version shows that a topic was deleted costs a second ``locate`` (the cached
   part is asked again).
2. **Cached locations never outlive their topic.** Once the agent caches anything, one
   background ``watch_catalog`` long poll (one call per ``CATALOG_WATCH_S`` when nothing
   changes) tells it within milliseconds that a topic was deleted (or the metadata
   service restarted), and the cache is emptied: a topic deleted and created again
   reuses offsets, and its old batches must never be served for the new one.
3. **Reads never block on the cache's mistakes**: a batch the cache located that cannot
   be read (its file is gone) makes the cache forget that partition; the fetch fails
   for that partition with a retriable error and the next one asks the metadata service.
4. The global ``max_bytes`` of a fetch is a soft bound: the first batch always comes.
5. **A chunk this agent does not own is asked of its owner** (``Membership.owner``: the
   zone's ring) through ``PeerLink``, for at most ``cache_peer_timeout_ms``; an owner
   that failed or was slow is skipped for ``SUSPECT_S`` and the store is read instead,
   so a bad peer costs one bounded wait, never a failed read. Only an object that is
   gone (NotFound) fails the read.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ray_stream.agent.acl_cache import AclCache
from ray_stream.agent.call_order import CallOrder
from ray_stream.agent.chunk_cache import Chunk, ChunkCache
from ray_stream.agent.locations import Hit, LocationCache
from ray_stream.agent.membership import Membership
from ray_stream.agent.segment_writer import SegmentWriter
from ray_stream.clock import Clock
from ray_stream.config import Settings
from ray_stream.core.backoff import Backoff
from ray_stream.core.fleet import AgentRecord
from ray_stream.core.metadata_api import (
    CommitAnswer,
    CommitRequest,
    LocateAnswer,
    LocateRequest,
    MetadataClient,
)
from ray_stream.core.metrics import Meter, MetricsSink
from ray_stream.core.segment import SegmentBatch, build_segment
from ray_stream.core.types import BatchRef, BatchResult, BrokerInfo, FetchResult
from ray_stream.errors import NotFound, RayStreamError, StorageUnavailable
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.metered import MeteredStore

__all__ = ["LogService", "PeerLink"]

log = logging.getLogger(__name__)

SUSPECT_S = 10.0  # an owner that failed or was slow is not asked again for this long
FetchRequest = tuple[str, int, int, int]  # (topic, partition, offset, partition_max_bytes)
DEFAULT_FETCH_MAX_BYTES = 50 * 1024 * 1024
CATALOG_WATCH_S = 30.0
_WARM_UP_BATCH = SegmentBatch("warm-up", 0, b"\x00" * 64, 1, 0, 0)


class PeerLink(Protocol):
    """How an agent reaches the others of its zone (the actor shell: Ray calls)."""

    async def fetch_chunk(self, agent_id: int, key: str, index: int) -> Chunk:
        """Chunk ``index`` of ``key`` from agent ``agent_id``'s cache (it GETs on a miss).

        Raises:
            NotFound: the object is gone. Anything else: the peer failed.
        """
        ...


@dataclass(slots=True)
class _Slot:
    """One requested partition while a fetch is planned."""

    topic: str
    partition: int
    offset: int
    max_bytes: int
    refs: Sequence[BatchRef] = ()
    high_watermark: int = -1
    log_start_offset: int = -1
    error: RayStreamError | None = None
    cached: bool = False
    records_read: int = 0  # records in the batches read for the answer


class LogService:
    """One agent's log (see the module doc).

    Args:
        settings: cluster settings.
        node_id: the agent's number (its Kafka broker id).
        store: the object store segments are written to and read from.
        metadata: the metadata service, or the Ray adapter in front of it.
        clock / rand: injected time and randomness.
        record: this agent in the fleet (zone, group, roles); default: the default
            group, no zone.
        peers: how to reach the others of its zone for chunks they own (rule 5);
            None: every read goes to the store.
        metrics: where the agent's metrics go (core/metrics.py), tagged with its
            namespace, id, zone and group; None: nowhere.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        node_id: int,
        store: ObjectStore,
        metadata: MetadataClient,
        clock: Clock,
        rand: random.Random | None = None,
        record: AgentRecord | None = None,
        peers: PeerLink | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.meta = metadata
        self.store = store
        self.address: BrokerInfo | None = None
        self._clock = clock
        self._rand = rand if rand is not None else random.Random()
        self.membership = Membership(
            metadata,
            record=record if record is not None else AgentRecord(node_id, "", 0),
            clock=clock,
            rand=self._rand,
        )
        self._peers = peers if settings.cache_shared else None
        self._meter = Meter(metrics, _agent_tags(settings, self.membership.record))
        if self._meter.enabled:  # every GET and PUT of this agent, counted
            store = MeteredStore(store, self._meter.child(component="agent"))
        self._suspects: dict[int, float] = {}
        self._peer_timeouts = 0
        self._cache = ChunkCache(
            store.get_range,
            capacity_bytes=settings.cache_bytes,
            remote=self._from_owner if self._peers is not None else None,
            meter=self._meter,
        )
        self._locations = LocationCache(clock)
        self._writer = SegmentWriter(
            settings,
            name=f"agent-{node_id}",
            put=store.put,
            send_commits=self._commit,
            on_written=self._cache.put_object,
            on_committed=self._learn_commit,
            clock=clock,
            rand=self._rand,
            meter=self._meter,
        )
        self._order = CallOrder(clock)
        self.acls = AclCache(metadata, settings=settings, rand=self._rand)
        self._watcher: asyncio.Task[None] | None = None
        self._current_commits: set[str] = set()  # committed under the known catalog
        self._closed = False
        self._fetches = 0
        self._locates = 0
        self._served_bytes = 0
        self._cross_zone_bytes = 0

    # ------------------------------------------------------------------- fleet
    @property
    def record(self) -> AgentRecord:
        return self.membership.record

    async def join(self, host: str, port: int) -> None:
        """Join the fleet, with the Kafka listener up at ``host:port`` (port 0: none)."""
        zone = self.record.zone or None
        if port:
            self.address = BrokerInfo(node_id=self.node_id, host=host, port=port, rack=zone)
        await self.membership.join(host, port)
        await self.acls.authorizer()  # load the ACLs (when on) before clients need them

    async def brokers(self, zone: str | None = None) -> list[BrokerInfo]:
        """The agents a Kafka client of ``zone`` (None: none named) may talk to: the
        live agents of this agent's group, of that zone when it has any
        (core/fleet.py rule 1); includes this one once it listens."""
        found = self.membership.discover(zone)
        if not found and self.address is not None:
            found = [self.address]
        return found

    async def serve_chunk(self, key: str, index: int) -> Chunk:
        """A chunk this agent owns, for another agent of its zone (rule 5).

        Raises:
            NotFound: the object is gone. StorageUnavailable: the GET failed.
        """
        return await self._cache.serve_chunk(key, index)

    async def _from_owner(self, key: str, index: int) -> Chunk | None:
        """The chunk from its owner in the zone, or None: read the store (rule 5)."""
        owner = self.membership.owner(key, index)
        now = self._clock.monotonic_s()
        if self._peers is None or owner is None or owner == self.node_id:
            return None
        if self._suspects.get(owner, 0.0) > now:
            return None
        timeout_s = self.settings.cache_peer_timeout_ms / 1000
        try:
            return await asyncio.wait_for(self._peers.fetch_chunk(owner, key, index), timeout_s)
        except NotFound:
            raise
        except Exception as exc:  # a dead, restarting or slow owner: read the store
            self._peer_timeouts += 1
            self._suspects[owner] = now + SUSPECT_S
            log.info(
                "agent-%d: owner agent-%d of %s#%d failed: %r", self.node_id, owner, key, index, exc
            )
            return None

    # --------------------------------------------------------------- write path
    async def produce(
        self,
        entries: Sequence[tuple[str, int, bytes | memoryview]],
        acks: int = -1,
        *,
        session: str | None = None,
        seq: int = 0,
    ) -> list[BatchResult]:
        """Buffer batches until the next flush; answer with their base offsets.

        Entries are taken in (buffered) before this coroutine first suspends, so one
        Kafka connection's requests are sequenced in the order they were sent.

        Args:
            entries: ``(topic, partition, RecordBatch v2 bytes)``, one batch each.
            acks: 0 answers at once with an empty list (fire and forget); 1 and -1 wait
                for the durable metadata commit.
            session / seq: a caller that pipelines calls across Ray numbers them 0, 1,
                2, ... under one session id; each call waits until its predecessor is
                buffered (``CallOrder``), since Ray does not keep submission order.

        Returns:
            One BatchResult per entry, in order. Entries that fail validation carry
            RecordTooLarge or CorruptData without holding up other partitions.
        """
        if session is None:
            return await self._writer.write(entries, acks)
        late = await self._order.wait_turn(session, seq)
        if late is not None:
            return [BatchResult(base_offset=-1, error=late) for _ in entries]
        try:
            waiter = self._writer.write(entries, acks)
        finally:
            self._order.next_turn(session, seq)
        return await waiter

    async def warm_up(self) -> None:
        """Run the segment builder once now, so the first flush does not pay pyarrow's
        first-call cost (measured ~0.45 s here: it was the p99 of a fresh agent's
        latency at 500 records/s)."""
        await asyncio.to_thread(build_segment, [_WARM_UP_BATCH])

    async def drain(self) -> None:
        """Flush what is buffered and wait for every flush in flight."""
        await self._writer.drain()

    async def close(self) -> None:
        """``drain``, then stop the background catalog watch."""
        await self.drain()
        self._closed = True
        await self.membership.close()
        await self.acls.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _commit(self, requests: list[CommitRequest]) -> CommitAnswer:
        started, outcome = self._clock.monotonic_s(), "error"
        try:
            answer = await self.meta.commit(requests)
            outcome = "ok"
        finally:
            self._meter.count("ray_stream_commit_calls", outcome=outcome)
            latency_ms = (self._clock.monotonic_s() - started) * 1000
            self._meter.observe("ray_stream_commit_latency_ms", latency_ms)
        if self._locations.observe_version(answer.catalog_version):
            if len(self._current_commits) > 4096:  # commits that failed later: forget
                self._current_commits.clear()
            self._current_commits.update(r.segment_key for r in requests)
        return answer

    def _learn_commit(self, request: CommitRequest, results: Sequence[BatchResult]) -> None:
        """Remember where the batches just committed live (``LocationCache``), unless
        the answer came from an older catalog than the one the cache now holds."""
        if request.segment_key not in self._current_commits:
            return
        self._current_commits.discard(request.segment_key)
        if self._locations.version is None:
            return  # emptied since (the catalog watch failed): nothing is known current
        cols = request.batches
        learned: dict[tuple[str, int], tuple[list[BatchRef], int]] = {}
        for i, result in enumerate(results):
            if result.error is not None or result.duplicate:
                continue  # a duplicate lives in an earlier segment, not this one
            key = (cols.topics[cols.topic_index[i]], cols.partition[i])
            refs, _ = learned.get(key, ([], 0))
            ref = BatchRef(
                request.segment_key,
                cols.position[i],
                cols.length[i],
                result.base_offset,
                cols.record_count[i],
                cols.max_timestamp[i],
            )
            refs.append(ref)
            learned[key] = (refs, result.log_start_offset)
        for (topic, partition), (refs, log_start) in learned.items():
            self._locations.learn(
                topic, partition, refs, high_watermark=0, log_start_offset=log_start
            )
        self._watch_catalog()

    # ---------------------------------------------------------------- read path
    async def fetch(
        self,
        requests: Sequence[FetchRequest],
        *,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
        client_zone: str | None = None,
    ) -> list[FetchResult]:
        """Read batches from the given offsets, waiting up to ``max_wait_ms`` for data.

        Args:
            requests: ``(topic, partition, offset, partition_max_bytes)``.
            max_wait_ms: long-poll bound when fewer than ``min_bytes`` are available;
                the metadata service answers as soon as commits bring enough.
            min_bytes: answer as soon as this many bytes are available.
            max_bytes: soft bound on the whole answer (the first batch always comes).
            client_zone: the zone the client named, for the cross-zone byte count.

        Returns:
            One FetchResult per request, in order.
        """
        self._fetches += 1
        started = self._clock.monotonic_s()
        slots = [_Slot(t, p, o, pmax) for t, p, o, pmax in requests]
        for slot in slots:
            self._use(slot, self._locations.lookup(*_position(slot)))
        known = self._locations.version  # the catalog the cached answers belong to
        misses = [slot for slot in slots if not slot.refs]
        if misses:
            cached = sum(ref.length for slot in slots for ref in slot.refs)
            wait_ms = max_wait_ms if cached < min_bytes else 0
            version = await self._locate(misses, wait_ms=wait_ms, min_bytes=min_bytes - cached)
            stale = [slot for slot in slots if slot.cached] if version != known else []
            if stale:  # a topic was deleted since the cache learned these (rule 1)
                await self._locate(stale, wait_ms=0, min_bytes=1)
        results = await self._read(slots, max_bytes)
        served = sum(len(r.records) for r in results)
        self._served_bytes += served
        if (
            client_zone
            and client_zone != self.record.zone
            and client_zone in self.membership.zones()
        ):
            self._cross_zone_bytes += served  # an unknown zone is no zone (core/fleet.py)
        if self._meter.enabled:
            self._count_fetched(slots, results, started)
        return results

    def _count_fetched(
        self, slots: list[_Slot], results: list[FetchResult], started: float
    ) -> None:
        """One fetch's latency, and its bytes and records by topic."""
        self._meter.observe(
            "ray_stream_fetch_latency_ms", (self._clock.monotonic_s() - started) * 1000
        )
        by_topic: dict[str, list[int]] = {}
        for slot, result in zip(slots, results, strict=True):
            if result.records:
                sums = by_topic.setdefault(slot.topic, [0, 0])
                sums[0] += len(result.records)
                sums[1] += slot.records_read
        for topic, (size, records) in by_topic.items():
            self._meter.count("ray_stream_fetched_bytes", size, topic=topic)
            self._meter.count("ray_stream_fetched_records", records, topic=topic)

    def _use(self, slot: _Slot, hit: Hit | None) -> None:
        if hit is not None:
            slot.refs, slot.cached = hit.refs, True
            slot.high_watermark, slot.log_start_offset = hit.high_watermark, hit.log_start_offset

    async def _locate(self, slots: list[_Slot], *, wait_ms: int, min_bytes: int) -> int:
        """Fill ``slots`` from one ``locate`` call; the answer's catalog version."""
        request = LocateRequest(
            tuple(_position(s) for s in slots),
            wait_ms=wait_ms,
            min_bytes=max(min_bytes, 0),
        )
        self._locates += 1
        answer = await self.meta.locate(request)
        current = self._locations.observe_version(answer.catalog_version)
        self._absorb(slots, answer, learn=current)
        return answer.catalog_version

    def _watch_catalog(self) -> None:
        """Start the catalog watch (rule 2) unless it runs (or the service is closed)."""
        if not self._closed and (self._watcher is None or self._watcher.done()):
            loop = asyncio.get_running_loop()
            self._watcher = loop.create_task(self._watch_loop(), name="catalog-watch")

    async def _watch_loop(self) -> None:
        backoff = Backoff(rand=self._rand)
        while True:
            known = self._locations.version
            try:
                version = await self.meta.watch_catalog(
                    -1 if known is None else known, CATALOG_WATCH_S
                )
            except Exception as exc:  # loop boundary: the metadata service is away
                self._locations.clear()  # nothing is known to be current any more
                log.info("catalog watch failed, retrying: %s", exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff = Backoff(rand=self._rand)
            self._locations.observe_version(version)

    def _absorb(self, slots: list[_Slot], answer: LocateAnswer, *, learn: bool) -> None:
        for i, slot in enumerate(slots):
            slot.cached = False
            error = answer.errors.get(i)
            if error is not None:
                slot.error, slot.refs = error, ()
                continue
            slot.refs = answer.batches(i)
            slot.high_watermark = answer.high_watermark[i]
            slot.log_start_offset = answer.log_start_offset[i]
            if not learn:
                continue
            self._locations.learn(
                slot.topic,
                slot.partition,
                slot.refs,
                high_watermark=slot.high_watermark,
                log_start_offset=slot.log_start_offset,
            )
        self._watch_catalog()

    async def _read(self, slots: list[_Slot], max_bytes: int) -> list[FetchResult]:
        results: list[FetchResult] = []
        budget = max_bytes
        for slot in slots:
            if slot.error is not None:
                results.append(FetchResult(slot.topic, slot.partition, slot.error, -1, -1))
                continue
            chosen: list[BatchRef] = []
            for ref in slot.refs if budget > 0 else ():
                if chosen and ref.length > budget:
                    break
                chosen.append(ref)
                budget -= ref.length
            try:
                data = await self._cache.read_batches(chosen)
                slot.records_read = sum(ref.record_count for ref in chosen)
            except (StorageUnavailable, NotFound) as exc:  # rule 3
                self._locations.forget(slot.topic, slot.partition)
                results.append(FetchResult(slot.topic, slot.partition, exc, -1, -1))
                continue
            results.append(
                FetchResult(
                    slot.topic,
                    slot.partition,
                    None,
                    slot.high_watermark,
                    slot.log_start_offset,
                    data,
                )
            )
        return results

    # -------------------------------------------------------------------- stats
    def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """Counters of the write and read paths; write-stage latencies over the last
        ``window_s`` seconds (default: the latest 8192 of each stage)."""
        cache, locations = self._cache, self._locations
        return {
            **self._writer.report(window_s),
            "agent_id": self.node_id,
            "listener": f"{self.address.host}:{self.address.port}" if self.address else "",
            "zone": self.record.zone,
            "group": self.record.group,
            "gets": cache.gets,
            "get_bytes": cache.get_bytes,
            "peer_chunks": cache.peer_chunks,
            "peer_bytes": cache.peer_bytes,
            "served_chunks": cache.served_chunks,
            "served_bytes": cache.served_bytes,
            "peer_failures": self._peer_timeouts,
            "client_bytes": self._served_bytes,
            "cross_zone_bytes": self._cross_zone_bytes,
            "ring": self.membership.ring(),
            "fetches": self._fetches,
            "locates": self._locates,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_bytes": cache.size_bytes,
            "location_hits": locations.hits,
            "location_misses": locations.misses,
            "locations": len(locations),
        }


def _agent_tags(settings: Settings, record: AgentRecord) -> dict[str, str]:
    return {
        "ray_namespace": settings.namespace,
        "agent_id": str(record.agent_id),
        "zone": record.zone,
        "group": record.group,
    }


def _position(slot: _Slot) -> tuple[str, int, int, int]:
    return slot.topic, slot.partition, slot.offset, slot.max_bytes
