"""AgentRegistry: the live agents, as leases the agents renew by long-polling.

Each agent calls ``heartbeat`` in a loop with the fleet version it knows; the call
renews its lease and answers at once when the fleet changed since, else after
``wait_s`` (or as soon as it changes). So one call per agent is outstanding at any time,
a change reaches every agent within milliseconds, and an agent that died (no call for
``wait_s + LEASE_GRACE_S``) leaves the view at the next call of any other agent.

Rules:

1. The registry is soft state: nothing in it is journaled. A restarted metadata service
   starts empty with a new random version, and the agents' next heartbeats fill it
   again within one ``wait_s``.
2. A record that changes (new listener, zone, ...) or appears or leaves bumps the
   version; a renewal alone does not.
3. ``last_address`` survives leases and deregistration: a restarted agent asks for it to
   listen on the port its clients know.

Never: Ray, the object store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from ray_stream.clock import Clock
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.types import BrokerInfo

__all__ = ["LEASE_GRACE_S", "MAX_WAIT_S", "AgentRegistry"]

LEASE_GRACE_S = 4.0  # an agent that stopped calling is gone this long after its last wait
MAX_WAIT_S = 30.0


class AgentRegistry:
    """Live agent records with leases (see the module doc)."""

    def __init__(self, clock: Clock, rand: random.Random | None = None) -> None:
        self._clock = clock
        self._records: dict[int, AgentRecord] = {}
        self._until: dict[int, float] = {}
        self._addresses: dict[int, BrokerInfo] = {}
        self._version = (rand or random.Random()).getrandbits(48) << 8
        self._changed = asyncio.Event()

    def view(self) -> FleetView:
        self._expire()
        agents = tuple(self._records[i] for i in sorted(self._records))
        return FleetView(self._version, agents)

    async def heartbeat(self, record: AgentRecord, known_version: int, wait_s: float) -> FleetView:
        """Renew ``record``'s lease; the fleet once it differs from ``known_version``."""
        wait_s = min(max(wait_s, 0.0), MAX_WAIT_S)
        self._expire()  # a lease that ran out is news to this caller
        self._renew(record, wait_s)
        if known_version == self._version and wait_s > 0:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait_s)
            if self._records.get(record.agent_id) == record:  # not deregistered or replaced
                self._renew(record, 0.0)
        return self.view()

    def deregister(self, agent_id: int) -> None:
        """Take an agent out of the view (it stopped, or its node left)."""
        if self._records.pop(agent_id, None) is not None:
            self._until.pop(agent_id, None)
            self._bump()

    def remember_address(self, agent_id: int, address: BrokerInfo) -> None:
        self._addresses[agent_id] = address

    def last_address(self, agent_id: int) -> BrokerInfo | None:
        return self._addresses.get(agent_id)

    def _renew(self, record: AgentRecord, wait_s: float) -> None:
        self._until[record.agent_id] = self._clock.monotonic_s() + wait_s + LEASE_GRACE_S
        self._addresses[record.agent_id] = record.broker
        if self._records.get(record.agent_id) != record:
            self._records[record.agent_id] = record
            self._bump()

    def _expire(self) -> None:
        now = self._clock.monotonic_s()
        gone = [i for i, until in self._until.items() if until < now]
        for agent_id in gone:
            self.deregister(agent_id)

    def _bump(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()
