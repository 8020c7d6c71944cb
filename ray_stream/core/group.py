"""Kafka's classic consumer-group coordinator as a pure state machine.

Responsibility: membership, generations, protocol selection and assignment relay for
groups speaking the classic protocol (JoinGroup/SyncGroup/Heartbeat/LeaveGroup), after
Kafka's ``GroupCoordinator``/``ClassicGroup``. Assignors run in the clients: the
coordinator only picks a protocol every member supports and hands the leader's
assignment to each member.

States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable (-> PreparingRebalance
...). Dead is what a deleted or unknown group reports; deleted groups are dropped at once.

Rules:
1. No I/O and no clocks: every call that depends on time takes ``now_ms`` (a monotonic
   millisecond count) and deadlines are compared only against it; randomness (member id
   uuids) comes from an injected ``random.Random``.
2. A request that must wait (a JoinGroup during a rebalance, a follower's SyncGroup) gets
   a ``Pending(ticket)``; its answer later appears exactly once in ``take_completions()``
   as ``Completion(ticket, result)``. Every parked ticket is answered, also when its
   member is removed, fenced or re-sends the same request, so a shell never leaks waiters.
3. Members parked in a JoinGroup or SyncGroup are not expired by their session timeout:
   the rebalance timeout (join) and the pending-sync timeout (sync) bound them instead,
   as in Kafka.
4. Errors are ``GroupError`` values (``errors.py``; each class stands for the Kafka error
   of its name) on the result, None on success; nothing here raises for bad client input.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from ray_stream.core.types import wire
from ray_stream.errors import (
    FencedInstanceId,
    GroupError,
    GroupIdNotFound,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidGroupId,
    InvalidSessionTimeout,
    MemberIdRequired,
    NonEmptyGroup,
    RayStreamError,
    RebalanceInProgress,
    UnknownMemberId,
)

EMPTY = "Empty"
PREPARING_REBALANCE = "PreparingRebalance"
COMPLETING_REBALANCE = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

Protocols = tuple[tuple[str, bytes], ...]

# Kafka's broker defaults for group.min.session.timeout.ms / group.max.session.timeout.ms.
DEFAULT_MIN_SESSION_TIMEOUT_MS = 6_000
DEFAULT_MAX_SESSION_TIMEOUT_MS = 1_800_000


@wire
@dataclass(frozen=True, slots=True)
class JoinResult:
    error: RayStreamError | None  # a GroupError, or CoordinatorNotAvailable
    generation_id: int
    protocol_type: str | None
    protocol_name: str | None
    leader: str
    member_id: str
    skip_assignment: bool
    # (member_id, group_instance_id, metadata of the chosen protocol); the leader's only.
    members: tuple[tuple[str, str | None, bytes], ...]


@wire
@dataclass(frozen=True, slots=True)
class SyncResult:
    error: RayStreamError | None  # a GroupError, or CoordinatorNotAvailable
    protocol_type: str | None
    protocol_name: str | None
    assignment: bytes


@wire
@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@wire
@dataclass(frozen=True, slots=True)
class GroupDescription:
    error: GroupError | None
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: tuple[MemberDescription, ...]


@dataclass(frozen=True, slots=True)
class Pending:
    """The request waits; its result arrives later as ``Completion(ticket, ...)``."""

    ticket: int


@dataclass(frozen=True, slots=True)
class Completion:
    ticket: int
    result: JoinResult | SyncResult


@wire
@dataclass(frozen=True, slots=True)
class MemberLeave:
    member_id: str
    group_instance_id: str | None
    error: GroupError | None


@wire
@dataclass(frozen=True, slots=True)
class LeaveResult:
    """``error`` refuses the whole request (InvalidGroupId); else each member's outcome."""

    error: GroupError | None
    members: tuple[MemberLeave, ...]


@wire
@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    protocol_type: str
    state: str


@wire
@dataclass(frozen=True, slots=True)
class GroupDeletion:
    group_id: str
    error: GroupError | None


ErrorKind = type[GroupError]


def group_error(kind: ErrorKind) -> GroupError:
    """An error of ``kind`` whose message is the first line of the kind's docstring."""
    return kind((kind.__doc__ or kind.__name__).splitlines()[0])


def join_error(kind: ErrorKind, member_id: str = "") -> JoinResult:
    return JoinResult(group_error(kind), -1, None, None, "", member_id, False, ())


def sync_error(kind: ErrorKind) -> SyncResult:
    return SyncResult(group_error(kind), None, None, b"")


@dataclass(slots=True)
class _Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    protocol_type: str
    protocols: Protocols
    session_timeout_ms: int
    rebalance_timeout_ms: int
    deadline_ms: int  # session expiry, while not parked in a join or sync
    assignment: bytes = b""
    join_ticket: int | None = None
    sync_ticket: int | None = None

    def metadata(self, protocol: str | None) -> bytes:
        return next((meta for name, meta in self.protocols if name == protocol), b"")


@dataclass(slots=True)
class _Group:
    group_id: str
    state: str = EMPTY
    generation_id: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, _Member] = field(default_factory=dict)  # join order
    static_members: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    pending_members: dict[str, int] = field(default_factory=dict)  # MEMBER_ID_REQUIRED -> deadline
    pending_sync: set[str] = field(default_factory=set)
    join_deadline_ms: int = 0
    initial_delay: bool = False  # first rebalance of an Empty group: wait, never complete early
    initial_remaining_ms: int = 0
    new_member_added: bool = False
    sync_deadline_ms: int | None = None

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        joined = all(m.join_ticket is not None for m in self.members.values())
        return joined and not self.pending_members

    def supports(self, protocol_type: str, names: set[str], *, exclude: str | None) -> bool:
        """Kafka's supportsProtocols, not counting the member being updated itself."""
        others = [m for mid, m in self.members.items() if mid != exclude]
        if not others:
            return bool(protocol_type) and bool(names)
        if self.protocol_type != protocol_type:
            return False
        return any(all(n in {p for p, _ in m.protocols} for m in others) for n in names)

    def select_protocol(self) -> str:
        """The protocol all members support with most first-choice votes (ties: first voted)."""
        members = list(self.members.values())
        candidates = {name for name, _ in members[0].protocols}
        for m in members[1:]:
            candidates &= {name for name, _ in m.protocols}
        votes: dict[str, int] = {}
        for m in members:
            choice = next(name for name, _ in m.protocols if name in candidates)
            votes[choice] = votes.get(choice, 0) + 1
        return max(votes, key=lambda name: votes[name])  # max() keeps the first of equals

    def validate_member(self, member_id: str, group_instance_id: str | None) -> ErrorKind | None:
        if group_instance_id is not None:
            known = self.static_members.get(group_instance_id)
            if known is None:
                return UnknownMemberId
            return None if known == member_id else FencedInstanceId
        return None if member_id in self.members else UnknownMemberId


class GroupCoordinator:
    """All classic groups of one coordinator (the metadata actor), driven by explicit time.

    Args:
        rand: source of member-id uuids.
        initial_rebalance_delay_ms: how long a group's first rebalance waits for more
            members (Kafka's ``group.initial.rebalance.delay.ms``); each new member during
            a new group's delay extends it, up to the rebalance timeout.
        min_session_timeout_ms / max_session_timeout_ms: the session timeouts a JoinGroup
            may ask for, inclusive (Kafka's ``group.min.session.timeout.ms`` and
            ``group.max.session.timeout.ms``, 6 s and 30 min by default); outside them
            the join is answered INVALID_SESSION_TIMEOUT. The minimum keeps a member
            from asking to be declared dead faster than its heartbeats can arrive; the
            maximum bounds how long a silent member can hold its partitions.
    """

    def __init__(
        self,
        *,
        rand: random.Random,
        initial_rebalance_delay_ms: int = 300,
        min_session_timeout_ms: int = DEFAULT_MIN_SESSION_TIMEOUT_MS,
        max_session_timeout_ms: int = DEFAULT_MAX_SESSION_TIMEOUT_MS,
    ) -> None:
        self._rand = rand
        self._initial_delay_ms = initial_rebalance_delay_ms
        self._min_session_ms = min_session_timeout_ms
        self._max_session_ms = max_session_timeout_ms
        self._groups: dict[str, _Group] = {}
        self._completions: list[Completion] = []
        self._next_ticket = 0

    # -- JoinGroup ---------------------------------------------------------------------

    def join(
        self,
        group_id: str,
        *,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        client_host: str,
        require_known_member_id: bool,
        now_ms: int,
    ) -> JoinResult | Pending:
        """JoinGroup. Returns a result now, or Pending until the rebalance completes."""
        if not group_id:
            return join_error(InvalidGroupId, member_id)
        if not self._min_session_ms <= session_timeout_ms <= self._max_session_ms:
            return join_error(InvalidSessionTimeout, member_id)
        group = self._groups.get(group_id)
        if group is None:
            if member_id:
                return join_error(UnknownMemberId, member_id)
            group = _Group(group_id)
        names = {name for name, _ in protocols}
        if not group.supports(protocol_type, names, exclude=member_id or None):
            return join_error(InconsistentGroupProtocol, member_id)
        self._groups[group_id] = group
        new = _Member(
            member_id,
            group_instance_id,
            client_id,
            client_host,
            protocol_type,
            tuple(protocols),
            session_timeout_ms,
            rebalance_timeout_ms if rebalance_timeout_ms > 0 else session_timeout_ms,
            now_ms + session_timeout_ms,
        )
        if not member_id:
            return self._join_unknown(group, new, require_known_member_id, now_ms)
        if member_id in group.pending_members and group_instance_id is None:
            del group.pending_members[member_id]
            return self._add_member(group, new, now_ms)
        error = group.validate_member(member_id, group_instance_id)
        if error is not None:
            return join_error(error, member_id)
        return self._join_known(group, new, now_ms)

    def _join_unknown(
        self, group: _Group, new: _Member, require_known: bool, now_ms: int
    ) -> JoinResult | Pending:
        prefix = new.group_instance_id if new.group_instance_id is not None else new.client_id
        new.member_id = f"{prefix}-{uuid.UUID(int=self._rand.getrandbits(128), version=4)}"
        if new.group_instance_id is not None:
            if new.group_instance_id in group.static_members:
                return self._replace_static(group, new, now_ms)
            return self._add_member(group, new, now_ms)
        if require_known:
            # KIP-394: hand out the id first so a client that times out rejoins as the same member.
            group.pending_members[new.member_id] = now_ms + new.session_timeout_ms
            return join_error(MemberIdRequired, new.member_id)
        return self._add_member(group, new, now_ms)

    def _join_known(self, group: _Group, new: _Member, now_ms: int) -> JoinResult | Pending:
        member = group.members[new.member_id]
        member.deadline_ms = now_ms + member.session_timeout_ms
        same = member.protocols == new.protocols
        if group.state == COMPLETING_REBALANCE and same:
            # It missed the JoinGroup answer: repeat this generation's.
            return self._join_result(group, member)
        if group.state == STABLE and same and group.leader_id != member.member_id:
            return self._join_result(group, member)
        # The leader rejoining a Stable group forces a rebalance (e.g. for topic changes).
        return self._update_and_rebalance(group, member, new, now_ms)

    def _add_member(self, group: _Group, member: _Member, now_ms: int) -> Pending:
        ticket = self._ticket()
        member.join_ticket = ticket
        if group.state == PREPARING_REBALANCE and group.generation_id == 0:
            group.new_member_added = True
        if not group.members:
            group.protocol_type = member.protocol_type
        group.members[member.member_id] = member
        if group.leader_id is None:
            group.leader_id = member.member_id
        if member.group_instance_id is not None:
            group.static_members[member.group_instance_id] = member.member_id
        self._rebalance_or_complete(group, now_ms)
        return Pending(ticket)

    def _update_and_rebalance(
        self, group: _Group, member: _Member, new: _Member, now_ms: int
    ) -> Pending:
        self._update_member(member, new)
        ticket = self._ticket()
        member.join_ticket = ticket
        self._rebalance_or_complete(group, now_ms)
        return Pending(ticket)

    def _update_member(self, member: _Member, new: _Member) -> None:
        if member.join_ticket is not None:  # a re-sent JoinGroup replaces the parked one
            self._answer(member.join_ticket, join_error(RebalanceInProgress, member.member_id))
            member.join_ticket = None
        member.protocol_type, member.protocols = new.protocol_type, new.protocols
        member.session_timeout_ms = new.session_timeout_ms
        member.rebalance_timeout_ms = new.rebalance_timeout_ms
        member.client_id, member.client_host = new.client_id, new.client_host

    def _replace_static(self, group: _Group, new: _Member, now_ms: int) -> JoinResult | Pending:
        """A known group.instance.id rejoined with no member id: it takes over the old member."""
        assert new.group_instance_id is not None
        old_id = group.static_members[new.group_instance_id]
        member = group.members.pop(old_id)
        if member.join_ticket is not None:
            self._answer(member.join_ticket, join_error(FencedInstanceId, old_id))
            member.join_ticket = None
        if member.sync_ticket is not None:
            self._answer(member.sync_ticket, sync_error(FencedInstanceId))
            member.sync_ticket = None
        member.member_id = new.member_id
        group.members[new.member_id] = member
        group.static_members[new.group_instance_id] = new.member_id
        if group.leader_id == old_id:
            group.leader_id = new.member_id
        if old_id in group.pending_sync:
            group.pending_sync.discard(old_id)
            group.pending_sync.add(new.member_id)
        self._update_member(member, new)
        member.deadline_ms = now_ms + member.session_timeout_ms
        if group.state == STABLE and group.protocol_name == group.select_protocol():
            # KIP-814: no rebalance; a replaced leader learns the members but must not
            # re-assign (skip_assignment), since a Stable group would not relay it.
            return self._join_result(group, member, skip_assignment=True)
        ticket = self._ticket()
        member.join_ticket = ticket
        if group.state == PREPARING_REBALANCE:
            self._check_join(group, now_ms)
        else:
            self._prepare_rebalance(group, now_ms)
        return Pending(ticket)

    def _join_result(
        self, group: _Group, member: _Member, *, skip_assignment: bool = False
    ) -> JoinResult:
        is_leader = group.leader_id == member.member_id
        members = tuple(
            (m.member_id, m.group_instance_id, m.metadata(group.protocol_name))
            for m in group.members.values()
        )
        return JoinResult(
            None,
            group.generation_id,
            group.protocol_type,
            group.protocol_name,
            group.leader_id or "",
            member.member_id,
            skip_assignment and is_leader,
            members if is_leader else (),
        )

    # -- rebalance ---------------------------------------------------------------------

    def _rebalance_or_complete(self, group: _Group, now_ms: int) -> None:
        if group.state in (STABLE, COMPLETING_REBALANCE, EMPTY):
            self._prepare_rebalance(group, now_ms)
        else:
            self._check_join(group, now_ms)

    def _prepare_rebalance(self, group: _Group, now_ms: int) -> None:
        if group.state == COMPLETING_REBALANCE:
            for member in group.members.values():
                member.assignment = b""
                if member.sync_ticket is not None:
                    self._answer(member.sync_ticket, sync_error(RebalanceInProgress))
                    member.sync_ticket = None
                    # Its session was not running while it waited (Kafka resets it here too).
                    member.deadline_ms = now_ms + member.session_timeout_ms
        group.pending_sync.clear()
        group.sync_deadline_ms = None
        timeout_ms = group.rebalance_timeout_ms()
        if group.state == EMPTY:
            group.initial_delay = True
            group.new_member_added = False
            group.join_deadline_ms = now_ms + self._initial_delay_ms
            group.initial_remaining_ms = max(timeout_ms - self._initial_delay_ms, 0)
        else:
            group.initial_delay = False
            group.join_deadline_ms = now_ms + timeout_ms
        group.state = PREPARING_REBALANCE
        self._check_join(group, now_ms)

    def _check_join(self, group: _Group, now_ms: int) -> None:
        """Kafka's DelayedJoin / InitialDelayedJoin: complete the join phase when due."""
        if group.state != PREPARING_REBALANCE:
            return
        if group.initial_delay:
            if now_ms < group.join_deadline_ms:
                return
            if group.new_member_added and group.initial_remaining_ms > 0:
                delay_ms = min(self._initial_delay_ms, group.initial_remaining_ms)
                group.new_member_added = False
                group.initial_remaining_ms = max(group.initial_remaining_ms - delay_ms, 0)
                group.join_deadline_ms = now_ms + delay_ms
                return
        elif not group.all_joined() and now_ms < group.join_deadline_ms:
            return
        self._complete_join(group, now_ms)

    def _complete_join(self, group: _Group, now_ms: int) -> None:
        for member in list(group.members.values()):
            if member.join_ticket is None and member.group_instance_id is None:
                self._drop(group, member)  # dynamic members that did not rejoin in time
        if group.members and not self._elect_joined_leader(group):
            # Only static members that did not rejoin are left: wait for them (or their session).
            group.initial_delay = False
            group.join_deadline_ms = now_ms + group.rebalance_timeout_ms()
            return
        group.generation_id += 1
        group.initial_delay = group.new_member_added = False
        if not group.members:
            group.state, group.protocol_name = EMPTY, None
            return
        group.protocol_name = group.select_protocol()
        group.state = COMPLETING_REBALANCE
        group.pending_sync = set(group.members)
        group.sync_deadline_ms = now_ms + group.rebalance_timeout_ms()
        for member in group.members.values():
            member.deadline_ms = now_ms + member.session_timeout_ms
            if member.join_ticket is not None:
                self._answer(member.join_ticket, self._join_result(group, member))
                member.join_ticket = None

    @staticmethod
    def _elect_joined_leader(group: _Group) -> bool:
        leader = group.members.get(group.leader_id or "")
        if leader is not None and leader.join_ticket is not None:
            return True
        joined = next((m for m in group.members.values() if m.join_ticket is not None), None)
        if joined is None:
            return False
        group.leader_id = joined.member_id
        return True

    def _drop(self, group: _Group, member: _Member) -> None:
        """Remove a member, answering anything it has parked with UNKNOWN_MEMBER_ID."""
        if member.join_ticket is not None:
            self._answer(member.join_ticket, join_error(UnknownMemberId))
        if member.sync_ticket is not None:
            self._answer(member.sync_ticket, sync_error(UnknownMemberId))
        del group.members[member.member_id]
        if member.group_instance_id is not None:
            group.static_members.pop(member.group_instance_id, None)
        group.pending_sync.discard(member.member_id)
        if group.leader_id == member.member_id:
            group.leader_id = next(iter(group.members), None)

    def _remove_and_update(self, group: _Group, member: _Member, now_ms: int) -> None:
        self._drop(group, member)
        if group.state in (STABLE, COMPLETING_REBALANCE):
            self._prepare_rebalance(group, now_ms)
        else:
            self._check_join(group, now_ms)

    # -- SyncGroup / Heartbeat / LeaveGroup --------------------------------------------

    def sync(
        self,
        group_id: str,
        *,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: list[tuple[str, bytes]],
        now_ms: int,
    ) -> SyncResult | Pending:
        """SyncGroup. The leader's call stores the assignment and releases the followers."""
        group, error = self._current_member(group_id, member_id, group_instance_id, generation_id)
        if group is None or error is not None:
            return sync_error(error or UnknownMemberId)
        if protocol_type is not None and protocol_type != group.protocol_type:
            return sync_error(InconsistentGroupProtocol)
        if protocol_name is not None and protocol_name != group.protocol_name:
            return sync_error(InconsistentGroupProtocol)
        if group.state == PREPARING_REBALANCE:
            return sync_error(RebalanceInProgress)
        member = group.members[member_id]
        member.deadline_ms = now_ms + member.session_timeout_ms
        group.pending_sync.discard(member_id)
        if not group.pending_sync:
            group.sync_deadline_ms = None
        if group.state == STABLE:
            return SyncResult(None, group.protocol_type, group.protocol_name, member.assignment)
        if member.sync_ticket is not None:
            self._answer(member.sync_ticket, sync_error(RebalanceInProgress))
        ticket = self._ticket()
        member.sync_ticket = ticket
        if group.leader_id == member_id:
            by_member = dict(assignments)
            for m in group.members.values():
                m.assignment = by_member.get(m.member_id, b"")
                if m.sync_ticket is not None:
                    m.deadline_ms = now_ms + m.session_timeout_ms
                    result = SyncResult(
                        None, group.protocol_type, group.protocol_name, m.assignment
                    )
                    self._answer(m.sync_ticket, result)
                    m.sync_ticket = None
            group.state = STABLE
        return Pending(ticket)

    def heartbeat(
        self,
        group_id: str,
        *,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        now_ms: int,
    ) -> GroupError | None:
        """Heartbeat: RebalanceInProgress tells a member to rejoin."""
        group, error = self._current_member(group_id, member_id, group_instance_id, generation_id)
        if group is None or error is not None:
            return group_error(error or UnknownMemberId)
        member = group.members[member_id]
        member.deadline_ms = now_ms + member.session_timeout_ms
        return group_error(RebalanceInProgress) if group.state == PREPARING_REBALANCE else None

    def _current_member(
        self, group_id: str, member_id: str, group_instance_id: str | None, generation_id: int
    ) -> tuple[_Group | None, ErrorKind | None]:
        if not group_id:
            return None, InvalidGroupId
        group = self._groups.get(group_id)
        if group is None:
            return None, UnknownMemberId
        error = group.validate_member(member_id, group_instance_id)
        if error is None and generation_id != group.generation_id:
            error = IllegalGeneration
        return group, error

    def leave(
        self, group_id: str, members: list[tuple[str, str | None]], *, now_ms: int
    ) -> LeaveResult:
        """LeaveGroup for (member_id, group_instance_id) pairs; an empty member_id with an
        instance id removes that static member (admin removal, KIP-345)."""
        if not group_id:
            return LeaveResult(group_error(InvalidGroupId), ())
        group = self._groups.get(group_id)
        if group is None:
            unknown = group_error(UnknownMemberId)
            return LeaveResult(None, tuple(MemberLeave(m, i, unknown) for m, i in members))
        results: list[MemberLeave] = []
        for member_id, instance_id in members:
            target = member_id
            error: ErrorKind | None
            if not member_id and instance_id is not None:
                target = group.static_members.get(instance_id, "")
                error = None if target else UnknownMemberId
            elif member_id in group.pending_members:
                del group.pending_members[member_id]
                self._check_join(group, now_ms)
                results.append(MemberLeave(member_id, instance_id, None))
                continue
            else:
                error = group.validate_member(member_id, instance_id)
            if error is None:
                self._remove_and_update(group, group.members[target], now_ms)
            results.append(
                MemberLeave(member_id, instance_id, group_error(error) if error else None)
            )
        return LeaveResult(None, tuple(results))

    # -- admin and offsets -------------------------------------------------------------

    def list_groups(self, states: list[str] | None = None) -> list[GroupListing]:
        """Every group, optionally of some states only."""
        wanted = None if not states else {s.lower() for s in states}
        return [
            GroupListing(g.group_id, g.protocol_type or "", g.state)
            for g in self._groups.values()
            if wanted is None or g.state.lower() in wanted
        ]

    def describe(self, group_ids: list[str]) -> list[GroupDescription]:
        return [self._describe_one(group_id) for group_id in group_ids]

    def _describe_one(self, group_id: str) -> GroupDescription:
        if not group_id:
            return GroupDescription(group_error(InvalidGroupId), group_id, DEAD, "", "", ())
        group = self._groups.get(group_id)
        if group is None:
            return GroupDescription(None, group_id, DEAD, "", "", ())
        stable = group.state == STABLE  # metadata/assignment are only meaningful when Stable
        members = tuple(
            MemberDescription(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.metadata(group.protocol_name) if stable else b"",
                m.assignment if stable else b"",
            )
            for m in group.members.values()
        )
        protocol = (group.protocol_name or "") if stable else ""
        return GroupDescription(
            None, group_id, group.state, group.protocol_type or "", protocol, members
        )

    def delete(self, group_ids: list[str]) -> list[GroupDeletion]:
        """Delete Empty groups; others -> NonEmptyGroup, unknown -> GroupIdNotFound."""
        results: list[GroupDeletion] = []
        for group_id in group_ids:
            group = self._groups.get(group_id)
            kind: ErrorKind | None = None
            if not group_id:
                kind = InvalidGroupId
            elif group is None:
                kind = GroupIdNotFound
            elif group.state != EMPTY:
                kind = NonEmptyGroup
            else:
                group.state = DEAD
                del self._groups[group_id]
            results.append(GroupDeletion(group_id, group_error(kind) if kind else None))
        return results

    def validate_offset_commit(
        self, group_id: str, *, generation_id: int, member_id: str, now_ms: int
    ) -> GroupError | None:
        """May this OffsetCommit proceed? Kafka's rules: a generation -1 commit without a
        member is a "simple" consumer's, allowed while the group has no members (and it
        creates the Empty group, as Kafka does); anyone else must be a current member of
        the current generation, and not while the group awaits its SyncGroup. Commits
        during PreparingRebalance are allowed so members can commit before rejoining.
        An empty group id is refused (InvalidGroupId, as Kafka does) before it could
        create a group."""
        if not group_id:
            return group_error(InvalidGroupId)
        group = self._groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return group_error(IllegalGeneration)
            self._groups[group_id] = _Group(group_id)
            return None
        if generation_id < 0 and group.state == EMPTY:
            return None
        if generation_id >= 0 or member_id:
            error = group.validate_member(member_id, None)
            if error is not None:
                return group_error(error)
            if generation_id != group.generation_id:
                return group_error(IllegalGeneration)
        else:
            return group_error(UnknownMemberId)
        if group.state == COMPLETING_REBALANCE:
            return group_error(RebalanceInProgress)
        member = group.members[member_id]
        member.deadline_ms = now_ms + member.session_timeout_ms  # a commit is a sign of life
        return None

    # -- time --------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[tuple[str, str]]:
        """Expire sessions and pending members, finish due rebalances, and remove members
        that never sent SyncGroup. Returns the (group_id, member_id) pairs removed."""
        expired: list[tuple[str, str]] = []
        for group in list(self._groups.values()):
            for member_id, deadline_ms in list(group.pending_members.items()):
                if now_ms >= deadline_ms:
                    del group.pending_members[member_id]
                    expired.append((group.group_id, member_id))
            for member in list(group.members.values()):
                gone = member.member_id not in group.members  # dropped by a completed join
                parked = member.join_ticket is not None or member.sync_ticket is not None
                if not (gone or parked) and now_ms >= member.deadline_ms:
                    expired.append((group.group_id, member.member_id))
                    self._remove_and_update(group, member, now_ms)
            self._check_join(group, now_ms)
            if group.sync_deadline_ms is not None and now_ms >= group.sync_deadline_ms:
                group.sync_deadline_ms = None
                lagging = [group.members[mid] for mid in group.members if mid in group.pending_sync]
                for member in lagging:
                    expired.append((group.group_id, member.member_id))
                    self._drop(group, member)
                if lagging and group.state in (STABLE, COMPLETING_REBALANCE):
                    self._prepare_rebalance(group, now_ms)
        return expired

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which ``tick`` has something to do, or None."""
        deadlines: list[int] = []
        for group in self._groups.values():
            deadlines.extend(group.pending_members.values())
            deadlines.extend(
                m.deadline_ms
                for m in group.members.values()
                if m.join_ticket is None and m.sync_ticket is None
            )
            if group.state == PREPARING_REBALANCE:
                deadlines.append(group.join_deadline_ms)
            if group.sync_deadline_ms is not None:
                deadlines.append(group.sync_deadline_ms)
        return min(deadlines, default=None)

    def take_completions(self) -> list[Completion]:
        """Answers for parked tickets produced since the last call, in order."""
        done, self._completions = self._completions, []
        return done

    def _ticket(self) -> int:
        self._next_ticket += 1
        return self._next_ticket

    def _answer(self, ticket: int, result: JoinResult | SyncResult) -> None:
        self._completions.append(Completion(ticket, result))
