"""The one backoff policy every retry loop uses (pure: no sleeping, no clocks).

Retry loops (object-store PUTs of segments and journal entries, commit resends, metadata
calls across a restart) ask a ``Backoff`` for the next delay and sleep it themselves,
so each loop keeps its own stop rule (attempts or a deadline) while the delays and their
jitter are the same everywhere.

Rules this module keeps:

1. Delays grow exponentially from ``first_s`` by ``factor`` up to ``max_s``.
2. Jitter is "equal jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter"):
   each delay is drawn from ``[d * (1 - jitter), d]``, so retries of many agents after a
   shared failure (a metadata restart) spread out instead of arriving together.
3. Randomness is injected (STYLE rule 6): pass ``random.Random(seed)`` in tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DEFAULT_POLICY", "Backoff", "BackoffPolicy"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How delays grow (see the module doc).

    Attributes:
        first_s: the first delay before jitter.
        max_s: the cap on any delay. 1 s keeps a restarted metadata actor (a few
            seconds to recover) from waiting long after it is back.
        factor: growth per attempt.
        jitter: the fraction of each delay that is random (0 = none, 1 = full).
    """

    first_s: float = 0.05
    max_s: float = 1.0
    factor: float = 2.0
    jitter: float = 0.5


DEFAULT_POLICY = BackoffPolicy()


class Backoff:
    """One retry loop's delays: ``next_delay()`` after each failed attempt. Iterating
    yields the same delays forever (``for delay in Backoff(): ...``; the loop stops at
    its own deadline).

    Args:
        policy: the growth rule (``DEFAULT_POLICY`` unless a loop has a reason).
        rand: the jitter source; None means no jitter (delays are exact).
    """

    def __init__(
        self, policy: BackoffPolicy = DEFAULT_POLICY, *, rand: random.Random | None = None
    ) -> None:
        self._policy = policy
        self._rand = rand
        self._delay = policy.first_s
        self.attempts = 0

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next_delay()

    def next_delay(self) -> float:
        """The delay to sleep before the next attempt (and count this failure)."""
        policy = self._policy
        base = self._delay
        self._delay = min(base * policy.factor, policy.max_s)
        self.attempts += 1
        if self._rand is None or policy.jitter <= 0:
            return base
        return base * (1 - policy.jitter * self._rand.random())
