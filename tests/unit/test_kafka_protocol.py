"""Kafka request/response codec: headers per version, fallbacks, version-agnostic build."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from ray_stream.errors import CorruptData, InternalError, InvalidRequest
from ray_stream.kafka.protocol import (
    Request,
    api_versions_fallback,
    build,
    build_response,
    encode_response,
    parse_request,
    request_class,
    response_class,
)
from ray_stream.kafka.versions import SUPPORTED_VERSIONS, ApiKey, is_supported
from tests.fakes import decode_response, encode_request


def _frame(wire: bytes) -> bytes:
    return wire[4:]  # drop the length prefix


def test_protocol_parses_a_flexible_request_with_header_v2():
    wire = encode_request(
        ApiKey.API_VERSIONS,
        3,
        {"client_software_name": "librdkafka", "client_software_version": "2.16.0"},
        correlation_id=42,
        client_id="rdkafka",
    )
    request = parse_request(_frame(wire))
    assert (request.api_key, request.api_version, request.correlation_id) == (18, 3, 42)
    assert request.client_id == "rdkafka"
    assert request.body.client_software_name == "librdkafka"


def test_protocol_parses_a_non_flexible_request_with_header_v1_and_null_client_id():
    wire = encode_request(ApiKey.METADATA, 5, {"topics": None}, correlation_id=7, client_id=None)
    request = parse_request(_frame(wire))
    assert request.client_id is None
    assert request.body.topics is None
    assert request.body.allow_auto_topic_creation is True


def test_protocol_every_served_version_has_kio_schemas():
    for api_key, (low, high) in SUPPORTED_VERSIONS.items():
        for version in range(low, high + 1):
            assert request_class(api_key, version).__api_key__ == api_key
            assert response_class(api_key, version).__version__ == version


def test_protocol_rejects_an_unknown_api_key():
    frame = (9999).to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x01" + b"\x00\x00"
    with pytest.raises(InvalidRequest, match="unsupported api_key 9999"):
        parse_request(frame)


def test_protocol_rejects_an_unserved_version_of_other_apis():
    frame = (0).to_bytes(2, "big") + (2).to_bytes(2, "big") + b"\x00\x00\x00\x01\x00\x00"
    with pytest.raises(InvalidRequest, match="PRODUCE version 2 is not served"):
        parse_request(frame)


def test_protocol_unserved_api_versions_version_gets_a_v0_error_listing_served_ranges():
    frame = (18).to_bytes(2, "big") + (99).to_bytes(2, "big") + (5).to_bytes(4, "big") + b"junk"
    request = parse_request(frame)
    assert request.body is None
    response = api_versions_fallback(request)
    correlation_id, body = decode_response(ApiKey.API_VERSIONS, 0, response[4:])
    assert correlation_id == 5
    assert body.error_code == ErrorCode.unsupported_version
    served = {k.api_key: (k.min_version, k.max_version) for k in body.api_keys}
    assert served == dict(SUPPORTED_VERSIONS)


def test_protocol_short_or_truncated_frames_are_corrupt():
    with pytest.raises(CorruptData, match="shorter than a header"):
        parse_request(b"\x00\x03\x00")
    wire = encode_request(
        ApiKey.METADATA,
        12,
        {"topics": [{"name": "t", "topic_id": None}], "include_topic_authorized_operations": False},
    )
    with pytest.raises(CorruptData, match="does not decode"):
        parse_request(_frame(wire)[:-6])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SUPPORTED_VERSIONS)), st.integers(0, 20), st.binary(max_size=64))
def test_protocol_random_bodies_raise_only_ray_stream_errors(api_key, version, tail):
    frame = api_key.to_bytes(2, "big") + version.to_bytes(2, "big") + b"\x00\x00\x00\x09" + tail
    try:
        request = parse_request(frame)
    except (CorruptData, InvalidRequest):
        return
    assert request.correlation_id == 9
    assert request.body is not None or not is_supported(api_key, version)


def test_protocol_api_versions_response_uses_header_v0_even_when_flexible():
    request = Request(ApiKey.API_VERSIONS, 3, 77, "c", object())
    body = build_response(request, {"error_code": 0, "api_keys": [], "throttle_time": 0})
    data = encode_response(request, body)
    # length(4) + correlation id(4), then the body starts with error_code: no tag buffer.
    assert data[4:8] == (77).to_bytes(4, "big")
    assert data[8:10] == b"\x00\x00"
    assert decode_response(ApiKey.API_VERSIONS, 3, data[4:])[1].error_code == ErrorCode.none


def test_protocol_flexible_responses_use_header_v1():
    request = Request(ApiKey.HEARTBEAT, 4, 3, "c", object())
    data = encode_response(request, build_response(request, {"error_code": 0, "throttle_time": 0}))
    assert data[4:8] == (3).to_bytes(4, "big")
    assert data[8] == 0  # header v1: an empty tagged-field buffer after the correlation id
    assert decode_response(ApiKey.HEARTBEAT, 4, data[4:])[1].error_code == ErrorCode.none


def test_protocol_build_drops_fields_the_version_lacks_and_converts_types():
    values = {
        "error_code": 27,
        "throttle_time": 5,
        "generation_id": 3,
        "protocol_type": "consumer",  # only v7+
        "protocol_name": None,  # non-nullable before v7: becomes ""
        "leader": "m1",
        "skip_assignment": True,  # only v9
        "member_id": "m1",
        "members": [{"member_id": "m1", "group_instance_id": None, "metadata": b"x"}],
    }
    v0 = build(response_class(ApiKey.JOIN_GROUP, 0), values)
    assert v0.error_code is ErrorCode.rebalance_in_progress
    assert v0.protocol_name == ""
    assert not hasattr(v0, "skip_assignment")
    assert v0.members[0].metadata == b"x"
    v9 = build(response_class(ApiKey.JOIN_GROUP, 9), values)
    assert v9.throttle_time == timedelta(milliseconds=5)
    assert v9.skip_assignment is True
    assert v9.protocol_name is None


def test_protocol_build_turns_hex_topic_ids_into_uuids():
    topic_id = uuid.uuid4().hex
    entity = build(
        response_class(ApiKey.METADATA, 12),
        {
            "brokers": [],
            "topics": [{"error_code": 0, "name": "t", "topic_id": topic_id, "partitions": []}],
            "throttle_time": 0,
        },
    )
    assert entity.topics[0].topic_id == uuid.UUID(hex=topic_id)


def test_protocol_build_rejects_a_misspelled_field():
    with pytest.raises(InternalError, match="erorr_code"):
        build(response_class(ApiKey.HEARTBEAT, 0), {"erorr_code": 0})


def test_protocol_build_reports_a_missing_required_field():
    with pytest.raises(InternalError, match="cannot build"):
        build(response_class(ApiKey.HEARTBEAT, 0), {})
