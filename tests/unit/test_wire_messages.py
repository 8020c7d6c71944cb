"""Messages that cross a Ray call round-trip through pickle (core/metadata_api.py,
core/group.py results, core/types.py), errors fields included.

Every ``@wire`` message pickles as a call of its constructor (``core/types.wire``), never
through ``dataclasses._dataclass_setstate`` (the metadata actor's measured hot spot).
``SAMPLES`` must hold an instance of every message class: a new message without one
fails ``test_every_message_class_has_a_sample``.
"""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import pickletools
from array import array

import pytest

from ray_stream import errors
from ray_stream.config import Settings
from ray_stream.core import group, metadata_api, types
from ray_stream.core.acl import AclBinding, AclFilter, AclOutcome, AclSnapshot
from ray_stream.core.fleet import AgentRecord, FleetView
from ray_stream.core.group import (
    GroupDeletion,
    GroupDescription,
    GroupListing,
    JoinResult,
    LeaveResult,
    MemberDescription,
    MemberLeave,
    SyncResult,
)
from ray_stream.core.metadata_api import (
    BatchColumns,
    CommitAnswer,
    CommitRequest,
    HeartbeatRequest,
    JoinRequest,
    LeaveRequest,
    LocateAnswer,
    LocateRequest,
    OffsetAnswer,
    OffsetCommitRequest,
    ProducerIdentity,
    RefColumns,
    SegmentResult,
    SyncRequest,
)
from ray_stream.core.scram import ScramCredential, ScramUserInfo
from ray_stream.core.types import (
    BatchEntry,
    BatchRef,
    BatchResult,
    BrokerInfo,
    CommittedOffset,
    FetchResult,
    PartitionInfo,
    TopicInfo,
    TopicPartition,
)

# The group state machine's own values (tickets, the shell's parking) never leave it.
_GROUP_INTERNAL = {group.Pending, group.Completion}


def _dataclasses_of(module, *, defined_only):
    found = set()
    for name, cls in inspect.getmembers(module, inspect.isclass):
        if name.startswith("_") or not dataclasses.is_dataclass(cls):
            continue
        if defined_only and cls.__module__ != module.__name__:
            continue
        found.add(cls)
    return found


# Everything the metadata protocol module names (its messages and the values they carry),
# every value in core/types.py, and the group results.
MESSAGE_CLASSES = (
    (_dataclasses_of(metadata_api, defined_only=False) - {Settings})
    | _dataclasses_of(types, defined_only=True)
    | (_dataclasses_of(group, defined_only=True) - _GROUP_INTERNAL)
)

ENTRY = BatchEntry("t", 1, 64, 80, 3, 1000, 1002, 7, 2, 10)
REF = BatchRef("segments/A.arrow", 64, 80, 9, 3, 1002)
LEAVE = MemberLeave("m-2", "static-2", errors.FencedInstanceId("a newer instance took over"))

AGENT = AgentRecord(3, "10.0.0.7", 9095, "a", "analytics", frozenset({"consume"}), "n1", 1)

SAMPLES = [
    # ------------------------------------------------------------- core/fleet.py
    AGENT,
    FleetView(77, (AGENT, AgentRecord(0, "h", 9092))),
    # ------------------------------------------------------------- core/types.py
    TopicPartition("t", 3),
    ENTRY,
    BatchEntry("t", 0, 0, 10, 1, 5, 5),
    BatchResult(4),
    BatchResult(-1, errors.OutOfOrderSequence("sequence 5 after 2")),
    REF,
    PartitionInfo(2, 5, 9),
    TopicInfo("t", "ab" * 16, 2, {"retention.ms": "1000"}, (PartitionInfo(0, 0, 3),)),
    CommittedOffset(9, "meta", 4),
    FetchResult("t", 0, None, 12, 0, bytearray(b"\x00batch")),
    FetchResult("t", 1, errors.OffsetOutOfRange("offset 99 > 12"), -1, -1),
    BrokerInfo(0, "127.0.0.1", 9092, "zone-a"),
    # ------------------------------------------------------- core/metadata_api.py
    BatchColumns.from_entries([ENTRY, BatchEntry("u", 0, 144, 20, 1, 9, 9)]),
    BatchColumns(),
    CommitRequest.of("segments/A.arrow", 164, [ENTRY]),
    SegmentResult.of([BatchResult(4, None, True, 1), BatchResult(7)]),
    SegmentResult.of([BatchResult(-1, errors.UnknownTopicOrPartition("no topic 'x'"))]),
    SegmentResult(error=errors.StorageUnavailable("journal entry 9 is in doubt")),
    SegmentResult(error=errors.Fenced("metadata epoch 2 was fenced")),
    CommitAnswer(
        3,
        3 << 32,
        (SegmentResult.of([BatchResult(0)]), SegmentResult(error=errors.Unavailable("old"))),
    ),
    LocateRequest((("t", 0, 5, 1 << 20), ("u", 2, 0, 100)), wait_ms=500, min_bytes=10),
    RefColumns.from_refs([REF, BatchRef("segments/B.arrow", 0, 10, 12, 1, 5)]),
    RefColumns(),
    LocateAnswer(
        array("q", [12, -1]),
        array("q", [0, -1]),
        array("i", [1, 1]),
        RefColumns.from_refs([REF]),
        {1: errors.OffsetOutOfRange("offset 40 > 12")},
        7,
    ),
    OffsetAnswer(5, 1002),
    OffsetAnswer(-1, -1, errors.InvalidRequest("timestamp -7")),
    ProducerIdentity(12, 3),
    JoinRequest(
        "g", "", None, "consumer", (("range", b"\x00\x01"),), 10_000, 30_000, "c", "/h", True
    ),
    SyncRequest("g", 2, "m-1", "static-1", "consumer", "range", (("m-1", b"\x02"),)),
    HeartbeatRequest("g", 2, "m-1"),
    LeaveRequest("g", (("m-1", None), ("", "static-2"))),
    OffsetCommitRequest("g", {TopicPartition("t", 0): CommittedOffset(5)}, 2, "m-1"),
    # -------------------------------------------------------- core/group.py results
    JoinResult(None, 2, "consumer", "range", "m-1", "m-1", False, (("m-1", None, b"\x00"),)),
    JoinResult(errors.MemberIdRequired("rejoin as m-9"), -1, None, None, "", "m-9", False, ()),
    JoinResult(errors.CoordinatorNotAvailable("restarting"), -1, None, None, "", "", False, ()),
    SyncResult(None, "consumer", "range", b"\x01\x02"),
    SyncResult(errors.RebalanceInProgress("rejoin"), None, None, b""),
    GroupDescription(
        None,
        "g",
        "Stable",
        "consumer",
        "range",
        (MemberDescription("m-1", None, "c", "/h", b"\x00", b"\x01"),),
    ),
    GroupDescription(errors.GroupIdNotFound("no group 'x'"), "x", "Dead", "", "", ()),
    MemberDescription("m-1", "static-1", "c", "/h", b"", b""),
    LeaveResult(None, (MemberLeave("m-1", None, None), LEAVE)),
    LeaveResult(errors.UnknownMemberId("not in g"), ()),
    LEAVE,
    GroupListing("g", "consumer", "Empty"),
    GroupDeletion("g", None),
    GroupDeletion("h", errors.NonEmptyGroup("h has 2 members")),
    AclBinding(2, "orders", 3, "User:alice", "*", 4, 3),
    AclFilter(1, None, 2, "User:alice", None, 1, 1),
    AclOutcome((AclBinding(3, "g", 4, "User:*", "10.0.0.1", 3, 2),)),
    AclOutcome(error=errors.InvalidRequest("principal 'x' is not a principal")),
    AclSnapshot(1 << 32, (AclBinding(4, "kafka-cluster", 3, "User:a", "*", 7, 3),)),
    AclSnapshot(7),
    ScramCredential("alice", "SCRAM-SHA-256", b"salt", 4096, b"\x01" * 32, b"\x02" * 32),
    ScramUserInfo("alice", "SCRAM-SHA-512", 8192),
]


_SETSTATE_OPS = {"NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _comparable(value):
    """``value`` with exceptions as (kind, args) and arrays as (typecode, items), since
    exceptions compare by identity."""
    if isinstance(value, BaseException):
        return ("exception", type(value), value.args)
    if isinstance(value, array):
        return ("array", value.typecode, value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value),
            tuple(_comparable(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, tuple | list):
        return (type(value), tuple(_comparable(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((_comparable(k), _comparable(v)) for k, v in value.items()))
    return (type(value), value)


def _sample_id(sample):
    error = getattr(sample, "error", None)
    return type(sample).__name__ + (f"-{type(error).__name__}" if error is not None else "")


def test_every_message_class_has_a_sample():
    assert {type(s) for s in SAMPLES} == MESSAGE_CLASSES


@pytest.mark.parametrize("cls", sorted(MESSAGE_CLASSES, key=lambda c: c.__name__), ids=str)
def test_every_message_class_pickles_as_a_constructor_call(cls):
    assert "__reduce__" in cls.__dict__, f"{cls.__name__} lacks @wire"


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("sample", SAMPLES, ids=_sample_id)
def test_message_round_trips_through_pickle(sample, protocol):
    data = pickle.dumps(sample, protocol=protocol)
    back = pickle.loads(data)
    assert type(back) is type(sample)
    assert _comparable(back) == _comparable(sample)
    # a constructor call (REDUCE), never object.__new__ + __setstate__ (NEWOBJ + BUILD)
    assert not {op.name for op, _, _ in pickletools.genops(data)} & _SETSTATE_OPS


def test_errors_inside_messages_come_back_as_their_own_kind():
    answer = pickle.loads(
        pickle.dumps(
            CommitAnswer(
                1,
                0,
                (SegmentResult.of([BatchResult(-1, errors.InvalidProducerEpoch("epoch 1 < 2"))]),),
            )
        )
    )
    (result,) = answer.segments[0].results()
    assert isinstance(result.error, errors.InvalidProducerEpoch)
    assert str(result.error) == "epoch 1 < 2"
    failed = pickle.loads(pickle.dumps(SegmentResult(error=errors.Fenced("epoch 1 fenced"))))
    with pytest.raises(errors.Fenced, match="epoch 1 fenced"):
        failed.results()


def test_a_batch_error_of_a_foreign_kind_is_kept_not_dropped():
    segment = SegmentResult.of([BatchResult(-1, ValueError("a bug")), BatchResult(3)])
    failed, ok = segment.results()
    assert isinstance(failed.error, errors.InternalError)
    assert "a bug" in str(failed.error)
    assert (ok.base_offset, ok.error) == (3, None)
