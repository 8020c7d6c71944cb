"""A byte-bounded LRU map for immutable blobs (segment chunks).

Keys name immutable objects, so entries are never invalidated, only evicted. The bound
is on the sum of value lengths; a value larger than the whole bound is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ByteLRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes | memoryview] = OrderedDict()
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | memoryview | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: bytes | memoryview) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old)
        self._items[key] = value
        self.size_bytes += len(value)
        while self.size_bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size_bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._items)
