"""CallOrder: buffers one pipelining producer's calls in the order it sent them.

Ray does not run an async actor's calls in submission order, so a producer that keeps
several ``produce`` calls in flight numbers them ``0, 1, 2, ...`` under a session id
``<producer>/<generation>``; each call waits here until its predecessor was buffered.

Rules this module keeps:

1. **Accepted calls of one producer are buffered in send order.** A call that arrives
   after a later one of its producer was taken is refused (Unavailable), never buffered
   out of order: when its predecessor gap timed out (``SESSION_GAP_TIMEOUT_S``: the
   caller died mid-send), or when the producer moved on to a newer generation after an
   error.
2. Sessions idle for 10 minutes are forgotten once there are more than 1000.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ray_stream.clock import Clock
from ray_stream.errors import Unavailable

log = logging.getLogger(__name__)

SESSION_GAP_TIMEOUT_S = 5.0  # Ray reorders calls by ms; a caller that died leaves a gap
MAX_SESSIONS = 1000
IDLE_SESSION_S = 600.0


@dataclass(slots=True)
class _Turn:
    """Orders one pipelining caller's produce calls."""

    next_seq: int
    changed: asyncio.Condition
    last_used: float = 0.0


class CallOrder:
    """Turns of the pipelining producers of one agent (see the module doc)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._sessions: dict[str, _Turn] = {}
        self._generations: dict[str, int] = {}

    async def wait_turn(self, session: str, seq: int) -> Unavailable | None:
        """Wait until call ``seq`` of ``session`` is next; the error if it came too late
        (rule 1). Call ``next_turn`` once the call is buffered (or refused)."""
        producer, _, generation = session.partition("/")
        gen = int(generation or 0)
        if gen < self._generations.get(producer, gen):
            return _older(producer, seq)
        self._generations[producer] = gen
        turn = self._sessions.get(session)
        if turn is None:
            turn = self._sessions[session] = _Turn(next_seq=0, changed=asyncio.Condition())
        turn.last_used = self._clock.monotonic_s()
        if seq < turn.next_seq:
            return _overtaken(session, seq)
        async with turn.changed:
            try:
                await asyncio.wait_for(
                    turn.changed.wait_for(lambda: turn.next_seq >= seq), SESSION_GAP_TIMEOUT_S
                )
            except TimeoutError:
                # The predecessor never arrived (its caller died mid-send): skip the gap;
                # if it still turns up it is refused as late.
                log.warning(
                    "session %s: call %d gave up waiting for %d", session, seq, turn.next_seq
                )
        if gen < self._generations.get(producer, gen):  # a newer session went first
            return _older(producer, seq)
        if seq < turn.next_seq:  # a successor skipped the gap while this one waited
            return _overtaken(session, seq)
        return None

    def next_turn(self, session: str, seq: int) -> None:
        """Call ``seq`` of ``session`` is done: let its successor go."""
        turn = self._sessions.get(session)
        if turn is None:
            return
        turn.next_seq = max(turn.next_seq, seq + 1)

        async def notify() -> None:
            async with turn.changed:
                turn.changed.notify_all()

        asyncio.get_running_loop().create_task(notify())
        now = self._clock.monotonic_s()
        if len(self._sessions) > MAX_SESSIONS:
            idle = [k for k, t in self._sessions.items() if now - t.last_used > IDLE_SESSION_S]
            for key in idle:
                del self._sessions[key]


def _older(producer: str, seq: int) -> Unavailable:
    return Unavailable(f"call {seq} of an older session of producer {producer}: not written")


def _overtaken(session: str, seq: int) -> Unavailable:
    return Unavailable(f"call {seq} of session {session} arrived after its successor: not written")
