"""Membership: one agent's place in the fleet, and its view of the others.

The agent registers its ``AgentRecord`` with the metadata service and keeps its lease
by long-polling ``agent_heartbeat`` (metadata/registry.py), which also brings it every
change of the fleet within milliseconds. From that view it answers the two fleet
questions an agent has (core/fleet.py): which agents a Kafka client should see, and
which agent of its zone owns a chunk.

Rules:

1. **The view survives the metadata service's absence**: when heartbeats fail, the last
   view stays (agents keep serving and reading through their peers); ``failing_since``
   tells the shell for how long.
2. **This agent is always in its own view** once it listens, even before the registry
   answered: a client that bootstraps to it gets at least this agent.
3. One heartbeat is outstanding at a time; a changed record (the listener bound) is
   sent at once, not at the end of the current long poll.

Never: Ray, sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace

from ray_stream.clock import Clock
from ray_stream.core.backoff import Backoff
from ray_stream.core.fleet import AgentRecord, FleetView, chunk_owner
from ray_stream.core.metadata_api import MetadataClient
from ray_stream.core.types import BrokerInfo

__all__ = ["HEARTBEAT_WAIT_S", "Membership"]

log = logging.getLogger(__name__)

HEARTBEAT_WAIT_S = 3.0


class Membership:
    """An agent's registration and fleet view (see the module doc).

    Args:
        meta: the metadata service.
        record: this agent; ``host``/``port`` are filled in by ``listening``.
        clock / rand: time and backoff jitter.
        wait_s: the heartbeat long poll (a dead agent leaves the view within
            ``wait_s + LEASE_GRACE_S``).
    """

    def __init__(
        self,
        meta: MetadataClient,
        *,
        record: AgentRecord,
        clock: Clock,
        rand: random.Random,
        wait_s: float = HEARTBEAT_WAIT_S,
    ) -> None:
        self._meta = meta
        self.record = record
        self.view = FleetView(-1)
        self._clock = clock
        self._rand = rand
        self._wait_s = wait_s
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        self._closed = False
        self.failing_since: float | None = None
        self.heartbeats = 0

    @property
    def joined(self) -> bool:
        return self._joined

    @property
    def agent_id(self) -> int:
        return self.record.agent_id

    # ------------------------------------------------------------------ lifecycle
    async def join(self, host: str, port: int) -> None:
        """Register (listening at ``host:port``; port 0: no listener) and keep the lease.

        Raises:
            Whatever the first heartbeat raised; the lease loop runs on regardless.
        """
        self.record = replace(self.record, host=host, port=port)
        self._joined = True
        try:
            await self.refresh()
        finally:
            self.start()

    async def refresh(self) -> FleetView:
        """One heartbeat now (no wait): registers the current record, updates the view."""
        self.view = await self._meta.agent_heartbeat(self.record, -1, 0.0)
        return self.view

    def start(self) -> None:
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="membership")

    async def close(self, *, deregister: bool = True) -> None:
        """Stop the lease loop and (by default) leave the fleet at once."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if deregister and self._joined:
            try:
                await asyncio.wait_for(self._meta.deregister_agent(self.agent_id), 5)
            except Exception as exc:  # its lease runs out instead
                log.info("agent-%d could not deregister: %s", self.agent_id, exc)

    async def _loop(self) -> None:
        backoff = Backoff(rand=self._rand)
        while not self._closed:
            try:
                view = await self._meta.agent_heartbeat(
                    self.record, self.view.version, self._wait_s
                )
            except Exception as exc:  # loop boundary: the metadata service is away (rule 1)
                if self.failing_since is None:
                    self.failing_since = self._clock.monotonic_s()
                log.info("agent-%d heartbeat failed, retrying: %s", self.agent_id, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            self.heartbeats += 1
            self.failing_since = None
            backoff = Backoff(rand=self._rand)
            self.view = view

    # ------------------------------------------------------------------ questions
    def members(self) -> list[AgentRecord]:
        """The live agents of this agent's group, with this one (rule 2)."""
        found = [a for a in self.view.group(self.record.group) if a.agent_id != self.agent_id]
        if self._joined:
            found.append(self.record)
        return sorted(found, key=lambda a: a.agent_id)

    def discover(self, zone: str | None) -> list[BrokerInfo]:
        """The listeners a Kafka client of ``zone`` (None: no zone) should see."""
        listening = FleetView(self.view.version, tuple(a for a in self.members() if a.port))
        return [a.broker for a in listening.discover(self.record.group, zone)]

    def zones(self) -> set[str]:
        """The zones this agent's group has agents in."""
        return {a.zone for a in self.members()}

    def ring(self) -> list[int]:
        """The members of this agent's (group, zone) cache ring."""
        return [a.agent_id for a in self.members() if a.zone == self.record.zone]

    def owner(self, key: str, index: int) -> int | None:
        """The agent of this zone that owns chunk ``index`` of object ``key``."""
        return chunk_owner(self.ring(), key, index)
