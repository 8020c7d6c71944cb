"""Kafka request/response codec around ``kio``: headers, bodies, version-agnostic building.

Responsibility:

- ``parse_request(frame)``: read the request header (v1, or v2 for flexible versions, as
  the request schema says) and the body with kio's readers.
- ``encode_response(request, body)``: length prefix + response header (v0, or v1 for
  flexible versions; ApiVersions responses always v0, KIP-511) + body.
- ``build(cls, values)``: construct a kio entity of *any* version from one plain dict, so
  handlers are written once for all versions: keys the version lacks are dropped, nested
  dicts become nested entities, and plain values get the exact types kio's writers want
  (``ErrorCode`` members, ``timedelta`` for ``*_ms`` durations, ``UUID`` from 32 hex
  chars, ``""``/``b""`` for a None in a non-nullable string/bytes field).

Invariants: a version outside ``SUPPORTED_VERSIONS`` is never parsed (ApiVersions is
answered with a v0 UNSUPPORTED_VERSION response instead, see ``api_versions_fallback``);
every malformed frame raises ``CorruptData`` and an unserved API ``InvalidRequest``,
never a kio or struct error. ``build`` rejects a key no served schema has (a typo in a
handler) with ``InternalError`` instead of silently dropping it.

Never: perform I/O or know what a request means (that is ``handlers.py``).
"""

from __future__ import annotations

import dataclasses
import struct
import types
import uuid
from collections.abc import Mapping
from datetime import timedelta
from functools import cache
from typing import Any, get_args, get_origin, get_type_hints

from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import SerialError
from kio.static.constants import EntityType

from ray_stream.errors import CorruptData, InternalError, InvalidRequest
from ray_stream.kafka.bounds import check_body
from ray_stream.kafka.framing import LENGTH_PREFIX_BYTES
from ray_stream.kafka.versions import API_NAMES, SUPPORTED_VERSIONS, ApiKey, is_supported

__all__ = [
    "Request",
    "api_versions_fallback",
    "build",
    "build_response",
    "encode_response",
    "encode_response_parts",
    "parse_request",
    "preload",
    "request_class",
    "response_class",
    "supported_api_keys",
]

_HEADER_PREFIX = struct.Struct(">hhi")  # api_key, api_version, correlation_id
# What kio's native readers raise besides SerialError on hostile input.
_READ_ERRORS = (
    SerialError,
    ValueError,
    TypeError,
    OverflowError,
    UnicodeDecodeError,
    KeyError,  # kio: 'Unknown tagged field tag'
    CorruptData,  # bounds.check_body
)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One decoded request.

    ``body`` is the kio request entity, or None for an ApiVersions request of a version
    we do not serve (answered by ``api_versions_fallback``).
    """

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any

    @property
    def api_name(self) -> str:
        return API_NAMES.get(self.api_key, str(self.api_key))


def _entity_class(api_key: int, api_version: int, kind: EntityType) -> type[Any]:
    module = load_payload_module(api_key, api_version, kind)  # type: ignore[arg-type]
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and value.__module__ == module.__name__
            and getattr(value, "__type__", None) is kind
        ):
            return value
    raise InternalError(f"kio module {module.__name__} has no {kind.name} entity")


@cache
def request_class(api_key: int, api_version: int) -> type[Any]:
    """The kio request entity class of ``api_key`` at ``api_version``."""
    return _entity_class(api_key, api_version, EntityType.request)


@cache
def response_class(api_key: int, api_version: int) -> type[Any]:
    """The kio response entity class of ``api_key`` at ``api_version``."""
    return _entity_class(api_key, api_version, EntityType.response)


def parse_request(frame: bytes) -> Request:
    """Decode one request frame (without its length prefix).

    Raises:
        CorruptData: the frame is shorter than a header or does not decode.
        InvalidRequest: an API key we do not serve, or an unserved version of an API
            other than ApiVersions.
    """
    if len(frame) < _HEADER_PREFIX.size:
        raise CorruptData(f"request frame of {len(frame)} bytes is shorter than a header")
    api_key, api_version, correlation_id = _HEADER_PREFIX.unpack_from(frame)
    if api_key not in SUPPORTED_VERSIONS:
        raise InvalidRequest(f"unsupported api_key {api_key} (correlation_id {correlation_id})")
    if not is_supported(api_key, api_version):
        if api_key == ApiKey.API_VERSIONS:
            return Request(api_key, api_version, correlation_id, None, None)
        low, high = SUPPORTED_VERSIONS[api_key]
        raise InvalidRequest(
            f"{API_NAMES[api_key]} version {api_version} is not served (only {low}-{high})"
        )
    cls = request_class(api_key, api_version)
    try:
        header, header_size = entity_reader(cls.__header_schema__)(frame, 0)
        check_body(cls, frame, header_size)  # kio's native reader trusts lengths
        body, _ = entity_reader(cls)(frame, header_size)
    except _READ_ERRORS as exc:
        raise CorruptData(
            f"{API_NAMES[api_key]} v{api_version} request does not decode: {exc!r}"
        ) from exc
    return Request(api_key, api_version, correlation_id, header.client_id, body)


def encode_response(request: Request, body: Any) -> bytes:
    """Length prefix + the response header the body's schema names + ``body``."""
    return b"".join(encode_response_parts(request, body))


def encode_response_parts(request: Request, body: Any) -> list[bytes | bytearray | memoryview]:
    """``encode_response`` as parts to write in order, without copying large fields.

    A Fetch answer's record batches are the bulk of its bytes; they are kept by
    reference (written to the socket as they are), not copied into one buffer.
    """
    parts = _Parts()
    header_cls = type(body).__header_schema__
    entity_writer(header_cls)(parts, header_cls(correlation_id=request.correlation_id))
    entity_writer(type(body))(parts, body)
    return parts.finish()


class _Parts:
    """A write target for kio's writers: small writes are gathered, writes of at least
    ``BIG_WRITE_BYTES`` kept by reference; ``finish`` prepends the length prefix."""

    BIG_WRITE_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray | memoryview] = []
        self._small = bytearray(LENGTH_PREFIX_BYTES)  # the prefix, patched in finish()
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self._size += size
        if size < self.BIG_WRITE_BYTES:
            self._small += data
        else:
            self._parts.append(self._small)
            self._parts.append(data)
            self._small = bytearray()
        return size

    def finish(self) -> list[bytes | bytearray | memoryview]:
        parts = [*self._parts, self._small] if self._small else self._parts
        first = parts[0]
        assert isinstance(first, bytearray)  # the prefix buffer always comes first
        first[:LENGTH_PREFIX_BYTES] = self._size.to_bytes(LENGTH_PREFIX_BYTES, "big")
        return parts


def api_versions_fallback(request: Request) -> bytes:
    """The v0 UNSUPPORTED_VERSION answer to an ApiVersions version we do not serve.

    It lists every served range, so the client retries with a version it shares with us.
    """
    body = build(
        response_class(ApiKey.API_VERSIONS, 0),
        {"error_code": ErrorCode.unsupported_version, "api_keys": supported_api_keys()},
    )
    return encode_response(request, body)


def supported_api_keys() -> list[dict[str, int]]:
    """``SUPPORTED_VERSIONS`` as ApiVersions ``api_keys`` entries."""
    return [
        {"api_key": key, "min_version": low, "max_version": high}
        for key, (low, high) in sorted(SUPPORTED_VERSIONS.items())
    ]


# --------------------------------------------------------------------------------------
# Version-agnostic building


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldPlan:
    name: str
    kafka_type: str | None
    nested: type[Any] | None
    is_array: bool
    nullable: bool


_PLANS: dict[type[Any], tuple[_FieldPlan, ...]] = {}


def _plan(cls: type[Any]) -> tuple[_FieldPlan, ...]:
    cached = _PLANS.get(cls)
    if cached is None:
        cached = _PLANS[cls] = _make_plan(cls)
    return cached


def _make_plan(cls: type[Any]) -> tuple[_FieldPlan, ...]:
    hints = get_type_hints(cls)
    plans = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        args = get_args(kind)
        nullable = isinstance(kind, types.UnionType) and type(None) in args
        if nullable:
            kind = next(arg for arg in args if arg is not type(None))
        is_array = get_origin(kind) is tuple
        element = get_args(kind)[0] if is_array else kind
        nested = element if dataclasses.is_dataclass(element) else None
        plans.append(
            _FieldPlan(field.name, field.metadata.get("kafka_type"), nested, is_array, nullable)  # type: ignore[arg-type]
        )
    return tuple(plans)


@cache
def _known_field_names() -> frozenset[str]:
    """Every field name of every served request/response schema (for typo detection)."""
    names: set[str] = set()
    seen: set[type[Any]] = set()
    stack = [
        factory(key, version)
        for key, (low, high) in SUPPORTED_VERSIONS.items()
        for version in range(low, high + 1)
        for factory in (request_class, response_class)
    ]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for plan in _plan(cls):
            names.add(plan.name)
            if plan.nested is not None:
                stack.append(plan.nested)
    return frozenset(names)


_NON_NULL_EMPTY = {"string": "", "bytes": b"", "records": b""}


def _convert(plan: _FieldPlan, value: Any) -> Any:
    if value is None:
        if plan.nullable:
            return None
        return () if plan.is_array else _NON_NULL_EMPTY.get(plan.kafka_type or "")
    if plan.is_array:
        if plan.nested is not None:
            return tuple(build(plan.nested, v) if isinstance(v, Mapping) else v for v in value)
        return tuple(value)
    if plan.nested is not None:
        return build(plan.nested, value) if isinstance(value, Mapping) else value
    kafka_type = plan.kafka_type
    if kafka_type == "error_code" and not isinstance(value, ErrorCode):
        return ErrorCode(value)
    if kafka_type in ("timedelta_i32", "timedelta_i64") and isinstance(value, int):
        return timedelta(milliseconds=value)
    if kafka_type == "uuid" and isinstance(value, str):
        return uuid.UUID(hex=value) if value else None
    return value


def build(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """Construct ``cls`` (a kio entity of any version) from a plain mapping.

    Keys the schema lacks are dropped (that is how one dict serves every version); fields
    missing from ``values`` take the schema default.

    Raises:
        InternalError: a key no served schema knows, or a required field is missing.
    """
    unknown = values.keys() - _known_field_names()
    if unknown:
        raise InternalError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for plan in _plan(cls):
        if plan.name in values:
            kwargs[plan.name] = _convert(plan, values[plan.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InternalError(f"cannot build {cls.__module__}.{cls.__name__}: {exc}") from exc


def build_response(request: Request, values: Mapping[str, Any]) -> Any:
    """``build`` the response entity matching ``request``'s API and version."""
    return build(response_class(request.api_key, request.api_version), values)


def preload() -> None:
    """Import every served schema now (~0.5 s) instead of on the first requests."""
    _known_field_names()
