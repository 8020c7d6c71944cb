"""LocationCache: what an agent knows of where batches live (pure, ManualClock)."""

from __future__ import annotations

from ray_stream.agent.locations import LocationCache
from ray_stream.clock import ManualClock
from ray_stream.core.types import BatchRef


def ref(base: int, count: int = 10, length: int = 100, key: str = "segments/a.arrow") -> BatchRef:
    return BatchRef(key, base * 7, length, base, count, 1000 + base)


def cache(clock: ManualClock | None = None, **kwargs) -> LocationCache:
    return LocationCache(clock or ManualClock(), **kwargs)


def test_locations_lookup_returns_the_batch_holding_the_offset_and_contiguous_ones():
    c = cache()
    c.learn("t", 0, [ref(0), ref(10), ref(20)], high_watermark=30, log_start_offset=0)
    hit = c.lookup("t", 0, 15, 1 << 20)
    assert hit is not None
    assert [r.base_offset for r in hit.refs] == [10, 20]
    assert (hit.high_watermark, hit.log_start_offset) == (30, 0)


def test_locations_a_gap_ends_the_answer_and_an_uncovered_offset_misses():
    c = cache()
    # another agent wrote 10..19: this one never learned it
    c.learn("t", 0, [ref(0), ref(20)], high_watermark=0, log_start_offset=0)
    first = c.lookup("t", 0, 3, 1 << 20)
    assert first is not None
    assert [r.base_offset for r in first.refs] == [0]
    assert c.lookup("t", 0, 12, 1 << 20) is None


def test_locations_the_offset_at_the_end_always_misses():
    c = cache()
    c.learn("t", 0, [ref(0)], high_watermark=0, log_start_offset=0)
    assert c.lookup("t", 0, 10, 1 << 20) is None  # only the metadata knows what came since
    assert c.lookup("t", 1, 0, 1 << 20) is None  # a partition never learned


def test_locations_max_bytes_bounds_the_answer_but_one_batch_always_comes():
    c = cache()
    c.learn("t", 0, [ref(0), ref(10), ref(20)], high_watermark=30, log_start_offset=0)
    one = c.lookup("t", 0, 0, 1)
    assert one is not None and len(one.refs) == 1
    two = c.lookup("t", 0, 0, 250)
    assert two is not None and len(two.refs) == 2


def test_locations_an_offset_below_the_log_start_misses():
    c = cache()
    c.learn("t", 0, [ref(0), ref(10)], high_watermark=20, log_start_offset=10)
    assert c.lookup("t", 0, 5, 1 << 20) is None
    assert c.lookup("t", 0, 10, 1 << 20) is not None


def test_locations_older_than_the_ttl_are_not_served():
    clock = ManualClock()
    c = cache(clock, ttl_s=30)
    c.learn("t", 0, [ref(0)], high_watermark=10, log_start_offset=0)
    clock.advance(29)
    assert c.lookup("t", 0, 0, 1 << 20) is not None
    clock.advance(2)
    assert c.lookup("t", 0, 0, 1 << 20) is None


def test_locations_a_new_catalog_version_empties_the_cache():
    c = cache()
    assert c.observe_version(7) is True  # the first version seen: learn from it
    c.learn("t", 0, [ref(0)], high_watermark=10, log_start_offset=0)
    assert c.observe_version(7) is True
    assert c.lookup("t", 0, 0, 1 << 20) is not None
    assert c.observe_version(8) is True  # a topic was deleted: offsets may be reused
    assert c.lookup("t", 0, 0, 1 << 20) is None
    assert (len(c), c.version) == (0, 8)


def test_locations_an_answer_from_an_older_catalog_is_ignored():
    """Ray does not keep answers in order: a late answer from before a deletion must
    neither empty the cache nor move its version back."""
    c = cache()
    c.observe_version(8)
    c.learn("t", 0, [ref(0)], high_watermark=10, log_start_offset=0)
    assert c.observe_version(7) is False  # the caller must not learn from that answer
    assert c.version == 8
    assert c.lookup("t", 0, 0, 1 << 20) is not None


def test_locations_are_bounded_per_partition_and_overall():
    c = cache(max_refs=25, max_refs_per_partition=10)
    c.learn("t", 0, [ref(i * 10) for i in range(15)], high_watermark=0, log_start_offset=0)
    assert len(c) == 10
    assert c.lookup("t", 0, 0, 1 << 20) is None  # the oldest went first
    assert c.lookup("t", 0, 140, 1 << 20) is not None
    c.learn("t", 1, [ref(i * 10) for i in range(10)], high_watermark=0, log_start_offset=0)
    c.learn("t", 2, [ref(i * 10) for i in range(10)], high_watermark=0, log_start_offset=0)
    assert len(c) <= 25
    assert c.lookup("t", 2, 0, 1 << 20) is not None  # the newest partition stays
    assert c.lookup("t", 0, 140, 1 << 20) is None  # the least recently used went


def test_locations_forget_drops_one_partition():
    c = cache()
    c.learn("t", 0, [ref(0)], high_watermark=10, log_start_offset=0)
    c.learn("t", 1, [ref(0)], high_watermark=10, log_start_offset=0)
    c.forget("t", 0)
    assert c.lookup("t", 0, 0, 1 << 20) is None
    assert c.lookup("t", 1, 0, 1 << 20) is not None
    assert len(c) == 1
