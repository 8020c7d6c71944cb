"""CommitQueue: one agent's segment commits, sent in flush order, grouped under backlog.

Each flush takes a place in the queue when it starts (``reserve``, called in flush order)
and hands in its commit request once its segment PUT is done (``commit``). One committer
task sends the requests in place order and answers each place, so one producer's batches
keep their order within a partition whatever order the PUTs finish in.

Rules this module keeps:

1. **Order.** A request is sent only after every earlier place was answered; a place whose
   PUT failed is answered with that error in its turn and never sent.
2. **Group only when behind.** When the next flush is already running as the oldest ready
   request is about to go and that request is a big one (at least ``group_min_bytes``:
   data arrives faster than one flush per PUT), the committer waits up to ``wait_s`` for
   that flush's PUT and sends both in one call, and so on up to ``max_group``. The
   metadata service journals one call in one commit round, so one journal PUT then
   covers several segments (the object-store cost model of DESIGN.md: PUTs per GiB).
   Requests that are ready together always share a call; a small request (a lightly
   loaded agent's linger-bound flush) is never held back, so it waits for nothing, and
   a loaded agent adds at most ``wait_s`` to its acks (the agent's default: its
   ``linger_ms``).
3. **Resend what is in doubt** (docs/design/0002-metadata-durability.md): while the
   metadata actor restarts, its journal write fails, or an answer comes from an epoch
   older than one already seen, the unanswered requests of a group are resent with
   backoff for at most ``retry_s`` and never past a request's ``give_up`` time (after
   half of ``orphan_grace_s`` the sweep may delete its segment). Resending is safe: the
   metadata actor answers an already-committed segment with its original offsets.

It never raises to a flush: every place is answered with results or an error.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from ray_stream.clock import Clock
from ray_stream.core.backoff import Backoff
from ray_stream.core.metadata_api import CommitAnswer, CommitRequest
from ray_stream.core.types import BatchResult
from ray_stream.errors import Fenced, InternalError, RayStreamError, Unavailable

log = logging.getLogger(__name__)

Outcome = list[BatchResult] | Exception
SendMany = Callable[[list[CommitRequest]], Awaitable[CommitAnswer]]  # the metadata ``commit``


@dataclass(slots=True)
class Place:
    """One flush's turn to commit."""

    ready: asyncio.Future[None]
    done: asyncio.Future[Outcome]
    request: CommitRequest | None = None
    error: Exception | None = None
    give_up: float = 0.0
    sent_s: float = 0.0  # monotonic time its request was first sent


@dataclass(slots=True)
class CommitStats:
    calls: int = 0  # commit calls answered (each one journal round at most)
    segments: int = 0  # segments committed through them
    max_group: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class CommitQueue:
    """Sends an agent's commits in flush order (see the module doc).

    Args:
        send: the metadata service's ``commit`` (not retried by its caller: this queue
            resends, with the shared backoff).
        clock: monotonic time for deadlines.
        wait_s: the longest a ready request waits for the PUT of a flush behind it;
            0 groups only requests that are ready together.
        retry_s: how long a group is resent while the metadata actor is away.
        max_group: the most requests in one call.
        group_min_bytes: the smallest segment worth holding back for the next one
            (the agent's: half its ``flush_bytes``; 0 always waits).
        rand: backoff jitter (None: none).
    """

    def __init__(
        self,
        send: SendMany,
        *,
        clock: Clock,
        wait_s: float,
        retry_s: float,
        max_group: int = 8,
        group_min_bytes: int = 0,
        rand: random.Random | None = None,
    ) -> None:
        self._send = send
        self._group_min_bytes = group_min_bytes
        self._rand = rand
        self._clock = clock
        self._wait_s = wait_s
        self._retry_s = retry_s
        self._max_group = max_group
        self._places: deque[Place] = deque()
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self.epoch = 0  # the highest metadata epoch seen
        self.stats = CommitStats()

    def reserve(self) -> Place:
        """Take the next place; call in flush order, then ``commit`` it exactly once."""
        loop = asyncio.get_running_loop()
        place = Place(ready=loop.create_future(), done=loop.create_future())
        self._places.append(place)
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._run())
        return place

    async def commit(
        self, place: Place, staged: CommitRequest | Exception, *, give_up: float = 0.0
    ) -> Outcome:
        """Hand in a place's request (or the error that stopped its PUT); wait for its turn.

        Returns:
            The request's results, or the error every producer of that flush gets.
        """
        if isinstance(staged, Exception):
            place.error = staged
        else:
            place.request, place.give_up = staged, give_up
        place.ready.set_result(None)
        return await place.done

    async def _run(self) -> None:
        group: list[Place] = []
        try:
            while self._places:
                await self._places[0].ready
                group = await self._gather()
                for _ in group:
                    self._places.popleft()
                head = group[0]
                if head.error is not None:
                    head.done.set_result(head.error)
                    continue
                outcomes = await self._send_group(group)
                for place, outcome in zip(group, outcomes, strict=True):
                    place.done.set_result(outcome)
                group = []
        except Exception as exc:  # a bug: answer every flush rather than hang them
            log.exception("commit queue failed")
            failed = InternalError(f"commit queue failed: {exc!r}")
            for place in [*group, *self._places]:
                if not place.done.done():
                    place.done.set_result(failed)
            self._places.clear()
        finally:
            self._running = False

    async def _gather(self) -> list[Place]:
        """The ready head and the consecutive places behind it worth one call (rule 2)."""
        group = [self._places[0]]
        head = group[0].request
        if head is None:  # its PUT failed: answered alone
            return group
        wait_s = self._wait_s if head.segment_bytes >= self._group_min_bytes else 0.0
        deadline = self._clock.monotonic_s() + wait_s
        while len(group) < self._max_group and len(self._places) > len(group):
            following = self._places[len(group)]
            if not following.ready.done():
                left = deadline - self._clock.monotonic_s()
                if left <= 0 or not wait_s:
                    break
                await asyncio.wait({following.ready}, timeout=left)
                if not following.ready.done():
                    break
            if following.error is not None:
                break  # answered in its own turn, after this group
            group.append(following)
        return group

    async def _send_group(self, group: list[Place]) -> list[Outcome]:
        """Send, resending the unanswered requests while that may still help (rule 3)."""
        outcomes: list[Outcome | None] = [None] * len(group)
        deadline = min(min(p.give_up for p in group), self._clock.monotonic_s() + self._retry_s)
        backoff = Backoff(rand=self._rand)
        sent = self._clock.monotonic_s()
        for place in group:
            place.sent_s = sent
        while True:
            todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
            error = await self._send_once(group, todo, outcomes)
            if error is None:  # every request of ``todo`` was settled
                self._count_answer(len(group))
                return cast(list[Outcome], outcomes)
            self._count_failure("commit")
            retryable = isinstance(error, (Unavailable, Fenced))  # incl. StorageUnavailable
            delay = backoff.next_delay()
            if retryable and self._clock.monotonic_s() + delay <= deadline:
                log.warning("commit of %d segment(s) failed, resending: %s", len(todo), error)
                await asyncio.sleep(delay)
                continue
            if retryable:
                keys = ", ".join(group[i].request.segment_key for i in todo)  # type: ignore[union-attr]
                error = Unavailable(f"commit of {keys} gave up: {error}")
            return [o if o is not None else error for o in outcomes]

    async def _send_once(
        self, group: list[Place], todo: list[int], outcomes: list[Outcome | None]
    ) -> Exception | None:
        """One call for the places ``todo`` of ``group``; fills the ``outcomes`` it
        settles. Returns the error to resend on or to answer with, if any."""
        try:
            answer = await self._send([group[i].request for i in todo])  # type: ignore[misc]
        except RayStreamError as exc:  # the caller tells a resend from a refusal
            return exc
        except Exception as exc:  # an unexpected error: the outcome is unknown
            return Unavailable(f"metadata commit failed: {exc!r}")
        if answer.epoch < self.epoch:
            return Unavailable(
                f"answer from metadata epoch {answer.epoch}, older than epoch {self.epoch}"
            )
        self.epoch = answer.epoch
        retry: Exception | None = None
        for index, segment in zip(todo, answer.segments, strict=True):
            if isinstance(segment.error, (Unavailable, Fenced)):
                retry = segment.error
            elif segment.error is not None:
                self._count_failure("commit")
                outcomes[index] = segment.error
            else:
                outcomes[index] = segment.results()
        return retry

    def _count_answer(self, size: int) -> None:
        self.stats.calls += 1
        self.stats.segments += size
        self.stats.max_group = max(self.stats.max_group, size)

    def _count_failure(self, kind: str) -> None:
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
