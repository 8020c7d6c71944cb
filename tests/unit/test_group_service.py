"""GroupService, the asyncio shell: parked joins/syncs, the session-expiry ticker, close().

Time comes from an injected ManualClock: a test moves it with ``advance``, which also
wakes the ticker (any call does) and lets it run once on the new time, so every
"not yet" and "now" below is exact in simulated milliseconds. Real time only bounds a
test that would otherwise hang (``run``'s and ``asyncio.wait_for``'s timeouts).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray_stream.clock import ManualClock
from ray_stream.core.group import GroupListing, JoinResult, MemberLeave, SyncResult
from ray_stream.core.metadata_api import HeartbeatRequest, JoinRequest, LeaveRequest, SyncRequest
from ray_stream.errors import (
    CoordinatorNotAvailable,
    GroupError,
    GroupIdNotFound,
    NonEmptyGroup,
    RebalanceInProgress,
    UnknownMemberId,
)
from ray_stream.metadata.group_service import GroupService

T = TypeVar("T")
G = "orders"
RANGE = ("range", b"meta")
HANG_GUARD_S = 2  # real seconds an answer that is already due may take to arrive


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=10))


def service(clock: ManualClock, **kwargs) -> GroupService:
    # A long tick interval: the ticker runs when a call wakes it (``settle``), and it
    # reads the ManualClock then, so simulated time alone decides what is due. Sessions
    # of 300 ms keep the scenarios short: lower Kafka's 6 s minimum.
    kwargs.setdefault("min_session_timeout_ms", 1)
    return GroupService(clock, tick_interval_s=60, **kwargs)


async def settle(svc: GroupService) -> None:
    """Wake the ticker (every call does) and let it and the answers it released run."""
    await svc.list_groups()
    for _ in range(5):
        await asyncio.sleep(0)


async def advance(clock: ManualClock, svc: GroupService, seconds: float) -> None:
    clock.advance(seconds)
    await settle(svc)


async def closed(svc: GroupService) -> None:
    await asyncio.wait_for(svc.close(), 1)  # the ticker must stop promptly


async def join(
    svc: GroupService,
    member_id: str = "",
    *,
    client: str = "c",
    session_ms: int = 300,
    rebalance_ms: int = 300,
) -> asyncio.Future[JoinResult]:
    """Send a JoinGroup at the current simulated time; the task holds its answer."""
    request = JoinRequest(
        group_id=G,
        member_id=member_id,
        group_instance_id=None,
        protocol_type="consumer",
        protocols=(RANGE,),
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=rebalance_ms,
        client_id=client,
        client_host="/127.0.0.1",
        require_known_member_id=False,
    )
    return await started(svc.join_group(request))


async def sync(
    svc: GroupService, member_id: str, generation: int, assignments=()
) -> asyncio.Future[SyncResult]:
    """Send a SyncGroup at the current simulated time; the task holds its answer."""
    request = SyncRequest(
        group_id=G,
        generation_id=generation,
        member_id=member_id,
        group_instance_id=None,
        protocol_type="consumer",
        protocol_name="range",
        assignments=tuple(assignments),
    )
    return await started(svc.sync_group(request))


async def started(call: Awaitable[T]) -> asyncio.Future[T]:
    """Run ``call`` up to where it waits (the coordinator has the request then)."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(0)
    return task


async def heartbeat(svc: GroupService, member_id: str, generation: int) -> GroupError | None:
    return await svc.heartbeat(HeartbeatRequest(G, generation, member_id, None))


async def answer(pending: Awaitable[T]) -> T:
    """The answer of a request that is due now (the guard only stops a hang)."""
    return await asyncio.wait_for(pending, HANG_GUARD_S)


async def form(
    svc: GroupService, clock: ManualClock, clients: list[str], **kwargs
) -> list[JoinResult]:
    """Join ``clients`` together, moving the clock through the initial delay, then sync."""
    joins = [await join(svc, client=c, **kwargs) for c in clients]
    for _ in range(20):  # the initial delay and its extensions, one step at a time
        if all(j.done() for j in joins):
            break
        await advance(clock, svc, 0.05)
    results = [await answer(j) for j in joins]
    leader = next(r for r in results if r.members)
    gen = leader.generation_id
    syncs = [await sync(svc, r.member_id, gen) for r in results if r is not leader]
    assignments = [(m[0], m[0].encode()) for m in leader.members]
    leader_sync = await sync(svc, leader.member_id, gen, assignments)
    synced = [await answer(s) for s in (leader_sync, *syncs)]
    assert all(s.error is None for s in synced)
    return results


def test_group_service_concurrent_joiners_complete_together():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=100, rand=random.Random(3))
        joins = [await join(svc, client=c) for c in ("a", "b", "c")]
        await advance(clock, svc, 0.1)
        # Others joined during the first delay: it is extended once (by another 100 ms).
        assert not any(j.done() for j in joins)
        await advance(clock, svc, 0.099)
        assert not any(j.done() for j in joins)
        await advance(clock, svc, 0.001)
        results = [await answer(j) for j in joins]
        assert {r.error for r in results} == {None}
        assert {r.generation_id for r in results} == {1}
        leaders = [r for r in results if r.members]
        assert len(leaders) == 1
        assert sorted(m[0] for m in leaders[0].members) == sorted(r.member_id for r in results)
        _a, b, _c = results
        follower = await sync(svc, b.member_id, 1)
        await settle(svc)
        assert not follower.done()  # followers wait for the leader's assignment
        leader_id = leaders[0].member_id
        others = [r for r in results if r.member_id != leader_id]
        assignments = [(r.member_id, r.member_id.encode()) for r in results]
        leader_sync = await answer(await sync(svc, leader_id, 1, assignments))
        assert leader_sync.assignment == leader_id.encode()
        rest = [await answer(await sync(svc, r.member_id, 1)) for r in others if r is not b]
        assert [s.assignment for s in rest] == [r.member_id.encode() for r in others if r is not b]
        assert (await answer(follower)).assignment == b.member_id.encode()
        desc = (await svc.describe_groups([G]))[0]
        assert desc.state == "Stable"
        assert {m.client_id for m in desc.members} == {"a", "b", "c"}
        await closed(svc)

    run(body)


def test_group_service_evicts_member_that_stops_heartbeating():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=50)
        alive, silent = await form(svc, clock, ["alive", "silent"], session_ms=300)
        gen = alive.generation_id
        # Both sessions restarted at the sync (now); only "alive" keeps heartbeating.
        await advance(clock, svc, 0.2)
        assert await heartbeat(svc, alive.member_id, gen) is None
        await advance(clock, svc, 0.099)
        assert await heartbeat(svc, alive.member_id, gen) is None  # silent: 1 ms left
        await advance(clock, svc, 0.001)
        error = await heartbeat(svc, alive.member_id, gen)
        assert isinstance(error, RebalanceInProgress)  # silent's session ran out
        rejoined = await answer(await join(svc, alive.member_id))
        assert rejoined.generation_id == gen + 1
        assert [m[0] for m in rejoined.members] == [alive.member_id]
        assert isinstance(await heartbeat(svc, silent.member_id, gen), UnknownMemberId)
        await closed(svc)

    run(body)


def test_group_service_join_returns_at_rebalance_timeout_without_the_absent_member():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=0)
        (old,) = await form(svc, clock, ["old"], session_ms=5_000, rebalance_ms=300)
        newcomer_join = await join(svc, client="new", session_ms=5_000, rebalance_ms=300)
        await advance(clock, svc, 0.299)
        assert not newcomer_join.done()  # old may still rejoin within the rebalance timeout
        await advance(clock, svc, 0.001)
        newcomer = await answer(newcomer_join)
        assert newcomer.generation_id == old.generation_id + 1
        assert [m[0] for m in newcomer.members] == [newcomer.member_id]
        gone = await heartbeat(svc, old.member_id, old.generation_id)
        assert isinstance(gone, UnknownMemberId)
        await closed(svc)

    run(body)


def test_group_service_is_driven_by_the_injected_clock():
    async def body() -> None:
        clock = ManualClock()
        # A short tick interval and no call after the clock moves: the ticker must read
        # the injected clock by itself.
        svc = GroupService(
            clock, initial_rebalance_delay_ms=1_000, tick_interval_s=0.01, min_session_timeout_ms=1
        )
        task = await join(svc)
        await settle(svc)
        assert not task.done()  # no simulated time passed: the initial delay still runs
        clock.advance(1.0)
        result = await answer(task)
        assert result.generation_id == 1
        await closed(svc)

    run(body)


def test_group_service_cancelled_joiner_does_not_block_others():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=200)
        gone = await join(svc, client="gone")
        gone.cancel()
        staying_join = await join(svc, client="stay")
        await advance(clock, svc, 0.2)
        await advance(clock, svc, 0.1)  # the delay, extended for "stay" up to the timeout
        staying = await answer(staying_join)
        assert staying.error is None
        assert staying.generation_id == 1
        assert staying.leader != staying.member_id  # the cancelled joiner is still the leader
        # The leader never sends SyncGroup: after the rebalance timeout it is removed and
        # the waiting follower is told to rejoin, which it then does as the only member.
        follower = await sync(svc, staying.member_id, 1)
        await advance(clock, svc, 0.299)
        assert not follower.done()
        await advance(clock, svc, 0.001)
        synced = await answer(follower)
        assert isinstance(synced.error, RebalanceInProgress)
        again = await answer(await join(svc, staying.member_id))
        assert again.generation_id == 2
        assert again.members == ((staying.member_id, None, b"meta"),)
        await closed(svc)

    run(body)


def test_group_service_close_answers_parked_requests():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=5_000)
        task = await join(svc, session_ms=10_000, rebalance_ms=10_000)
        await settle(svc)
        assert not task.done()
        await closed(svc)
        result = await answer(task)
        assert isinstance(result.error, CoordinatorNotAvailable)

    run(body)


def test_group_service_admin_calls_delegate_to_the_core():
    async def body() -> None:
        clock = ManualClock()
        svc = service(clock, initial_rebalance_delay_ms=0)
        assert await svc.validate_offset_commit("simple", generation_id=-1, member_id="") is None
        (member,) = await form(svc, clock, ["a"])
        refused = await svc.validate_offset_commit(
            G, generation_id=member.generation_id, member_id="x"
        )
        assert isinstance(refused, UnknownMemberId)
        assert await svc.list_groups(["Stable"]) == [GroupListing(G, "consumer", "Stable")]
        deleted = await svc.delete_groups([G, "simple", "nope"])
        assert [(d.group_id, type(d.error)) for d in deleted] == [
            (G, NonEmptyGroup),
            ("simple", type(None)),
            ("nope", GroupIdNotFound),
        ]
        left = await svc.leave_group(LeaveRequest(G, ((member.member_id, None),)))
        assert left.error is None
        assert left.members == (MemberLeave(member.member_id, None, None),)
        assert (await svc.describe_groups([G]))[0].state == "Empty"
        deleted = await svc.delete_groups([G])
        assert [(d.group_id, d.error) for d in deleted] == [(G, None)]
        await closed(svc)

    run(body)
