"""FleetManager: the actor that keeps the agents the settings ask for.

Two modes (docs/design/0004-agent-fleet.md):

- **Counted** (``agents_per_node == 0``, the embedded cluster): each group has a number
  of agents (the default group ``settings.agents``, others their ``agents``), resizable
  live with ``scale``. Zones are simulated when ``settings.zones`` names some: agent
  ``n`` is in ``zones[n % len(zones)]``.
- **Per node** (``agents_per_node = K``): every alive Ray node runs K agents of the
  default group (and each other group's ``agents``), pinned with hard node affinity and
  listening on the group's ``kafka_port + slot`` of that node. A loop compares the
  placements with ``ray.nodes()`` every ``RECONCILE_S``: a node that joined gets its
  agents, the agents of a node that left are killed and taken out of the fleet at once
  (the metadata service's leases would drop them a few seconds later anyway), and an
  agent Ray will not run again (its name is gone: killed for good) is replaced. A
  restarted fleet actor adopts the running agents and resumes the loop on its own.

Rules:

1. **Agent ids are small and reused**: a new agent takes the lowest id no live agent
   has, so a counted cluster's default group is ``agent-0 .. agent-N-1`` on
   ``kafka_port + n``, as before fleets existed.
2. **Agents are detached**: they outlive this actor (its restart adopts them from their
   names) and are stopped only by ``scale``, ``stop_all`` or their node leaving; an
   agent whose cluster is gone exits on its own (actors/agent.py).
3. A placement that cannot start (its port is taken) fails ``start`` in counted mode (the
   caller reports it); in per-node mode it is logged and retried on the next round.

Never: the object store, Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_stream.actors import ray_calls
from ray_stream.config import DEFAULT_GROUP, METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.core.fleet import AgentRecord
from ray_stream.errors import InvalidConfig, Unavailable

__all__ = ["RECONCILE_S", "FleetManager"]

log = logging.getLogger(__name__)

SpawnAgent = Callable[..., Any]  # handles.create_agent: (settings, id, placement=, **options)
RECONCILE_S = 2.0
START_TIMEOUT_S = 120.0
ADOPT_TIMEOUT_S = 30.0
AGENT_PREFIX = "agent-"


class FleetManager:
    """Creates, places, resizes and stops the agents (see the module doc).

    Args:
        settings: the cluster's settings (groups, zones, agents_per_node).
        spawn_agent: creates one agent actor (``handles.create_agent``, passed in so
            that Ray options are applied in one place).
    """

    def __init__(self, settings: Settings, spawn_agent: SpawnAgent) -> None:
        self.settings = settings
        self._spawn_agent = spawn_agent
        self._placements: dict[int, AgentRecord] = {}
        self._handles: dict[int, Any] = {}
        self._counts = {name: settings.group(name).agents for name in settings.group_names}
        if settings.agents_per_node:
            self._counts[DEFAULT_GROUP] = settings.agents_per_node
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self._failed: dict[tuple[str, str, int], tuple[int, float]] = {}  # place: (n, until)
        self.reconciles = 0
        if _restarted():
            self._adopt()
            self._follow_nodes_again()  # nobody calls start() on a restarted incarnation
        else:
            self._remove_leftovers()

    # ------------------------------------------------------------------ API
    async def start(self) -> list[AgentRecord]:
        """Create the agents the settings ask for and wait until they serve.

        In per-node mode an agent that cannot start is logged and placed again by the
        next round instead (rule 3).

        Raises:
            Unavailable: an agent could not start (the message says which and why).
        """
        async with self._lock:
            created = await self._reconcile()
            if not self.settings.agents_per_node:
                await self._await_started(created)
            starting = list(self._starting)
        if self.settings.agents_per_node:
            # Outside the lock: an agent that fails to start takes it to retire itself.
            await asyncio.gather(*starting, return_exceptions=True)
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._follow_nodes())
        return self.placements()

    async def scale(self, agents: int, group: str = DEFAULT_GROUP) -> list[AgentRecord]:
        """Run ``agents`` agents in ``group`` (counted mode): new ones start, the highest
        slots stop after flushing what they buffer.

        Raises:
            InvalidConfig: per-node mode, an unknown group, or no agent left at all.
        """
        if self.settings.agents_per_node:
            raise InvalidConfig(
                "this cluster keeps agents_per_node agents on every node; "
                "add or remove Ray nodes instead of scaling"
            )
        self.settings.group(group)  # raises for an unknown group
        if not isinstance(agents, int) or agents < 0 or agents > 1024:
            raise InvalidConfig(f"agents must be an int in 0..1024, got {agents!r}")
        others = sum(n for name, n in self._counts.items() if name != group)
        if agents + others < 1:
            raise InvalidConfig("a cluster needs at least one agent")
        async with self._lock:
            self._counts[group] = agents
            created = await self._reconcile()
            await self._await_started(created)
        return self.placements()

    async def stop_all(self) -> None:
        """Stop every agent (flushing first) and stop following nodes."""
        self._stopped = True  # the loop ends after its current round, under the lock
        async with self._lock:
            await asyncio.gather(*(self._retire(i) for i in list(self._placements)))

    def placements(self) -> list[AgentRecord]:
        """Where each agent was placed (ports as asked: -1 any free, 0 none)."""
        return [self._placements[i] for i in sorted(self._placements)]

    def status(self) -> dict[str, Any]:
        return {
            "mode": "per-node" if self.settings.agents_per_node else "counted",
            "groups": dict(self._counts),
            "agents": len(self._placements),
            "reconciles": self.reconciles,
        }

    # ------------------------------------------------------------------ planning
    def _wanted(self, nodes: list[str]) -> list[tuple[str, str, int]]:
        """(group, node, slot) of every agent that should run."""
        wanted = []
        for group in self.settings.group_names:
            for node in nodes:
                wanted += [(group, node, slot) for slot in range(self._counts.get(group, 0))]
        return wanted

    async def _reconcile(self) -> list[int]:
        """Create the missing agents and retire the unwanted ones; the new ids."""
        self.reconciles += 1
        for agent_id in await asyncio.to_thread(self._dead_agents):
            log.warning("fleet: agent-%d is dead for good, replacing it", agent_id)
            await self._retire(agent_id, flush=False)
        nodes = await asyncio.to_thread(_alive_nodes) if self.settings.agents_per_node else [""]
        wanted = set(self._wanted(nodes))
        have = {(p.group, p.node, p.slot): i for i, p in self._placements.items()}
        gone = [i for place, i in have.items() if place not in wanted]
        if gone:
            await asyncio.gather(*(self._retire(i) for i in gone))
        taken = set(await asyncio.to_thread(self._agent_names))  # also unplaced leftovers
        now = time.monotonic()
        created = []
        for place in sorted(wanted - set(have), key=lambda p: (p[0] != DEFAULT_GROUP, p)):
            if self._failed.get(place, (0, 0.0))[1] > now:
                continue  # rule 3: failed to start lately, backing off
            try:
                created.append(self._create(*place, taken=taken))
            except Exception as exc:  # one bad placement does not stop the others
                log.warning("fleet: cannot create an agent for %s: %r", place, exc)
                self._note_failure(place)
        return created

    def _note_failure(self, place: tuple[str, str, int]) -> None:
        failures = self._failed.get(place, (0, 0.0))[0] + 1
        self._failed[place] = (failures, time.monotonic() + min(60.0, RECONCILE_S * 2**failures))

    def _create(self, group: str, node: str, slot: int, *, taken: set[str]) -> int:
        agent_id = next(
            i
            for i in range(len(self._placements) + len(taken) + 1)
            if i not in self._placements and agent_name(i) not in taken
        )
        spec = self.settings.group(group)
        port = spec.kafka_port + slot if spec.kafka_port > 0 else spec.kafka_port
        zones = self.settings.zones
        zone = zones[agent_id % len(zones)] if zones and not node else ""
        placement = AgentRecord(
            agent_id, "", port, zone=zone, group=group, roles=spec.roles, node=node, slot=slot
        )
        options: dict[str, Any] = {"lifetime": "detached"}
        if node:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        self._handles[agent_id] = self._spawn_agent(
            self.settings, agent_id, placement=placement, **options
        )
        self._placements[agent_id] = placement
        log.info("fleet: created agent-%d %s", agent_id, placement)
        taken.add(agent_name(agent_id))
        if node:  # per-node: started in the background, retried next round on failure
            task = asyncio.get_running_loop().create_task(self._start_one(agent_id))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        return agent_id

    async def _start_one(self, agent_id: int) -> None:
        handle = self._handles.get(agent_id)
        placement = self._placements.get(agent_id)
        if handle is None or placement is None:
            return
        place = (placement.group, placement.node, placement.slot)
        try:
            await asyncio.wait_for(ray_calls.call(handle.start.remote()), START_TIMEOUT_S)
            self._failed.pop(place, None)
        except Exception as exc:  # rule 3: a later round places it again
            log.warning("fleet: agent-%d did not start: %r", agent_id, exc)
            async with self._lock:
                self._note_failure(place)
                if self._handles.get(agent_id) is handle:  # not replaced meanwhile
                    await self._retire(agent_id, flush=False)

    async def _await_started(self, created: list[int]) -> None:
        calls = [
            asyncio.wait_for(ray_calls.call(self._handles[i].start.remote()), START_TIMEOUT_S)
            for i in created
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = [(i, r) for i, r in zip(created, results, strict=True) if isinstance(r, Exception)]
        for agent_id, _ in failed:
            await self._retire(agent_id, flush=False)
        if failed:
            agent_id, exc = failed[0]
            raise Unavailable(f"agent-{agent_id} could not start: {exc}")

    async def _retire(self, agent_id: int, *, flush: bool = True) -> None:
        """Stop (flushing) and kill one agent, and take it out of the fleet."""
        placement = self._placements.pop(agent_id, None)
        handle = self._handles.pop(agent_id, None)
        if handle is None:
            return
        node = placement.node if placement is not None else ""
        # ray.nodes() blocks: called off the event loop
        alive = not node or node in await asyncio.to_thread(_alive_nodes)
        if flush and alive:
            try:
                await asyncio.wait_for(ray_calls.call(handle.stop.remote()), 30)
            except Exception as exc:  # a dead agent has nothing left to flush
                log.warning("fleet: agent-%d stop failed: %r", agent_id, exc)
        ray_calls.kill(handle)
        try:
            meta = ray_calls.lookup(METADATA_ACTOR_NAME, self.settings.namespace)
            await asyncio.wait_for(ray_calls.call(meta.deregister_agent.remote(agent_id)), 10)
        except Exception as exc:  # its lease runs out instead
            log.info("fleet: could not deregister agent-%d: %r", agent_id, exc)
        log.info("fleet: retired agent-%d", agent_id)

    def _follow_nodes_again(self) -> None:
        """Start the node loop from ``__init__`` (Ray runs an async actor's ``__init__``
        in its event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): start() starts it
            return
        self._loop_task = loop.create_task(self._follow_nodes())

    async def _follow_nodes(self) -> None:
        while not self._stopped:
            await asyncio.sleep(RECONCILE_S)
            try:
                async with self._lock:
                    if not self._stopped:
                        await self._reconcile()
            except Exception as exc:  # loop boundary: the next round tries again
                log.warning("fleet: reconcile failed: %r", exc)

    # ------------------------------------------------------------------ restart
    def _agent_names(self) -> list[str]:
        """The names of this namespace's agent actors that exist now."""
        try:
            named = ray.util.list_named_actors(all_namespaces=True)
        except Exception as exc:  # outside Ray (unit tests): none
            log.info("fleet: cannot list actors: %r", exc)
            return []
        return [
            entry["name"]
            for entry in named
            if entry.get("namespace") == self.settings.namespace
            and entry.get("name", "").startswith(AGENT_PREFIX)
            and entry["name"][len(AGENT_PREFIX) :].isdigit()
        ]

    def _dead_agents(self) -> list[int]:
        """The placed agents Ray will not run again (killed for good, out of restarts):
        their names are gone, while a restarting agent keeps its name. When the names
        cannot be listed (the GCS is away), nobody is presumed dead."""
        try:
            named = ray.util.list_named_actors(all_namespaces=True)
        except Exception as exc:  # the next round looks again
            log.info("fleet: cannot list actors: %r", exc)
            return []
        names = {e.get("name") for e in named if e.get("namespace") == self.settings.namespace}
        return [i for i in list(self._placements) if f"{AGENT_PREFIX}{i}" not in names]

    def _remove_leftovers(self) -> None:
        """A new cluster: agents of a previous one in this namespace (its driver died
        before they noticed) are stopped, so their names are free."""
        leftovers = self._agent_names()
        for name in leftovers:
            log.warning("fleet: removing %s, left over from a previous cluster", name)
            with contextlib.suppress(Exception):
                ray_calls.kill(ray_calls.lookup(name, self.settings.namespace))
        deadline = time.monotonic() + 30
        while leftovers and self._agent_names() and time.monotonic() < deadline:
            time.sleep(0.2)  # the names are free once the kills are done

    def _adopt(self) -> None:
        """After a restart: take over the agents that already run (rule 2). One that
        cannot say what it is within ``ADOPT_TIMEOUT_S`` is killed, so its name is free
        and its place filled again."""
        asked: dict[Any, Any] = {}
        for name in self._agent_names():
            with contextlib.suppress(Exception):  # gone meanwhile
                handle = ray_calls.lookup(name, self.settings.namespace)
                asked[handle.record.remote()] = handle
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=ADOPT_TIMEOUT_S)
        counts: dict[str, int] = {}
        for ref, handle in asked.items():
            try:
                if ref not in ready:
                    raise TimeoutError(f"no answer within {ADOPT_TIMEOUT_S} s")
                record: AgentRecord = ray_calls.get(ref)
            except Exception as exc:
                log.warning("fleet: not adopting an agent (%r): replacing it", exc)
                ray_calls.kill(handle)
                continue
            self._handles[record.agent_id] = handle
            self._placements[record.agent_id] = replace(record, host="")
            counts[record.group] = max(counts.get(record.group, 0), record.slot + 1)
        if counts and not self.settings.agents_per_node:
            self._counts.update(counts)
        if self._placements:
            log.info("fleet: adopted %d running agents", len(self._placements))


def _restarted() -> bool:
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # outside an actor
        return False


def _alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
