"""An in-process ``ObjectStore`` over a dict, for unit tests and single-process dev.

Invariants: every operation holds one lock, so create-only puts are atomic and readers never
see a partial object; stored values are immutable ``bytes`` copies (a caller mutating the
``bytearray`` it passed changes nothing). Nothing is durable beyond the process, and two
processes never share a ``MemoryStore`` (``memory://name`` shares one per process only).
"""

from __future__ import annotations

import threading

from ray_stream.errors import NotFound, PreconditionFailed
from ray_stream.storage.base import check_range, validate_key

__all__ = ["MemoryStore"]


class MemoryStore:
    """Thread-safe dict-backed object store."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        validate_key(key)
        body = bytes(data)
        with self._lock:
            if if_none_match and key in self._objects:
                raise PreconditionFailed(f"object {key!r} already exists (create-only put)")
            self._objects[key] = body

    def get(self, key: str) -> bytes:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise NotFound(f"object {key!r} not found in {self.url}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(key, start, length)
        return self.get(key)[start : start + length]

    def size(self, key: str) -> int:
        return len(self.get(key))

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def close(self) -> None:
        """Nothing to release; the objects stay readable (tests reopen by URL)."""
