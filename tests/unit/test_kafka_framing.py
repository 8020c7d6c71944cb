"""Kafka framing: the length prefix check, and frames read whole from an arbitrarily
split byte stream by the server's reader (asyncio.StreamReader, as the server uses it)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_stream.errors import CorruptData, InvalidRequest
from ray_stream.kafka.framing import LENGTH_PREFIX_BYTES, encode_frame, frame_size


def test_framing_encode_prefixes_the_big_endian_length():
    assert encode_frame(b"hello") == b"\x00\x00\x00\x05hello"
    assert frame_size(encode_frame(b"hello")[:4], 100) == 5


def test_framing_accepts_a_frame_of_exactly_the_maximum():
    assert frame_size((8).to_bytes(4, "big"), 8) == 8


def test_framing_rejects_an_oversized_prefix_before_the_body_arrives():
    with pytest.raises(InvalidRequest, match="exceeds max_request_bytes=1000"):
        frame_size((1001).to_bytes(4, "big"), 1000)


def test_framing_rejects_a_negative_prefix():
    with pytest.raises(CorruptData, match="negative"):
        frame_size(b"\xff\xff\xff\xfe", 1000)


async def _read_frames(reader: asyncio.StreamReader, max_frame_bytes: int) -> list[bytes]:
    """What the server's read loop does: prefix, check, read exactly the body."""
    frames = []
    while True:
        try:
            prefix = await reader.readexactly(LENGTH_PREFIX_BYTES)
        except asyncio.IncompleteReadError:
            return frames
        frames.append(await reader.readexactly(frame_size(prefix, max_frame_bytes)))


@settings(deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_framing_any_split_of_the_stream_gives_the_same_frames(bodies, cuts):
    wire = b"".join(encode_frame(b) for b in bodies)

    async def scenario() -> list[bytes]:
        reader = asyncio.StreamReader(limit=16)  # smaller than a frame: reading resumes
        reading = asyncio.create_task(_read_frames(reader, 64))
        previous = 0
        for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
            reader.feed_data(wire[previous:cut])
            previous = cut
            await asyncio.sleep(0)
        reader.feed_eof()
        return await reading

    assert asyncio.run(scenario()) == bodies
