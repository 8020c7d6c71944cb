"""ChunkCache: one GET per chunk however many readers, and no reader left hanging."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ray_stream.agent.chunk_cache import CHUNK_BYTES, ChunkCache
from ray_stream.core.types import BatchRef


def test_chunk_cache_concurrent_readers_share_one_get():
    gets: list[tuple[str, int, int]] = []

    def get_range(key: str, start: int, length: int) -> bytes:
        gets.append((key, start, length))
        return bytes(range(256)) * 4

    async def scenario() -> list[bytearray]:
        cache = ChunkCache(get_range, capacity_bytes=1 << 20)
        ref = BatchRef("segments/a.arrow", 100, 61 + 10, 7, 1, 0)
        return await asyncio.gather(*(cache.read_batches([ref]) for _ in range(5)))

    answers = asyncio.run(scenario())
    assert len(gets) == 1
    assert all(a == answers[0] for a in answers)
    assert int.from_bytes(answers[0][:8], "big") == 7  # the base offset, patched in place


def test_chunk_cache_a_cancelled_reader_leaves_the_load_running_for_the_others():
    release = threading.Event()
    gets = []

    def slow_get_range(key: str, start: int, length: int) -> bytes:
        gets.append(key)
        release.wait(5)
        return b"\x00" * 200

    async def scenario() -> tuple[bool, bytearray]:
        cache = ChunkCache(slow_get_range, capacity_bytes=1 << 20)
        ref = BatchRef("segments/a.arrow", 0, 100, 0, 1, 0)
        first = asyncio.create_task(cache.read_batches([ref]))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(cache.read_batches([ref]))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        release.set()
        answer = await asyncio.wait_for(second, 3)
        return first.cancelled(), answer

    first_cancelled, answer = asyncio.run(scenario())
    assert first_cancelled
    assert len(answer) == 100  # the second reader got the data, not an error
    assert gets == ["segments/a.arrow"]  # from the one GET the first reader started


def test_chunk_cache_keeps_a_small_object_whole_and_copies_a_large_ones_chunks():
    cache = ChunkCache(lambda *a: pytest.fail("no GET expected"), capacity_bytes=1 << 30)
    small = memoryview(b"s" * 100)
    cache.put_object("segments/small.arrow", small)
    cache.put_object("segments/big.arrow", memoryview(b"b" * (CHUNK_BYTES + 10)))
    assert cache.size_bytes == 100 + CHUNK_BYTES + 10

    async def read() -> bytearray:
        ref = BatchRef("segments/big.arrow", CHUNK_BYTES - 20, 30, 3, 1, 0)
        return await cache.read_batches([ref])

    got = asyncio.run(read())
    assert bytes(got[8:]) == b"b" * 22  # across the chunk boundary
