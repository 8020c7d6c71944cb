"""After healing: read the whole log, and compare metadata references with the store.

``final_read`` reads every partition from its log start to its high watermark through
the public API (``Cluster.read_table``). When a partition cannot be read whole, it walks
the partition batch by batch (the metadata actor's ``locate``) so that one broken batch
costs only its own offsets, which are reported as unreadable instead of hiding the rest.

``store_audit`` lists the object store (the inner store under a ``faulty+`` URL, so no
fault fires during the audit) and checks that every batch the metadata references lives
in an object that exists and is long enough. Objects nothing references are orphans:
allowed (a PUT whose commit never happened), only counted.
"""

from __future__ import annotations

from typing import Any

from ray_stream.actors import handles
from ray_stream.core.keys import SEGMENT_PREFIX
from ray_stream.core.metadata_api import LocateRequest
from ray_stream.storage.url import inner_url, open_store
from ray_stream.testing.history import FinalRead, StoreAudit

__all__ = ["final_read", "store_audit"]

LOCATE_BYTES = 64 * 1024 * 1024


def final_read(cluster: Any, topic: str) -> FinalRead:
    """Every record of ``topic`` as ``(offset, value)`` per partition, plus what failed.

    A topic that cannot even be described reads as empty, with one unreadable entry
    (partition -1) saying why.
    """
    try:
        info = cluster.describe_topic(topic)
    except Exception as exc:
        return FinalRead(
            records={},
            high_watermarks={},
            unreadable=((-1, 0, 0, f"describe_topic: {type(exc).__name__}: {exc}"[:240]),),
        )
    records: dict[int, tuple[tuple[int, str], ...]] = {}
    hwms: dict[int, int] = {}
    unreadable: list[tuple[int, int, int, str]] = []
    for pi in info.partition_info:
        p, start, end = pi.partition, pi.log_start_offset, pi.high_watermark
        hwms[p] = end
        try:
            rows = _rows(cluster.read_table(topic, partitions=[p]))
        except Exception:
            rows, bad = _walk(cluster, topic, p, start, end)
            unreadable += bad
        records[p] = tuple(rows)
        unreadable += _gaps(p, rows, start, end, unreadable)
    return FinalRead(records=records, high_watermarks=hwms, unreadable=tuple(unreadable))


def _rows(table: Any) -> list[tuple[int, str]]:
    offsets = table.column("offset").to_pylist()
    values = table.column("value").to_pylist()
    return [
        (o, (v or b"").decode("utf-8", "replace")) for o, v in zip(offsets, values, strict=True)
    ]


def _walk(
    cluster: Any, topic: str, p: int, start: int, end: int
) -> tuple[list[tuple[int, str]], list[tuple[int, int, int, str]]]:
    from ray_stream.actors.reader import read_partition

    rows: list[tuple[int, str]] = []
    bad: list[tuple[int, int, int, str]] = []
    position = start
    while position < end:
        batches = _locate(cluster, topic, p, position, 1)
        if not batches:
            break
        ref = batches[0]
        lo, hi = max(position, ref.base_offset), min(end, ref.last_offset + 1)
        try:
            rows += _rows(read_partition(cluster.agent(p), topic, p, lo, hi))
        except Exception as exc:
            bad.append((p, lo, hi, f"{type(exc).__name__}: {exc}"[:240]))
        position = max(hi, position + 1)
    return rows, bad


def _gaps(
    p: int,
    rows: list[tuple[int, str]],
    start: int,
    end: int,
    known: list[tuple[int, int, int, str]],
) -> list[tuple[int, int, int, str]]:
    """Offsets in [start, end) neither returned nor already reported unreadable."""
    covered = {o for o, _ in rows}
    for q, lo, hi, _ in known:
        if q == p:
            covered.update(range(lo, hi))
    out: list[tuple[int, int, int, str]] = []
    run: int | None = None
    for o in range(start, end + 1):
        missing = o < end and o not in covered
        if missing and run is None:
            run = o
        elif not missing and run is not None:
            out.append((p, run, o, "offsets below the high watermark missing from the read"))
            run = None
    return out


def store_audit(cluster: Any, topic: str) -> StoreAudit:
    """Compare every batch reference of ``topic`` with the object store's listing."""
    url = inner_url(cluster.settings.resolved_object_store)
    if url.startswith("memory://"):
        return StoreAudit(checked=False, note="a memory:// store is not visible from the driver")
    try:
        info = cluster.describe_topic(topic)
    except Exception as exc:
        return StoreAudit(
            checked=False, note=f"describe_topic failed: {type(exc).__name__}: {exc}"[:240]
        )
    store = open_store(url)
    try:
        keys = set(store.list(SEGMENT_PREFIX))
        sizes: dict[str, int] = {}
        missing: list[tuple[str, int, int]] = []
        referenced: set[str] = set()
        batches = 0
        for pi in info.partition_info:
            for ref in _refs(cluster, topic, pi.partition, pi.log_start_offset, pi.high_watermark):
                batches += 1
                referenced.add(ref.segment_key)
                if ref.segment_key not in keys:
                    missing.append((ref.segment_key, pi.partition, ref.base_offset))
                    continue
                if ref.segment_key not in sizes:
                    sizes[ref.segment_key] = store.size(ref.segment_key)
                if sizes[ref.segment_key] < ref.position + ref.length:
                    missing.append((ref.segment_key, pi.partition, ref.base_offset))
        return StoreAudit(
            checked=True,
            referenced_objects=len(referenced),
            referenced_batches=batches,
            missing=tuple(missing),
            orphans=len(keys - referenced),
            note=f"{len(keys)} objects under {SEGMENT_PREFIX!r}",
        )
    finally:
        store.close()


def _refs(cluster: Any, topic: str, p: int, start: int, end: int) -> list[Any]:
    refs: list[Any] = []
    position = start
    while position < end:
        batches = _locate(cluster, topic, p, position, LOCATE_BYTES)
        if not batches:
            break
        refs += batches
        position = max(position + 1, batches[-1].last_offset + 1)
    return refs


def _locate(cluster: Any, topic: str, p: int, position: int, max_bytes: int) -> list[Any]:
    """The committed batches of one partition from ``position`` on (up to ``max_bytes``).

    Raises:
        The locate's error for that position (UnknownTopicOrPartition, OffsetOutOfRange).
    """
    request = LocateRequest(((topic, p, position, max_bytes),))
    answer = handles.get(cluster.metadata.locate.remote(request), timeout_s=30)
    if 0 in answer.errors:
        raise answer.errors[0]
    return answer.batches(0)
