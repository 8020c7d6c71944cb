"""Kafka's eager partition assignors, "range" and "roundrobin", as pure functions.

Responsibility: the group leader's half of the classic consumer protocol. Given every
member's subscription and each topic's partition count, decide which member reads which
partition, as Kafka's Java ``RangeAssignor`` and ``RoundRobinAssignor`` do (librdkafka
implements the same two, without racks), so a group mixing the Python consumer and Kafka
clients gets the same kind of assignment whichever member is elected leader.

Rules this module keeps:

1. Every partition of a topic that exists and that some member subscribed to goes to
   exactly one member subscribed to that topic; nothing else is assigned. Every member
   appears in the answer, with no partitions if none fell to it.
2. Members are ordered as Kafka's ``MemberInfo`` orders them: members with a
   group.instance.id first, by that id, then the others by member id.
3. Pure: no I/O, clocks or randomness; the same input gives the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ray_stream.core.types import TopicPartition

__all__ = ["ASSIGNORS", "Assignor", "MemberSubscription", "range_assign", "roundrobin_assign"]


@dataclass(frozen=True, slots=True)
class MemberSubscription:
    """One member's subscription, as its JoinGroup metadata names it."""

    member_id: str
    topics: tuple[str, ...]
    group_instance_id: str | None = None


Assignment = dict[str, list[TopicPartition]]
Assignor = Callable[[Sequence[MemberSubscription], Mapping[str, int]], Assignment]


def _kafka_order(members: Sequence[MemberSubscription]) -> list[MemberSubscription]:
    """Rule 2 (Kafka's ``MemberInfo.compareTo``)."""

    def key(m: MemberSubscription) -> tuple[int, str]:
        if m.group_instance_id is not None:
            return (0, m.group_instance_id)
        return (1, m.member_id)

    return sorted(members, key=key)


def range_assign(
    members: Sequence[MemberSubscription], partition_counts: Mapping[str, int]
) -> Assignment:
    """Kafka's RangeAssignor: per topic, the subscribed members in order take consecutive
    ranges; the first ``count % members`` of them take one partition more.

    Args:
        members: every member of the group with the topics it subscribed to.
        partition_counts: partitions per existing topic (others are skipped).

    Returns:
        member id -> its partitions, topic by topic in name order, partitions ascending.
    """
    out: Assignment = {m.member_id: [] for m in members}
    ordered = _kafka_order(members)
    for topic in sorted({t for m in members for t in m.topics}):
        count = partition_counts.get(topic, 0)
        takers = [m for m in ordered if topic in m.topics]
        per, extra = divmod(count, len(takers))
        for i, member in enumerate(takers):
            start = per * i + min(i, extra)
            length = per + (1 if i < extra else 0)
            out[member.member_id].extend(
                TopicPartition(topic, p) for p in range(start, start + length)
            )
    return out


def roundrobin_assign(
    members: Sequence[MemberSubscription], partition_counts: Mapping[str, int]
) -> Assignment:
    """Kafka's RoundRobinAssignor: every subscribed partition (topics in name order, then
    partition) goes to the next member in circular order that subscribed to its topic.

    Args:
        members: every member of the group with the topics it subscribed to.
        partition_counts: partitions per existing topic (others are skipped).

    Returns:
        member id -> its partitions.
    """
    out: Assignment = {m.member_id: [] for m in members}
    ordered = _kafka_order(members)
    if not ordered:
        return out
    turn = 0
    for topic in sorted({t for m in members for t in m.topics}):
        for partition in range(partition_counts.get(topic, 0)):
            while topic not in ordered[turn % len(ordered)].topics:
                turn += 1  # someone subscribed to ``topic``, so this ends
            out[ordered[turn % len(ordered)].member_id].append(TopicPartition(topic, partition))
            turn += 1
    return out


# Protocol name (JoinGroup's protocol name, Kafka's ``partition.assignment.strategy``) ->
# assignor. Both are eager: a member gives up everything before it rejoins.
ASSIGNORS: dict[str, Assignor] = {"range": range_assign, "roundrobin": roundrobin_assign}
