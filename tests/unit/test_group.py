"""The classic group coordinator state machine, driven step by step with explicit now_ms."""

from __future__ import annotations

import random

import pytest

from ray_stream.core.group import (
    COMPLETING_REBALANCE,
    EMPTY,
    PREPARING_REBALANCE,
    STABLE,
    GroupCoordinator,
    GroupListing,
    JoinResult,
    LeaveResult,
    Pending,
    SyncResult,
)
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
    RebalanceInProgress,
    UnknownMemberId,
)

G = "g1"
RANGE = ("range", b"range-meta")
RR = ("roundrobin", b"rr-meta")
COOP = ("cooperative-sticky", b"coop-meta")


def kind(error: BaseException | None) -> type[BaseException] | None:
    """An error's kind (its class is the API; the message is free-form), or None."""
    assert error is None or isinstance(error, GroupError), f"not a GroupError: {error!r}"
    return None if error is None else type(error)


def leaves(result: LeaveResult) -> tuple[type[BaseException] | None, list[tuple]]:
    """A LeaveResult as (kind of its error, [(member_id, instance_id, kind of error)])."""
    members = [(m.member_id, m.group_instance_id, kind(m.error)) for m in result.members]
    return kind(result.error), members


class Harness:
    """A coordinator plus the answers it produced for parked tickets."""

    def __init__(self, *, delay_ms: int = 300) -> None:
        # Sessions of 1-3 s below keep the scenarios short: lower Kafka's 6 s minimum.
        self.core = GroupCoordinator(
            rand=random.Random(7), initial_rebalance_delay_ms=delay_ms, min_session_timeout_ms=1
        )
        self.answers: dict[int, JoinResult | SyncResult] = {}

    def _collect(self) -> None:
        for completion in self.core.take_completions():
            assert completion.ticket not in self.answers, "a ticket was answered twice"
            self.answers[completion.ticket] = completion.result

    def join(
        self,
        member_id: str = "",
        *,
        now: int = 0,
        client: str = "client",
        protocols: list[tuple[str, bytes]] | None = None,
        instance: str | None = None,
        session: int = 10_000,
        rebalance: int = 5_000,
        protocol_type: str = "consumer",
        require_known: bool = False,
    ) -> JoinResult | Pending:
        out = self.core.join(
            G,
            member_id=member_id,
            group_instance_id=instance,
            protocol_type=protocol_type,
            protocols=protocols if protocols is not None else [RANGE],
            session_timeout_ms=session,
            rebalance_timeout_ms=rebalance,
            client_id=client,
            client_host="/127.0.0.1",
            require_known_member_id=require_known,
            now_ms=now,
        )
        self._collect()
        return out

    def sync(
        self,
        member_id: str,
        generation: int,
        *,
        now: int = 0,
        assignments: list[tuple[str, bytes]] | None = None,
        instance: str | None = None,
        protocol_name: str | None = None,
    ) -> SyncResult | Pending:
        out = self.core.sync(
            G,
            generation_id=generation,
            member_id=member_id,
            group_instance_id=instance,
            protocol_type="consumer",
            protocol_name=protocol_name,
            assignments=assignments or [],
            now_ms=now,
        )
        self._collect()
        return out

    def heartbeat(self, member_id: str, generation: int, *, now: int = 0) -> GroupError | None:
        error = self.core.heartbeat(
            G, generation_id=generation, member_id=member_id, group_instance_id=None, now_ms=now
        )
        self._collect()
        return error

    def leave(self, *members: tuple[str, str | None], now: int = 0) -> LeaveResult:
        out = self.core.leave(G, list(members), now_ms=now)
        self._collect()
        return out

    def tick(self, now: int) -> list[tuple[str, str]]:
        expired = self.core.tick(now)
        self._collect()
        return expired

    def answer(self, out: JoinResult | SyncResult | Pending) -> JoinResult | SyncResult | None:
        return self.answers.get(out.ticket) if isinstance(out, Pending) else out

    def joined(self, out: JoinResult | SyncResult | Pending) -> JoinResult:
        result = self.answer(out)
        assert isinstance(result, JoinResult), f"join not answered: {out}"
        return result

    def synced(self, out: JoinResult | SyncResult | Pending) -> SyncResult:
        result = self.answer(out)
        assert isinstance(result, SyncResult), f"sync not answered: {out}"
        return result

    def state(self) -> str:
        return self.core.describe([G])[0].state


def form_group(h: Harness, clients: list[str], **join_kwargs) -> tuple[list[str], int]:
    """Join all clients at t=0 and complete the (extended) initial delay; then sync."""
    outs = [h.join(client=c, **join_kwargs) for c in clients]
    for now in (300, 600):
        h.tick(now)
    results = [h.joined(o) for o in outs]
    ids = [r.member_id for r in results]
    generation = results[0].generation_id
    h.sync(ids[0], generation, now=600, assignments=[(m, m.encode()) for m in ids])
    for member_id in ids[1:]:
        h.sync(member_id, generation, now=600)
    assert h.state() == STABLE
    return ids, generation


def test_group_two_joiners_complete_together_and_leader_gets_members():
    h = Harness()
    a = h.join(client="a", now=0)
    b = h.join(client="b", now=100)
    assert isinstance(a, Pending)
    assert isinstance(b, Pending)
    assert h.state() == PREPARING_REBALANCE
    h.tick(299)
    assert h.answers == {}
    h.tick(300)  # b joined during the initial delay: it is extended once more
    assert h.answers == {}
    h.tick(600)
    ra, rb = h.joined(a), h.joined(b)
    assert ra.error is None
    assert rb.error is None
    assert ra.generation_id == rb.generation_id == 1
    assert ra.leader == rb.leader == ra.member_id
    assert ra.protocol_name == "range"
    assert ra.protocol_type == "consumer"
    assert ra.members == ((ra.member_id, None, b"range-meta"), (rb.member_id, None, b"range-meta"))
    assert rb.members == ()
    assert ra.member_id.startswith("a-")
    assert rb.member_id.startswith("b-")
    assert h.state() == COMPLETING_REBALANCE


def test_group_single_joiner_waits_exactly_the_initial_delay():
    h = Harness(delay_ms=300)
    out = h.join(now=1_000)
    h.tick(1_299)
    assert h.answer(out) is None
    h.tick(1_300)
    assert h.joined(out).generation_id == 1


def test_group_zero_initial_delay_completes_first_join_at_once():
    h = Harness(delay_ms=0)
    result = h.joined(h.join())
    assert result.generation_id == 1
    assert result.leader == result.member_id


def test_group_member_id_required_then_rejoin_with_given_id():
    h = Harness(delay_ms=0)
    first = h.join(client="cli", require_known=True)
    assert isinstance(first, JoinResult)
    assert kind(first.error) is MemberIdRequired
    assert first.member_id.startswith("cli-")
    assert len(first.member_id) == len("cli-") + 36
    assert first.generation_id == -1
    assert h.state() == EMPTY
    second = h.joined(h.join(first.member_id, require_known=True))
    assert second.error is None
    assert second.member_id == first.member_id
    assert second.generation_id == 1


def test_group_pending_member_that_never_rejoins_expires():
    h = Harness(delay_ms=0)
    first = h.joined(h.join(require_known=True, session=1_000, now=0))
    assert kind(first.error) is MemberIdRequired
    assert h.tick(999) == []
    assert h.tick(1_000) == [(G, first.member_id)]
    again = h.join(first.member_id, now=1_001)
    assert kind(h.joined(again).error) is UnknownMemberId


def test_group_third_member_makes_others_rejoin_into_next_generation():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"])
    c = h.join(client="c", now=1_000)
    assert isinstance(c, Pending)
    assert kind(h.heartbeat(a, gen, now=1_010)) is RebalanceInProgress
    assert kind(h.heartbeat(b, gen, now=1_010)) is RebalanceInProgress
    ra = h.join(a, now=1_020)
    assert h.answer(ra) is None  # b has not rejoined yet
    rb = h.join(b, now=1_030)  # everyone is back: completes without waiting for the timeout
    results = [h.joined(x) for x in (ra, rb, c)]
    assert {r.generation_id for r in results} == {gen + 1}
    assert results[0].leader == a
    assert [m[0] for m in results[0].members] == [a, b, results[2].member_id]
    assert kind(h.heartbeat(a, gen, now=1_040)) is IllegalGeneration


def test_group_members_that_miss_the_rebalance_timeout_are_removed():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"], rebalance=2_000, session=30_000)
    rc = h.join(client="c", now=1_000, rebalance=2_000, session=30_000)
    ra = h.join(a, now=1_100, rebalance=2_000, session=30_000)
    h.tick(2_999)
    assert h.answer(ra) is None
    h.tick(3_000)
    result_a, result_c = h.joined(ra), h.joined(rc)
    assert result_a.generation_id == gen + 1
    assert [m[0] for m in result_a.members] == [a, result_c.member_id]
    assert kind(h.heartbeat(b, gen + 1, now=3_001)) is UnknownMemberId


def test_group_leader_that_does_not_rejoin_is_replaced():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"], rebalance=2_000, session=30_000)
    rb = h.join(b, now=1_000, protocols=[RR, RANGE], rebalance=2_000, session=30_000)
    h.tick(3_000)
    result = h.joined(rb)
    assert result.leader == b
    assert result.members == ((b, None, b"rr-meta"),)
    assert result.protocol_name == "roundrobin"
    assert kind(h.heartbeat(a, gen, now=3_001)) is UnknownMemberId


def test_group_sync_relays_leader_assignment_to_waiting_follower():
    h = Harness()
    outs = [h.join(client=c) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    follower = h.sync(b, 1, now=700)
    assert isinstance(follower, Pending)
    assert h.answer(follower) is None
    leader = h.sync(a, 1, now=710, assignments=[(a, b"A"), (b, b"B"), ("stranger", b"X")])
    assert h.synced(leader) == SyncResult(None, "consumer", "range", b"A")
    assert h.synced(follower) == SyncResult(None, "consumer", "range", b"B")
    assert h.state() == STABLE
    assert h.synced(h.sync(b, 1, now=720)).assignment == b"B"  # Stable: answered at once


def test_group_leader_assignment_missing_a_member_gives_it_empty_bytes():
    h = Harness()
    (a, b), _ = form_group(h, ["a", "b"])
    desc = h.core.describe([G])[0]
    assert {m.member_id: m.assignment for m in desc.members} == {a: a.encode(), b: b.encode()}
    h2 = Harness()
    outs = [h2.join(client=c) for c in ("a", "b")]
    h2.tick(300)
    h2.tick(600)
    x, y = (h2.joined(o).member_id for o in outs)
    h2.sync(x, 1, assignments=[(x, b"all")])
    assert h2.synced(h2.sync(y, 1)).assignment == b""


@pytest.mark.parametrize(
    ("member", "generation", "protocol_name", "expected"),
    [
        ("nobody", 1, None, UnknownMemberId),
        ("A", 0, None, IllegalGeneration),
        ("A", 2, None, IllegalGeneration),
        ("A", 1, "roundrobin", InconsistentGroupProtocol),
    ],
)
def test_group_sync_errors(member, generation, protocol_name, expected):
    h = Harness(delay_ms=0)
    a = h.joined(h.join()).member_id
    member_id = a if member == "A" else member
    out = h.sync(member_id, generation, protocol_name=protocol_name)
    assert kind(h.synced(out).error) is expected


def test_group_sync_unknown_group_and_during_rebalance():
    h = Harness(delay_ms=0)
    out = h.core.sync(
        "nope",
        generation_id=1,
        member_id="m",
        group_instance_id=None,
        protocol_type=None,
        protocol_name=None,
        assignments=[],
        now_ms=0,
    )
    assert isinstance(out, SyncResult)
    assert kind(out.error) is UnknownMemberId
    assert (out.protocol_type, out.protocol_name, out.assignment) == (None, None, b"")
    a = h.joined(h.join(client="a")).member_id
    h.sync(a, 1, assignments=[(a, b"x")])
    h.join(client="b", now=10)
    assert kind(h.synced(h.sync(a, 1, now=20)).error) is RebalanceInProgress


def test_group_rebalance_during_completing_answers_waiting_followers():
    h = Harness()
    outs = [h.join(client=c) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    follower = h.sync(b, 1, now=700)
    h.join(client="c", now=710)
    assert kind(h.synced(follower).error) is RebalanceInProgress
    assert h.state() == PREPARING_REBALANCE
    assert a in {m.member_id for m in h.core.describe([G])[0].members}


def test_group_heartbeat_errors_and_success():
    h = Harness(delay_ms=0)
    a = h.joined(h.join()).member_id
    h.sync(a, 1, assignments=[(a, b"x")])
    assert h.heartbeat(a, 1) is None
    assert kind(h.heartbeat(a, 7)) is IllegalGeneration
    assert kind(h.heartbeat("ghost", 1)) is UnknownMemberId
    other = h.core.heartbeat(
        "other", generation_id=1, member_id=a, group_instance_id=None, now_ms=0
    )
    assert kind(other) is UnknownMemberId
    no_id = h.core.heartbeat("", generation_id=1, member_id=a, group_instance_id=None, now_ms=0)
    assert kind(no_id) is InvalidGroupId


def test_group_heartbeat_while_completing_is_ok():
    h = Harness(delay_ms=0)
    a = h.joined(h.join()).member_id
    assert h.state() == COMPLETING_REBALANCE
    assert h.heartbeat(a, 1) is None


def test_group_leave_triggers_rebalance_for_the_rest():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"])
    assert leaves(h.leave((b, None), now=1_000)) == (None, [(b, None, None)])
    assert h.state() == PREPARING_REBALANCE
    assert kind(h.heartbeat(a, gen, now=1_001)) is RebalanceInProgress
    result = h.joined(h.join(a, now=1_002))
    assert result.generation_id == gen + 1
    assert result.members == ((a, None, b"range-meta"),)


def test_group_last_member_leaving_empties_group_and_bumps_generation():
    h = Harness(delay_ms=0)
    a = h.joined(h.join()).member_id
    h.sync(a, 1, assignments=[(a, b"x")])
    h.leave((a, None))
    desc = h.core.describe([G])[0]
    assert desc.state == EMPTY
    assert desc.members == ()
    assert h.core.list_groups() == [GroupListing(G, "consumer", EMPTY)]
    # A newcomer to the Empty group starts generation 3 after the initial delay.
    assert h.joined(h.join(client="z")).generation_id == 3


def test_group_leave_unknown_members_and_unknown_group():
    h = Harness(delay_ms=0)
    a = h.joined(h.join()).member_id
    assert leaves(h.leave(("ghost", None), ("", "no-such-instance"))) == (
        None,
        [("ghost", None, UnknownMemberId), ("", "no-such-instance", UnknownMemberId)],
    )
    unknown_group = h.core.leave("none", [(a, None)], now_ms=0)
    assert leaves(unknown_group) == (None, [(a, None, UnknownMemberId)])


def test_group_leave_while_parked_in_join_answers_the_join():
    h = Harness()
    (a, _b), _ = form_group(h, ["a", "b"])
    ra = h.join(a, now=1_000)  # the leader rejoining a Stable group forces a rebalance
    assert h.answer(ra) is None
    h.leave((a, None), now=1_010)
    assert kind(h.joined(ra).error) is UnknownMemberId


def test_group_session_expiry_evicts_silent_member_and_rebalances():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"], session=1_000)
    # form_group completed at t=600 and synced at 600: deadlines are 1600.
    assert h.heartbeat(a, gen, now=1_500) is None
    assert h.tick(1_599) == []
    assert h.tick(1_600) == [(G, b)]
    assert kind(h.heartbeat(a, gen, now=1_700)) is RebalanceInProgress
    result = h.joined(h.join(a, now=1_710, session=1_000))
    assert result.generation_id == gen + 1
    assert [m[0] for m in result.members] == [a]
    assert kind(h.heartbeat(b, gen, now=1_720)) is UnknownMemberId


def test_group_parked_joiner_is_not_expired_by_session():
    h = Harness()
    (a, b), _ = form_group(h, ["a", "b"], session=1_000, rebalance=10_000)
    ra = h.join(a, now=700, session=1_000, rebalance=10_000)
    expired = h.tick(1_700)  # b went silent; a sits in JoinGroup past its own session
    assert expired == [(G, b)]
    result = h.joined(ra)  # b's removal leaves only joined members: the join completes
    assert result.error is None
    assert [m[0] for m in result.members] == [a]


def test_group_member_that_never_syncs_is_removed_after_rebalance_timeout():
    h = Harness()
    outs = [h.join(client=c, rebalance=2_000, session=30_000) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    follower = h.sync(b, 1, now=700)
    assert h.tick(2_599) == []
    assert h.tick(2_600) == [(G, a)]
    assert kind(h.synced(follower).error) is RebalanceInProgress
    assert h.state() == PREPARING_REBALANCE


def test_group_follower_released_from_sync_gets_a_fresh_session():
    h = Harness()
    outs = [h.join(client=c, rebalance=2_000, session=3_000) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    follower = h.sync(b, 1, now=700)  # session deadline 3700, but parked from here on
    assert h.tick(2_600) == [(G, a)]  # the leader never synced
    assert kind(h.synced(follower).error) is RebalanceInProgress
    assert h.tick(3_700) == []  # b's session restarted at 2600 when it was released
    assert kind(h.heartbeat(b, 1, now=3_710)) is RebalanceInProgress


def test_group_delete_groups():
    h = Harness(delay_ms=0)
    h.joined(h.join())
    h.core.validate_offset_commit("simple", generation_id=-1, member_id="", now_ms=0)
    deleted = h.core.delete([G, "simple", "unknown", ""])
    assert [(d.group_id, kind(d.error)) for d in deleted] == [
        (G, NonEmptyGroup),
        ("simple", None),
        ("unknown", GroupIdNotFound),
        ("", InvalidGroupId),
    ]
    desc = h.core.describe(["simple"])[0]
    assert (desc.error, desc.state, desc.members) == (None, "Dead", ())
    assert [g.group_id for g in h.core.list_groups()] == [G]


@pytest.mark.parametrize(
    ("preferences", "chosen"),
    [
        ([[RR, RANGE], [RANGE, RR], [RANGE, RR]], "range"),
        ([[RR, RANGE], [RR, RANGE], [RANGE, RR]], "roundrobin"),
        ([[COOP, RANGE], [RANGE]], "range"),  # cooperative-sticky is not supported by all
        ([[COOP, RANGE], [RANGE, COOP]], "cooperative-sticky"),  # a tie: the first vote wins
    ],
)
def test_group_protocol_selection_by_votes(preferences, chosen):
    h = Harness()
    outs = [h.join(client=f"c{i}", protocols=p) for i, p in enumerate(preferences)]
    h.tick(300)
    h.tick(600)
    leader = h.joined(outs[0])
    assert leader.protocol_name == chosen
    metadata = dict(preferences[1])[chosen]
    assert leader.members[1][2] == metadata


def test_group_inconsistent_protocols_are_rejected():
    h = Harness()
    assert kind(h.joined(h.join(protocols=[])).error) is InconsistentGroupProtocol
    assert kind(h.joined(h.join(protocol_type="")).error) is InconsistentGroupProtocol
    assert h.core.list_groups() == []  # a rejected first join creates no group
    h.join(client="a", protocols=[RANGE, RR])
    assert kind(h.joined(h.join(protocols=[COOP])).error) is InconsistentGroupProtocol
    assert kind(h.joined(h.join(protocol_type="connect")).error) is InconsistentGroupProtocol
    assert isinstance(h.join(client="b", protocols=[RR]), Pending)


def test_group_join_with_member_id_for_unknown_group_or_member():
    h = Harness(delay_ms=0)
    assert kind(h.joined(h.join("made-up")).error) is UnknownMemberId
    h.joined(h.join())
    assert kind(h.joined(h.join("made-up")).error) is UnknownMemberId


def test_group_follower_rejoin_in_stable_with_same_metadata_needs_no_rebalance():
    h = Harness()
    (a, b), gen = form_group(h, ["a", "b"])
    result = h.joined(h.join(b, now=1_000))
    assert (result.generation_id, result.leader, result.members) == (gen, a, ())
    assert h.state() == STABLE
    changed = h.join(b, now=1_010, protocols=[RR, RANGE])  # new metadata forces a rebalance
    assert isinstance(changed, Pending)
    assert h.state() == PREPARING_REBALANCE


def test_group_rejoin_in_completing_with_same_metadata_repeats_generation():
    h = Harness()
    outs = [h.join(client=c) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a = h.joined(outs[0]).member_id
    again = h.joined(h.join(a, now=700))
    assert again.generation_id == 1
    assert len(again.members) == 2
    assert h.state() == COMPLETING_REBALANCE


def test_group_resent_join_answers_the_replaced_request():
    h = Harness()
    (a, _b), _ = form_group(h, ["a", "b"])
    first = h.join(a, now=1_000)
    second = h.join(a, now=1_100)
    assert kind(h.joined(first).error) is RebalanceInProgress
    assert h.answer(second) is None


def test_group_static_member_rejoin_takes_over_without_rebalance():
    h = Harness()
    outs = [h.join(client="a", instance="inst-a"), h.join(client="b", instance="inst-b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    assert a.startswith("inst-a-")
    h.sync(a, 1, assignments=[(a, b"A"), (b, b"B")], instance="inst-a")
    h.sync(b, 1, instance="inst-b")
    rejoined = h.joined(h.join(client="b", instance="inst-b", now=1_000))
    new_b = rejoined.member_id
    assert new_b != b
    assert rejoined.generation_id == 1
    assert rejoined.leader == a
    assert rejoined.members == ()
    assert rejoined.skip_assignment is False
    assert h.state() == STABLE
    assert h.synced(h.sync(new_b, 1, instance="inst-b")).assignment == b"B"
    assert kind(h.synced(h.sync(b, 1, instance="inst-b")).error) is FencedInstanceId
    assert kind(h.heartbeat(b, 1)) is UnknownMemberId


def test_group_static_leader_rejoin_gets_members_and_skip_assignment():
    h = Harness(delay_ms=0)
    a = h.joined(h.join(instance="inst-a")).member_id
    h.sync(a, 1, assignments=[(a, b"A")], instance="inst-a")
    rejoined = h.joined(h.join(instance="inst-a", now=100))
    assert rejoined.leader == rejoined.member_id != a
    assert rejoined.skip_assignment is True
    assert rejoined.members == ((rejoined.member_id, "inst-a", b"range-meta"),)


def test_group_static_rejoin_fences_the_parked_old_join():
    h2 = Harness()
    outs = [h2.join(client="a", instance="ia"), h2.join(client="b", instance="ib")]
    h2.tick(300)
    h2.tick(600)
    a2 = h2.joined(outs[0]).member_id
    h2.sync(a2, 1, assignments=[], instance="ia")
    old_join = h2.join(a2, instance="ia", now=1_000)  # leader rejoin -> rebalance, parked
    new_join = h2.join(instance="ia", now=1_010)
    assert kind(h2.joined(old_join).error) is FencedInstanceId
    assert h2.answer(new_join) is None  # waits for ib to rejoin


def test_group_validate_offset_commit():
    h = Harness()
    core = h.core

    def check(group: str, generation: int, member: str) -> GroupError | None:
        return core.validate_offset_commit(
            group, generation_id=generation, member_id=member, now_ms=0
        )

    assert check("simple", -1, "") is None
    assert kind(check("", -1, "")) is InvalidGroupId
    assert core.list_groups() == [GroupListing("simple", "", EMPTY)]  # none for ""
    assert kind(check("unknown", 3, "m")) is IllegalGeneration
    outs = [h.join(client=c) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, _ = (h.joined(o).member_id for o in outs)
    assert kind(check(G, 1, a)) is RebalanceInProgress  # joined but not synced yet
    h.sync(a, 1, assignments=[])
    assert check(G, 1, a) is None
    assert kind(check(G, 0, a)) is IllegalGeneration
    assert kind(check(G, 1, "ghost")) is UnknownMemberId
    assert kind(check(G, -1, "")) is UnknownMemberId  # a simple commit to a live group
    h.join(client="c", now=700)
    assert check(G, 1, a) is None  # commit before rejoining, as eager consumers do


def test_group_list_groups_filters_by_state_case_insensitively():
    h = Harness()
    h.join(client="a")
    h.core.validate_offset_commit("simple", generation_id=-1, member_id="", now_ms=0)
    assert h.core.list_groups() == [
        GroupListing(G, "consumer", PREPARING_REBALANCE),
        GroupListing("simple", "", EMPTY),
    ]
    assert h.core.list_groups(["empty"]) == [GroupListing("simple", "", EMPTY)]
    assert h.core.list_groups(["Stable"]) == []


def test_group_describe_shows_metadata_only_when_stable():
    h = Harness()
    outs = [h.join(client=c) for c in ("a", "b")]
    h.tick(300)
    h.tick(600)
    a, b = (h.joined(o).member_id for o in outs)
    desc = h.core.describe([G])[0]
    assert (desc.state, desc.protocol) == (COMPLETING_REBALANCE, "")
    assert all(m.metadata == b"" and m.assignment == b"" for m in desc.members)
    h.sync(a, 1, assignments=[(a, b"A"), (b, b"B")])
    desc = h.core.describe([G])[0]
    assert (desc.error, desc.state, desc.protocol_type, desc.protocol) == (
        None,
        STABLE,
        "consumer",
        "range",
    )
    first = desc.members[0]
    assert (first.member_id, first.client_id, first.client_host) == (a, "a", "/127.0.0.1")
    assert (first.metadata, first.assignment) == (b"range-meta", b"A")


def test_group_invalid_session_timeout_and_group_id():
    core = GroupCoordinator(rand=random.Random(1), min_session_timeout_ms=6_000)
    out = core.join(
        G,
        member_id="",
        group_instance_id=None,
        protocol_type="consumer",
        protocols=[RANGE],
        session_timeout_ms=5_999,
        rebalance_timeout_ms=5_000,
        client_id="c",
        client_host="h",
        require_known_member_id=False,
        now_ms=0,
    )
    assert isinstance(out, JoinResult)
    assert kind(out.error) is InvalidSessionTimeout
    assert kind(core.describe([""])[0].error) is InvalidGroupId


def test_group_next_deadline_tracks_initial_delay_and_sessions():
    h = Harness()
    assert h.core.next_deadline_ms() is None
    h.join(now=50)
    assert h.core.next_deadline_ms() == 350
    h.tick(350)
    assert h.core.next_deadline_ms() == 350 + 5_000  # pending-sync deadline (rebalance timeout)
