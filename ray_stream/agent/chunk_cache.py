"""ChunkCache: an agent's read path into segment objects, in fixed-size chunks.

Segment data is read in ``CHUNK_BYTES`` chunks (DESIGN.md: 16 MiB) kept in a byte-bounded
LRU. Objects are immutable, so a cached chunk is never invalidated.

Rules this module keeps:

1. **One GET per chunk, however many readers**: concurrent misses for one chunk share
   the GET in flight.
2. **Write-through**: the agent that PUT a segment caches it, so readers of fresh data
   cost the object store nothing.
3. **Batches leave with their committed base offset** (bytes 0-8, outside the CRC); no
   other byte is touched.
4. **One copy per read**: a fetch's batches are copied once, from the cached chunks
   into the answer's buffer, and their base offsets are patched in place there.
5. A committed range longer than its object is a storage fault (StorageUnavailable),
   never silently short data.
6. **Shared per zone** (docs/design/0004-agent-fleet.md): a miss first asks ``remote``
   (the chunk's owner in the zone), which answers None when this agent should read the
   store itself (it owns the chunk, or the owner failed or was slow). What the owner
   serves (``serve_chunk``) always comes from its LRU or the store, never from another
   peer, so two agents that disagree about the owner cannot wait on each other.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Sequence

from ray_stream.core.lru import ByteLRU
from ray_stream.core.metrics import Meter
from ray_stream.core.types import BatchRef
from ray_stream.errors import StorageUnavailable

CHUNK_BYTES = 16 * 1024 * 1024  # cache unit, as DESIGN.md: one GET per chunk however many readers
_BASE_OFFSET = struct.Struct(">q")  # RecordBatch v2 bytes 0-8, before the CRC-covered range

GetRange = Callable[[str, int, int], bytes]  # (key, start, length) -> bytes, blocking
Chunk = bytes | memoryview
Remote = Callable[[str, int], Awaitable[Chunk | None]]  # (key, index) -> chunk, or None


class ChunkCache:
    """Reads committed batches through a chunk cache (see the module doc).

    Args:
        get_range: the object store's blocking ranged GET (run in a thread).
        capacity_bytes: the cache's size bound.
        remote: where a miss is asked first (rule 6); None: the store only.
        meter: where hits, misses and chunks moved between peers are reported, one
            report per chunk (default: nowhere).
    """

    def __init__(
        self,
        get_range: GetRange,
        *,
        capacity_bytes: int,
        remote: Remote | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._get_range = get_range
        self._meter = meter if meter is not None else Meter()
        self._remote = remote
        self._lru = ByteLRU(capacity_bytes)
        self._inflight: dict[tuple[str, int], asyncio.Task[Chunk]] = {}  # any source
        self._inflight_store: dict[tuple[str, int], asyncio.Task[Chunk]] = {}
        self.gets = 0
        self.get_bytes = 0
        self.peer_chunks = 0  # chunks this agent got from their owner
        self.peer_bytes = 0
        self.served_chunks = 0  # chunks this agent served to the others of its zone
        self.served_bytes = 0

    @property
    def hits(self) -> int:
        return self._lru.hits

    @property
    def misses(self) -> int:
        return self._lru.misses

    @property
    def size_bytes(self) -> int:
        return self._lru.size_bytes

    async def read_batches(self, refs: Sequence[BatchRef]) -> bytearray:
        """The batches of ``refs``, concatenated, each with its base offset rewritten.

        Raises:
            StorageUnavailable: a GET failed, or an object is shorter than its range.
        """
        out = bytearray(sum(ref.length for ref in refs))
        view = memoryview(out)
        at = 0
        for ref in refs:
            await self._copy(ref.segment_key, ref.position, view[at : at + ref.length])
            _BASE_OFFSET.pack_into(out, at, ref.base_offset)
            at += ref.length
        return out

    async def _copy(self, key: str, start: int, dest: memoryview) -> None:
        """Fill ``dest`` with the object's bytes from ``start`` on (rule 4)."""
        end = start + len(dest)
        for index in range(start // CHUNK_BYTES, (end - 1) // CHUNK_BYTES + 1):
            chunk = await self._chunk(key, index)
            base = index * CHUNK_BYTES
            lo, hi = max(start, base) - base, min(end, base + CHUNK_BYTES) - base
            if hi > len(chunk):
                raise StorageUnavailable(
                    f"object {key} is shorter than the committed range {start}+{len(dest)}"
                )
            dest[lo + base - start : hi + base - start] = memoryview(chunk)[lo:hi]

    def put_object(self, key: str, body: bytes | memoryview) -> None:
        """Cache a whole object just written (rule 2).

        An object of one chunk is kept as it is (no copy). A larger one (segments grow
        past ``CHUNK_BYTES`` under backlog) is cut into copies: a view of one chunk would
        keep the whole object's buffer alive while the LRU counts only the chunk.
        """
        view = memoryview(body)
        if len(view) <= CHUNK_BYTES:
            self._lru.put((key, 0), view)
            return
        for index in range((len(view) + CHUNK_BYTES - 1) // CHUNK_BYTES):
            chunk = view[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
            self._lru.put((key, index), bytes(chunk))

    async def serve_chunk(self, key: str, index: int) -> Chunk:
        """A chunk for another agent of the zone: from the LRU or the store (rule 6)."""
        chunk = self._lru.get((key, index))
        self._count_lookup(chunk is not None)
        if chunk is None:
            chunk = await self._shared(self._inflight_store, key, index, self._load_store)
        self.served_chunks += 1
        self.served_bytes += len(chunk)
        self._meter.count("ray_stream_peer_chunks", direction="served")
        self._meter.count("ray_stream_peer_bytes", len(chunk), direction="served")
        return chunk

    async def _chunk(self, key: str, index: int) -> Chunk:
        cached = self._lru.get((key, index))
        self._count_lookup(cached is not None)
        if cached is not None:
            return cached
        return await self._shared(self._inflight, key, index, self._load)

    def _count_lookup(self, hit: bool) -> None:
        self._meter.count("ray_stream_cache_hits" if hit else "ray_stream_cache_misses")

    async def _load(self, key: str, index: int) -> Chunk:
        if self._remote is not None:
            chunk = await self._remote(key, index)
            if chunk is not None:
                self.peer_chunks += 1
                self.peer_bytes += len(chunk)
                self._meter.count("ray_stream_peer_chunks", direction="received")
                self._meter.count("ray_stream_peer_bytes", len(chunk), direction="received")
                self._lru.put((key, index), chunk)
                return chunk
        return await self._shared(self._inflight_store, key, index, self._load_store)

    async def _load_store(self, key: str, index: int) -> Chunk:
        data = await asyncio.to_thread(self._get_range, key, index * CHUNK_BYTES, CHUNK_BYTES)
        self.gets += 1
        self.get_bytes += len(data)
        self._lru.put((key, index), data)
        return data

    @staticmethod
    async def _shared(
        inflight: dict[tuple[str, int], asyncio.Task[Chunk]],
        key: str,
        index: int,
        load: Callable[[str, int], Awaitable[Chunk]],
    ) -> Chunk:
        """``load(key, index)`` once for every concurrent caller (rule 1). The load is
        a task of its own: a caller that is cancelled (its client went away) leaves it
        running for the others."""
        task = inflight.get((key, index))
        if task is None:
            task = asyncio.ensure_future(load(key, index))
            inflight[(key, index)] = task

            def forget(done: asyncio.Task[Chunk]) -> None:
                if inflight.get((key, index)) is done:
                    del inflight[(key, index)]
                if not done.cancelled():
                    done.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(forget)
        return await asyncio.shield(task)
