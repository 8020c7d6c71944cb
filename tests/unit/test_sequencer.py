"""The pure sequencer, driven step by step: plan, apply, assert."""

from __future__ import annotations

import itertools

import pytest

from ray_stream.core.metadata_api import CommitRequest
from ray_stream.core.sequencer import (
    MAX_PARTITIONS,
    REMEMBERED_BATCHES,
    SEQUENCE_LIMIT,
    Changes,
    Sequencer,
)
from ray_stream.core.topic_name import validate_topic_name
from ray_stream.core.types import BatchEntry, CommittedOffset
from ray_stream.errors import (
    DuplicateSequence,
    InvalidConfig,
    InvalidPartitions,
    InvalidProducerEpoch,
    InvalidRequest,
    InvalidTopic,
    OffsetOutOfRange,
    OutOfOrderSequence,
    TopicAlreadyExists,
    UnknownTopicOrPartition,
)

_ids = itertools.count(1)


def new_id() -> str:
    return f"{next(_ids):032x}"


def make_seq(**topics: int) -> Sequencer:
    seq = Sequencer()
    for name, partitions in topics.items():
        seq.apply(seq.plan_create_topic(name, partitions, topic_id=new_id()))
    return seq


def entry(
    partition: int = 0,
    count: int = 1,
    *,
    topic: str = "t",
    pid: int = -1,
    epoch: int = -1,
    seq: int = -1,
    ts: int = 1000,
    length: int = 100,
    position: int = 0,
) -> BatchEntry:
    return BatchEntry(topic, partition, position, length, count, ts, ts, pid, epoch, seq)


def request(*entries: BatchEntry, key: str = "segments/a.arrow") -> CommitRequest:
    return CommitRequest.of(key, sum(e.length for e in entries), entries)


def commit(s: Sequencer, *entries: BatchEntry, key: str = "segments/a.arrow"):
    results, _ = s.apply_commits([request(*entries, key=key)])
    return results[0]


def offsets(results) -> list[int]:
    return [r.base_offset for r in results]


# ---------------------------------------------------------------- topics
def test_plan_create_topic_does_not_mutate_until_applied():
    seq = Sequencer()
    changes = seq.plan_create_topic("orders", 3, {"retention.ms": "1000"}, topic_id="ab" * 16)
    with pytest.raises(UnknownTopicOrPartition):
        seq.describe_topic("orders")
    assert [t.name for t in changes.topics] == ["orders"]
    assert [(r.partition, r.high_watermark) for r in changes.partitions] == [(0, 0), (1, 0), (2, 0)]
    seq.apply(changes)
    info = seq.describe_topic("orders")
    assert (info.topic_id, info.partitions, info.config) == ("ab" * 16, 3, {"retention.ms": "1000"})
    assert [(p.partition, p.log_start_offset, p.high_watermark) for p in info.partition_info] == [
        (0, 0, 0),
        (1, 0, 0),
        (2, 0, 0),
    ]


def test_create_topic_that_exists_is_rejected():
    seq = make_seq(t=1)
    with pytest.raises(TopicAlreadyExists):
        seq.plan_create_topic("t", 1, topic_id=new_id())


def test_create_topic_colliding_name_is_invalid():
    seq = make_seq(a_b=1)
    with pytest.raises(InvalidTopic, match="collides"):
        seq.plan_create_topic("a.b", 1, topic_id=new_id())


@pytest.mark.parametrize("name", ["a", "A-b_c.9", "x" * 249, "..."])
def test_valid_topic_names_pass(name):
    assert validate_topic_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "a b", "a/b", "é", "a:b", None, 5])
def test_invalid_topic_names_raise_invalid_topic(name):
    seq = Sequencer()
    with pytest.raises(InvalidTopic):
        seq.plan_create_topic(name, 1, topic_id=new_id())


@pytest.mark.parametrize("count", [0, -1, MAX_PARTITIONS + 1, True, 2.0, "3"])
def test_bad_partition_counts_raise_invalid_partitions(count):
    with pytest.raises(InvalidPartitions):
        Sequencer().plan_create_topic("t", count, topic_id=new_id())


def test_max_partition_count_is_accepted():
    seq = make_seq(big=MAX_PARTITIONS)
    assert seq.describe_topic("big").partitions == MAX_PARTITIONS


@pytest.mark.parametrize("config", [{"retention.ms": 1000}, {1: "x"}, {"k": None}, ["k"]])
def test_non_string_topic_config_raises_invalid_config(config):
    with pytest.raises(InvalidConfig):
        Sequencer().plan_create_topic("t", 1, config, topic_id=new_id())


def test_create_partitions_grows_topic_and_new_partitions_start_empty():
    seq = make_seq(t=2)
    commit(seq, entry(0, 3))
    seq.apply(seq.plan_create_partitions("t", 4))
    info = seq.describe_topic("t")
    assert info.partitions == 4
    assert [p.high_watermark for p in info.partition_info] == [3, 0, 0, 0]
    assert offsets(commit(seq, entry(3, 2), entry(3, 1))) == [0, 2]


@pytest.mark.parametrize("total", [1, 2, MAX_PARTITIONS + 1])
def test_create_partitions_must_grow_within_limit(total):
    seq = make_seq(t=2)
    with pytest.raises(InvalidPartitions):
        seq.plan_create_partitions("t", total)


def test_create_partitions_of_unknown_topic_raises():
    with pytest.raises(UnknownTopicOrPartition):
        Sequencer().plan_create_partitions("nope", 3)


def test_delete_topic_then_recreate_starts_at_zero_with_new_id():
    seq = make_seq(t=1)
    old_id = seq.describe_topic("t").topic_id
    commit(seq, entry(0, 5), key="segments/one.arrow")
    seq.apply(seq.plan_commit_offsets("g", {("t", 0): CommittedOffset(5)}))
    seq.apply(seq.plan_delete_topic("t"))
    with pytest.raises(UnknownTopicOrPartition):
        seq.describe_topic("t")
    assert seq.referenced_segments() == frozenset()
    assert seq.fetch_offsets("g") == {}
    seq.apply(seq.plan_create_topic("t", 1, topic_id=new_id()))
    assert seq.describe_topic("t").topic_id != old_id
    assert offsets(commit(seq, entry(0, 2))) == [0]


def test_delete_unknown_topic_raises():
    with pytest.raises(UnknownTopicOrPartition):
        Sequencer().plan_delete_topic("nope")


def test_list_topics_is_sorted_with_partition_info():
    seq = make_seq(b=2, a=1)
    commit(seq, entry(1, 4, topic="b"))
    topics = seq.list_topics()
    assert [t.name for t in topics] == ["a", "b"]
    assert [p.high_watermark for p in topics[1].partition_info] == [0, 4]


# --------------------------------------------------------------- commits
def test_offsets_are_contiguous_per_partition_across_rounds():
    seq = make_seq(t=2)
    first = commit(seq, entry(0, 3), entry(1, 2), entry(0, 4))
    second = commit(seq, entry(1, 1), entry(0, 1))
    assert offsets(first) == [0, 0, 3]
    assert offsets(second) == [2, 7]
    info = seq.describe_topic("t").partition_info
    assert [p.high_watermark for p in info] == [8, 3]


def test_round_assigns_offsets_in_request_then_entry_order():
    seq = make_seq(t=1)
    results, changes = seq.apply_commits(
        [
            request(entry(0, 2), entry(0, 1), key="segments/a.arrow"),
            request(entry(0, 5), key="segments/b.arrow"),
        ]
    )
    assert [offsets(r) for r in results] == [[0, 2], [3]]
    assert [(b.ref.segment_key, b.ref.base_offset) for b in changes.batches] == [
        ("segments/a.arrow", 0),
        ("segments/a.arrow", 2),
        ("segments/b.arrow", 3),
    ]
    assert [(p.topic, p.partition, p.high_watermark) for p in changes.partitions] == [("t", 0, 8)]


def test_plan_commits_does_not_mutate_until_applied():
    seq = make_seq(t=1)
    _, changes = seq.plan_commits([request(entry(0, 2))])
    assert seq.partition_info("t", 0).high_watermark == 0
    assert seq.locate("t", 0, 0, 1000).batches == ()
    seq.apply(changes)
    assert seq.partition_info("t", 0).high_watermark == 2


def test_unknown_topic_or_partition_fails_only_that_entry():
    seq = make_seq(t=1)
    results = commit(seq, entry(0, 1), entry(0, 1, topic="nope"), entry(7, 1), entry(0, 1))
    assert offsets(results) == [0, -1, -1, 1]
    assert isinstance(results[1].error, UnknownTopicOrPartition)
    assert isinstance(results[2].error, UnknownTopicOrPartition)
    assert results[0].error is None
    assert results[3].error is None


def test_entry_with_no_records_is_rejected():
    seq = make_seq(t=1)
    (result,) = commit(seq, entry(0, 0))
    assert isinstance(result.error, InvalidRequest)
    assert seq.partition_info("t", 0).high_watermark == 0


def test_referenced_segments_track_committed_batches_only():
    seq = make_seq(t=1)
    commit(seq, entry(0, 1), key="segments/a.arrow")
    commit(seq, entry(0, 1, topic="nope"), key="segments/orphan.arrow")
    commit(seq, entry(0, 1), key="segments/b.arrow")
    assert seq.referenced_segments() == {"segments/a.arrow", "segments/b.arrow"}


# ------------------------------------------------------------ idempotence
def test_duplicate_in_later_round_returns_original_offset():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2))
    first = commit(seq, entry(0, 3, pid=7, epoch=0, seq=0))
    results, changes = seq.apply_commits([request(entry(0, 3, pid=7, epoch=0, seq=0))])
    assert offsets(first) == [2]
    assert (results[0][0].base_offset, results[0][0].duplicate) == (2, True)
    assert changes.empty
    assert seq.partition_info("t", 0).high_watermark == 5


def test_duplicate_within_one_round_returns_original_offset():
    seq = make_seq(t=1)
    dup = entry(0, 2, pid=7, epoch=0, seq=0)
    results, changes = seq.apply_commits([request(dup), request(dup)])
    assert [(r[0].base_offset, r[0].duplicate) for r in results] == [(0, False), (0, True)]
    assert len(changes.batches) == 1


def test_sequence_gap_is_out_of_order():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, pid=7, epoch=0, seq=0))
    (result,) = commit(seq, entry(0, 1, pid=7, epoch=0, seq=3))
    assert isinstance(result.error, OutOfOrderSequence)
    assert result.base_offset == -1
    assert seq.partition_info("t", 0).high_watermark == 2
    assert offsets(commit(seq, entry(0, 1, pid=7, epoch=0, seq=2))) == [2]


def test_only_the_last_five_batches_are_remembered():
    seq = make_seq(t=1)
    for i in range(REMEMBERED_BATCHES + 1):
        commit(seq, entry(0, 1, pid=7, epoch=0, seq=i))
        commit(seq, entry(0, 1, pid=8, epoch=0, seq=i))  # another producer comes between
    (oldest,) = commit(seq, entry(0, 1, pid=7, epoch=0, seq=0))
    (kept,) = commit(seq, entry(0, 1, pid=7, epoch=0, seq=1))
    # Behind everything remembered: committed once, its offset no longer known.
    assert isinstance(oldest.error, DuplicateSequence)
    assert (kept.base_offset, kept.duplicate) == (2, True)
    assert seq.partition_info("t", 0).high_watermark == 2 * (REMEMBERED_BATCHES + 1)


def test_batches_contiguous_in_offsets_are_remembered_as_one_run():
    seq = make_seq(t=1)
    # Twenty batches of 3 records, nothing else between them: one remembered run.
    for i in range(20):
        commit(seq, entry(0, 3, pid=7, epoch=0, seq=3 * i))
    commit(seq, entry(0, 1, pid=8, epoch=0, seq=0))  # offset 60: the run ends here
    commit(seq, entry(0, 2, pid=7, epoch=0, seq=60))  # offsets 61-62
    results = [commit(seq, entry(0, 3, pid=7, epoch=0, seq=3 * i))[0] for i in range(20)]
    assert [(r.base_offset, r.duplicate) for r in results] == [(3 * i, True) for i in range(20)]
    (last,) = commit(seq, entry(0, 2, pid=7, epoch=0, seq=60))
    assert (last.base_offset, last.duplicate) == (61, True)
    (straddling,) = commit(seq, entry(0, 4, pid=7, epoch=0, seq=58))
    assert isinstance(straddling.error, OutOfOrderSequence)
    assert seq.partition_info("t", 0).high_watermark == 63


def test_unknown_producer_may_start_at_any_sequence():
    seq = make_seq(t=1)
    assert offsets(commit(seq, entry(0, 1, pid=9, epoch=0, seq=42))) == [0]
    assert offsets(commit(seq, entry(0, 1, pid=9, epoch=0, seq=43))) == [1]


def test_sequence_wraps_after_int_max():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, pid=7, epoch=0, seq=SEQUENCE_LIMIT - 1))
    assert offsets(commit(seq, entry(0, 1, pid=7, epoch=0, seq=1))) == [2]


def test_sequences_are_tracked_per_partition():
    seq = make_seq(t=2)
    commit(seq, entry(0, 1, pid=7, epoch=0, seq=0))
    assert offsets(commit(seq, entry(1, 1, pid=7, epoch=0, seq=0))) == [0]


def test_older_epoch_is_fenced():
    seq = make_seq(t=1)
    commit(seq, entry(0, 1, pid=7, epoch=2, seq=0))
    (result,) = commit(seq, entry(0, 1, pid=7, epoch=1, seq=1))
    assert isinstance(result.error, InvalidProducerEpoch)


def test_newer_epoch_resets_sequence_and_must_start_at_zero():
    seq = make_seq(t=1)
    commit(seq, entry(0, 1, pid=7, epoch=0, seq=0))
    (bad,) = commit(seq, entry(0, 1, pid=7, epoch=1, seq=1))
    (good,) = commit(seq, entry(0, 1, pid=7, epoch=1, seq=0))
    assert isinstance(bad.error, OutOfOrderSequence)
    assert (good.base_offset, good.error) == (1, None)
    assert seq.producer_state(7, "t", 0).epoch == 1


def test_producer_rows_hold_the_state_after_the_round():
    seq = make_seq(t=1)
    _, changes = seq.apply_commits(
        [request(entry(0, 2, pid=7, epoch=0, seq=0), entry(0, 3, pid=7, epoch=0, seq=2))]
    )
    (row,) = changes.producers
    assert (row.producer_id, row.topic, row.partition) == (7, "t", 0)
    assert row.state.batches == ((0, 4, 0),)  # contiguous: one run


def test_non_idempotent_batches_are_never_deduplicated():
    seq = make_seq(t=1)
    assert offsets(commit(seq, entry(0, 1), entry(0, 1))) == [0, 1]


# ------------------------------------------------------------ producer ids
def test_init_producer_id_hands_out_increasing_ids():
    seq = Sequencer()
    ids = []
    for _ in range(3):
        pair, changes = seq.plan_init_producer_id()
        seq.apply(changes)
        ids.append(pair)
    assert ids == [(0, 0), (1, 0), (2, 0)]
    assert seq.next_producer_id == 3


def test_transactional_reinit_bumps_epoch_and_fences_old_producer():
    seq = make_seq(t=1)
    (pid, epoch), changes = seq.plan_init_producer_id("tx-1")
    seq.apply(changes)
    commit(seq, entry(0, 1, pid=pid, epoch=epoch, seq=0))
    (pid2, epoch2), changes = seq.plan_init_producer_id("tx-1")
    seq.apply(changes)
    assert (pid2, epoch2) == (pid, epoch + 1)
    (zombie,) = commit(seq, entry(0, 1, pid=pid, epoch=epoch, seq=1))
    assert isinstance(zombie.error, InvalidProducerEpoch)
    assert offsets(commit(seq, entry(0, 1, pid=pid2, epoch=epoch2, seq=0))) == [1]


def test_empty_transactional_id_is_invalid():
    with pytest.raises(InvalidRequest):
        Sequencer().plan_init_producer_id("")


# ------------------------------------------------------------------ locate
def test_locate_returns_batches_from_the_one_holding_offset():
    seq = make_seq(t=1)
    commit(seq, entry(0, 3, length=10), entry(0, 2, length=20), entry(0, 4, length=30))
    located = seq.locate("t", 0, 4, 10_000)
    assert [b.base_offset for b in located.batches] == [3, 5]
    assert (located.high_watermark, located.log_start_offset) == (9, 0)
    assert [b.base_offset for b in seq.locate("t", 0, 0, 10_000).batches] == [0, 3, 5]


def test_locate_stops_at_max_bytes_but_returns_at_least_one():
    seq = make_seq(t=1)
    commit(seq, entry(0, 1, length=10), entry(0, 1, length=20), entry(0, 1, length=30))
    assert [b.base_offset for b in seq.locate("t", 0, 0, 30).batches] == [0, 1]
    assert [b.base_offset for b in seq.locate("t", 0, 0, 29).batches] == [0]
    assert [b.base_offset for b in seq.locate("t", 0, 2, 1).batches] == [2]


def test_locate_at_high_watermark_is_empty():
    seq = make_seq(t=1)
    commit(seq, entry(0, 3))
    assert seq.locate("t", 0, 3, 1000).batches == ()


@pytest.mark.parametrize("offset", [-1, 4])
def test_locate_outside_log_is_out_of_range(offset):
    seq = make_seq(t=1)
    commit(seq, entry(0, 3))
    with pytest.raises(OffsetOutOfRange):
        seq.locate("t", 0, offset, 1000)


@pytest.mark.parametrize(("topic", "partition"), [("nope", 0), ("t", 1), ("t", -1)])
def test_locate_unknown_topic_or_partition(topic, partition):
    seq = make_seq(t=1)
    with pytest.raises(UnknownTopicOrPartition):
        seq.locate(topic, partition, 0, 1000)


def test_locate_ref_fields_point_into_the_segment():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, position=64, length=80, ts=5000), key="segments/x.arrow")
    (ref,) = seq.locate("t", 0, 1, 1000).batches
    assert (ref.segment_key, ref.position, ref.length, ref.record_count, ref.max_timestamp) == (
        "segments/x.arrow",
        64,
        80,
        2,
        5000,
    )
    assert ref.last_offset == 1


def test_locate_many_answers_each_position_in_order_with_its_own_error():
    seq = make_seq(t=2)
    commit(seq, entry(0, 2, length=10), entry(1, 1, length=20), entry(0, 1, length=30))
    answer = seq.locate_many(
        [
            ("t", 0, 0, 1000),
            ("nope", 0, 0, 1000),
            ("t", 1, 5, 1000),
            ("t", 1, 0, 1000),
            ("t", 0, 2, 1000),
        ],
        catalog_version=7,
    )
    assert set(answer.errors) == {1, 2}
    assert isinstance(answer.errors[1], UnknownTopicOrPartition)
    assert isinstance(answer.errors[2], OffsetOutOfRange)
    assert answer.batches(0) == list(seq.locate("t", 0, 0, 1000).batches)
    assert [b.base_offset for b in answer.batches(0)] == [0, 2]
    assert answer.batches(1) == answer.batches(2) == []
    assert [(b.base_offset, b.length) for b in answer.batches(3)] == [(0, 20)]
    assert [b.base_offset for b in answer.batches(4)] == [2]
    assert list(answer.high_watermark) == [3, -1, -1, 1, 3]
    assert answer.catalog_version == 7


# ------------------------------------------------------------- list_offset
def test_list_offset_earliest_and_latest():
    seq = make_seq(t=1)
    commit(seq, entry(0, 3))
    assert seq.list_offset("t", 0, -2) == (0, -1)
    assert seq.list_offset("t", 0, -1) == (3, -1)


def test_list_offset_by_timestamp_uses_batch_max_timestamp():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, ts=100), entry(0, 2, ts=300), entry(0, 2, ts=200), entry(0, 2, ts=400))
    assert seq.list_offset("t", 0, 0) == (0, 100)
    assert seq.list_offset("t", 0, 150) == (2, 300)
    assert seq.list_offset("t", 0, 300) == (2, 300)
    assert seq.list_offset("t", 0, 301) == (6, 400)
    assert seq.list_offset("t", 0, 401) == (-1, -1)


def test_list_offset_of_empty_partition():
    seq = make_seq(t=1)
    assert seq.list_offset("t", 0, 0) == (-1, -1)
    assert seq.list_offset("t", 0, -1) == (0, -1)


def test_list_offset_rejects_other_negative_timestamps():
    seq = make_seq(t=1)
    with pytest.raises(InvalidRequest):
        seq.list_offset("t", 0, -7)
    with pytest.raises(UnknownTopicOrPartition):
        seq.list_offset("t", 3, -1)


def test_list_offsets_answers_each_query_with_its_own_error():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, ts=100), entry(0, 3, ts=300))
    answers = seq.list_offsets(
        [("t", 0, -2), ("t", 0, -1), ("t", 0, -3), ("t", 0, 150), ("nope", 0, -1), ("t", 0, -7)]
    )
    assert [(a.offset, a.timestamp, a.error) for a in answers[:4]] == [
        (0, -1, None),
        (5, -1, None),
        (4, 300, None),  # KIP-734: the newest batch's last offset and its max timestamp
        (2, 300, None),
    ]
    assert isinstance(answers[4].error, UnknownTopicOrPartition)
    assert isinstance(answers[5].error, InvalidRequest)


def test_list_offsets_max_timestamp_finds_the_largest_timestamp_not_the_newest_batch():
    seq = make_seq(t=1)
    commit(seq, entry(0, 2, ts=100), entry(0, 3, ts=500), entry(0, 1, ts=200), entry(0, 2, ts=500))
    (answer,) = seq.list_offsets([("t", 0, -3)])
    assert (answer.offset, answer.timestamp) == (4, 500)  # the first batch holding 500


def test_list_offsets_max_timestamp_of_an_empty_partition_is_not_found():
    seq = make_seq(t=1)
    (answer,) = seq.list_offsets([("t", 0, -3)])
    assert (answer.offset, answer.timestamp, answer.error) == (-1, -1, None)


# ------------------------------------------------------------ group offsets
def test_group_offsets_commit_fetch_and_delete():
    seq = make_seq(t=2)
    seq.apply(
        seq.plan_commit_offsets(
            "g", {("t", 0): CommittedOffset(5, "m", 3), ("t", 1): CommittedOffset(7)}
        )
    )
    seq.apply(seq.plan_commit_offsets("g", {("t", 0): CommittedOffset(6)}))
    assert seq.fetch_offsets("g") == {("t", 0): CommittedOffset(6), ("t", 1): CommittedOffset(7)}
    assert seq.fetch_offsets("g", [("t", 1), ("t", 9)]) == {("t", 1): CommittedOffset(7)}
    assert seq.fetch_offsets("other") == {}
    seq.apply(seq.plan_delete_group_offsets("g"))
    assert seq.fetch_offsets("g") == {}
    assert seq.plan_delete_group_offsets("g").empty


def test_commit_offsets_for_unknown_partition_commits_nothing():
    seq = make_seq(t=1)
    with pytest.raises(UnknownTopicOrPartition):
        seq.plan_commit_offsets("g", {("t", 0): CommittedOffset(1), ("t", 5): CommittedOffset(1)})
    assert seq.fetch_offsets("g") == {}


def test_commit_offsets_needs_a_group_id():
    seq = make_seq(t=1)
    with pytest.raises(InvalidRequest):
        seq.plan_commit_offsets("", {("t", 0): CommittedOffset(1)})


def test_changes_empty_only_when_nothing_to_write():
    assert Changes().empty
    assert not Changes(deleted_groups=("g",)).empty
