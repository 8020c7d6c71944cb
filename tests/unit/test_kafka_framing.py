"""FrameDecoder: length-prefixed frames out of an arbitrarily split byte stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_stream.errors import CorruptData, InvalidRequest
from ray_stream.kafka.framing import FrameDecoder, encode_frame


def _drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_framing_returns_none_until_a_frame_is_complete():
    decoder = FrameDecoder(100)
    wire = encode_frame(b"hello")
    decoder.receive_data(wire[:3])
    assert decoder.next_frame() is None
    decoder.receive_data(wire[3:7])
    assert decoder.next_frame() is None
    decoder.receive_data(wire[7:])
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == 0


def test_framing_yields_several_frames_from_one_chunk_in_order():
    decoder = FrameDecoder(100)
    decoder.receive_data(encode_frame(b"a") + encode_frame(b"") + encode_frame(b"ccc") + b"\x00")
    assert _drain(decoder) == [b"a", b"", b"ccc"]
    assert decoder.buffered_bytes == 1  # the start of a fourth frame's prefix


@given(
    st.lists(st.binary(max_size=40), max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_framing_any_split_of_the_stream_gives_the_same_frames(bodies, cuts):
    wire = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder(64)
    frames: list[bytes] = []
    previous = 0
    for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
        decoder.receive_data(wire[previous:cut])
        frames += _drain(decoder)
        previous = cut
    assert frames == bodies


def test_framing_rejects_an_oversized_prefix_before_the_body_arrives():
    decoder = FrameDecoder(1000)
    decoder.receive_data((1001).to_bytes(4, "big"))  # no body sent at all
    with pytest.raises(InvalidRequest, match="exceeds max_request_bytes=1000"):
        decoder.next_frame()


def test_framing_accepts_a_frame_of_exactly_the_maximum():
    decoder = FrameDecoder(8)
    decoder.receive_data(encode_frame(b"12345678"))
    assert decoder.next_frame() == b"12345678"


def test_framing_rejects_a_negative_prefix():
    decoder = FrameDecoder(1000)
    decoder.receive_data(b"\xff\xff\xff\xfe")
    with pytest.raises(CorruptData, match="negative"):
        decoder.next_frame()


def test_framing_stays_failed_after_an_error():
    decoder = FrameDecoder(10)
    decoder.receive_data((11).to_bytes(4, "big"))
    with pytest.raises(InvalidRequest):
        decoder.next_frame()
    decoder.receive_data(encode_frame(b"ok"))
    with pytest.raises(InvalidRequest):
        decoder.next_frame()


def test_framing_rejects_a_nonpositive_limit():
    with pytest.raises(InvalidRequest, match="max_frame_bytes"):
        FrameDecoder(0)
