"""Kafka's classic consumer-group membership for the Python consumer, on its own thread.

Responsibility: join a consumer group through the metadata actor's group coordinator (the
JoinGroup / SyncGroup / Heartbeat / LeaveGroup that Kafka clients reach through the
agents), with protocol type "consumer", Kafka's ConsumerProtocol payloads
(``kafka/consumer_protocol.py``) and Kafka's assignors (``core/assignor.py``) when this
member leads; heartbeat; and rejoin when the group rebalances. The consumer's poll
thread owns positions, commits and user callbacks; this thread never touches them.

Rules this module keeps:

1. **Eager rebalancing, as Kafka's range and roundrobin.** Before it rejoins, the member
   hands a ``Revocation`` to the poll thread and sends its JoinGroup only after the poll
   thread called ``revoked()`` (it committed and stopped reading), so no two members of
   the group read one partition at once (a member the group already removed, e.g. past
   its session timeout, reads on until its next poll learns it, as in Kafka's clients;
   its commits are refused). It keeps heartbeating meanwhile so its session lives;
   the coordinator's rebalance timeout (``max_poll_interval_ms``, as Kafka's) bounds
   how long the group waits for a poll thread that does not answer.
2. **One ordered queue of events** to the poll thread: an ``Assignment`` after each
   completed SyncGroup, a ``Revocation`` before each rejoin that gives partitions up.
3. **Long polls stay here.** A JoinGroup waits for the whole group and a follower's
   SyncGroup for the leader; only this thread makes them, so ``poll()`` never blocks
   on them. ``close()`` ends a parked one with a LeaveGroup (the coordinator answers a
   removed member's parked request at once).
4. **The member id comes first** (KIP-394: ``require_known_member_id``), so a LeaveGroup
   from ``close()`` can always name the member, also in the middle of its first join.
5. **One actor call per heartbeat interval** in a stable group (plus, for the leader, one
   topic listing per ``metadata_max_age_ms``); never one per record.
6. A member that does not poll for ``max_poll_interval_ms`` leaves the group, as Kafka's
   clients do, and rejoins on its next poll: its partitions go to members that read.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ray_stream.client.group_calls import GroupCalls
from ray_stream.clock import Clock, SystemClock
from ray_stream.core.assignor import ASSIGNORS, MemberSubscription
from ray_stream.core.backoff import Backoff
from ray_stream.core.group import JoinResult
from ray_stream.core.metadata_api import HeartbeatRequest, JoinRequest, LeaveRequest, SyncRequest
from ray_stream.core.types import TopicPartition
from ray_stream.errors import (
    CorruptData,
    FencedInstanceId,
    GroupError,
    IllegalGeneration,
    InconsistentGroupProtocol,
    InvalidConfig,
    InvalidGroupId,
    InvalidSessionTimeout,
    MemberIdRequired,
    RayStreamError,
    RebalanceInProgress,
    Unavailable,
    UnknownMemberId,
)
from ray_stream.kafka.consumer_protocol import (
    CONSUMER_PROTOCOL_TYPE,
    Subscription,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)

__all__ = ["Assignment", "GroupMember", "MemberOptions", "Revocation"]

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 10.0  # how long close() waits for the member thread to finish
# Errors no retry can fix: the poll thread raises them (Kafka's clients fail the same way).
_FATAL = (InconsistentGroupProtocol, InvalidSessionTimeout, InvalidGroupId, FencedInstanceId)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The group gave this member ``partitions`` in generation ``generation_id``."""

    partitions: tuple[TopicPartition, ...]
    generation_id: int
    member_id: str


@dataclass(frozen=True, slots=True)
class Revocation:
    """Give every partition up, then call ``GroupMember.revoked()``.

    ``lost``: the member was removed from the group (session expired, fenced, poll
    timeout), so its partitions may already be another member's: do not commit.
    """

    lost: bool


Event = Assignment | Revocation


@dataclass(frozen=True, slots=True)
class MemberOptions:
    """How a member behaves in its group (the consumer's options of the same names).

    Attributes:
        session_timeout_ms: how long the coordinator waits for a heartbeat before it
            removes the member and gives its partitions to others (the cluster accepts
            its ``group_min/max_session_timeout_ms``, 6 s..30 min by default).
        heartbeat_interval_ms: time between heartbeats (one metadata call each); also
            how soon the member notices a rebalance another member started.
        max_poll_interval_ms: the longest time between ``polled()`` calls before the
            member leaves the group (rule 6); also the JoinGroup's rebalance timeout.
        metadata_max_age_ms: how often the leader checks the group's topics' partition
            counts (one metadata call) and rebalances when they changed.
        assignors: protocol names in order of preference (``core.assignor.ASSIGNORS``;
            a comma-separated string is accepted, as Kafka's config takes it).
        client_id: the member id's prefix and the client id the group reports.

    Raises:
        InvalidConfig: a value is out of range (the message names it).
    """

    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    metadata_max_age_ms: int = 300_000
    assignors: str | tuple[str, ...] = ("range", "roundrobin")
    client_id: str = "ray_stream-consumer"

    def __post_init__(self) -> None:
        for name in (
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "metadata_max_age_ms",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfig(f"{name} must be a positive int (ms), got {value!r}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise InvalidConfig(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        raw = self.assignors
        names = tuple(n.strip() for n in raw.split(",")) if isinstance(raw, str) else tuple(raw)
        if not names or any(n not in ASSIGNORS for n in names):
            raise InvalidConfig(
                f"partition_assignment_strategy must name assignors of {sorted(ASSIGNORS)}, "
                f"got {raw!r}"
            )
        object.__setattr__(self, "assignors", names)


class GroupMember:
    """One consumer's membership in a consumer group (see the module doc).

    Args:
        calls: the group coordinator (``group_calls.RayGroupCalls``: the metadata actor).
        group_id: the consumer group.
        topics: the topics this member subscribes to.
        options: timeouts, assignors and client id.
        rack: this client's zone, sent as the subscription's rack id.
        clock: monotonic time (default ``SystemClock``).
        rand: jitter of retry delays.
    """

    def __init__(
        self,
        calls: GroupCalls,
        *,
        group_id: str,
        topics: Sequence[str],
        options: MemberOptions,
        rack: str | None = None,
        clock: Clock | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self._calls = calls
        self.group_id = group_id
        self._assignors = tuple(options.assignors)
        self._session_ms = options.session_timeout_ms
        self._heartbeat_s = options.heartbeat_interval_ms / 1000
        self._max_poll_s = options.max_poll_interval_ms / 1000
        self._rebalance_ms = options.max_poll_interval_ms
        self._metadata_age_s = options.metadata_max_age_ms / 1000
        self._client_id = options.client_id
        self._rack = rack
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rand = rand if rand is not None else random.Random()
        # Shared with the poll thread, under _lock:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._events: deque[Event] = deque()
        self._topics = tuple(sorted(set(topics)))
        self._member_id = ""  # "" until the coordinator names us, and after removal
        self._generation_id = -1
        self._committer = (-1, "")  # (generation, member) of the last assignment
        self._owned: tuple[TopicPartition, ...] = ()  # delivered, not yet revoked
        self._revoking = False  # a Revocation was posted; waiting for revoked()
        self._rejoin = True
        self._lost = False
        self._failure: RayStreamError | None = None
        self._last_poll_s = self._clock.monotonic_s()
        # The member thread's own:
        self._leader_counts: dict[str, int] | None = None  # what the assignment used
        self._next_metadata_s = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ray-stream-group-{group_id}", daemon=True
        )

    # -- the poll thread's side --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def next_event(self, timeout_s: float) -> Event | None:
        """The next event, waiting up to ``timeout_s`` for one (0: do not wait)."""
        with self._arrived:
            if not self._events and timeout_s > 0 and not self._stop.is_set():
                self._arrived.wait(timeout_s)
            return self._events.popleft() if self._events else None

    def revoked(self) -> None:
        """The poll thread gave up every partition of the last Revocation."""
        with self._lock:
            self._revoking = False
            self._owned = ()
        self._wake.set()

    def polled(self) -> None:
        """The consumer polled (rule 6)."""
        with self._lock:
            self._last_poll_s = self._clock.monotonic_s()

    def resubscribe(self, topics: Sequence[str]) -> None:
        """Subscribe to ``topics`` instead; rejoins when they differ."""
        wanted = tuple(sorted(set(topics)))
        with self._lock:
            if wanted == self._topics:
                return
            self._topics = wanted
            self._rejoin = True
        self._wake.set()

    @property
    def topics(self) -> tuple[str, ...]:
        with self._lock:
            return self._topics

    def generation(self) -> tuple[int, str]:
        """(generation id, member id) of the last assignment, for offset commits: the
        coordinator refuses them once the group moved on (IllegalGeneration) or removed
        this member (UnknownMemberId). (-1, "") before the first assignment."""
        with self._lock:
            return self._committer

    @property
    def failure(self) -> RayStreamError | None:
        """The error that stopped the membership for good (e.g. InconsistentGroupProtocol)."""
        with self._lock:
            return self._failure

    def close(self) -> None:
        """Leave the group and stop the thread (waits up to ``CLOSE_WAIT_S``)."""
        self._stop.set()
        self._wake.set()
        with self._arrived:
            self._arrived.notify_all()
        if self._thread.is_alive():
            self._leave()  # ends a parked JoinGroup/SyncGroup at once (rule 3)
            self._forget_member()  # so the thread, ending, does not leave again
            self._thread.join(CLOSE_WAIT_S)

    # -- the member thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(rand=self._rand)
        while not self._stop.is_set():
            try:
                self._step()
                backoff = Backoff(rand=self._rand)
            except GroupError as exc:
                if isinstance(exc, _FATAL):
                    self._fail(exc)
                    break
                self._on_group_error(exc)
            except (Unavailable, CorruptData) as exc:
                if self._stop.is_set():
                    break
                log.info("group %s: %s; retrying", self.group_id, exc)
                self._sleep(backoff.next_delay())
            except Exception as exc:  # a bug must surface in poll(), not kill the thread quietly
                log.exception("group %s: membership failed", self.group_id)
                self._fail(RayStreamError(f"group membership failed: {exc!r}"))
                break
        self._leave()

    def _step(self) -> None:
        """One turn: leave when idle, (re)join once nothing is owned, else heartbeat
        (also while the poll thread revokes: rule 1)."""
        if self._poll_overdue():
            self._leave_idle()
            return
        if self._wants_rejoin() and self._give_up_partitions():
            self._join_and_sync()
            return
        self._sleep(self._heartbeat_s)
        if self._stop.is_set() or self._poll_overdue():
            return
        if self._wants_rejoin() and self._give_up_partitions():
            return  # revoked meanwhile: join now
        self._heartbeat()
        due = self._clock.monotonic_s() >= self._next_metadata_s
        if self._leader_counts is not None and due and not self._wants_rejoin():
            self._check_metadata()

    def _wants_rejoin(self) -> bool:
        with self._lock:
            return self._rejoin

    def _give_up_partitions(self) -> bool:
        """Rule 1: True once nothing is owned; else post a Revocation (once) and wait."""
        with self._arrived:
            if not self._owned and not self._revoking:
                return True
            if not self._revoking:
                self._revoking = True
                self._events.append(Revocation(lost=self._lost))
                self._arrived.notify_all()
            return False

    def _join_and_sync(self) -> None:
        join = self._join()
        if join.error is not None:
            raise join.error
        with self._lock:
            self._generation_id, self._member_id = join.generation_id, join.member_id
        leader = join.leader == join.member_id
        assignments = self._assign(join) if leader else ()
        if not leader:
            self._leader_counts = None
        sync = self._calls.sync_group(
            SyncRequest(
                group_id=self.group_id,
                generation_id=join.generation_id,
                member_id=join.member_id,
                group_instance_id=None,
                protocol_type=CONSUMER_PROTOCOL_TYPE,
                protocol_name=join.protocol_name,
                assignments=assignments,
            ),
            timeout_s=self._long_poll_s(),
        )
        if sync.error is not None:
            raise sync.error
        partitions = tuple(decode_assignment(sync.assignment))
        with self._arrived:
            self._rejoin = self._lost = False
            self._committer = (join.generation_id, join.member_id)
            self._owned = partitions
            self._events.append(Assignment(partitions, join.generation_id, join.member_id))
            self._arrived.notify_all()
        log.info(
            "group %s generation %d: member %s%s got %d partition(s)",
            self.group_id,
            join.generation_id,
            join.member_id,
            " (leader)" if leader else "",
            len(partitions),
        )

    def _join(self) -> JoinResult:
        while True:  # at most twice: MEMBER_ID_REQUIRED first (rule 4)
            with self._lock:
                member_id, topics, owned = self._member_id, self._topics, self._owned
                generation_id = self._generation_id
            if self._stop.is_set():
                raise Unavailable("the consumer is closing")
            metadata = encode_subscription(
                Subscription(topics, owned, generation_id, rack_id=self._rack)
            )
            request = JoinRequest(
                group_id=self.group_id,
                member_id=member_id,
                group_instance_id=None,
                protocol_type=CONSUMER_PROTOCOL_TYPE,
                protocols=tuple((name, metadata) for name in self._assignors),
                session_timeout_ms=self._session_ms,
                rebalance_timeout_ms=self._rebalance_ms,
                client_id=self._client_id,
                client_host="",
                require_known_member_id=True,
            )
            result = self._calls.join_group(request, timeout_s=self._long_poll_s())
            if not isinstance(result.error, MemberIdRequired):
                return result
            with self._lock:
                self._member_id = result.member_id

    def _assign(self, join: JoinResult) -> tuple[tuple[str, bytes], ...]:
        """The leader's part: run the chosen assignor over every member's subscription."""
        members = []
        for member_id, instance_id, metadata in join.members:
            try:
                topics = decode_subscription(metadata).topics
            except CorruptData as exc:
                log.warning("group %s: member %s: %s", self.group_id, member_id, exc)
                topics = ()
            members.append(MemberSubscription(member_id, topics, instance_id))
        assignor = ASSIGNORS[join.protocol_name or ""]
        existing = self._calls.partition_counts()
        counts = {t: existing.get(t, 0) for t in sorted({t for m in members for t in m.topics})}
        self._leader_counts = counts
        self._next_metadata_s = self._clock.monotonic_s() + self._metadata_age_s
        plan = assignor(members, counts)
        return tuple((member_id, encode_assignment(parts)) for member_id, parts in plan.items())

    def _check_metadata(self) -> None:
        """Leader only: rejoin (which rebalances the group) when a topic of the group
        gained partitions or came into existence since the assignment."""
        assert self._leader_counts is not None
        self._next_metadata_s = self._clock.monotonic_s() + self._metadata_age_s
        counts = self._calls.partition_counts()
        now = {t: counts.get(t, 0) for t in self._leader_counts}
        if now != self._leader_counts:
            log.info(
                "group %s: partitions changed %s -> %s", self.group_id, self._leader_counts, now
            )
            self._request_rejoin(lost=False)

    def _current(self) -> tuple[int, str]:
        with self._lock:
            return self._generation_id, self._member_id

    def _heartbeat(self) -> None:
        """Keep the session; learn of rebalances. While a Revocation is pending, a
        RebalanceInProgress is expected, and a refusal only means its commit will be
        refused too."""
        generation_id, member_id = self._current()
        if not member_id:
            return
        try:
            self._calls.heartbeat(HeartbeatRequest(self.group_id, generation_id, member_id))
        except RebalanceInProgress:
            self._request_rejoin(lost=False)
        except IllegalGeneration:
            self._request_rejoin(lost=True)
        except (UnknownMemberId, FencedInstanceId):
            self._forget_member()
            self._request_rejoin(lost=True)

    def _request_rejoin(self, *, lost: bool) -> None:
        with self._lock:
            self._rejoin = True
            self._lost = self._lost or lost

    def _forget_member(self) -> None:
        with self._lock:
            self._member_id, self._generation_id = "", -1

    def _on_group_error(self, exc: GroupError) -> None:
        """A join or sync failed: rejoin (as a new member when this one is unknown)."""
        log.info("group %s: %s; rejoining", self.group_id, type(exc).__name__)
        if isinstance(exc, UnknownMemberId):
            self._forget_member()
        self._request_rejoin(lost=False)
        if not isinstance(exc, RebalanceInProgress | IllegalGeneration | UnknownMemberId):
            self._sleep(self._heartbeat_s)

    def _poll_overdue(self) -> bool:
        with self._lock:
            return self._clock.monotonic_s() - self._last_poll_s > self._max_poll_s

    def _leave_idle(self) -> None:
        """Rule 6: leave, and rejoin only once the consumer polls again."""
        _, member_id = self._current()
        if member_id:
            log.warning(
                "group %s: no poll() for over %.0f s (max_poll_interval_ms): leaving the group",
                self.group_id,
                self._max_poll_s,
            )
            self._leave()
            self._forget_member()
            self._request_rejoin(lost=True)
            self._give_up_partitions()
        self._sleep(self._heartbeat_s)

    def _leave(self) -> None:
        _, member_id = self._current()
        if not member_id:
            return
        try:
            self._calls.leave_group(LeaveRequest(self.group_id, ((member_id, None),)))
        except Exception as exc:  # unreachable or shut down: the session timeout removes us
            log.info("group %s: leave failed: %r", self.group_id, exc)

    def _fail(self, exc: RayStreamError) -> None:
        log.warning("group %s: membership stopped: %r", self.group_id, exc)
        with self._arrived:
            self._failure = exc
            self._arrived.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or until close(), revoked() or resubscribe() wakes us."""
        self._wake.wait(seconds)
        self._wake.clear()

    def _long_poll_s(self) -> float:
        # Kafka's clients give a JoinGroup the rebalance timeout plus 5 s.
        return self._rebalance_ms / 1000 + 5
