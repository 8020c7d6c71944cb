"""The live fleet: AgentRegistry leases (metadata/registry.py) and an agent's Membership
(agent/membership.py) over the real in-process MetadataService.

What a user relies on here: an agent is in the fleet from its first heartbeat until it
deregisters or stops renewing for ``wait_s + LEASE_GRACE_S``; every other agent hears of a
change at once (its long poll returns early), not at the end of its wait; and an agent
whose metadata service is away keeps serving with the last view it had.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from ray_stream.agent.membership import Membership
from ray_stream.clock import ManualClock
from ray_stream.config import Settings
from ray_stream.core.fleet import AgentRecord, FleetView, chunk_owner
from ray_stream.core.types import BrokerInfo
from ray_stream.errors import Unavailable
from ray_stream.metadata.registry import LEASE_GRACE_S, MAX_WAIT_S, AgentRegistry
from tests.fakes import make_meta

A = AgentRecord(1, "10.0.0.1", 9092, zone="a")
B = AgentRecord(2, "10.0.0.2", 9092, zone="a")
C = AgentRecord(3, "10.0.0.3", 9092, zone="b")
POLL_S = 30.0  # long polls that a test ends by a change, or cancels


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def ids(view: FleetView) -> list[int]:
    return [a.agent_id for a in view.agents]


def registry(clock: ManualClock | None = None) -> AgentRegistry:
    return AgentRegistry(clock or ManualClock(), rand=random.Random(7))


async def settle(pred: Callable[[], bool], *, bound_s: float = 5.0) -> None:
    """Let the loop run until ``pred()`` holds (the bound only stops a broken test)."""

    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(until(), bound_s)


async def ticks(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ------------------------------------------------------------------ AgentRegistry
def test_registry_heartbeat_registers_the_agent_and_bumps_the_version():
    async def scenario() -> tuple[FleetView, FleetView]:
        reg = registry()
        empty = reg.view()
        return empty, await reg.heartbeat(A, -1, 0.0)

    empty, joined = asyncio.run(scenario())
    assert empty.agents == ()
    assert joined.agents == (A,)
    assert joined.version != empty.version


def test_registry_view_lists_agents_by_id():
    async def scenario() -> FleetView:
        reg = registry()
        for record in (C, A, B):
            await reg.heartbeat(record, -1, 0.0)
        return reg.view()

    assert ids(asyncio.run(scenario())) == [1, 2, 3]


def test_registry_renewal_alone_does_not_bump_the_version():
    async def scenario() -> tuple[int, int, int]:
        reg = registry()
        first = (await reg.heartbeat(A, -1, 0.0)).version
        again = (await reg.heartbeat(A, -1, 0.0)).version
        return first, again, reg.view().version

    first, again, now = asyncio.run(scenario())
    assert first == again == now


def test_registry_a_changed_record_bumps_the_version():
    async def scenario() -> tuple[FleetView, FleetView]:
        reg = registry()
        first = await reg.heartbeat(A, -1, 0.0)
        moved = AgentRecord(1, "10.0.0.1", 9999, zone="a")
        return first, await reg.heartbeat(moved, first.version, POLL_S)  # answers at once

    first, second = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert second.version != first.version
    assert second.agents[0].port == 9999


def test_registry_lease_expires_after_wait_plus_grace():
    clock = ManualClock()

    async def scenario() -> tuple[list[int], list[int], int, list[int]]:
        reg = registry(clock)
        await reg.heartbeat(A, -1, 0.0)
        joined = await reg.heartbeat(B, -1, 10.0)  # known -1: answers at once
        clock.advance(LEASE_GRACE_S + 0.5)  # A's lease (0 + grace) ran out, B's did not
        after_a = reg.view()
        clock.advance(10.0 - 0.5)  # exactly at B's deadline: still alive
        at_deadline = ids(reg.view())
        clock.advance(0.01)
        after_b = reg.view()
        return ids(after_a), at_deadline, after_a.version - joined.version, ids(after_b)

    after_a, at_deadline, bumped, after_b = asyncio.run(scenario())
    assert after_a == [2]
    assert at_deadline == [2]
    assert bumped == 1
    assert after_b == []


def test_registry_lease_expiry_removes_the_agent_and_bumps_the_version():
    clock = ManualClock()

    async def scenario() -> tuple[FleetView, FleetView]:
        reg = registry(clock)
        before = await reg.heartbeat(A, -1, 5.0)
        clock.advance(5.0 + LEASE_GRACE_S + 0.01)
        return before, reg.view()

    before, after = asyncio.run(scenario())
    assert ids(before) == [1]
    assert after.agents == ()
    assert after.version != before.version


def test_registry_wait_is_capped_so_a_lease_never_outlives_max_wait():
    clock = ManualClock()

    async def scenario() -> tuple[list[int], list[int]]:
        reg = registry(clock)
        await reg.heartbeat(A, -1, 10_000.0)
        clock.advance(MAX_WAIT_S + LEASE_GRACE_S - 0.01)
        alive = ids(reg.view())
        clock.advance(0.02)
        return alive, ids(reg.view())

    assert asyncio.run(scenario()) == ([1], [])


def test_registry_long_poll_returns_early_when_another_agent_joins():
    async def scenario() -> tuple[bool, FleetView, int]:
        reg = registry()
        known = (await reg.heartbeat(A, -1, 0.0)).version
        polling = asyncio.create_task(reg.heartbeat(A, known, POLL_S))
        await ticks()
        waited = not polling.done()
        await reg.heartbeat(B, -1, 0.0)
        return waited, await asyncio.wait_for(polling, 5), known

    waited, answer, known = asyncio.run(scenario())
    assert waited  # it was a long poll, not an immediate answer
    assert ids(answer) == [1, 2]
    assert answer.version != known


def test_registry_long_poll_returns_early_when_an_agent_deregisters():
    async def scenario() -> tuple[bool, FleetView]:
        reg = registry()
        await reg.heartbeat(B, -1, 0.0)
        known = (await reg.heartbeat(A, -1, 0.0)).version
        polling = asyncio.create_task(reg.heartbeat(A, known, POLL_S))
        await ticks()
        waited = not polling.done()
        reg.deregister(B.agent_id)
        return waited, await asyncio.wait_for(polling, 5)

    waited, answer = asyncio.run(scenario())
    assert waited
    assert ids(answer) == [1]


def test_registry_long_poll_is_not_woken_by_a_renewal():
    async def scenario() -> bool:
        reg = registry()
        await reg.heartbeat(B, -1, 0.0)
        known = (await reg.heartbeat(A, -1, 0.0)).version
        polling = asyncio.create_task(reg.heartbeat(A, known, POLL_S))
        await ticks()
        await reg.heartbeat(B, known, 0.0)  # B renews with the same record
        await ticks()
        still_waiting = not polling.done()
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        return still_waiting

    assert asyncio.run(scenario())


def test_registry_heartbeat_with_an_old_version_answers_at_once():
    async def scenario() -> FleetView:
        reg = registry()
        old = (await reg.heartbeat(A, -1, 0.0)).version
        await reg.heartbeat(B, -1, 0.0)
        return await reg.heartbeat(A, old, POLL_S)

    assert ids(asyncio.run(asyncio.wait_for(scenario(), 5))) == [1, 2]


def test_registry_deregister_removes_the_agent_and_bumps_the_version():
    async def scenario() -> tuple[FleetView, FleetView, FleetView]:
        reg = registry()
        await reg.heartbeat(A, -1, 0.0)
        before = await reg.heartbeat(B, -1, 0.0)
        reg.deregister(B.agent_id)
        after = reg.view()
        reg.deregister(B.agent_id)  # again: nothing changes
        reg.deregister(42)
        return before, after, reg.view()

    before, after, again = asyncio.run(scenario())
    assert ids(after) == [1]
    assert after.version != before.version
    assert again.version == after.version


def test_registry_last_address_survives_deregistration_and_expiry():
    clock = ManualClock()

    async def scenario() -> tuple[Any, ...]:
        reg = registry(clock)
        unknown = reg.last_address(1)
        await reg.heartbeat(A, -1, 0.0)
        await reg.heartbeat(B, -1, 0.0)
        reg.deregister(A.agent_id)
        clock.advance(LEASE_GRACE_S + 1)  # B's lease runs out
        gone = reg.view()
        return unknown, gone, reg.last_address(1), reg.last_address(2)

    unknown, gone, first, second = asyncio.run(scenario())
    assert unknown is None
    assert gone.agents == ()
    assert first == BrokerInfo(1, "10.0.0.1", 9092, "a")
    assert second == BrokerInfo(2, "10.0.0.2", 9092, "a")


def test_registry_remember_address_is_answered_by_last_address():
    reg = registry()
    reg.remember_address(5, BrokerInfo(5, "h", 9097))
    reg.remember_address(5, BrokerInfo(5, "h", 9098))
    assert reg.last_address(5) == BrokerInfo(5, "h", 9098)
    assert reg.last_address(6) is None
    assert reg.view().agents == ()  # an address is not a live agent


# --------------------------------------------------------------------- Membership
class SwitchableMetadata:
    """The two registry calls Membership makes, failing while ``failing`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = False
        self.failures = 0

    async def agent_heartbeat(
        self, record: AgentRecord, known_version: int, wait_s: float
    ) -> FleetView:
        if self.failing:
            self.failures += 1
            raise Unavailable("metadata service is away")
        result: FleetView = await self.inner.agent_heartbeat(record, known_version, wait_s)
        return result

    async def deregister_agent(self, agent_id: int) -> None:
        if self.failing:
            self.failures += 1
            raise Unavailable("metadata service is away")
        await self.inner.deregister_agent(agent_id)


def run_membership(settings: Settings, scenario: Any) -> Any:
    """``scenario(service, meta, clock)``: the real metadata service on a ManualClock,
    ``meta`` a SwitchableMetadata in front of it."""

    async def main() -> Any:
        clock = ManualClock()
        service = make_meta(settings, clock=clock)
        try:
            return await scenario(service, SwitchableMetadata(service), clock)
        finally:
            await service.close()

    return asyncio.run(main())


def membership(meta: Any, clock: ManualClock, record: AgentRecord) -> Membership:
    return Membership(meta, record=record, clock=clock, rand=random.Random(record.agent_id))


def test_membership_join_registers_the_agent_with_its_listener(settings):
    async def scenario(service, meta, clock) -> Any:
        member = membership(meta, clock, AgentRecord(1, "", 0, zone="a"))
        await member.join("10.0.0.1", 9092)
        fleet = await service.fleet()
        await member.close()
        return member, fleet

    member, fleet = run_membership(settings, scenario)
    assert fleet.agents == (AgentRecord(1, "10.0.0.1", 9092, zone="a"),)
    assert member.view.agents == fleet.agents
    assert member.joined


def test_membership_answers_members_discover_ring_and_owner_from_its_view(settings):
    others = [
        AgentRecord(2, "10.0.0.2", 9092, zone="a"),
        AgentRecord(3, "10.0.0.3", 9092, zone="b"),
        AgentRecord(4, "10.0.0.4", 9092, zone="a", group="analytics"),
        AgentRecord(5, "10.0.0.5", 0, zone="a"),  # no Kafka listener
    ]

    async def scenario(service, meta, clock) -> Any:
        for record in others:
            await service.agent_heartbeat(record, -1, POLL_S)
        member = membership(meta, clock, AgentRecord(1, "", 0, zone="a"))
        await member.join("10.0.0.1", 9092)
        try:
            return (
                [a.agent_id for a in member.members()],
                {z: [b.node_id for b in member.discover(z)] for z in ("a", "b", "x", None)},
                member.zones(),
                member.ring(),
                [member.owner(f"segments/{i}.arrow", 0) for i in range(50)],
            )
        finally:
            await member.close()

    members, discovered, zones, ring, owned = run_membership(settings, scenario)
    assert members == [1, 2, 3, 5]  # not agent 4: another group
    assert discovered == {"a": [1, 2], "b": [3], "x": [1, 2, 3], None: [1, 2, 3]}
    assert zones == {"a", "b"}
    assert ring == [1, 2, 5]  # its zone's agents, listening or not
    assert owned == [chunk_owner([1, 2, 5], f"segments/{i}.arrow", 0) for i in range(50)]
    assert set(owned) == {1, 2, 5}


def test_membership_lists_itself_even_before_the_registry_answered(settings):
    async def scenario(service, meta, clock) -> Any:
        meta.failing = True
        member = membership(meta, clock, AgentRecord(1, "", 0, zone="a"))
        with pytest.raises(Unavailable):
            await member.join("10.0.0.1", 9092)
        try:
            return member.members(), member.discover("a"), member.ring()
        finally:
            await member.close()

    members, discovered, ring = run_membership(settings, scenario)
    assert members == [AgentRecord(1, "10.0.0.1", 9092, zone="a")]
    assert discovered == [BrokerInfo(1, "10.0.0.1", 9092, "a")]
    assert ring == [1]


def test_membership_view_follows_another_agent_joining(settings):
    async def scenario(service, meta, clock) -> list[int]:
        member = membership(meta, clock, AgentRecord(1, "", 0))
        await member.join("10.0.0.1", 9092)
        await service.agent_heartbeat(AgentRecord(2, "10.0.0.2", 9092), -1, POLL_S)
        await settle(lambda: member.view.get(2) is not None)  # the long poll returned
        await member.close()
        return [a.agent_id for a in member.members()]

    assert run_membership(settings, scenario) == [1, 2]


def test_membership_keeps_its_view_while_heartbeats_fail(settings):
    async def scenario(service, meta, clock) -> Any:
        await service.agent_heartbeat(AgentRecord(2, "10.0.0.2", 9092, zone="a"), -1, POLL_S)
        member = membership(meta, clock, AgentRecord(1, "", 0, zone="a"))
        await member.join("10.0.0.1", 9092)
        before = member.view
        meta.failing = True  # before the lease loop's first heartbeat
        clock.advance(5.0)
        await settle(lambda: meta.failures >= 1)
        during = (member.view, member.failing_since, [a.agent_id for a in member.members()])
        discovered = [b.node_id for b in member.discover("a")]
        meta.failing = False
        await service.agent_heartbeat(AgentRecord(3, "10.0.0.3", 9092, zone="a"), -1, POLL_S)
        await settle(lambda: member.view.get(3) is not None)  # recovered after the backoff
        recovered = member.failing_since, member.heartbeats
        await member.close()
        return before, during, discovered, recovered

    before, (view, failing_since, members), discovered, recovered = run_membership(
        settings, scenario
    )
    assert view is before
    assert failing_since == 5.0
    assert members == [1, 2]
    assert discovered == [1, 2]
    assert recovered[0] is None
    assert recovered[1] >= 1


def test_membership_close_deregisters_at_once(settings):
    async def scenario(service, meta, clock) -> Any:
        await service.agent_heartbeat(AgentRecord(2, "10.0.0.2", 9092), -1, POLL_S)
        member = membership(meta, clock, AgentRecord(1, "", 0))
        await member.join("10.0.0.1", 9092)
        joined = ids(await service.fleet())
        await member.close()
        return joined, ids(await service.fleet()), await service.agent_address(1)

    joined, after, address = run_membership(settings, scenario)
    assert joined == [1, 2]
    assert after == [2]
    assert address == BrokerInfo(1, "10.0.0.1", 9092)


def test_membership_close_without_deregister_leaves_the_lease_to_run_out(settings):
    async def scenario(service, meta, clock) -> Any:
        member = membership(meta, clock, AgentRecord(1, "", 0))
        await member.join("10.0.0.1", 9092)
        await member.close(deregister=False)
        return ids(await service.fleet())

    assert run_membership(settings, scenario) == [1]


def test_membership_close_when_the_service_is_away_does_not_raise(settings):
    async def scenario(service, meta, clock) -> Any:
        member = membership(meta, clock, AgentRecord(1, "", 0))
        await member.join("10.0.0.1", 9092)
        meta.failing = True
        await member.close()
        return ids(await service.fleet())

    assert run_membership(settings, scenario) == [1]  # its lease runs out instead
