"""The journal's pure parts: key layout, entry (de)serialization, merge and resend dedup."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_stream.core.journal import (
    FENCE,
    ROUND,
    JournalEntry,
    changes_from_json,
    changes_to_json,
    decode_entry,
    encode_entry,
)
from ray_stream.core.keys import (
    journal_index,
    journal_key,
    new_segment_key,
    segment_time_ms,
    snapshot_index,
    snapshot_key,
)
from ray_stream.core.metadata_api import CommitRequest
from ray_stream.core.sequencer import (
    BatchRow,
    Changes,
    GroupOffsetRow,
    PartitionRow,
    ProducerRow,
    ProducerState,
    Sequencer,
    TransactionalRow,
    merge_changes,
)
from ray_stream.core.types import BatchEntry, BatchRef, CommittedOffset, TopicInfo
from ray_stream.errors import CorruptData, InternalError


def full_changes() -> Changes:
    return Changes(
        deleted_topics=("gone",),
        deleted_groups=("old-group",),
        topics=(TopicInfo("t", "ab" * 16, 2, {"retention.ms": "1000", "ünï": "çødé"}),),
        partitions=(PartitionRow("t", 0, 0, 5), PartitionRow("t", 1, 3, 9)),
        batches=(
            BatchRow("t", 0, BatchRef("segments/A.arrow", 10, 100, 0, 3, 1_700_000_000_000)),
            BatchRow("t", 0, BatchRef("segments/A.arrow", 110, 50, 3, 2, 1_700_000_000_001)),
            BatchRow("t", 1, BatchRef("segments/B.arrow", 0, 70, 8, 1, -1)),
        ),
        producers=(ProducerRow(7, "t", 0, ProducerState(2, ((0, 2, 0), (3, 4, 3)))),),
        transactional=(TransactionalRow("tx-1", 7, 2),),
        group_offsets=(GroupOffsetRow("g", "t", 1, CommittedOffset(9, "meta\x00data", 4)),),
        next_producer_id=8,
    )


# ----------------------------------------------------------------------- keys
def test_keys_are_zero_padded_and_parse_back():
    assert journal_key(7) == "metadata/journal/00000000000000000007.json"
    assert snapshot_key(12) == "metadata/snapshots/00000000000000000012.sqlite"
    assert journal_index(journal_key(123456)) == 123456
    assert snapshot_index(snapshot_key(0)) == 0
    keys = [journal_key(i) for i in (10, 9, 100, 1)]
    assert sorted(keys) == [journal_key(i) for i in (1, 9, 10, 100)]  # string order = number order


@pytest.mark.parametrize(
    "key",
    [
        "metadata/journal/7.json",
        "metadata/journal/0000000000000000000x.json",
        "metadata/snapshots/00000000000000000001.sqlite",
        "metadata/journal/00000000000000000001.json.tmp",
        "segments/00000000000000000001.json",
    ],
)
def test_foreign_keys_are_not_journal_entries(key):
    assert journal_index(key) is None


def test_negative_index_is_rejected():
    with pytest.raises(ValueError, match="index"):
        journal_key(-1)


def test_segment_time_is_read_from_the_ulid():
    key = new_segment_key(1_700_000_123_456, random.Random(3))
    assert segment_time_ms(key) == 1_700_000_123_456
    assert segment_time_ms("segments/a.arrow") is None
    assert segment_time_ms("segments/ILOU0000000000000000000000.arrow") is None  # not Crockford
    assert segment_time_ms("metadata/journal/x.json") is None


# -------------------------------------------------------------------- entries
def test_round_entry_round_trips_exactly():
    entry = JournalEntry(5, 3, "inc-a", ROUND, full_changes())
    data = encode_entry(entry)
    assert decode_entry(data, index=5) == entry
    assert encode_entry(entry) == data  # deterministic: a resend is byte-identical


def test_fence_entry_round_trips_and_differs_by_writer():
    mine = JournalEntry(9, 4, "inc-a", FENCE)
    theirs = JournalEntry(9, 4, "inc-b", FENCE)
    assert decode_entry(encode_entry(mine)) == mine
    assert decode_entry(encode_entry(mine)).changes.empty
    assert encode_entry(mine) != encode_entry(theirs)


def test_segment_keys_are_interned_once_per_entry():
    body = json.loads(encode_entry(JournalEntry(1, 1, "i", ROUND, full_changes())))
    assert body["changes"]["segments"] == ["segments/A.arrow", "segments/B.arrow"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "does not parse"),
        (b'{"format": 2}', "format"),
        (b'{"format": 1, "index": 1}', "does not parse"),
        (
            b'{"format":1,"index":1,"epoch":1,"incarnation":"i","kind":"nope","changes":{}}',
            "unknown kind",
        ),
        (
            b'{"format":1,"index":"1","epoch":1,"incarnation":"i","kind":"fence","changes":{}}',
            "does not parse",
        ),
        (
            b'{"format":1,"index":1,"epoch":1,"incarnation":"i","kind":"round",'
            b'"changes":{"segments":[],"batches":[["t",0,3,0,1,0,1,1]]}}',
            "does not parse",
        ),
    ],
)
def test_malformed_entries_are_corrupt_data(data, problem):
    with pytest.raises(CorruptData, match=problem):
        decode_entry(data)


def test_entry_under_the_wrong_key_is_corrupt():
    data = encode_entry(JournalEntry(3, 1, "i", FENCE))
    with pytest.raises(CorruptData, match="index 3"):
        decode_entry(data, index=4)


_names = st.text("abcXYZ._-0", min_size=1, max_size=8)
_ints = st.integers(min_value=-1, max_value=2**40)


@st.composite
def changes_strategy(draw):
    return Changes(
        deleted_topics=tuple(draw(st.lists(_names, max_size=2))),
        topics=tuple(
            TopicInfo(
                n, "cd" * 16, draw(st.integers(1, 9)), draw(st.dictionaries(_names, st.text()))
            )
            for n in draw(st.lists(_names, max_size=2))
        ),
        partitions=tuple(
            PartitionRow(n, p, a, b)
            for n, p, a, b in draw(
                st.lists(st.tuples(_names, st.integers(0, 9), _ints, _ints), max_size=3)
            )
        ),
        batches=tuple(
            BatchRow(n, p, BatchRef(k, a, b, c, d, e))
            for n, p, k, a, b, c, d, e in draw(
                st.lists(
                    st.tuples(_names, st.integers(0, 9), _names, _ints, _ints, _ints, _ints, _ints),
                    max_size=4,
                )
            )
        ),
        producers=tuple(
            ProducerRow(a, n, p, ProducerState(e, tuple(bs)))
            for a, n, p, e, bs in draw(
                st.lists(
                    st.tuples(
                        _ints,
                        _names,
                        st.integers(0, 9),
                        st.integers(0, 99),
                        st.lists(st.tuples(_ints, _ints, _ints), min_size=1, max_size=5),
                    ),
                    max_size=2,
                )
            )
        ),
        group_offsets=tuple(
            GroupOffsetRow(g, n, p, CommittedOffset(o, md, le))
            for g, n, p, o, md, le in draw(
                st.lists(
                    st.tuples(_names, _names, st.integers(0, 9), _ints, st.text(), _ints),
                    max_size=2,
                )
            )
        ),
        next_producer_id=draw(st.none() | st.integers(0, 2**40)),
    )


@settings(max_examples=150, deadline=None)
@given(changes_strategy())
def test_any_changes_survive_json(changes):
    assert changes_from_json(json.loads(json.dumps(changes_to_json(changes)))) == changes


# ------------------------------------------------------- merge and resend dedup
def test_merge_keeps_row_order_so_later_upserts_win():
    first = Changes(group_offsets=(GroupOffsetRow("g", "t", 0, CommittedOffset(1)),))
    second = Changes(
        group_offsets=(GroupOffsetRow("g", "t", 0, CommittedOffset(5)),), next_producer_id=3
    )
    merged = merge_changes([first, second])
    assert [r.offset.offset for r in merged.group_offsets] == [1, 5]
    assert merged.next_producer_id == 3
    seq = Sequencer()
    seq.apply(
        Changes(topics=(TopicInfo("t", "ab" * 16, 1),), partitions=(PartitionRow("t", 0, 0, 0),))
    )
    seq.apply(merged)
    assert seq.fetch_offsets("g") == {("t", 0): CommittedOffset(5)}


def test_merge_refuses_late_deletions():
    with pytest.raises(InternalError, match="first part"):
        merge_changes([Changes(), Changes(deleted_topics=("t",))])


def _seq_with_topic() -> Sequencer:
    seq = Sequencer()
    seq.apply(seq.plan_create_topic("t", 2, topic_id="ef" * 16))
    return seq


def _request(key: str, *positions: int, partition: int = 0) -> CommitRequest:
    entries = [BatchEntry("t", partition, pos, 10, 2, 5, 5) for pos in positions]
    return CommitRequest.of(key, 100, entries)


def test_resent_request_gets_original_offsets_and_adds_nothing():
    seq = _seq_with_topic()
    first, _ = seq.apply_commits([_request("segments/a.arrow", 0, 10)])
    seq.apply_commits([_request("segments/b.arrow", 0)])
    again, changes = seq.plan_commits([_request("segments/a.arrow", 0, 10)], retries=[True])
    assert [(r.base_offset, r.duplicate) for r in again[0].results()] == [(0, True), (2, True)]
    assert [r.base_offset for r in first[0]] == [0, 2]
    assert changes.empty


def test_resend_in_the_same_round_is_a_duplicate_of_the_first():
    seq = _seq_with_topic()
    results, changes = seq.plan_commits(
        [_request("segments/a.arrow", 0), _request("segments/a.arrow", 0)], retries=[True, True]
    )
    firsts = [segment.results()[0] for segment in results]
    assert [(r.base_offset, r.duplicate) for r in firsts] == [(0, False), (0, True)]
    assert len(changes.batches) == 1


def test_without_the_retry_flag_a_reused_key_appends_again():
    seq = _seq_with_topic()
    seq.apply_commits([_request("segments/a.arrow", 0)])
    results, changes = seq.plan_commits([_request("segments/a.arrow", 0)])
    (first,) = results[0].results()
    assert (first.base_offset, first.duplicate) == (2, False)
    assert len(changes.batches) == 1


def test_resend_of_an_entry_never_committed_is_committed_now():
    seq = _seq_with_topic()
    seq.apply_commits([_request("segments/a.arrow", 0)])
    results, changes = seq.plan_commits([_request("segments/a.arrow", 0, 10)], retries=[True])
    assert [(r.base_offset, r.duplicate) for r in results[0].results()] == [(0, True), (2, False)]
    assert [b.ref.position for b in changes.batches] == [10]
    assert seq.is_referenced("segments/a.arrow")
    assert not seq.is_referenced("segments/zzz.arrow")
