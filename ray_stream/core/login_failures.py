"""Failed SASL logins per client address, and how long to hold the next refusal back.

Responsibility: slow down password guessing from one address. Every failed login from
an address doubles the delay before its refusal is sent (and its connection closed),
from ``base_delay_s`` up to ``max_delay_s``; an address quiet for ``forget_after_s`` starts
over, and a successful login from it clears its count. Kafka delays every refusal by a
fixed ``connection.failed.authentication.delay.ms`` (100 ms by default); growing it per
address makes a guessing client's rate fall geometrically while a user who mistyped
once waits 0.1 s.

Invariants: memory is bounded (at most ``max_addresses`` remembered; the least recently
failing is forgotten first); time comes from the caller (an injected clock).

Never: sleep, read clocks or log.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoginFailures"]


@dataclass(slots=True)
class _Entry:
    count: int
    last_s: float


class LoginFailures:
    """Per-address failure counts (see the module doc).

    Args:
        base_delay_s: the delay after an address's first failure.
        max_delay_s: the most any refusal is held back.
        forget_after_s: an address with no failure for this long starts over.
        max_addresses: how many addresses are remembered at once.
    """

    def __init__(
        self,
        *,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        forget_after_s: float = 300.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._forget_after_s = forget_after_s
        self._max_addresses = max_addresses
        self._entries: dict[str, _Entry] = {}  # least recently failing first

    def failed(self, host: str, *, now_s: float) -> float:
        """Count a failed login from ``host``; returns how long to hold its refusal back."""
        entry = self._entries.pop(host, None)
        if entry is None or now_s - entry.last_s >= self._forget_after_s:
            entry = _Entry(0, now_s)
        entry.count += 1
        entry.last_s = now_s
        self._entries[host] = entry
        while len(self._entries) > self._max_addresses:
            del self._entries[next(iter(self._entries))]
        return min(self._base_delay_s * 2 ** min(entry.count - 1, 32), self._max_delay_s)

    def succeeded(self, host: str) -> None:
        """A login from ``host`` worked: its next failure starts from the base delay."""
        self._entries.pop(host, None)

    def failures(self, host: str, *, now_s: float) -> int:
        """Failures counted for ``host`` that are not yet forgotten."""
        entry = self._entries.get(host)
        if entry is None or now_s - entry.last_s >= self._forget_after_s:
            return 0
        return entry.count
