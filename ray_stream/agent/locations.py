"""LocationCache: where batches live, as this agent learned it, so most fetches cost the
metadata service nothing.

An agent learns batch locations from two answers: its own commits (the batches it just
wrote, with the offsets the sequencer gave them) and the ``locate`` calls of its
fetches. A later fetch whose offsets fall inside what it learned is served without
asking the metadata service, the one component that cannot scale out (the seed
article's agents cache file metadata the same way).

Rules this module keeps:

1. **Only committed batches.** Entries come from durable commit answers and locate
   answers; a batch location never changes while its file lives, so an entry is never
   wrong, only possibly gone.
2. **Contiguous answers only.** A lookup returns batches from the asked offset on while
   each starts right after the previous one ends; a gap (batches another agent wrote
   that this one never learned) ends the answer there, and a lookup at an offset that is
   not covered misses.
3. **A miss at the end.** An offset at or past the highest offset learned for a
   partition always misses: only the metadata service knows what was written since.
4. **Bounded and recent.** At most ``max_refs`` locations across partitions (least
   recently used partitions go first) and ``max_refs_per_partition`` per partition (the
   oldest go first); a location older than ``ttl_s`` is not served, so files replaced
   by compaction are never read past their grace period (which must exceed ``ttl_s``).
   Locations are kept as plain tuples of ints and a str, which CPython's collector
   stops tracking: a full cache adds nothing to garbage-collection pauses.
5. **Catalog versions.** A commit, locate or catalog-watch answer with a different
   ``catalog_version`` (a topic was deleted, or the metadata service restarted) empties
   the cache: a recreated topic reuses offsets.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ray_stream.clock import Clock
from ray_stream.core.types import BatchRef

__all__ = ["Hit", "LocationCache"]

LOCATION_TTL_S = 30.0
MAX_REFS = 200_000  # ~150 bytes each: ~30 MiB per agent at most
MAX_REFS_PER_PARTITION = 20_000


@dataclass(frozen=True, slots=True)
class Hit:
    """A lookup's answer: batches from the asked offset on, and what is known of the
    partition (its high watermark as last learned, and its log start offset)."""

    refs: tuple[BatchRef, ...]
    high_watermark: int
    log_start_offset: int


# (segment_key, position, length, base_offset, record_count, max_timestamp, learned_s)
_Entry = tuple[str, int, int, int, int, int, float]


@dataclass(slots=True)
class _Partition:
    bases: list[int] = field(default_factory=list)  # sorted base offsets
    refs: dict[int, _Entry] = field(default_factory=dict)  # base offset -> entry
    high_watermark: int = 0
    log_start_offset: int = 0


class LocationCache:
    """Batch locations learned from commits and locates (see the module doc).

    Args:
        clock: monotonic time for ``ttl_s``.
        ttl_s / max_refs / max_refs_per_partition: the bounds of rule 4.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        ttl_s: float = LOCATION_TTL_S,
        max_refs: int = MAX_REFS,
        max_refs_per_partition: int = MAX_REFS_PER_PARTITION,
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_refs = max_refs
        self._max_per_partition = max_refs_per_partition
        self._parts: OrderedDict[tuple[str, int], _Partition] = OrderedDict()
        self._size = 0
        self._version: int | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    @property
    def version(self) -> int | None:
        """The catalog version the cached locations belong to (None: none seen yet)."""
        return self._version

    def observe_version(self, catalog_version: int) -> bool:
        """Note an answer's catalog version (rule 5).

        Versions only grow (``epoch << 32`` plus deletions), and Ray does not keep
        answers in order: an older version than the one known is ignored, a newer one
        empties the cache.

        Returns:
            True when ``catalog_version`` is the cache's version afterwards, so what the
            answer says may be learned; False for an answer older than what is known.
        """
        if self._version is not None and catalog_version < self._version:
            return False
        if catalog_version != self._version:
            self._parts.clear()
            self._size = 0
            self._version = catalog_version
        return True

    def learn(
        self,
        topic: str,
        partition: int,
        refs: Iterable[BatchRef],
        *,
        high_watermark: int,
        log_start_offset: int,
    ) -> None:
        """Remember committed batches of one partition and what is known of it."""
        key = (topic, partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = _Partition()
        self._parts.move_to_end(key)
        now = self._clock.monotonic_s()
        for ref in refs:
            if ref.base_offset not in part.refs:
                insort(part.bases, ref.base_offset)
                self._size += 1
            part.refs[ref.base_offset] = (
                ref.segment_key,
                ref.position,
                ref.length,
                ref.base_offset,
                ref.record_count,
                ref.max_timestamp,
                now,
            )
            high_watermark = max(high_watermark, ref.last_offset + 1)
        part.high_watermark = max(part.high_watermark, high_watermark)
        part.log_start_offset = max(part.log_start_offset, log_start_offset)
        self._trim(part)

    def lookup(self, topic: str, partition: int, offset: int, max_bytes: int) -> Hit | None:
        """Batches holding ``offset`` and the contiguous ones after it, up to
        ``max_bytes`` (at least one); None when the cache cannot answer (rules 2-4)."""
        part = self._parts.get((topic, partition))
        if part is None or not part.log_start_offset <= offset < part.high_watermark:
            self.misses += 1
            return None
        oldest = self._clock.monotonic_s() - self._ttl_s
        i = bisect_right(part.bases, offset) - 1
        found: list[BatchRef] = []
        total = 0
        expected = offset
        while 0 <= i < len(part.bases):
            key, position, length, base, count, max_ts, learned = part.refs[part.bases[i]]
            fits = not found or total + length <= max_bytes
            if learned < oldest or not fits or not base <= expected < base + count:
                break
            found.append(BatchRef(key, position, length, base, count, max_ts))
            total += length
            expected = base + count
            i += 1
        if not found:
            self.misses += 1
            return None
        self._parts.move_to_end((topic, partition))
        self.hits += 1
        return Hit(tuple(found), part.high_watermark, part.log_start_offset)

    def clear(self) -> None:
        """Forget everything (the catalog version is unknown again)."""
        self._parts.clear()
        self._size = 0
        self._version = None

    def forget(self, topic: str, partition: int) -> None:
        """Drop what is known of one partition (a read of its batches failed)."""
        part = self._parts.pop((topic, partition), None)
        if part is not None:
            self._size -= len(part.bases)

    def _trim(self, part: _Partition) -> None:
        excess = len(part.bases) - self._max_per_partition
        if excess > 0:
            for base in part.bases[:excess]:
                del part.refs[base]
            del part.bases[:excess]
            self._size -= excess
        while self._size > self._max_refs and len(self._parts) > 1:
            _, evicted = self._parts.popitem(last=False)
            self._size -= len(evicted.bases)
