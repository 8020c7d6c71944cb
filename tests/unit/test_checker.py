"""The chaos checker catches each anomaly it names, on hand-made histories (no Ray)."""

from __future__ import annotations

import json

import pytest

from ray_stream.testing.checker import ANOMALIES, check
from ray_stream.testing.history import (
    FAIL,
    INFO,
    OK,
    Assign,
    Commit,
    CommittedRead,
    FinalRead,
    History,
    Poll,
    Send,
    StoreAudit,
)

# A clean run: producer "p0" sends a0..a3 to partition 0 and b0..b1 to partition 1; the
# assign consumer reads everything in two polls; group g reads and commits everything.


def _clean_history() -> History:
    h = History(clock=lambda: 0.0)
    t = 0.0
    for i in range(4):
        h.add(Send("p0", f"a{i}", OK, t, t + 0.5, partition=0, offset=i))
        t += 1
    for i in range(2):
        h.add(Send("p0", f"b{i}", OK, t, t + 0.5, partition=1, offset=i))
        t += 1
    h.add(Assign("c0", (0, 1), 0.0))
    h.add(Poll("c0", "assign", ((0, 0, "a0"), (0, 1, "a1"), (1, 0, "b0")), 10.0, 10.1))
    h.add(Poll("c0", "assign", ((0, 2, "a2"), (0, 3, "a3"), (1, 1, "b1")), 11.0, 11.1))
    h.add(Assign("g0", (0, 1), 0.0))
    h.add(
        Poll(
            "g0",
            "group:g",
            (*((0, i, f"a{i}") for i in range(4)), (1, 0, "b0"), (1, 1, "b1")),
            12.0,
            12.1,
        )
    )
    h.add(Commit("g0", "g", ((0, 4), (1, 2)), OK, 12.2, 12.3))
    h.add(CommittedRead("final", "g", (0, 1), ((0, 4), (1, 2)), 20.0, 20.1))
    return h


def _clean_final() -> FinalRead:
    return FinalRead(
        records={0: tuple((i, f"a{i}") for i in range(4)), 1: ((0, "b0"), (1, "b1"))},
        high_watermarks={0: 4, 1: 2},
    )


def _only(report: dict, name: str) -> None:
    """``name`` is reported and nothing else is."""
    assert report["counts"][name] > 0, report
    assert not report["valid"]
    others = {k: v for k, v in report["counts"].items() if k != name and v}
    assert others == {}, others
    assert report["examples"][name]


def test_checker_clean_history_is_valid() -> None:
    report = check(_clean_history(), _clean_final(), StoreAudit(checked=True))
    assert report["valid"], report
    assert set(report["counts"]) == set(ANOMALIES)
    assert report["stats"]["acknowledged"] == 6
    assert report["stats"]["final_records"] == 6
    json.dumps(report)  # JSON-able


def test_checker_reports_lost_write() -> None:
    final = _clean_final()
    final = FinalRead(
        records={0: final.records[0][:3], 1: final.records[1]}, high_watermarks={0: 3, 1: 2}
    )
    h = _clean_history()
    # nobody polled a3 either in this variant: drop the polls that saw it
    h.polls = [
        Poll(
            p.process,
            p.reader,
            tuple(r for r in p.records if r[2] != "a3"),
            p.invoke_s,
            p.complete_s,
        )
        for p in h.polls
    ]
    report = check(h, final)
    _only(report, "lost-write")
    assert report["counts"]["lost-write"] == 1
    assert report["examples"]["lost-write"][0]["value"] == "a3"


def test_checker_reports_polled_value_missing_from_final_read_as_lost() -> None:
    h = _clean_history()
    h.add(Send("p1", "x", INFO, 1.0, None))
    h.add(Poll("c0", "assign", ((1, 2, "x"),), 13.0, 13.1))
    report = check(h, _clean_final())
    _only(report, "lost-write")
    assert report["examples"]["lost-write"][0]["polled_by"] == "c0"


def test_checker_reports_unseen_per_reader() -> None:
    h = _clean_history()
    h.polls[2] = Poll("g0", "group:g", h.polls[2].records[:-1], 12.0, 12.1)  # group never saw b1
    report = check(h, _clean_final())
    _only(report, "unseen")
    assert report["examples"]["unseen"][0] == {
        "value": "b1",
        "partition": 1,
        "offset": 1,
        "not_seen_by": ["group:g"],
    }


def test_checker_reports_unseen_for_an_expected_reader_that_never_polled() -> None:
    report = check(_clean_history(), _clean_final(), readers=["group:other"])
    _only(report, "unseen")
    assert report["counts"]["unseen"] == 6


def test_checker_reports_duplicate_value_at_two_offsets() -> None:
    final = _clean_final()
    final = FinalRead(
        records={0: (*final.records[0], (4, "a1")), 1: final.records[1]},
        high_watermarks={0: 5, 1: 2},
    )
    h = _clean_history()
    h.add(Poll("c0", "assign", ((0, 4, "a1"),), 13.0, 13.1))
    h.add(Poll("g0", "group:g", ((0, 4, "a1"),), 13.0, 13.1))
    report = check(h, final)
    _only(report, "duplicate")
    places = report["examples"]["duplicate"][0]["places"]
    assert [(x["partition"], x["offset"]) for x in places] == [(0, 1), (0, 4)]


def test_checker_reports_inconsistent_offsets() -> None:
    h = _clean_history()
    # The send of a new value was acknowledged at offset 2 of partition 0, where a2 lives;
    # the final read has it elsewhere, so it is also a duplicate (ack place vs read place).
    h.add(Send("p1", "z", OK, 5.0, 5.5, partition=0, offset=2))
    final = _clean_final()
    final = FinalRead(
        records={0: final.records[0], 1: (*final.records[1], (2, "z"))},
        high_watermarks={0: 4, 1: 3},
    )
    h.add(Poll("c0", "assign", ((1, 2, "z"),), 13.0, 13.1))
    h.add(Poll("g0", "group:g", ((1, 2, "z"),), 13.0, 13.1))
    report = check(h, final)
    assert report["counts"]["inconsistent-offsets"] == 1
    example = report["examples"]["inconsistent-offsets"][0]
    assert (example["partition"], example["offset"]) == (0, 2)
    assert {v["value"] for v in example["values"]} == {"a2", "z"}


def test_checker_reports_nonmonotonic_poll_across_polls() -> None:
    h = _clean_history()
    h.add(Poll("c0", "assign", ((0, 1, "a1"),), 12.0, 12.1))  # after reading up to a3
    report = check(h, _clean_final())
    _only(report, "nonmonotonic-poll")
    assert report["examples"]["nonmonotonic-poll"][0]["offsets"] == [3, 1]


def test_checker_does_not_track_polls_across_a_fresh_assign() -> None:
    h = _clean_history()
    h.add(Assign("c0", (0,), 11.5))
    h.add(Poll("c0", "assign", ((0, 0, "a0"),), 12.0, 12.1))
    assert check(h, _clean_final())["valid"]


def test_checker_reports_int_nonmonotonic_poll() -> None:
    h = _clean_history()
    h.add(Assign("c1", (0,), 0.0))
    h.add(Poll("c1", "assign", ((0, 2, "a2"), (0, 1, "a1")), 12.0, 12.1))
    _only(check(h, _clean_final()), "int-nonmonotonic-poll")


def test_checker_reports_poll_skip() -> None:
    h = _clean_history()
    h.add(Assign("c1", (0,), 0.0))
    h.add(Poll("c1", "assign", ((0, 0, "a0"),), 12.0, 12.1))
    h.add(Poll("c1", "assign", ((0, 3, "a3"),), 13.0, 13.1))
    report = check(h, _clean_final())
    _only(report, "poll-skip")
    assert report["examples"]["poll-skip"][0]["skipped"] == [1, 2]


def test_checker_reports_int_poll_skip() -> None:
    h = _clean_history()
    h.add(Assign("c1", (0,), 0.0))
    h.add(Poll("c1", "assign", ((0, 0, "a0"), (0, 2, "a2")), 12.0, 12.1))
    _only(check(h, _clean_final()), "int-poll-skip")


def test_checker_skip_is_measured_in_the_version_order() -> None:
    """Offsets nobody ever read (e.g. gaps) are not skipped records."""
    h = History(clock=lambda: 0.0)
    h.add(Send("p", "a", OK, 0, 1, partition=0, offset=0))
    h.add(Send("p", "b", OK, 1, 2, partition=0, offset=5))
    h.add(Poll("c", "assign", ((0, 0, "a"), (0, 5, "b")), 3, 4))
    assert check(h, FinalRead(records={0: ((0, "a"), (5, "b"))}, high_watermarks={0: 6}))["valid"]


def test_checker_reports_nonmonotonic_send() -> None:
    h = History(clock=lambda: 0.0)
    h.add(Send("p", "a", OK, 0.0, 1.0, partition=0, offset=1))
    h.add(Send("p", "b", OK, 0.5, 1.0, partition=0, offset=0))
    h.add(Poll("c", "assign", ((0, 0, "b"), (0, 1, "a")), 3, 4))
    report = check(h, FinalRead(records={0: ((0, "b"), (1, "a"))}, high_watermarks={0: 2}))
    _only(report, "nonmonotonic-send")


def test_checker_reports_g1a_aborted_read() -> None:
    h = _clean_history()
    h.add(Send("p1", "dead", FAIL, 5.0, 5.1, error="InvalidRequest: nope"))
    h.add(Poll("c0", "assign", ((1, 2, "dead"),), 13.0, 13.1))
    h.add(Poll("g0", "group:g", ((1, 2, "dead"),), 13.0, 13.1))
    final = _clean_final()
    final = FinalRead(
        records={0: final.records[0], 1: (*final.records[1], (2, "dead"))},
        high_watermarks={0: 4, 1: 3},
    )
    report = check(h, final)
    _only(report, "G1a")


def test_checker_indeterminate_send_may_or_may_not_appear() -> None:
    h = _clean_history()
    h.add(Send("p1", "maybe", INFO, 5.0, None, error="Unavailable"))
    h.add(Send("p1", "never", INFO, 5.0, None, error="Unavailable"))
    h.add(Poll("c0", "assign", ((1, 2, "maybe"),), 13.0, 13.1))
    h.add(Poll("g0", "group:g", ((1, 2, "maybe"),), 13.0, 13.1))
    final = _clean_final()
    final = FinalRead(
        records={0: final.records[0], 1: (*final.records[1], (2, "maybe"))},
        high_watermarks={0: 4, 1: 3},
    )
    report = check(h, final)
    assert report["valid"], report
    assert report["stats"]["sends"] == {OK: 6, INFO: 2}


def test_checker_reports_acknowledged_commit_going_backwards() -> None:
    h = _clean_history()
    h.add(Commit("g1", "g", ((0, 2),), OK, 13.0, 13.1))
    report = check(h, _clean_final())
    _only(report, "nonmonotonic-commit")
    assert report["examples"]["nonmonotonic-commit"][0]["offsets"] == [4, 2]


def test_checker_reports_committed_offset_read_back_too_low() -> None:
    h = _clean_history()
    h.add(CommittedRead("g1", "g", (0, 1), ((0, 1),), 14.0, 14.1))  # p0 regressed, p1 vanished
    report = check(h, _clean_final())
    _only(report, "nonmonotonic-commit")
    assert report["counts"]["nonmonotonic-commit"] == 2


def test_checker_ignores_commits_that_were_not_acknowledged() -> None:
    h = _clean_history()
    h.add(Commit("g1", "g", ((0, 9),), INFO, 13.0, None, error="Unavailable"))
    h.add(CommittedRead("g2", "g", (0,), ((0, 4),), 14.0, 14.1))
    assert check(h, _clean_final())["valid"]


def test_checker_reports_missing_object_and_unreadable_range() -> None:
    final = _clean_final()
    final = FinalRead(
        records=final.records,
        high_watermarks={0: 6, 1: 2},
        unreadable=((0, 4, 6, "NotFound: segments/x"),),
    )
    audit = StoreAudit(
        checked=True, referenced_objects=2, referenced_batches=3, missing=(("segments/x", 0, 4),)
    )
    report = check(_clean_history(), final, audit)
    assert report["counts"]["missing-object"] == 1
    assert report["counts"]["unreadable"] == 2
    assert report["examples"]["missing-object"][0]["segment_key"] == "segments/x"
    assert not report["valid"]


def test_history_round_trips_through_json() -> None:
    h = _clean_history()
    h.add(Send("p1", "maybe", INFO, 5.0, None, error="Unavailable"))
    again = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.to_dict() == h.to_dict()
    assert check(again, _clean_final()) == check(h, _clean_final())


def test_history_rejects_unknown_events() -> None:
    with pytest.raises(TypeError, match="history event"):
        History().add(object())
