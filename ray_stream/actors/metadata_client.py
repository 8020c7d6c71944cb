"""RayMetadataClient: the ``MetadataClient`` protocol as calls to the metadata actor.

This adapter is the only code that turns metadata requests into Ray calls, and it owns
their retry and error unwrapping: a call that failed because the actor died, is
restarting, was not registered yet, or answered from a fenced incarnation is sent again
with the shared backoff (``core/backoff.py``) for up to ``retry_s``, so a metadata
restart looks like a slow call, not an error. Errors the service raised on purpose
arrive as themselves (``ray_calls.unwrap``) and are never retried here.

``commit`` is never retried by this adapter: the agent's ``CommitQueue`` resends it with
its own deadline (a segment must not be committed after half the orphan grace).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from ray.exceptions import RayActorError, RayTaskError

from ray_stream.actors import ray_calls
from ray_stream.clock import Clock, SystemClock
from ray_stream.config import METADATA_ACTOR_NAME, Settings
from ray_stream.core.acl import AclBinding, AclFilter, AclOutcome, AclSnapshot
from ray_stream.core.backoff import Backoff
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.group import (
    GroupDeletion,
    GroupDescription,
    GroupListing,
    JoinResult,
    LeaveResult,
    SyncResult,
)
from ray_stream.core.metadata_api import (
    CommitAnswer,
    CommitRequest,
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    LocateAnswer,
    LocateRequest,
    OffsetAnswer,
    OffsetCommitRequest,
    ProducerIdentity,
    SyncRequest,
)
from ray_stream.core.scram import ScramCredential, ScramUserInfo
from ray_stream.core.types import BrokerInfo, CommittedOffset, TopicInfo, TopicPartition
from ray_stream.errors import Fenced, Unavailable

__all__ = ["RayMetadataClient"]


class RayMetadataClient:
    """``MetadataClient`` over the named metadata actor of one namespace.

    Args:
        namespace: the Ray namespace of the cluster; the actor is looked up on first
            use, and again after it died (it may have been re-created).
        retry_s: how long a call is resent while the actor is away (0: never).
        handle: an actor handle to use instead of looking it up.
        clock / rand: deadline time and backoff jitter.
    """

    def __init__(
        self,
        *,
        namespace: str,
        retry_s: float,
        handle: Any = None,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self._namespace = namespace
        self._retry_s = retry_s
        self._handle = handle
        self._clock: Clock = clock or SystemClock()
        self._rand = rand or random.Random()
        self.calls: dict[str, int] = {}

    # -------------------------------------------------------------- sequencing
    async def commit(self, requests: list[CommitRequest]) -> CommitAnswer:
        answer: CommitAnswer = await self._call("commit", requests, retry_s=0.0)
        return answer

    async def locate(self, request: LocateRequest) -> LocateAnswer:
        answer: LocateAnswer = await self._call("locate", request)
        return answer

    async def list_offsets(self, queries: list[tuple[str, int, int]]) -> list[OffsetAnswer]:
        answers: list[OffsetAnswer] = await self._call("list_offsets", queries)
        return answers

    async def init_producer_id(self, transactional_id: str | None = None) -> ProducerIdentity:
        identity: ProducerIdentity = await self._call("init_producer_id", transactional_id)
        return identity

    # ------------------------------------------------------------------ topics
    async def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        info: TopicInfo = await self._call("create_topic", name, partitions, config)
        return info

    async def delete_topic(self, name: str) -> None:
        await self._call("delete_topic", name)

    async def create_partitions(self, name: str, total: int) -> TopicInfo:
        info: TopicInfo = await self._call("create_partitions", name, total)
        return info

    async def list_topics(self) -> list[TopicInfo]:
        topics: list[TopicInfo] = await self._call("list_topics")
        return topics

    async def describe_topic(self, name: str) -> TopicInfo:
        info: TopicInfo = await self._call("describe_topic", name)
        return info

    async def watch_catalog(self, version: int, timeout_s: float) -> int:
        found: int = await self._call("watch_catalog", version, timeout_s, retry_s=0.0)
        return found

    # ------------------------------------------------------------------ groups
    async def join_group(self, request: JoinRequest) -> JoinResult:
        result: JoinResult = await self._call("join_group", request)
        return result

    async def sync_group(self, request: SyncRequest) -> SyncResult:
        result: SyncResult = await self._call("sync_group", request)
        return result

    async def heartbeat(self, request: HeartbeatRequest) -> None:
        await self._call("heartbeat", request)

    async def leave_group(self, request: LeaveRequest) -> LeaveResult:
        result: LeaveResult = await self._call("leave_group", request)
        return result

    async def list_groups(self, states: list[str] | None = None) -> list[GroupListing]:
        listed: list[GroupListing] = await self._call("list_groups", states)
        return listed

    async def describe_groups(self, group_ids: list[str]) -> list[GroupDescription]:
        described: list[GroupDescription] = await self._call("describe_groups", group_ids)
        return described

    async def delete_groups(self, group_ids: list[str]) -> list[GroupDeletion]:
        deleted: list[GroupDeletion] = await self._call("delete_groups", group_ids)
        return deleted

    async def commit_offsets(self, request: OffsetCommitRequest) -> None:
        await self._call("commit_offsets", request)

    async def fetch_offsets(
        self, group_id: str, partitions: list[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        found: dict[TopicPartition, CommittedOffset] = await self._call(
            "fetch_offsets", group_id, partitions
        )
        return found

    # ---------------------------------------------------------------- registry
    async def settings(self) -> Settings:
        settings: Settings = await self._call("settings")
        return settings

    async def register_agent(self, index: int, address: BrokerInfo) -> None:
        await self._call("register_agent", index, address, retry_s=0.0)

    async def agent_address(self, index: int) -> BrokerInfo | None:
        address: BrokerInfo | None = await self._call("agent_address", index, retry_s=0.0)
        return address

    async def agent_heartbeat(
        self, record: AgentRecord, known_version: int, wait_s: float
    ) -> FleetView:
        # not resent here: the agent's heartbeat loop calls again with its own backoff
        view: FleetView = await self._call(
            "agent_heartbeat", record, known_version, wait_s, retry_s=0.0
        )
        return view

    async def deregister_agent(self, agent_id: int) -> None:
        await self._call("deregister_agent", agent_id, retry_s=0.0)

    async def fleet(self) -> FleetView:
        view: FleetView = await self._call("fleet")
        return view

    # -------------------------------------------------------------------- acls
    async def create_acls(self, bindings: list[AclBinding]) -> list[AclOutcome]:
        outcomes: list[AclOutcome] = await self._call("create_acls", bindings)
        return outcomes

    async def describe_acls(self, acl_filter: AclFilter) -> list[AclBinding]:
        found: list[AclBinding] = await self._call("describe_acls", acl_filter)
        return found

    async def delete_acls(self, filters: list[AclFilter]) -> list[AclOutcome]:
        outcomes: list[AclOutcome] = await self._call("delete_acls", filters)
        return outcomes

    async def watch_acls(self, version: int, timeout_s: float) -> AclSnapshot:
        # not resent here: the agent's ACL watch loop calls again with its own backoff
        found: AclSnapshot = await self._call("watch_acls", version, timeout_s, retry_s=0.0)
        return found

    # ------------------------------------------------------------ credentials
    async def alter_scram_credentials(
        self, upserts: list[ScramCredential], deletions: list[tuple[str, str]]
    ) -> None:
        # resending is safe: upserting the same credential again changes nothing
        await self._call("alter_scram_credentials", upserts, deletions)

    async def scram_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        found: ScramCredential | None = await self._call("scram_credential", user, mechanism)
        return found

    async def describe_scram_credentials(self, users: list[str] | None) -> list[ScramUserInfo]:
        found: list[ScramUserInfo] = await self._call("describe_scram_credentials", users)
        return found

    # --------------------------------------------------------------- internals
    async def _call(self, method: str, *args: Any, retry_s: float | None = None) -> Any:
        """One method call, resent while the actor is away (see the module doc)."""
        self.calls[method] = self.calls.get(method, 0) + 1
        limit = self._retry_s if retry_s is None else retry_s
        deadline = self._clock.monotonic_s() + limit
        backoff = Backoff(rand=self._rand)
        while True:
            try:
                return await self._call_once(method, args)
            except _ActorAway as away:
                delay = backoff.next_delay()
                if self._clock.monotonic_s() + delay > deadline:
                    if limit <= 0:
                        raise away.error from None
                    raise Unavailable(
                        f"metadata call {method}() failed for {limit:.0f}s: {away.error}"
                    ) from None
            await asyncio.sleep(delay)

    async def _call_once(self, method: str, args: tuple[Any, ...]) -> Any:
        """One attempt; raises ``_ActorAway`` only for failures worth resending (the
        actor is missing, died, restarting, or fenced); the service's own errors pass."""
        handle = self._handle
        if handle is None:
            try:
                handle = self._handle = ray_calls.lookup(METADATA_ACTOR_NAME, self._namespace)
            except Unavailable as exc:  # not registered (yet)
                raise _ActorAway(exc) from None
        try:
            return await getattr(handle, method).remote(*args)
        except RayActorError as exc:  # died, restarting, unreachable
            self._handle = None  # look it up again: it may have been re-created
            raise _ActorAway(Unavailable(f"metadata actor unavailable: {exc}")) from None
        except RayTaskError as exc:
            cause = ray_calls.unwrap(exc)
            if isinstance(cause, Fenced):
                away = Unavailable(f"reached a fenced metadata incarnation: {cause}")
                raise _ActorAway(away) from None
            raise cause from None


class _ActorAway(Exception):
    """A call that did not reach a live, current incarnation (resend it)."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(str(error))
        self.error = error
