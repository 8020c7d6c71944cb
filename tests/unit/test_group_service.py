"""GroupService, the asyncio shell: parked joins/syncs, the session-expiry ticker, close()."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from ray_stream.actors.group_service import GroupService, JoinResult
from ray_stream.clock import ManualClock

G = "orders"
RANGE = ("range", b"meta")


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=5))


async def closed(svc: GroupService) -> None:
    await asyncio.wait_for(svc.close(), 1)  # the ticker must stop promptly


def join(
    svc: GroupService,
    member_id: str = "",
    *,
    client: str = "c",
    session_ms: int = 300,
    rebalance_ms: int = 300,
) -> Awaitable[JoinResult]:
    return svc.join_group(
        G,
        member_id=member_id,
        group_instance_id=None,
        protocol_type="consumer",
        protocols=[RANGE],
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=rebalance_ms,
        client_id=client,
        client_host="/127.0.0.1",
        require_known_member_id=False,
    )


async def sync(svc: GroupService, member_id: str, generation: int, assignments=()):
    return await svc.sync_group(
        G,
        generation_id=generation,
        member_id=member_id,
        group_instance_id=None,
        protocol_type="consumer",
        protocol_name="range",
        assignments=list(assignments),
    )


async def heartbeat(svc: GroupService, member_id: str, generation: int) -> str | None:
    return await svc.heartbeat(
        G, generation_id=generation, member_id=member_id, group_instance_id=None
    )


async def form(svc: GroupService, clients: list[str], **kwargs) -> list[JoinResult]:
    results = await asyncio.gather(*(join(svc, client=c, **kwargs) for c in clients))
    leader = next(r for r in results if r.members)
    gen = leader.generation_id
    syncs = [sync(svc, r.member_id, gen) for r in results if r is not leader]
    assignments = [(m[0], m[0].encode()) for m in leader.members]
    synced = await asyncio.gather(sync(svc, leader.member_id, gen, assignments), *syncs)
    assert all(s.error is None for s in synced)
    return list(results)


def test_group_service_concurrent_joiners_complete_together():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=100, rand=random.Random(3))
        started = time.monotonic()
        results = await asyncio.gather(*(join(svc, client=c) for c in ("a", "b", "c")))
        elapsed = time.monotonic() - started
        assert {r.error for r in results} == {None}
        assert {r.generation_id for r in results} == {1}
        leaders = [r for r in results if r.members]
        assert len(leaders) == 1
        assert sorted(m[0] for m in leaders[0].members) == sorted(r.member_id for r in results)
        assert 0.1 <= elapsed < 2  # the initial delay (extended once) was waited, not more
        a, b, c = results
        follower = asyncio.ensure_future(sync(svc, b.member_id, 1))
        await asyncio.sleep(0)
        assert not follower.done()  # followers wait for the leader's assignment
        leader_id = leaders[0].member_id
        others = [r for r in results if r.member_id != leader_id]
        assignments = [(r.member_id, r.member_id.encode()) for r in results]
        leader_sync = await sync(svc, leader_id, 1, assignments)
        assert leader_sync.assignment == leader_id.encode()
        rest = await asyncio.gather(*(sync(svc, r.member_id, 1) for r in others if r is not b))
        assert [s.assignment for s in rest] == [r.member_id.encode() for r in others if r is not b]
        assert (await follower).assignment == b.member_id.encode()
        desc = (await svc.describe_groups([G]))[0]
        assert desc.state == "Stable"
        assert {m.client_id for m in desc.members} == {"a", "b", "c"}
        del a, c
        await closed(svc)

    run(body)


def test_group_service_evicts_member_that_stops_heartbeating():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=50)
        alive, silent = await form(svc, ["alive", "silent"], session_ms=300, rebalance_ms=300)
        gen = alive.generation_id
        error = None
        deadline = time.monotonic() + 3
        while error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            error = await heartbeat(svc, alive.member_id, gen)
        assert error == "REBALANCE_IN_PROGRESS"  # silent's session ran out
        rejoined = await join(svc, alive.member_id)
        assert rejoined.generation_id == gen + 1
        assert [m[0] for m in rejoined.members] == [alive.member_id]
        assert await heartbeat(svc, silent.member_id, gen) == "UNKNOWN_MEMBER_ID"
        await closed(svc)

    run(body)


def test_group_service_join_returns_at_rebalance_timeout_without_the_absent_member():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=0)
        (old,) = await form(svc, ["old"], session_ms=5_000, rebalance_ms=300)
        started = time.monotonic()
        newcomer = await join(svc, client="new", session_ms=5_000, rebalance_ms=300)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 2
        assert newcomer.generation_id == old.generation_id + 1
        assert [m[0] for m in newcomer.members] == [newcomer.member_id]
        assert await heartbeat(svc, old.member_id, old.generation_id) == "UNKNOWN_MEMBER_ID"
        await closed(svc)

    run(body)


def test_group_service_is_driven_by_the_injected_clock():
    async def body() -> None:
        clock = ManualClock()
        svc = GroupService(clock, initial_rebalance_delay_ms=1_000, tick_interval_s=0.01)
        task = asyncio.ensure_future(join(svc))
        await asyncio.sleep(0.1)
        assert not task.done()  # no simulated time passed: the initial delay still runs
        clock.advance(1.0)
        result = await asyncio.wait_for(task, 2)
        assert result.generation_id == 1
        await closed(svc)

    run(body)


def test_group_service_cancelled_joiner_does_not_block_others():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=200)
        gone = asyncio.ensure_future(join(svc, client="gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        staying = await join(svc, client="stay")
        assert staying.error is None
        assert staying.generation_id == 1
        assert staying.leader != staying.member_id  # the cancelled joiner is still the leader
        # The leader never sends SyncGroup: after the rebalance timeout it is removed and
        # the waiting follower is told to rejoin, which it then does as the only member.
        synced = await sync(svc, staying.member_id, 1)
        assert synced.error == "REBALANCE_IN_PROGRESS"
        again = await join(svc, staying.member_id)
        assert again.generation_id == 2
        assert again.members == ((staying.member_id, None, b"meta"),)
        await closed(svc)

    run(body)


def test_group_service_close_answers_parked_requests():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=5_000)
        task = asyncio.ensure_future(join(svc, session_ms=10_000, rebalance_ms=10_000))
        await asyncio.sleep(0.01)
        await closed(svc)
        result = await asyncio.wait_for(task, 1)
        assert result.error == "COORDINATOR_NOT_AVAILABLE"

    run(body)


def test_group_service_admin_calls_delegate_to_the_core():
    async def body() -> None:
        svc = GroupService(initial_rebalance_delay_ms=0)
        assert await svc.validate_offset_commit("simple", generation_id=-1, member_id="") is None
        (member,) = await form(svc, ["a"])
        assert (
            await svc.validate_offset_commit(G, generation_id=member.generation_id, member_id="x")
            == "UNKNOWN_MEMBER_ID"
        )
        assert await svc.list_groups(["Stable"]) == [(G, "consumer", "Stable")]
        assert await svc.delete_groups([G, "simple", "nope"]) == [
            (G, "NON_EMPTY_GROUP"),
            ("simple", None),
            ("nope", "GROUP_ID_NOT_FOUND"),
        ]
        assert await svc.leave_group(G, [(member.member_id, None)]) == (
            None,
            [(member.member_id, None, None)],
        )
        assert (await svc.describe_groups([G]))[0].state == "Empty"
        assert await svc.delete_groups([G]) == [(G, None)]
        await closed(svc)

    run(body)
