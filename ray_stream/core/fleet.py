"""The fleet of agents as values: who they are, which of them a client sees, who owns a chunk.

An agent is an ``AgentRecord``: its broker id, listener, zone, agent group and the roles
it serves. The metadata service keeps the live records (agents renew a lease by
long-polling it) and hands out a versioned ``FleetView``; every decision below is a pure
function of that view, so every agent of a zone makes the same one.

Rules this module owns:

1. **Discovery is per group, then per zone.** A client sees only the agents of the group
   it bootstrapped to; of those, only the ones of its zone when it names a zone
   (``client.id`` pairs ``ray_stream_az=<zone>`` or ``warpstream_az=<zone>``) and at least
   one agent of that zone is alive, else all of them. A malformed or unknown zone is
   "no zone", never an error.
2. **A chunk has one owner per (group, zone)**: rendezvous (highest-random-weight)
   hashing over the live members, so when an agent joins or leaves only the chunks it
   wins or held change owner, and every agent computes the same owner from the same view.
3. An empty zone is the zone of agents that have none: without zones, all agents of a
   group form one zone and share one cache.

Never: I/O, clocks, Ray.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from ray_stream.config import DEFAULT_GROUP, ROLES
from ray_stream.core.types import BrokerInfo, wire

__all__ = [
    "DEFAULT_GROUP",
    "ROLES",
    "AgentRecord",
    "FleetView",
    "chunk_owner",
    "client_zone",
]

ZONE_KEYS = ("ray_stream_az", "warpstream_az")


@wire
@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One live agent, as it registers itself with the metadata service.

    ``node`` is the Ray node id it runs on ("" outside Ray); ``slot`` its number on that
    node within its group (it listens on the group's ``kafka_port + slot``).
    """

    agent_id: int
    host: str
    port: int
    zone: str = ""
    group: str = DEFAULT_GROUP
    roles: frozenset[str] = ROLES
    node: str = ""
    slot: int = 0

    @property
    def broker(self) -> BrokerInfo:
        return BrokerInfo(self.agent_id, self.host, self.port, self.zone or None)

    def serves(self, role: str) -> bool:
        return role in self.roles


@wire
@dataclass(frozen=True, slots=True)
class FleetView:
    """The live agents at one version of the registry (versions only compare equal)."""

    version: int
    agents: tuple[AgentRecord, ...] = ()

    def get(self, agent_id: int) -> AgentRecord | None:
        for agent in self.agents:
            if agent.agent_id == agent_id:
                return agent
        return None

    def group(self, group: str) -> list[AgentRecord]:
        return sorted((a for a in self.agents if a.group == group), key=lambda a: a.agent_id)

    def zone(self, group: str, zone: str) -> list[AgentRecord]:
        """The members of one (group, zone) cache ring."""
        return [a for a in self.group(group) if a.zone == zone]

    def discover(self, group: str, zone: str | None) -> list[AgentRecord]:
        """What a client of ``group`` in ``zone`` (None: no zone) sees (rule 1)."""
        members = self.group(group)
        if zone:
            local = [a for a in members if a.zone == zone]
            if local:
                return local
        return members

    def zones(self) -> dict[str, list[AgentRecord]]:
        found: dict[str, list[AgentRecord]] = {}
        for agent in sorted(self.agents, key=lambda a: a.agent_id):
            found.setdefault(agent.zone, []).append(agent)
        return found


def client_zone(client_id: str | None) -> str | None:
    """The zone a Kafka client names in its ``client.id`` (rule 1), or None.

    ``client.id`` is read as comma-separated ``key=value`` pairs; the first
    ``ray_stream_az`` or ``warpstream_az`` with a non-empty value wins. Anything else
    (no pairs, malformed pairs, other keys) is ignored.
    """
    if not client_id or "=" not in client_id:
        return None
    for pair in client_id.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() in ZONE_KEYS and value.strip():
            return value.strip()
    return None


def _weight(agent_id: int, key: str, index: int) -> int:
    digest = hashlib.blake2b(f"{agent_id}/{index}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def chunk_owner(members: Iterable[int], key: str, index: int) -> int | None:
    """The agent that owns chunk ``index`` of object ``key`` among ``members`` (rule 2)."""
    best, owner = -1, None
    for agent_id in members:
        weight = _weight(agent_id, key, index)
        if weight > best or (weight == best and owner is not None and agent_id < owner):
            best, owner = weight, agent_id
    return owner
