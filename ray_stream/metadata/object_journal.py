"""The metadata journal and snapshots in the object store: write, fence, recover.

See docs/design/0002-metadata-durability.md. Rules this module keeps:

1. **Create-only at the next index.** Entry ``n`` is written with ``If-None-Match`` at
   ``metadata/journal/{n:020d}.json``. Nobody ever writes an index it has not seen the
   predecessor of, so once a fence entry holds index ``f`` no older incarnation can
   append: every index it could try is taken.
2. **Ambiguous PUTs resolve by reading back.** A PUT that raised StorageUnavailable is
   retried with the same bytes on the same key; a PreconditionFailed is success when the
   stored bytes equal ours (entries embed the writer's incarnation id), else ``Fenced``.
   An entry whose outcome stays unknown is kept *in doubt* and re-written before any
   later entry, so it is never lost nor followed by a conflicting one.
3. **Recovery reads everything before fencing**: newest readable snapshot, then the
   contiguous journal after it, then the fence at the next free index.

Never: skip an index, overwrite an entry, or delete a journal entry that the previous
snapshot (the fallback) does not cover.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ray_stream.config import Settings
from ray_stream.core.backoff import Backoff
from ray_stream.core.journal import (
    FENCE,
    ROUND,
    JournalEntry,
    decode_entry,
    encode_entry,
)
from ray_stream.core.keys import (
    JOURNAL_PREFIX,
    SNAPSHOT_PREFIX,
    journal_index,
    journal_key,
    snapshot_index,
    snapshot_key,
)
from ray_stream.core.sequencer import Changes, Sequencer
from ray_stream.errors import (
    CorruptData,
    Fenced,
    InternalError,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from ray_stream.metadata.store import (
    FILE_NAME,
    MetadataStore,
    cache_dir,
    cache_epoch,
    remove_db_files,
)
from ray_stream.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What ``ObjectJournal.recover`` rebuilt: the state as of the new fence entry."""

    cache: MetadataStore
    seq: Sequencer
    epoch: int
    snapshot_index: int  # 0 when no snapshot was used
    replayed: int  # journal entries applied on top of the snapshot
    skipped: int  # entries of an older epoch after a newer one (never acknowledged)
    fence_index: int


class ObjectJournal:
    """The metadata journal and snapshots in the object store (see docs/design/0002).

    Not thread-safe: the metadata actor calls it under its write lock (from a worker
    thread). Every journal write is create-only at the next index; an entry in doubt
    (the PUT's outcome unknown) is kept and must be ``resolve``d before the next one.

    Args:
        store: the cluster's object store.
        put_timeout_s: how long one entry's PUT is retried on StorageUnavailable.
        sleep / monotonic: injected for tests (real time by default: retries are about
            how long the store is down, which a manual test clock does not model).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        put_timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.incarnation = uuid.uuid4().hex
        self.epoch = 0
        self.next_index = 1
        self.fenced = False
        self._put_timeout_s = put_timeout_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._in_doubt: tuple[int, bytes, Changes] | None = None
        self.puts = 0
        self.put_s = 0.0
        self.put_bytes = 0

    @property
    def in_doubt(self) -> Changes | None:
        """The changes of an entry whose PUT outcome is unknown, if any."""
        return None if self._in_doubt is None else self._in_doubt[2]

    # ----------------------------------------------------------------- writes
    def append(self, changes: Changes) -> int:
        """Write ``changes`` as the next entry; returns its index once durable.

        Raises:
            Fenced: a newer incarnation wrote that index first; this one must stop.
            StorageUnavailable: the PUT kept failing; the entry stays in doubt.
        """
        if self.fenced:
            raise Fenced(f"metadata epoch {self.epoch} was fenced by a newer incarnation")
        if self._in_doubt is not None:
            raise InternalError("journal append while an entry is in doubt; resolve() first")
        index = self.next_index
        entry = JournalEntry(index, self.epoch, self.incarnation, ROUND, changes)
        self._in_doubt = (index, encode_entry(entry), changes)
        return self._settle()

    def resolve(self) -> Changes | None:
        """Re-write the entry in doubt (same key, same bytes) until its outcome is known.

        Returns:
            Its changes once durable (the caller applies them), or None if none was.

        Raises:
            Fenced, StorageUnavailable: as ``append``.
        """
        if self._in_doubt is None:
            return None
        changes = self._in_doubt[2]
        self._settle()
        return changes

    def _settle(self) -> int:
        assert self._in_doubt is not None
        index, data, _ = self._in_doubt
        try:
            self._put_entry(index, data, deadline=self._monotonic() + self._put_timeout_s)
        except Fenced:
            self.fenced = True
            self._in_doubt = None
            raise
        self._in_doubt = None
        self.next_index = index + 1
        return index

    def _put_entry(self, index: int, data: bytes, *, deadline: float) -> None:
        """Create-only PUT with retries. A PreconditionFailed is ours if the stored bytes
        equal ``data`` (an earlier, ambiguous attempt landed); otherwise we are fenced."""
        key = journal_key(index)
        started = self._monotonic()
        for delay in Backoff():
            try:
                try:
                    self.store.put(key, data, if_none_match=True)
                except PreconditionFailed:
                    if self.store.get(key) != data:
                        raise Fenced(
                            f"journal entry {index} was written by another incarnation; "
                            f"epoch {self.epoch} is fenced"
                        ) from None
                self.puts += 1
                self.put_bytes += len(data)
                self.put_s += self._monotonic() - started
                return
            except (StorageUnavailable, NotFound) as exc:
                if self._monotonic() + delay > deadline:
                    raise StorageUnavailable(
                        f"journal entry {index} is in doubt: its PUT failed for "
                        f"{self._monotonic() - started:.1f}s: {exc}"
                    ) from exc
                log.warning("journal PUT %s failed, retrying in %.2fs: %s", key, delay, exc)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def write_snapshot(self, index: int, data: bytes) -> list[str]:
        """PUT snapshot ``index`` (create-only; an existing one is equivalent), then drop
        what the previous snapshot covers: older snapshots and journal entries up to it.

        Returns:
            The deleted keys.

        Raises:
            StorageUnavailable: the snapshot PUT failed (nothing was deleted).
        """
        deadline = self._monotonic() + self._put_timeout_s
        for delay in Backoff():
            try:
                self.store.put(snapshot_key(index), data, if_none_match=True)
                break
            except PreconditionFailed:
                break
            except StorageUnavailable:
                if self._monotonic() + delay > deadline:
                    raise
                self._sleep(delay)
        snaps = sorted(
            i for k in self.store.list(SNAPSHOT_PREFIX) if (i := snapshot_index(k)) is not None
        )
        kept = [i for i in snaps if i <= index][-2:]
        if len(kept) < 2:
            return []  # the first snapshot: keep the whole journal as the fallback
        fallback = kept[0]
        doomed = [snapshot_key(i) for i in snaps if i < fallback]
        doomed += [
            k
            for k in self.store.list(JOURNAL_PREFIX)
            if (i := journal_index(k)) is not None and i <= fallback
        ]
        for key in doomed:
            self.store.delete(key)
        return doomed

    # --------------------------------------------------------------- recovery
    def recover(self, settings: Settings, *, timeout_s: float) -> Recovered:
        """Rebuild the state from the object store and fence every older incarnation.

        Newest readable snapshot, then every journal entry after it, then a fence entry
        at the next index with ``epoch = max epoch seen + 1`` (create-only; if another
        writer took that index, read what it wrote and try the next). Finally the local
        cache ``<data_dir>/metadata/<epoch>.sqlite`` is built from them. A data dir from
        before the journal (``metadata.sqlite``, nothing in the store) is imported as
        snapshot 0 first.

        Raises:
            StorageUnavailable: the store stayed unreachable for ``timeout_s``.
            CorruptData: the journal has a gap or an unreadable entry.
        """
        directory = cache_dir(settings)
        directory.mkdir(parents=True, exist_ok=True)
        legacy = Path(settings.resolved_data_dir) / FILE_NAME
        deadline = self._monotonic() + timeout_s
        for delay in Backoff():
            try:
                return self._recover_once(directory, legacy, deadline)
            except (StorageUnavailable, NotFound) as exc:
                if self._monotonic() + delay > deadline:
                    raise StorageUnavailable(f"metadata recovery failed: {exc}") from exc
                log.warning("metadata recovery failed, retrying in %.2fs: %s", delay, exc)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _recover_once(self, directory: Path, legacy: Path, deadline: float) -> Recovered:
        snaps = self._indexes(SNAPSHOT_PREFIX, snapshot_index)
        if not snaps and not self._indexes(JOURNAL_PREFIX, journal_index) and legacy.exists():
            self._import_legacy(legacy)
            snaps = [0]
        tmp = directory / f".restore-{self.incarnation}.sqlite"
        base, base_epoch = self._download_snapshot(snaps, tmp)
        entries = self._read_entries(base)
        while True:
            last = entries[-1].index if entries else base
            epoch = max([base_epoch, *(e.epoch for e in entries)]) + 1
            self.epoch = epoch
            fence = encode_entry(JournalEntry(last + 1, epoch, self.incarnation, FENCE))
            try:
                self._put_entry(last + 1, fence, deadline=deadline)
                break
            except Fenced:
                entries += self._read_entries(last)  # someone appended: take it in, retry
        self.next_index = last + 2
        return self._build_cache(directory, tmp, entries, base=base, base_epoch=base_epoch)

    def _build_cache(
        self, directory: Path, tmp: Path, entries: list[JournalEntry], *, base: int, base_epoch: int
    ) -> Recovered:
        path = directory / f"{self.epoch:010d}.sqlite"
        remove_db_files(path)  # a leftover of a failed start (or another store's test)
        if tmp.exists():
            os.replace(tmp, path)
        cache = MetadataStore(path, synchronous="OFF")
        current, skipped = base_epoch, 0
        for entry in entries:
            if entry.epoch < current:
                skipped += 1  # a stale writer's entry after a fence: never acknowledged
                continue
            current = entry.epoch
            if entry.kind == ROUND:
                cache.persist(entry.changes)
        for old in directory.glob("*.sqlite"):
            epoch = cache_epoch(old)
            if epoch is not None and epoch < self.epoch:
                remove_db_files(old)
        return Recovered(
            cache=cache,
            seq=cache.load(),
            epoch=self.epoch,
            snapshot_index=base,
            replayed=len(entries) - skipped,
            skipped=skipped,
            fence_index=self.next_index - 1,
        )

    def _indexes(self, prefix: str, parse: Callable[[str], int | None]) -> list[int]:
        return sorted(i for k in self.store.list(prefix) if (i := parse(k)) is not None)

    def _import_legacy(self, legacy: Path) -> None:
        old = MetadataStore(legacy)
        try:
            data = old.snapshot_bytes(journal_index=0, epoch=0)
        finally:
            old.close()
        with contextlib.suppress(PreconditionFailed):  # a concurrent starter imported it
            self.store.put(snapshot_key(0), data, if_none_match=True)
        log.warning("imported legacy metadata %s as snapshot 0", legacy)

    def _download_snapshot(self, snaps: list[int], tmp: Path) -> tuple[int, int]:
        """Newest readable snapshot into ``tmp``; returns its (index, epoch), (0, 0) if none."""
        for index in reversed(snaps):
            tmp.write_bytes(self.store.get(snapshot_key(index)))
            try:
                position = MetadataStore.check_snapshot(tmp)
            except CorruptData as exc:
                log.error("snapshot %d is unusable, trying an older one: %s", index, exc)
                continue
            if position[0] != index:
                log.error("snapshot key %d holds position %d; skipped", index, position[0])
                continue
            return position
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        return 0, 0

    def _read_entries(self, after: int) -> list[JournalEntry]:
        """Every journal entry after ``after``, fetched in parallel, checked contiguous.

        Raises:
            CorruptData: a gap, or an entry that does not parse.
        """
        indexes = [i for i in self._indexes(JOURNAL_PREFIX, journal_index) if i > after]
        if indexes != list(range(after + 1, after + 1 + len(indexes))):
            raise CorruptData(
                f"metadata journal is not contiguous after entry {after}: found {indexes[:5]}..."
            )
        with ThreadPoolExecutor(max_workers=16) as pool:
            blobs = list(pool.map(lambda i: self.store.get(journal_key(i)), indexes))
        return [decode_entry(b, index=i) for i, b in zip(indexes, blobs, strict=True)]
