"""The Kafka-safety checker: judges a ``History`` plus the final read of the whole log.

A Python port of the analyses in Jepsen's ``jepsen.tests.kafka`` checker (which
Maelstrom's kafka workload also uses), under the same error names, for one topic whose
partitions play Jepsen's keys:

* ``lost-write`` — a value acknowledged (send ``ok``) or once polled by a consumer is
  absent from the final read of the whole log. (Jepsen bounds this by the highest offset
  read; our final read covers every partition entirely, so absence is loss.)
* ``unseen`` — a value in the final log that some reader never polled. Readers are every
  consumer group plus the assign-mode consumers, each judged on its own (stricter than
  Jepsen's "no consumer at all"; it also catches a group whose commits skipped records).
* ``duplicate`` — one value at two or more (partition, offset) places.
* ``inconsistent-offsets`` — one (partition, offset) holding two or more values, across
  acknowledgements, polls and the final read.
* ``nonmonotonic-poll`` / ``poll-skip`` — between two successive polls of one consumer
  process, a partition went backwards (or repeated) / jumped over records that exist.
  ``int-nonmonotonic-poll`` / ``int-poll-skip`` are the same within one poll. Distances
  are measured in the version order (the sorted offsets anyone read), as Jepsen does.
* ``nonmonotonic-send`` — one producer process's acknowledged offsets in a partition did
  not increase in send order.
* ``G1a`` — aborted read: a value whose send definitely failed was read.

Plus checks Jepsen's checker has no name for, named in its style:

* ``nonmonotonic-commit`` — a group's committed offset for a partition went backwards:
  an acknowledged commit below an earlier acknowledged one, or a committed offset read
  back below one acknowledged before the read began (or missing entirely).
* ``missing-object`` — a metadata batch reference whose object is missing or too short.
* ``unreadable`` — offsets the metadata claims but the final read could not return.

Pure: no I/O, no clocks; everything it needs is in its arguments.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ray_stream.testing.history import (
    FAIL,
    OK,
    Assign,
    FinalRead,
    History,
    Poll,
    StoreAudit,
)

__all__ = ["ANOMALIES", "check"]

ANOMALIES = (
    "lost-write",
    "unseen",
    "duplicate",
    "inconsistent-offsets",
    "nonmonotonic-poll",
    "int-nonmonotonic-poll",
    "poll-skip",
    "int-poll-skip",
    "nonmonotonic-send",
    "G1a",
    "nonmonotonic-commit",
    "missing-object",
    "unreadable",
)
MAX_EXAMPLES = 8

Place = tuple[int, int]  # (partition, offset)


class _Report:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(ANOMALIES, 0)
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, name: str, example: dict[str, Any], count: int = 1) -> None:
        self.counts[name] += count
        if len(self.examples[name]) < MAX_EXAMPLES:
            self.examples[name].append(example)


def check(
    history: History,
    final: FinalRead,
    audit: StoreAudit | None = None,
    *,
    readers: Iterable[str] = (),
) -> dict[str, Any]:
    """Judge a run.

    Args:
        history: everything the clients did and saw.
        final: the whole log read after healing.
        audit: metadata references vs the object store (None: not checked).
        readers: readers that must each see every record (``assign``, ``group:<id>``);
            those that polled anything are added automatically.

    Returns:
        A JSON-able dict: ``valid`` (every count zero), ``counts`` (every name in
        ``ANOMALIES``), ``examples`` (up to 8 per non-zero name) and ``stats``.
    """
    report = _Report()
    sends = history.snapshot("sends")
    polls = history.snapshot("polls")
    final_places = {v: (p, o) for p, recs in final.records.items() for o, v in recs}
    _check_places(report, sends, polls, final)
    _check_lost(report, sends, polls, final_places)
    _check_g1a(report, sends, polls, final_places)
    _check_unseen(report, polls, final, set(readers))
    orders = _version_orders(polls, final)
    _check_polls(report, history, orders)
    _check_sends(report, sends)
    _check_commits(report, history)
    _check_audit(report, audit, final)
    return {
        "valid": not any(report.counts.values()),
        "counts": report.counts,
        "examples": {k: v for k, v in report.examples.items() if v},
        "stats": _stats(history, final, audit),
    }


def _observations(
    sends: list[Any], polls: list[Poll], final: FinalRead
) -> Iterable[tuple[str, Place, str]]:
    """Every claim "value v is at (p, o)", tagged with who made it."""
    for s in sends:
        if s.outcome == OK and s.offset is not None and s.partition is not None:
            yield f"send:{s.process}", (s.partition, s.offset), s.value
    for poll in polls:
        for p, o, v in poll.records:
            yield f"poll:{poll.process}", (p, o), v
    for p, recs in final.records.items():
        for o, v in recs:
            yield "final", (p, o), v


def _check_places(report: _Report, sends: list[Any], polls: list[Poll], final: FinalRead) -> None:
    by_value: dict[str, dict[Place, str]] = defaultdict(dict)
    by_place: dict[Place, dict[str, str]] = defaultdict(dict)
    for source, place, value in _observations(sends, polls, final):
        by_value[value].setdefault(place, source)
        by_place[place].setdefault(value, source)
    for value, places in sorted(by_value.items()):
        if len(places) > 1:
            report.add(
                "duplicate",
                {
                    "value": value,
                    "places": [
                        {"partition": p, "offset": o, "first_seen_by": src}
                        for (p, o), src in sorted(places.items())
                    ],
                },
            )
    for (p, o), values in sorted(by_place.items()):
        if len(values) > 1:
            report.add(
                "inconsistent-offsets",
                {
                    "partition": p,
                    "offset": o,
                    "values": [
                        {"value": v, "first_seen_by": src} for v, src in sorted(values.items())
                    ],
                },
            )


def _check_lost(
    report: _Report, sends: list[Any], polls: list[Poll], final_places: dict[str, Place]
) -> None:
    lost: dict[str, dict[str, Any]] = {}
    for s in sends:
        if s.outcome == OK and s.value not in final_places:
            lost[s.value] = {
                "value": s.value,
                "acked_partition": s.partition,
                "acked_offset": s.offset,
                "process": s.process,
                "acked_at_s": s.complete_s,
            }
    for poll in polls:
        for p, o, v in poll.records:
            if v not in final_places and v not in lost:
                lost[v] = {
                    "value": v,
                    "polled_partition": p,
                    "polled_offset": o,
                    "polled_by": poll.process,
                    "polled_at_s": poll.complete_s,
                }
    for value in sorted(lost):
        report.add("lost-write", lost[value])


def _check_g1a(
    report: _Report, sends: list[Any], polls: list[Poll], final_places: dict[str, Place]
) -> None:
    failed = {s.value: s for s in sends if s.outcome == FAIL}
    seen: dict[str, str] = {v: "final" for v in final_places if v in failed}
    for poll in polls:
        for _, _, v in poll.records:
            if v in failed:
                seen.setdefault(v, f"poll:{poll.process}")
    for value, source in sorted(seen.items()):
        s = failed[value]
        report.add(
            "G1a", {"value": value, "process": s.process, "error": s.error, "read_by": source}
        )


def _check_unseen(report: _Report, polls: list[Poll], final: FinalRead, readers: set[str]) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    for poll in polls:
        readers.add(poll.reader)
        for _, _, v in poll.records:
            seen[poll.reader].add(v)
    if not readers:
        return
    for p, recs in sorted(final.records.items()):
        for o, v in recs:
            missing = sorted(r for r in readers if v not in seen[r])
            if missing:
                report.add(
                    "unseen", {"value": v, "partition": p, "offset": o, "not_seen_by": missing}
                )


def _version_orders(polls: list[Poll], final: FinalRead) -> dict[int, dict[int, int]]:
    """Per partition: offset -> index among every offset anyone read (Jepsen's version order)."""
    offsets: dict[int, set[int]] = defaultdict(set)
    for poll in polls:
        for p, o, _ in poll.records:
            offsets[p].add(o)
    for p, recs in final.records.items():
        offsets[p].update(o for o, _ in recs)
    return {p: {o: i for i, o in enumerate(sorted(os))} for p, os in offsets.items()}


def _delta(orders: dict[int, dict[int, int]], p: int, o1: int, o2: int) -> int:
    index = orders.get(p, {})
    if o1 in index and o2 in index:
        return index[o2] - index[o1]
    return o2 - o1


def _check_polls(report: _Report, history: History, orders: dict[int, dict[int, int]]) -> None:
    events: list[tuple[float, int, Any]] = [(a.at_s, 0, a) for a in history.snapshot("assigns")]
    events += [(p.invoke_s, 1, p) for p in history.snapshot("polls")]
    by_process: dict[str, list[Any]] = defaultdict(list)
    for _, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        by_process[event.process].append(event)
    for process, items in by_process.items():
        last: dict[int, int] = {}
        for event in items:
            if isinstance(event, Assign):
                last = {}  # a fresh assignment: continuity is not tracked across it
                continue
            per_partition: dict[int, list[int]] = defaultdict(list)
            for p, o, _ in event.records:
                per_partition[p].append(o)
            for p, offs in per_partition.items():
                if p in last:
                    _judge(report, orders, p, last[p], offs[0], process, "", event.invoke_s)
                for o1, o2 in itertools.pairwise(offs):
                    _judge(report, orders, p, o1, o2, process, "int-", event.invoke_s)
                last[p] = offs[-1]


def _judge(
    report: _Report,
    orders: dict[int, dict[int, int]],
    p: int,
    o1: int,
    o2: int,
    process: str,
    prefix: str,
    at_s: float,
) -> None:
    delta = _delta(orders, p, o1, o2)
    example = {
        "process": process,
        "partition": p,
        "offsets": [o1, o2],
        "delta": delta,
        "at_s": at_s,
    }
    if delta > 1:
        skipped = [o for o, i in orders.get(p, {}).items() if o1 < o < o2]
        report.add(f"{prefix}poll-skip", {**example, "skipped": sorted(skipped)[:16]})
    elif delta < 1:
        report.add(f"{prefix}nonmonotonic-poll", example)


def _check_sends(report: _Report, sends: list[Any]) -> None:
    by_process: dict[str, list[Any]] = defaultdict(list)
    for s in sends:
        if s.outcome == OK and s.offset is not None:
            by_process[s.process].append(s)
    for process, items in by_process.items():
        last: dict[int, Any] = {}
        for s in sorted(items, key=lambda s: s.invoke_s):
            prev = last.get(s.partition)
            if prev is not None and s.offset <= prev.offset:
                report.add(
                    "nonmonotonic-send",
                    {
                        "process": process,
                        "partition": s.partition,
                        "values": [prev.value, s.value],
                        "offsets": [prev.offset, s.offset],
                    },
                )
            last[s.partition] = s


def _check_commits(report: _Report, history: History) -> None:
    acked: dict[tuple[str, int], list[tuple[float, float, int, str]]] = defaultdict(list)
    for c in history.snapshot("commits"):
        if c.outcome == OK and c.complete_s is not None:
            for p, o in c.offsets:
                acked[(c.group, p)].append((c.invoke_s, c.complete_s, o, c.process))
    for (group, p), items in acked.items():
        items.sort()
        high = None
        for invoke_s, _, offset, process in items:
            if high is not None and offset < high[0]:
                report.add(
                    "nonmonotonic-commit",
                    {
                        "kind": "acknowledged commit went backwards",
                        "group": group,
                        "partition": p,
                        "offsets": [high[0], offset],
                        "processes": [high[1], process],
                        "at_s": invoke_s,
                    },
                )
            if high is None or offset >= high[0]:
                high = (offset, process)
    for read in history.snapshot("committed_reads"):
        got = dict(read.offsets)
        for p in read.partitions:
            before = [
                o for _, done, o, _ in acked.get((read.group, p), []) if done <= read.invoke_s
            ]
            if before and (p not in got or got[p] < max(before)):
                report.add(
                    "nonmonotonic-commit",
                    {
                        "kind": "committed offset read back below an acknowledged commit",
                        "group": read.group,
                        "partition": p,
                        "acknowledged": max(before),
                        "read": got.get(p),
                        "reader": read.process,
                        "at_s": read.invoke_s,
                    },
                )


def _check_audit(report: _Report, audit: StoreAudit | None, final: FinalRead) -> None:
    if audit is not None:
        for key, p, base in audit.missing:
            report.add("missing-object", {"segment_key": key, "partition": p, "base_offset": base})
    for p, start, end, error in final.unreadable:
        report.add(
            "unreadable",
            {"partition": p, "start": start, "end": end, "error": error},
            count=max(1, end - start),
        )


def _stats(history: History, final: FinalRead, audit: StoreAudit | None) -> dict[str, Any]:
    outcomes: dict[str, int] = defaultdict(int)
    for s in history.snapshot("sends"):
        outcomes[s.outcome] += 1
    commit_outcomes: dict[str, int] = defaultdict(int)
    for c in history.snapshot("commits"):
        commit_outcomes[c.outcome] += 1
    polls = history.snapshot("polls")
    return {
        "sends": dict(outcomes),
        "acknowledged": outcomes.get(OK, 0),
        "polls": len(polls),
        "records_polled": sum(len(p.records) for p in polls),
        "commits": dict(commit_outcomes),
        "final_records": sum(len(r) for r in final.records.values()),
        "high_watermarks": {str(p): o for p, o in sorted(final.high_watermarks.items())},
        "audit": None
        if audit is None
        else {
            "checked": audit.checked,
            "referenced_objects": audit.referenced_objects,
            "referenced_batches": audit.referenced_batches,
            "orphans": audit.orphans,
            "note": audit.note,
        },
    }
