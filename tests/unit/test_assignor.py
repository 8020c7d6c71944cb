"""Kafka's range and roundrobin assignors (core/assignor.py): the same answers as Kafka's
Java RangeAssignor / RoundRobinAssignor, and every partition to exactly one subscriber."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ray_stream.core.assignor import (
    ASSIGNORS,
    MemberSubscription,
    range_assign,
    roundrobin_assign,
)
from ray_stream.core.types import TopicPartition


def tps(topic: str, *partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in partitions]


def test_assignor_range_splits_each_topic_in_consecutive_ranges_extra_to_the_first():
    members = [MemberSubscription("c2", ("t",)), MemberSubscription("c1", ("t",))]
    assert range_assign(members, {"t": 6}) == {"c1": tps("t", 0, 1, 2), "c2": tps("t", 3, 4, 5)}
    three = [MemberSubscription(m, ("t",)) for m in ("a", "b", "c")]
    assert range_assign(three, {"t": 7}) == {
        "a": tps("t", 0, 1, 2),
        "b": tps("t", 3, 4),
        "c": tps("t", 5, 6),
    }


def test_assignor_range_works_topic_by_topic_so_the_first_member_gains_on_each():
    # Kafka's documented example: two topics of 3 partitions, two consumers.
    members = [MemberSubscription("c0", ("t0", "t1")), MemberSubscription("c1", ("t0", "t1"))]
    assert range_assign(members, {"t0": 3, "t1": 3}) == {
        "c0": tps("t0", 0, 1) + tps("t1", 0, 1),
        "c1": tps("t0", 2) + tps("t1", 2),
    }


def test_assignor_roundrobin_deals_partitions_of_all_topics_in_turn():
    # Kafka's documented example: C0 and C1 on t0 and t1 with 3 partitions each.
    members = [MemberSubscription("c1", ("t0", "t1")), MemberSubscription("c0", ("t0", "t1"))]
    assert roundrobin_assign(members, {"t0": 3, "t1": 3}) == {
        "c0": tps("t0", 0, 2) + tps("t1", 1),
        "c1": tps("t0", 1) + tps("t1", 0, 2),
    }


def test_assignor_roundrobin_skips_members_not_subscribed_to_a_topic():
    # Kafka's javadoc example: C0 [t0], C1 [t0, t1], C2 [t0, t1, t2]; t0 has 1, t1 2, t2 3.
    members = [
        MemberSubscription("c0", ("t0",)),
        MemberSubscription("c1", ("t0", "t1")),
        MemberSubscription("c2", ("t0", "t1", "t2")),
    ]
    assert roundrobin_assign(members, {"t0": 1, "t1": 2, "t2": 3}) == {
        "c0": tps("t0", 0),
        "c1": tps("t1", 0),
        "c2": tps("t1", 1) + tps("t2", 0, 1, 2),
    }


def test_assignor_orders_static_members_first_by_instance_id():
    members = [
        MemberSubscription("a-dynamic", ("t",)),
        MemberSubscription("z-static", ("t",), group_instance_id="i1"),
    ]
    assert range_assign(members, {"t": 2}) == {"z-static": tps("t", 0), "a-dynamic": tps("t", 1)}


def test_assignor_skips_topics_that_do_not_exist_and_lists_idle_members():
    members = [MemberSubscription("a", ("t", "missing")), MemberSubscription("b", ("t",))]
    for assign in ASSIGNORS.values():
        out = assign(members, {"t": 1})
        assert sorted(out) == ["a", "b"]
        assert sorted(p for parts in out.values() for p in parts) == tps("t", 0)
    assert roundrobin_assign([], {"t": 3}) == {} == range_assign([], {"t": 3})


topic_names = st.sampled_from(["a", "b", "c", "d"])
subscriptions = st.lists(
    st.tuples(st.uuids().map(str), st.sets(topic_names, min_size=1).map(tuple)),
    min_size=1,
    max_size=6,
    unique_by=lambda m: m[0],
)


@given(subscriptions, st.dictionaries(topic_names, st.integers(0, 12)))
def test_assignor_every_partition_goes_to_exactly_one_subscriber(members, counts):
    subs = [MemberSubscription(m, topics) for m, topics in members]
    wanted = {TopicPartition(t, p) for s in subs for t in s.topics for p in range(counts.get(t, 0))}
    for name, assign in ASSIGNORS.items():
        out = assign(subs, counts)
        handed = [(m, tp) for m, parts in out.items() for tp in parts]
        assert sorted(tp for _, tp in handed) == sorted(wanted), name
        topics_of = {s.member_id: set(s.topics) for s in subs}
        assert all(tp.topic in topics_of[m] for m, tp in handed), name


@given(st.integers(1, 8), st.integers(0, 40))
def test_assignor_balances_one_topic_within_one_partition(members, partitions):
    subs = [MemberSubscription(f"m{i}", ("t",)) for i in range(members)]
    for assign in ASSIGNORS.values():
        sizes = [len(parts) for parts in assign(subs, {"t": partitions}).values()]
        assert max(sizes) - min(sizes) <= 1
