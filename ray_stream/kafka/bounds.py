"""Bounds check of a request body against its kio schema, before kio's native reader.

kio's native reader trusts length prefixes: an array or string that claims 2**32 items
makes it allocate that much, and the process aborts (no exception to catch). This walks
the same schema in Python, checking every length against the bytes left in the frame,
so hostile frames become ``CorruptData`` for that connection only.

It mirrors the wire format only as far as positions go: fixed-width primitives, strings
and bytes (compact in flexible versions), arrays (compact in flexible versions), nested
entities, and the tagged-field section of flexible entities (known tags are checked
inside their declared size). It never builds values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    is_optional,
)

from ray_stream.errors import CorruptData

_FIXED = {
    "bool": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "error_code": 2,
    "int32": 4,
    "timedelta_i32": 4,
    "int64": 8,
    "datetime_i64": 8,
    "timedelta_i64": 8,
    "float64": 8,
    "uuid": 16,
}
_MAX_DEPTH = 16


def check_body(cls: Any, data: bytes | memoryview, offset: int) -> None:
    """Raise CorruptData if any length in the body of ``cls`` at ``offset`` overruns."""
    _Walker(memoryview(data)).entity(cls, offset, 0)


class _Walker:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.end = len(data)

    def need(self, pos: int, size: int, what: str) -> int:
        if size < 0 or pos + size > self.end:
            raise CorruptData(f"{what} needs {size} bytes at {pos}, the frame has {self.end - pos}")
        return pos + size

    def uvarint(self, pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= self.end or shift > 63:
                raise CorruptData(f"unterminated varint at {pos}")
            byte = self.data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7

    def signed(self, pos: int, width: int) -> tuple[int, int]:
        end = self.need(pos, width, "length")
        return int.from_bytes(self.data[pos:end], "big", signed=True), end

    def length(self, pos: int, *, flexible: bool, wide: bool) -> tuple[int, int]:
        """A length prefix; -1 means null."""
        if flexible:
            raw, pos = self.uvarint(pos)
            return raw - 1, pos
        return self.signed(pos, 4 if wide else 2)

    def entity(self, cls: Any, pos: int, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise CorruptData("request nests too deeply")
        flexible = bool(getattr(cls, "__flexible__", False))
        tagged: dict[int, dataclasses.Field[Any]] = {}
        for field in dataclasses.fields(cls):
            tag = get_field_tag(field)
            if tag is not None:
                tagged[int(tag)] = field
                continue
            pos = self.field(field, pos, flexible=flexible, depth=depth)
        if flexible:
            pos = self.tagged_section(tagged, pos, depth)
        return pos

    def tagged_section(self, known: dict[int, Any], pos: int, depth: int) -> int:
        count, pos = self.uvarint(pos)
        self.need(pos, count, "tagged fields")
        for _ in range(count):
            tag, pos = self.uvarint(pos)
            size, pos = self.uvarint(pos)
            end = self.need(pos, size, "tagged field")
            field = known.get(tag)
            if field is not None and self.field(field, pos, flexible=True, depth=depth) > end:
                raise CorruptData(f"tagged field {tag} overruns its declared size")
            pos = end
        return pos

    def field(self, field: Any, pos: int, *, flexible: bool, depth: int) -> int:
        kind = classify_field(field)
        if isinstance(kind, EntityTupleField | PrimitiveTupleField):
            count, pos = self.length(pos, flexible=flexible, wide=True)
            if count < 0:
                return pos
            # every element takes at least one byte: a count beyond the bytes left is a lie
            self.need(pos, count, f"array {field.name!r} of {count} items")
            for _ in range(count):
                if isinstance(kind, EntityTupleField):
                    pos = self.entity(kind.type_, pos, depth + 1)
                else:
                    pos = self.primitive(field.metadata["kafka_type"], pos, flexible=flexible)
            return pos
        if isinstance(kind, EntityField):
            if is_optional(field):
                marker, pos = self.signed(pos, 1)
                if marker < 0:
                    return pos
            return self.entity(kind.type_, pos, depth + 1)
        return self.primitive(field.metadata["kafka_type"], pos, flexible=flexible)

    def primitive(self, kafka_type: str, pos: int, *, flexible: bool) -> int:
        width = _FIXED.get(kafka_type)
        if width is not None:
            return self.need(pos, width, kafka_type)
        if kafka_type == "string":
            size, pos = self.length(pos, flexible=flexible, wide=False)
        elif kafka_type in ("bytes", "records"):
            size, pos = self.length(pos, flexible=flexible, wide=True)
        else:
            raise CorruptData(f"unknown kafka type {kafka_type!r} in schema")
        return pos if size < 0 else self.need(pos, size, kafka_type)
