"""The async shell around the consumer-group state machine (``core/group.py``).

Responsibility: turn the core's ``Pending(ticket)`` answers into awaitables, feed it the
injected clock, and run the one background task that expires sessions and finishes
rebalances whose timeout passed. The metadata service (``metadata/service.py``) answers
the ``Groups`` protocol (``core/metadata_api.py``) through it.

Invariants:
- All state lives in the core; this class holds only the futures of parked requests,
  keyed by ticket. Every core call is synchronous, so no two ever interleave.
- After every core call the completions it produced are delivered before control returns
  to the event loop; a waiter whose request was cancelled (client went away) is skipped.
- Time for the core is ``clock.monotonic_s()`` in ms, so wall-clock jumps cannot expire
  sessions.
- The background task is created lazily, from the first call, because it needs a running
  loop; a call from a different loop (a new ``asyncio.run``) starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ray_stream.clock import Clock, SystemClock
from ray_stream.core.group import (
    DEFAULT_MAX_SESSION_TIMEOUT_MS,
    DEFAULT_MIN_SESSION_TIMEOUT_MS,
    GroupCoordinator,
    GroupDeletion,
    GroupDescription,
    GroupListing,
    JoinResult,
    LeaveResult,
    Pending,
    SyncResult,
)
from ray_stream.core.metadata_api import HeartbeatRequest, JoinRequest, LeaveRequest, SyncRequest
from ray_stream.errors import CoordinatorNotAvailable, GroupError

__all__ = ["GroupService"]

log = logging.getLogger(__name__)

_Result = JoinResult | SyncResult


class GroupService:
    """Classic consumer-group coordination for every group of the cluster.

    Args:
        clock: time source (``SystemClock`` by default; tests may pass ``ManualClock``).
        initial_rebalance_delay_ms: how long a new group's first rebalance waits for more
            members (Kafka's ``group.initial.rebalance.delay.ms`` is 3000; 300 keeps a
            single consumer's start quick while still batching a burst of joiners).
        tick_interval_s: the longest the background task sleeps between checks.
        rand: source of member-id uuids (seed it for reproducible ids).
        min_session_timeout_ms / max_session_timeout_ms: the session timeouts a JoinGroup
            may ask for (Kafka's ``group.min/max.session.timeout.ms``, 6 s and 30 min by
            default; the metadata service passes the Settings' values); outside them
            the join is answered InvalidSessionTimeout.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        initial_rebalance_delay_ms: int = 300,
        tick_interval_s: float = 0.1,
        rand: random.Random | None = None,
        min_session_timeout_ms: int = DEFAULT_MIN_SESSION_TIMEOUT_MS,
        max_session_timeout_ms: int = DEFAULT_MAX_SESSION_TIMEOUT_MS,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._core = GroupCoordinator(
            rand=rand if rand is not None else random.Random(),
            initial_rebalance_delay_ms=initial_rebalance_delay_ms,
            min_session_timeout_ms=min_session_timeout_ms,
            max_session_timeout_ms=max_session_timeout_ms,
        )
        self._tick_interval_s = tick_interval_s
        # ticket -> (future of the parked request, its answer if the service closes first)
        self._waiters: dict[int, tuple[asyncio.Future[_Result], _Result]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    async def join_group(self, request: JoinRequest) -> JoinResult:
        """JoinGroup; blocks until the rebalance completes (or its timeout passes).

        Returns:
            The member's JoinResult; the leader's carries every member's metadata.
        """
        outcome = self._core.join(
            request.group_id,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
            protocol_type=request.protocol_type,
            protocols=list(request.protocols),
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            client_id=request.client_id,
            client_host=request.client_host,
            require_known_member_id=request.require_known_member_id,
            now_ms=self._now_ms(),
        )
        unavailable = JoinResult(_unavailable(), -1, None, None, "", request.member_id, False, ())
        result = await self._settle(outcome, unavailable)
        assert isinstance(result, JoinResult)
        return result

    async def sync_group(self, request: SyncRequest) -> SyncResult:
        """SyncGroup; followers block until the leader sends the assignment."""
        outcome = self._core.sync(
            request.group_id,
            generation_id=request.generation_id,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
            protocol_type=request.protocol_type,
            protocol_name=request.protocol_name,
            assignments=list(request.assignments),
            now_ms=self._now_ms(),
        )
        result = await self._settle(outcome, SyncResult(_unavailable(), None, None, b""))
        assert isinstance(result, SyncResult)
        return result

    async def heartbeat(self, request: HeartbeatRequest) -> GroupError | None:
        """Heartbeat; RebalanceInProgress tells the member to rejoin."""
        error = self._core.heartbeat(
            request.group_id,
            generation_id=request.generation_id,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
            now_ms=self._now_ms(),
        )
        self._after_call()
        return error

    async def leave_group(self, request: LeaveRequest) -> LeaveResult:
        """LeaveGroup for (member_id, group_instance_id) pairs; per-member errors."""
        result = self._core.leave(request.group_id, list(request.members), now_ms=self._now_ms())
        self._after_call()
        return result

    async def list_groups(self, states: list[str] | None = None) -> list[GroupListing]:
        """Every group, optionally filtered by state."""
        self._after_call()
        return self._core.list_groups(states)

    async def describe_groups(self, group_ids: list[str]) -> list[GroupDescription]:
        """DescribeGroups; an unknown group is reported as state "Dead" with no members."""
        self._after_call()
        return self._core.describe(group_ids)

    async def delete_groups(self, group_ids: list[str]) -> list[GroupDeletion]:
        """Delete Empty groups (the caller also deletes their committed offsets)."""
        result = self._core.delete(group_ids)
        self._after_call()
        return result

    async def validate_offset_commit(
        self, group_id: str, *, generation_id: int, member_id: str
    ) -> GroupError | None:
        """Whether an OffsetCommit from this member/generation may be applied."""
        error = self._core.validate_offset_commit(
            group_id, generation_id=generation_id, member_id=member_id, now_ms=self._now_ms()
        )
        self._after_call()
        return error

    async def close(self) -> None:
        """Stop the background task and answer every parked request with
        CoordinatorNotAvailable (clients then find the coordinator again and rejoin)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([task])  # unlike `await task`, our own cancel still propagates
        waiters, self._waiters = self._waiters, {}
        for fut, unavailable in waiters.values():
            if not fut.done():
                fut.set_result(unavailable)

    # -- internals ---------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.monotonic_s() * 1000)

    async def _settle(self, outcome: _Result | Pending, unavailable: _Result) -> _Result:
        if not isinstance(outcome, Pending):
            self._after_call()
            return outcome
        fut: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        self._waiters[outcome.ticket] = (fut, unavailable)
        self._after_call()
        return await fut

    def _after_call(self) -> None:
        """Deliver what the last core call completed and make sure the ticker runs."""
        self._deliver()
        self._ensure_ticker()
        if self._wake is not None:
            self._wake.set()  # deadlines may have moved earlier

    def _deliver(self) -> None:
        for completion in self._core.take_completions():
            fut, _ = self._waiters.pop(completion.ticket, (None, None))
            if fut is not None and not fut.done():
                fut.set_result(completion.result)

    def _ensure_ticker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run_ticker(self._wake), name="group-service-ticker")

    async def _run_ticker(self, wake: asyncio.Event) -> None:
        while True:
            try:
                now_ms = self._now_ms()
                for group_id, member_id in self._core.tick(now_ms):
                    log.info(
                        "group %s: removed member %s (session/sync timeout)", group_id, member_id
                    )
                self._deliver()
                delay_s = self._tick_interval_s
                next_ms = self._core.next_deadline_ms()
                if next_ms is not None:
                    delay_s = min(delay_s, max((next_ms - now_ms) / 1000, 0.001))
            except Exception:  # a bug in one tick must not stop session expiry for good
                log.exception("group coordinator tick failed")
                delay_s = self._tick_interval_s
            # Sleep until the delay passes or a call moved a deadline. Not wait_for(): on
            # 3.11 it can swallow a cancel that races with the event being set.
            wake.clear()
            timer = asyncio.get_running_loop().call_later(delay_s, wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()


def _unavailable() -> CoordinatorNotAvailable:
    return CoordinatorNotAvailable("the group coordinator is shutting down: find it again")
