"""The ``ObjectStore`` interface: the seven operations ray_stream needs from object storage.

Every backend (``memory.py``, ``local.py``, ``s3.py``) and wrapper (``faults.py``) implements
this Protocol, and one contract suite (``tests/contract/test_object_store.py``) runs against
all of them, in the spirit of Litestream's replica-client interface.

Invariants every implementation keeps:

* **Keys** are ``/``-separated relative names such as ``segments/01H....arrow``: non-empty,
  no leading ``/``, no empty, ``.`` or ``..`` components, no NUL. A key that breaks these
  rules raises ``InvalidRequest`` (see ``validate_key``).
* **Durable on return.** When ``put`` returns, the object survives a crash of this process
  (and, for ``local``, of the machine).
* **Atomic visibility.** A reader sees either no object or the whole object, never a prefix.
* **Create-only is a real precondition.** ``put(..., if_none_match=True)`` succeeds for
  exactly one of any number of concurrent creators; the others get ``PreconditionFailed``.
  The manifest CAS (STYLE.md rule 5) depends on this; a store that ignores it is broken.
* **Ambiguous failures exist.** A ``put`` that raises ``StorageUnavailable`` may still have
  written the object (the response was lost). Callers make writes idempotent (immutable
  keys, create-only + read-back) rather than assuming "error means not written".
* All methods are synchronous and thread-safe; async callers use ``asyncio.to_thread``.

Errors are only those from ``ray_stream.errors``: ``NotFound``, ``PreconditionFailed``,
``StorageUnavailable`` (transient: retry), ``InvalidRequest`` (bad key or range).
Foreign errors (``OSError``, botocore) are translated inside each backend, never here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ray_stream.errors import InvalidRequest

__all__ = ["ObjectStore", "check_range", "validate_key"]


@runtime_checkable
class ObjectStore(Protocol):
    """Byte objects addressed by key.

    Attributes:
        url: the URL this store was opened from (``open_store(store.url)`` reopens it).
    """

    url: str

    def put(self, key: str, data: bytes | memoryview, *, if_none_match: bool = False) -> None:
        """Write ``data`` under ``key``, replacing any existing object.

        Args:
            key: the object key.
            data: the full object body (any bytes-like object; it is not kept).
            if_none_match: create-only (S3 ``If-None-Match: *``): fail if ``key`` exists.

        Raises:
            PreconditionFailed: ``if_none_match`` and the key already exists (including
                when a concurrent creator won the race).
            StorageUnavailable: the write failed or its outcome is unknown; the object may
                or may not exist afterwards.
            InvalidRequest: the key is malformed.
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the whole object.

        Raises:
            NotFound: no object has this key.
            StorageUnavailable: the read failed transiently.
            InvalidRequest: the key is malformed.
        """
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return ``length`` bytes from offset ``start``, reading only that range.

        Like slicing ``get(key)[start:start + length]``: a range running past the end is cut
        short, and one starting at or after the end returns ``b""``.

        Raises:
            NotFound: no object has this key.
            StorageUnavailable: the read failed transiently.
            InvalidRequest: the key is malformed, or ``start``/``length`` is negative.
        """
        ...

    def size(self, key: str) -> int:
        """Return the object's length in bytes.

        Raises:
            NotFound: no object has this key.
            StorageUnavailable: the request failed transiently.
            InvalidRequest: the key is malformed.
        """
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Return every key starting with ``prefix`` (plain string prefix, recursive), sorted.

        Raises:
            StorageUnavailable: the listing failed transiently.
        """
        ...

    def delete(self, key: str) -> None:
        """Delete ``key``. Deleting a missing key succeeds (idempotent).

        Raises:
            StorageUnavailable: the request failed transiently.
            InvalidRequest: the key is malformed.
        """
        ...

    def close(self) -> None:
        """Release connections and handles. Idempotent."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a well-formed object key.

    Raises:
        InvalidRequest: empty, absolute, containing ``..``/``.``/empty components, a NUL or
            a backslash.
    """
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"object key must be a non-empty str, got {key!r}")
    if key.startswith("/"):
        raise InvalidRequest(f"object key {key!r} must be relative (no leading '/')")
    if "\x00" in key or "\\" in key:
        raise InvalidRequest(f"object key {key!r} must not contain NUL or backslash")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidRequest(f"object key {key!r} has an empty, '.' or '..' component")
    return key


def check_range(key: str, start: int, length: int) -> None:
    """Reject negative ranges for ``get_range``.

    Raises:
        InvalidRequest: ``start`` or ``length`` is negative.
    """
    if start < 0 or length < 0:
        raise InvalidRequest(
            f"get_range({key!r}): start={start} and length={length} must both be >= 0"
        )
