"""GroupMember (client/group_member.py) against the real coordinator, without Ray.

``ServiceCalls`` answers the member's ``GroupCalls`` with the real ``GroupService`` run on
an event loop thread of its own, as the metadata actor runs it, and records every call,
so the tests can check what the member sent and when (rule 1: no JoinGroup before
``revoked()``). Heartbeats are 20 ms apart; waits are bounded by ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from ray_stream.client.group_member import Assignment, GroupMember, MemberOptions, Revocation
from ray_stream.core.types import TopicPartition
from ray_stream.errors import InconsistentGroupProtocol, InvalidConfig
from ray_stream.metadata.group_service import GroupService
from tests.fixtures_ray import wait_for

T = TypeVar("T")
WAIT_S = 10.0
FAST = MemberOptions(heartbeat_interval_ms=20, session_timeout_ms=10_000)


class ServiceCalls:
    """``GroupCalls`` through the real GroupService on its own loop; records each call
    as (api, member_id)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.calls: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = GroupService(initial_rebalance_delay_ms=20, tick_interval_s=0.01)

    def _run(self, coro: Any, timeout_s: float = WAIT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def join_group(self, request, *, timeout_s):
        self.calls.append(("join", request.member_id))
        return self._run(self.service.join_group(request), timeout_s)

    def sync_group(self, request, *, timeout_s):
        self.calls.append(("sync", request.member_id))
        return self._run(self.service.sync_group(request), timeout_s)

    def heartbeat(self, request) -> None:
        self.calls.append(("heartbeat", request.member_id))
        error = self._run(self.service.heartbeat(request))
        if error is not None:  # as the metadata service answers it
            raise error

    def leave_group(self, request) -> None:
        self.calls.append(("leave", request.members[0][0]))
        self._run(self.service.leave_group(request))

    def partition_counts(self) -> dict[str, int]:
        return dict(self.counts)

    def state(self, group: str) -> str:
        (described,) = self._run(self.service.describe_groups([group]))
        return str(described.state)

    def close(self) -> None:
        self._run(self.service.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)


@pytest.fixture
def calls() -> Iterator[ServiceCalls]:
    service = ServiceCalls({"t": 4})
    yield service
    service.close()


def member(calls: ServiceCalls, options: MemberOptions = FAST, **kwargs: Any) -> GroupMember:
    m = GroupMember(calls, group_id="g", topics=["t"], options=options, **kwargs)
    m.start()
    return m


def next_event(m: GroupMember, kind: type[T]) -> T:
    event = m.next_event(WAIT_S)
    assert isinstance(event, kind), event
    return event


def partitions(*numbers: int) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition("t", p) for p in numbers)


def sent_after(calls: ServiceCalls, mark: int, pred: Callable[[tuple[str, str]], bool]) -> int:
    return sum(1 for call in calls.calls[mark:] if pred(call))


def test_group_member_joins_gets_everything_and_leaves_on_close(calls):
    m = member(calls)
    got = next_event(m, Assignment)
    assert got.partitions == partitions(0, 1, 2, 3)
    assert m.generation() == (got.generation_id, got.member_id) == (1, got.member_id)
    assert got.member_id.startswith("ray_stream-consumer-")
    first_join, second_join = calls.calls[:2]  # KIP-394: the member id comes first
    assert (first_join, second_join) == (("join", ""), ("join", got.member_id))
    m.close()
    assert ("leave", got.member_id) in calls.calls
    assert calls.state("g") == "Empty"


def test_group_member_rejoins_only_after_the_poll_thread_revoked(calls):
    first = member(calls)
    mine = next_event(first, Assignment)
    second = member(calls)  # its JoinGroup starts a rebalance
    assert next_event(first, Revocation) == Revocation(lost=False)
    mark = len(calls.calls)
    # Heartbeats keep the session while the poll thread revokes; no JoinGroup yet.
    wait_for(lambda: sent_after(calls, mark, lambda c: c == ("heartbeat", mine.member_id)) >= 3)
    assert sent_after(calls, mark, lambda c: c == ("join", mine.member_id)) == 0
    first.revoked()
    a, b = next_event(first, Assignment), next_event(second, Assignment)
    assert a.generation_id == b.generation_id == 2
    assert sorted(a.partitions + b.partitions, key=lambda tp: tp.partition) == list(
        partitions(0, 1, 2, 3)
    )
    assert len(a.partitions) == len(b.partitions) == 2
    second.close()
    first.close()


def test_group_member_leader_rebalances_when_partitions_are_added(calls):
    options = MemberOptions(
        heartbeat_interval_ms=20, session_timeout_ms=10_000, metadata_max_age_ms=20
    )
    m = member(calls, options)
    assert next_event(m, Assignment).partitions == partitions(0, 1, 2, 3)
    calls.counts["t"] = 6
    assert next_event(m, Revocation) == Revocation(lost=False)
    m.revoked()
    assert next_event(m, Assignment).partitions == partitions(0, 1, 2, 3, 4, 5)
    m.close()


def test_group_member_that_stops_polling_leaves_and_rejoins_when_polled(calls):
    options = MemberOptions(
        heartbeat_interval_ms=20, session_timeout_ms=10_000, max_poll_interval_ms=100
    )
    m = member(calls, options)
    got = next_event(m, Assignment)
    assert next_event(m, Revocation) == Revocation(lost=True)  # no polled() for 100 ms
    assert ("leave", got.member_id) in calls.calls
    assert calls.state("g") == "Empty"
    m.polled()
    m.revoked()
    again = next_event(m, Assignment)
    assert again.member_id != got.member_id  # it left: it came back as a new member
    assert again.partitions == partitions(0, 1, 2, 3)
    m.close()


def test_group_member_without_a_common_assignor_fails_for_good(calls):
    ranged = member(calls, MemberOptions(heartbeat_interval_ms=20, assignors=("range",)))
    next_event(ranged, Assignment)
    other = member(calls, MemberOptions(heartbeat_interval_ms=20, assignors="roundrobin"))
    wait_for(lambda: other.failure is not None, timeout=WAIT_S)
    assert isinstance(other.failure, InconsistentGroupProtocol)
    other.close()
    ranged.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"session_timeout_ms": 0},
        {"heartbeat_interval_ms": 45_000},  # not below the session timeout
        {"max_poll_interval_ms": True},
        {"assignors": ()},
        {"assignors": "range,sticky"},
    ],
)
def test_group_member_options_are_validated(bad):
    with pytest.raises(InvalidConfig):
        MemberOptions(**bad)


def test_group_member_options_take_kafkas_comma_separated_strategy():
    assert MemberOptions(assignors="roundrobin, range").assignors == ("roundrobin", "range")
