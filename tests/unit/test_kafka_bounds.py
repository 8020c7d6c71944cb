"""Hostile length prefixes become CorruptData before kio's native reader sees them."""

from __future__ import annotations

import pytest

from ray_stream.errors import CorruptData
from ray_stream.kafka.protocol import parse_request
from ray_stream.kafka.versions import ApiKey
from tests.fakes import encode_request

# Metadata v9 whose topics compact array claims 2**32 - 2 entries: kio's native reader
# would try to allocate ~250 GB and abort the whole agent process.
HUGE_ARRAY = bytes.fromhex(
    "0003000900000001000f7261792d73747265616d2d7465737400ffffffff0f7a0000000000"
)


def test_bounds_huge_array_count_is_corrupt_not_fatal():
    with pytest.raises(CorruptData, match="topics"):
        parse_request(HUGE_ARRAY)


def test_bounds_huge_string_length_is_corrupt():
    wire = encode_request(
        ApiKey.METADATA, 4, {"topics": [{"name": "abc"}], "allow_auto_topic_creation": False}
    )
    frame = bytearray(wire[4:])
    at = frame.index(b"\x00\x03abc")
    frame[at : at + 2] = b"\x7f\xff"  # string length 32767, 3 bytes present
    with pytest.raises(CorruptData):
        parse_request(bytes(frame))


@pytest.mark.parametrize("version", [4, 9, 12])
def test_bounds_valid_requests_still_parse(version):
    values = {
        "topics": [{"name": "abc", "topic_id": None}],
        "allow_auto_topic_creation": False,
        "include_topic_authorized_operations": False,
        "include_cluster_authorized_operations": False,
    }
    wire = encode_request(ApiKey.METADATA, version, values)
    request = parse_request(wire[4:])
    assert [t.name for t in request.body.topics] == ["abc"]
