"""Kafka TCP framing, sans-I/O: a 4-byte big-endian length prefix, then that many bytes.

Responsibility: cut a byte stream into request frames (h11-style: bytes in via
``receive_data``, frames out via ``next_frame``; no sockets, no event loop).

Invariants:

- A frame is returned exactly once, in arrival order, without its length prefix.
- A length prefix above ``max_frame_bytes`` (Kafka's ``socket.request.max.bytes``) or below
  zero is rejected as soon as the 4 prefix bytes have arrived, before buffering the body,
  so a hostile prefix cannot make the server allocate. After an error the decoder is
  poisoned: every later ``next_frame`` raises the same error (the caller closes that one
  connection).

Never: touch I/O, parse the frame's contents, or raise anything but ray_stream errors.
"""

from __future__ import annotations

from ray_stream.errors import CorruptData, InvalidRequest, RayStreamError

__all__ = ["LENGTH_PREFIX_BYTES", "FrameDecoder", "encode_frame"]

LENGTH_PREFIX_BYTES = 4


class FrameDecoder:
    """Accumulate received bytes; hand out complete length-prefixed frames.

    Args:
        max_frame_bytes: the largest frame body accepted (``Settings.max_request_bytes``).
    """

    __slots__ = ("_buffer", "_error", "_max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise InvalidRequest(f"max_frame_bytes must be >= 1, got {max_frame_bytes}")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._error: RayStreamError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a frame (a truncated tail at EOF)."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the connection (any split, including empty)."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None if more bytes are needed.

        Raises:
            InvalidRequest: a length prefix exceeds ``max_frame_bytes``.
            CorruptData: a negative length prefix.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) < LENGTH_PREFIX_BYTES:
            return None
        size = int.from_bytes(buffer[:LENGTH_PREFIX_BYTES], "big", signed=True)
        if size < 0:
            self._error = CorruptData(f"frame length prefix is negative ({size})")
            raise self._error
        if size > self._max_frame_bytes:
            self._error = InvalidRequest(
                f"frame of {size} bytes exceeds max_request_bytes={self._max_frame_bytes}"
            )
            raise self._error
        end = LENGTH_PREFIX_BYTES + size
        if len(buffer) < end:
            return None
        frame = bytes(buffer[LENGTH_PREFIX_BYTES:end])
        # CPython's bytearray drops a prefix without moving the rest (it advances its
        # start pointer), so consuming frame by frame stays linear.
        del buffer[:end]
        return frame


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its 4-byte big-endian length."""
    return len(body).to_bytes(LENGTH_PREFIX_BYTES, "big") + body
