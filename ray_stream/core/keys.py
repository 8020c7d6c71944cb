"""The object-key layout: every key ray_stream writes is spelled here and only here.

Key families (all sort in creation order when listed):

- ``segments/<ULID>.arrow``: one segment file per agent flush. The ULID is 26 Crockford
  base32 characters: 48 bits of creation time (ms) then 80 random bits, so keys sort by
  creation time and the orphan sweep can tell a segment's age from its key alone.
- ``metadata/journal/{n:020d}.json``: metadata journal entry ``n``.
- ``metadata/snapshots/{n:020d}.sqlite``: the metadata state holding every entry ``<= n``.

Rules this module keeps: zero-padded, fixed-width indexes (SlateDB's manifest ids), so a
LIST returns entries in index order; parsing a key that is not of a family answers None,
never raises (LIST results may hold temp files and strays).

Never: read clocks or randomness itself (callers pass ``now_ms`` and a ``random.Random``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_stream.errors import InvalidRequest

if TYPE_CHECKING:
    import random

__all__ = [
    "JOURNAL_PREFIX",
    "SEGMENT_PREFIX",
    "SNAPSHOT_PREFIX",
    "journal_index",
    "journal_key",
    "new_segment_key",
    "segment_time_ms",
    "snapshot_index",
    "snapshot_key",
]

SEGMENT_PREFIX = "segments/"
SEGMENT_SUFFIX = ".arrow"
JOURNAL_PREFIX = "metadata/journal/"
SNAPSHOT_PREFIX = "metadata/snapshots/"
_JOURNAL_SUFFIX = ".json"
_SNAPSHOT_SUFFIX = ".sqlite"
_INDEX_DIGITS = 20

# Crockford's base32 (no I, L, O, U): ULIDs sort as strings in time order.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}
_ULID_CHARS = 26
_MAX_ULID_TIME_MS = 2**48 - 1


# ------------------------------------------------------------------- segments
def new_segment_key(now_ms: int, rand: random.Random) -> str:
    """A new segment object key: ``segments/<ULID>.arrow``.

    Raises:
        InvalidRequest: ``now_ms`` is negative or beyond the ULID range (year 10889).
    """
    if not 0 <= now_ms <= _MAX_ULID_TIME_MS:
        raise InvalidRequest(f"now_ms {now_ms} is outside the ULID range 0..2**48-1")
    value = (now_ms << 80) | rand.getrandbits(80)
    chars = [_CROCKFORD[(value >> shift) & 0x1F] for shift in range(125, -1, -5)]
    return f"{SEGMENT_PREFIX}{''.join(chars)}{SEGMENT_SUFFIX}"


def segment_time_ms(key: str) -> int | None:
    """The creation time (ms) in a ``segments/<ULID>.arrow`` key, or None if not a ULID."""
    if not key.startswith(SEGMENT_PREFIX):
        return None
    name = key[len(SEGMENT_PREFIX) :].split(".", 1)[0]
    if len(name) != _ULID_CHARS:
        return None
    value = 0
    for char in name[:10]:  # characters 0-9 hold bits 80-129 of the ULID: the ms timestamp
        digit = _CROCKFORD_VALUE.get(char)
        if digit is None:
            return None
        value = value << 5 | digit
    return value


# -------------------------------------------------------------------- journal
def journal_key(index: int) -> str:
    return f"{JOURNAL_PREFIX}{_check_index(index):0{_INDEX_DIGITS}d}{_JOURNAL_SUFFIX}"


def snapshot_key(index: int) -> str:
    return f"{SNAPSHOT_PREFIX}{_check_index(index):0{_INDEX_DIGITS}d}{_SNAPSHOT_SUFFIX}"


def journal_index(key: str) -> int | None:
    """The index of a journal key, or None for any other key (temp files, strays)."""
    return _parse_index(key, JOURNAL_PREFIX, _JOURNAL_SUFFIX)


def snapshot_index(key: str) -> int | None:
    """The index of a snapshot key, or None for any other key."""
    return _parse_index(key, SNAPSHOT_PREFIX, _SNAPSHOT_SUFFIX)


def _parse_index(key: str, prefix: str, suffix: str) -> int | None:
    if not (key.startswith(prefix) and key.endswith(suffix)):
        return None
    digits = key[len(prefix) : len(key) - len(suffix)]
    if len(digits) != _INDEX_DIGITS or not digits.isdigit():
        return None
    return int(digits)


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"journal index must be an int >= 0, got {index!r}")
    return index
