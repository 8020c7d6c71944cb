"""Kafka TCP framing: a 4-byte big-endian length prefix, then that many bytes.

Responsibility: the frame format, sans I/O. The server reads the prefix, asks
``frame_size`` whether to accept it, then reads exactly that many bytes (one copy out of
the stream's buffer); ``encode_frame`` is the other direction.

Invariants: a length prefix above ``max_frame_bytes`` (Kafka's ``socket.request.max.bytes``)
or below zero is rejected as soon as the 4 prefix bytes have arrived, before any body
byte is buffered, so a hostile prefix cannot make the server allocate.

Never: touch I/O, parse the frame's contents, or raise anything but ray_stream errors.
"""

from __future__ import annotations

from ray_stream.errors import CorruptData, InvalidRequest

__all__ = ["LENGTH_PREFIX_BYTES", "encode_frame", "frame_size"]

LENGTH_PREFIX_BYTES = 4


def frame_size(prefix: bytes | bytearray, max_frame_bytes: int) -> int:
    """The body size a 4-byte length prefix announces.

    Raises:
        InvalidRequest: it exceeds ``max_frame_bytes`` (checked before any body byte is
            buffered, so a hostile prefix cannot make the server allocate).
        CorruptData: it is negative.
    """
    size = int.from_bytes(prefix, "big", signed=True)
    if size < 0:
        raise CorruptData(f"frame length prefix is negative ({size})")
    if size > max_frame_bytes:
        raise InvalidRequest(f"frame of {size} bytes exceeds max_request_bytes={max_frame_bytes}")
    return size


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its 4-byte big-endian length."""
    return len(body).to_bytes(LENGTH_PREFIX_BYTES, "big") + body
