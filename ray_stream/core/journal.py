"""The metadata journal: entry (de)serialization and the object-key layout (pure, no I/O).

The object store is the source of truth for metadata (docs/design/0002). Entry ``n`` is
stored at ``journal_key(n)`` (``core/keys.py``), one per group-commit round (the sequencer
``Changes`` it made durable) or a *fence* (no changes) that starts an epoch; a snapshot
at ``snapshot_key(n)`` holds the SQLite state of every entry ``<= n``.

An entry is compact JSON: ``{"format": 1, "index": n, "epoch": e, "incarnation": id,
"kind": "fence" | "round", "changes": {...}}``. The body repeats its index so an entry
copied to the wrong key is caught on read; ``incarnation`` makes two writers' entries
differ byte for byte, which is how a writer recognises its own entry after an ambiguous
PUT.

Invariants: ``decode_entry(encode_entry(e)) == e`` for every entry; encoding is
deterministic (same entry, same bytes), so a retried PUT sends identical bytes.

Never: touch the object store, clocks or randomness (callers pass ids and times in).
"""

from __future__ import annotations

import base64
import json
from dataclasses import astuple, dataclass, field
from typing import Any

from ray_stream.core.acl import AclBinding
from ray_stream.core.scram import ScramCredential
from ray_stream.core.sequencer import (
    BatchRow,
    Changes,
    GroupOffsetRow,
    PartitionRow,
    ProducerRow,
    ProducerState,
    TransactionalRow,
)
from ray_stream.core.types import BatchRef, CommittedOffset, TopicInfo
from ray_stream.errors import CorruptData

__all__ = [
    "FENCE",
    "FORMAT_VERSION",
    "ROUND",
    "JournalEntry",
    "changes_from_json",
    "changes_to_json",
    "decode_entry",
    "encode_entry",
]

FORMAT_VERSION = 1
FENCE = "fence"
ROUND = "round"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journal object.

    Attributes:
        index: its position (the key's number); entries are contiguous from 1.
        epoch: the writer's epoch; never decreases along the journal.
        incarnation: the writer's random id (distinguishes two writers' bytes).
        kind: ``FENCE`` (starts ``epoch``, no changes) or ``ROUND`` (a commit round).
        changes: the rows the round made durable (empty for a fence).
    """

    index: int
    epoch: int
    incarnation: str
    kind: str
    changes: Changes = field(default_factory=Changes)


# -------------------------------------------------------------------- entries
def encode_entry(entry: JournalEntry) -> bytes:
    """The entry's canonical JSON bytes (deterministic)."""
    body = {
        "format": FORMAT_VERSION,
        "index": entry.index,
        "epoch": entry.epoch,
        "incarnation": entry.incarnation,
        "kind": entry.kind,
        "changes": changes_to_json(entry.changes),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_entry(data: bytes, *, index: int | None = None) -> JournalEntry:
    """Parse an entry; ``index`` (from the key) must match the body's.

    Raises:
        CorruptData: not JSON, an unknown format or kind, a field of the wrong type, or
            an index that does not match the key.
    """
    try:
        body = json.loads(data)
        if body.get("format") != FORMAT_VERSION:
            raise CorruptData(
                f"journal entry format {body.get('format')!r} is not {FORMAT_VERSION}"
            )
        entry = JournalEntry(
            index=_int(body["index"]),
            epoch=_int(body["epoch"]),
            incarnation=str(body["incarnation"]),
            kind=str(body["kind"]),
            changes=changes_from_json(body["changes"]),
        )
    except CorruptData:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptData(f"journal entry {index} does not parse: {exc!r}") from exc
    if entry.kind not in (FENCE, ROUND):
        raise CorruptData(f"journal entry {entry.index} has unknown kind {entry.kind!r}")
    if index is not None and entry.index != index:
        raise CorruptData(f"journal key {index} holds the entry of index {entry.index}")
    return entry


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return value


# -------------------------------------------------------------------- changes
def changes_to_json(changes: Changes) -> dict[str, Any]:
    """``Changes`` as JSON-able lists (empty fields left out, segment keys interned)."""
    segments: dict[str, int] = {}
    out: dict[str, Any] = {}
    if changes.deleted_topics:
        out["deleted_topics"] = list(changes.deleted_topics)
    if changes.deleted_groups:
        out["deleted_groups"] = list(changes.deleted_groups)
    if changes.topics:
        out["topics"] = [[t.name, t.topic_id, t.partitions, t.config] for t in changes.topics]
    if changes.partitions:
        out["partitions"] = [
            [r.topic, r.partition, r.log_start_offset, r.high_watermark] for r in changes.partitions
        ]
    if changes.batches:
        rows = []
        for b in changes.batches:
            ref = b.ref
            seg = segments.setdefault(ref.segment_key, len(segments))
            rows.append([b.topic, b.partition, seg, ref.position, ref.length, ref.base_offset])
            rows[-1] += [ref.record_count, ref.max_timestamp]
        out["segments"] = list(segments)
        out["batches"] = rows
    if changes.producers:
        out["producers"] = [
            [r.producer_id, r.topic, r.partition, r.state.epoch, [list(b) for b in r.state.batches]]
            for r in changes.producers
        ]
    if changes.transactional:
        out["transactional"] = [
            [r.transactional_id, r.producer_id, r.epoch] for r in changes.transactional
        ]
    if changes.group_offsets:
        out["group_offsets"] = [
            [r.group, r.topic, r.partition, *_offset_json(r.offset)] for r in changes.group_offsets
        ]
    if changes.next_producer_id is not None:
        out["next_producer_id"] = changes.next_producer_id
    if changes.deleted_acls:
        out["deleted_acls"] = [list(astuple(b)) for b in changes.deleted_acls]
    if changes.acls:
        out["acls"] = [list(astuple(b)) for b in changes.acls]
    if changes.deleted_scram:
        out["deleted_scram"] = [list(key) for key in changes.deleted_scram]
    if changes.scram:
        out["scram"] = [_scram_json(c) for c in changes.scram]
    return out


def changes_from_json(obj: dict[str, Any]) -> Changes:
    """Inverse of ``changes_to_json``.

    Raises:
        ValueError, KeyError, TypeError, IndexError: malformed input (``decode_entry``
            turns these into CorruptData).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"changes must be an object, got {type(obj).__name__}")
    segments = [str(k) for k in obj.get("segments", [])]
    next_pid = obj.get("next_producer_id")
    try:
        return Changes(
            deleted_topics=tuple(str(n) for n in obj.get("deleted_topics", [])),
            deleted_groups=tuple(str(g) for g in obj.get("deleted_groups", [])),
            topics=tuple(
                TopicInfo(str(n), str(tid), _int(parts), {str(k): str(v) for k, v in cfg.items()})
                for n, tid, parts, cfg in obj.get("topics", [])
            ),
            partitions=tuple(
                PartitionRow(str(t), _int(p), _int(lso), _int(hwm))
                for t, p, lso, hwm in obj.get("partitions", [])
            ),
            batches=tuple(_batch(segments, row) for row in obj.get("batches", [])),
            producers=tuple(_producer(row) for row in obj.get("producers", [])),
            transactional=tuple(
                TransactionalRow(str(tid), _int(pid), _int(epoch))
                for tid, pid, epoch in obj.get("transactional", [])
            ),
            group_offsets=tuple(
                GroupOffsetRow(str(g), str(t), _int(p), CommittedOffset(_int(o), str(md), _int(le)))
                for g, t, p, o, md, le in obj.get("group_offsets", [])
            ),
            next_producer_id=None if next_pid is None else _int(next_pid),
            deleted_acls=tuple(_acl(row) for row in obj.get("deleted_acls", [])),
            acls=tuple(_acl(row) for row in obj.get("acls", [])),
            deleted_scram=tuple((str(u), str(m)) for u, m in obj.get("deleted_scram", [])),
            scram=tuple(_scram(row) for row in obj.get("scram", [])),
        )
    except IndexError as exc:
        raise ValueError(f"changes name segment index out of range: {exc}") from exc


def _offset_json(offset: CommittedOffset) -> list[Any]:
    return [offset.offset, offset.metadata, offset.leader_epoch]


def _batch(segments: list[str], row: list[Any]) -> BatchRow:
    t, p, seg, pos, length, base, count, max_ts = row
    ref = BatchRef(segments[seg], _int(pos), _int(length), _int(base), _int(count), _int(max_ts))
    return BatchRow(str(t), _int(p), ref)


def _scram_json(c: ScramCredential) -> list[Any]:
    """Salt and keys in base64; never a password (core/scram.py stores none)."""
    b64 = [base64.b64encode(v).decode() for v in (c.salt, c.stored_key, c.server_key)]
    return [c.user, c.mechanism, c.iterations, *b64]


def _scram(row: list[Any]) -> ScramCredential:
    user, mechanism, iterations, salt, stored, server = row
    keys = [base64.b64decode(str(v), validate=True) for v in (salt, stored, server)]
    return ScramCredential(str(user), str(mechanism), keys[0], _int(iterations), keys[1], keys[2])


def _acl(row: list[Any]) -> AclBinding:
    rtype, name, pattern, principal, host, operation, permission = row
    return AclBinding(
        _int(rtype),
        str(name),
        _int(pattern),
        str(principal),
        str(host),
        _int(operation),
        _int(permission),
    )


def _producer(row: list[Any]) -> ProducerRow:
    pid, t, p, epoch, batches = row
    remembered = tuple((_int(a), _int(b), _int(c)) for a, b, c in batches)
    return ProducerRow(_int(pid), str(t), _int(p), ProducerState(_int(epoch), remembered))
