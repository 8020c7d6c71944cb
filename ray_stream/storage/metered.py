"""``MeteredStore``: an ``ObjectStore`` wrapper that counts requests and bytes.

Every call is one request of its operation (``put``, ``get``, ``list``, ``delete``,
``size``; a ranged GET is a ``get``), counted when it is made, whether it then succeeds
or fails: the object store bills failed requests too. Bytes are counted for puts and
gets that succeeded. The counts go to ``ray_stream_object_store_requests`` and
``ray_stream_object_store_bytes`` (core/metrics.py) with the meter's tags.

It changes nothing else: errors, preconditions and results pass through untouched.
"""

from __future__ import annotations

from ray_stream.core.metrics import Meter
from ray_stream.storage.base import ObjectStore

__all__ = ["MeteredStore"]

REQUESTS = "ray_stream_object_store_requests"
BYTES = "ray_stream_object_store_bytes"


class MeteredStore:
    """Counts ``inner``'s requests and bytes through ``meter`` (see the module doc)."""

    def __init__(self, inner: ObjectStore, meter: Meter) -> None:
        self.inner = inner
        self.url = inner.url
        self._meter = meter

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        self._meter.count(REQUESTS, operation="put")
        self.inner.put(key, data, if_none_match=if_none_match)
        self._meter.count(BYTES, len(data), operation="put")

    def get(self, key: str) -> bytes:
        self._meter.count(REQUESTS, operation="get")
        data = self.inner.get(key)
        self._meter.count(BYTES, len(data), operation="get")
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._meter.count(REQUESTS, operation="get")
        data = self.inner.get_range(key, start, length)
        self._meter.count(BYTES, len(data), operation="get")
        return data

    def size(self, key: str) -> int:
        self._meter.count(REQUESTS, operation="size")
        return self.inner.size(key)

    def list(self, prefix: str = "") -> list[str]:
        self._meter.count(REQUESTS, operation="list")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._meter.count(REQUESTS, operation="delete")
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
