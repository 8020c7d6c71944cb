from __future__ import annotations

from ray_stream.core.lru import ByteLRU


def test_lru_evicts_least_recent_by_bytes():
    lru = ByteLRU(10)
    lru.put("a", b"1234")
    lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # a is now most recent
    lru.put("c", b"1234")  # 12 bytes > 10: evict b
    assert lru.get("b") is None
    assert lru.get("a") == b"1234" and lru.get("c") == b"1234"
    assert lru.size_bytes == 8


def test_lru_skips_values_larger_than_the_bound():
    lru = ByteLRU(3)
    lru.put("big", b"1234")
    assert lru.get("big") is None and lru.size_bytes == 0
