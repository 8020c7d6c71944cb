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
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence

from ray_stream.core.lru import ByteLRU
from ray_stream.core.types import BatchRef
from ray_stream.errors import StorageUnavailable

CHUNK_BYTES = 16 * 1024 * 1024  # cache unit, as DESIGN.md: one GET per chunk however many readers
_BASE_OFFSET = struct.Struct(">q")  # RecordBatch v2 bytes 0-8, before the CRC-covered range

GetRange = Callable[[str, int, int], bytes]  # (key, start, length) -> bytes, blocking


class ChunkCache:
    """Reads committed batches through a chunk cache (see the module doc).

    Args:
        get_range: the object store's blocking ranged GET (run in a thread).
        capacity_bytes: the cache's size bound.
    """

    def __init__(self, get_range: GetRange, *, capacity_bytes: int) -> None:
        self._get_range = get_range
        self._lru = ByteLRU(capacity_bytes)
        self._inflight: dict[tuple[str, int], asyncio.Future[bytes | memoryview]] = {}
        self.gets = 0
        self.get_bytes = 0

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

    async def _chunk(self, key: str, index: int) -> bytes | memoryview:
        cached = self._lru.get((key, index))
        if cached is not None:
            return cached
        inflight = self._inflight.get((key, index))
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[bytes | memoryview] = asyncio.get_running_loop().create_future()
        self._inflight[(key, index)] = future
        try:
            data = await asyncio.to_thread(self._get_range, key, index * CHUNK_BYTES, CHUNK_BYTES)
            self.gets += 1
            self.get_bytes += len(data)
            self._lru.put((key, index), data)
            future.set_result(data)
            return data
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved for when no other reader waits
            raise
        finally:
            if not future.done():  # this reader was cancelled: release the others
                future.set_exception(StorageUnavailable(f"read of {key} was cancelled"))
                future.exception()
            del self._inflight[(key, index)]
