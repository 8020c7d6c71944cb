"""The metadata sequencer's local SQLite copy, through sqlite-utils.

The object store is the source of truth (docs/design/0002-metadata-durability.md):
``actors/object_journal.py`` writes one create-only journal entry per commit round and
periodic snapshots, and rebuilds the state at start-up. ``MetadataStore`` is the SQLite file
(through sqlite-utils) that mirrors the state for one *incarnation* of the metadata
actor: ``<data_dir>/metadata/<epoch>.sqlite``, rebuilt from the object store at every
start (so two incarnations never share a file, even on one filesystem), and the source
of snapshots (SQLite's backup API). Because it is rebuilt, the actor opens it with
``synchronous=OFF``; a pre-journal data dir's ``<data_dir>/metadata.sqlite`` (FULL) is
imported once as the first snapshot.

Tables (column names avoid SQL keywords: ``partition_index``, ``group_id``,
``committed_offset``):

- ``topics(name PK, topic_id, partitions, config JSON)``
- ``partitions(topic, partition_index, log_start_offset, high_watermark)``
- ``batches(topic, partition_index, base_offset, segment_key, position, length,
  record_count, max_timestamp)``, unique index on (topic, partition_index, base_offset)
- ``producers(producer_id, topic, partition_index, epoch, batches JSON)``
- ``transactional_ids(transactional_id PK, producer_id, epoch)``
- ``group_offsets(group_id, topic, partition_index, committed_offset, metadata, leader_epoch)``
- ``acls(resource_type, resource_name, pattern_type, principal, host, operation,
  permission)``, all the primary key (core/acl.py ``AclBinding``)
- ``scram_credentials(user, mechanism, salt, iterations, stored_key, server_key)``,
  primary key (user, mechanism): salted and hashed (core/scram.py), never a password
- ``meta(key PK, value)``: ``next_producer_id``, ``schema_version``; in snapshot copies
  also ``journal_index`` and ``epoch`` (the position the snapshot holds)

Invariant: the tables hold exactly the rows of every ``Changes`` persisted so far, so
``load()`` rebuilds the sequencer the actor had. ``persist`` writes one ``Changes`` in one
transaction (all or nothing). Calls are serialized by a lock, so the connection may be
used from worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import astuple
from pathlib import Path

import sqlite_utils

from ray_stream.config import Settings
from ray_stream.core.acl import AclBinding
from ray_stream.core.scram import ScramCredential
from ray_stream.core.sequencer import (
    BatchRow,
    Changes,
    GroupOffsetRow,
    PartitionRow,
    ProducerRow,
    ProducerState,
    Sequencer,
    TransactionalRow,
)
from ray_stream.core.types import BatchRef, CommittedOffset, TopicInfo
from ray_stream.errors import CorruptData, StorageUnavailable

SCHEMA_VERSION = 1
FILE_NAME = "metadata.sqlite"  # the pre-journal (legacy) database
CACHE_DIR = "metadata"
_SQLITE_MAGIC = b"SQLite format 3\x00"

_TABLES: dict[str, tuple[dict[str, type], str | tuple[str, ...] | None]] = {
    "topics": ({"name": str, "topic_id": str, "partitions": int, "config": str}, "name"),
    "partitions": (
        {"topic": str, "partition_index": int, "log_start_offset": int, "high_watermark": int},
        ("topic", "partition_index"),
    ),
    "batches": (
        {
            "topic": str,
            "partition_index": int,
            "base_offset": int,
            "segment_key": str,
            "position": int,
            "length": int,
            "record_count": int,
            "max_timestamp": int,
        },
        None,
    ),
    "producers": (
        {"producer_id": int, "topic": str, "partition_index": int, "epoch": int, "batches": str},
        ("producer_id", "topic", "partition_index"),
    ),
    "transactional_ids": (
        {"transactional_id": str, "producer_id": int, "epoch": int},
        "transactional_id",
    ),
    "group_offsets": (
        {
            "group_id": str,
            "topic": str,
            "partition_index": int,
            "committed_offset": int,
            "metadata": str,
            "leader_epoch": int,
        },
        ("group_id", "topic", "partition_index"),
    ),
    "acls": (
        {
            "resource_type": int,
            "resource_name": str,
            "pattern_type": int,
            "principal": str,
            "host": str,
            "operation": int,
            "permission": int,
        },
        (
            "resource_type",
            "resource_name",
            "pattern_type",
            "principal",
            "host",
            "operation",
            "permission",
        ),
    ),
    "scram_credentials": (
        {
            "user": str,
            "mechanism": str,
            "salt": bytes,
            "iterations": int,
            "stored_key": bytes,
            "server_key": bytes,
        },
        ("user", "mechanism"),
    ),
    "meta": ({"key": str, "value": str}, "key"),
}

_PER_TOPIC = ("topics", "partitions", "batches", "producers", "group_offsets")


class MetadataStore:
    """The SQLite file behind the metadata actor."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        """Open (creating if needed) the database at ``path``.

        Args:
            synchronous: SQLite's ``synchronous`` pragma: ``FULL`` when this file is the
                only copy, ``OFF`` for a cache the object store can rebuild.

        Raises:
            StorageUnavailable: the file cannot be opened or initialised.
        """
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            self._db = sqlite_utils.Database(conn)
            self._db.enable_wal()
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._create_tables()
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"cannot open metadata database {self.path}: {exc}") from exc

    @classmethod
    def open(cls, settings: Settings) -> MetadataStore:
        """The newest local copy: the latest incarnation's cache, else the legacy file.

        For inspection and tools; the metadata actor itself rebuilds its cache from the
        object store (``ObjectJournal.recover``).
        """
        caches = sorted(
            p for p in cache_dir(settings).glob("*.sqlite") if cache_epoch(p) is not None
        )
        if caches:
            return cls(caches[-1])
        data_dir = Path(settings.resolved_data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create data_dir {data_dir}: {exc}") from exc
        return cls(data_dir / FILE_NAME)

    def _create_tables(self) -> None:
        for name, (columns, pk) in _TABLES.items():
            self._db[name].create(columns, pk=pk, not_null=set(columns), if_not_exists=True)  # type: ignore[union-attr]
        self._db["batches"].create_index(  # type: ignore[union-attr]
            ["topic", "partition_index", "base_offset"], unique=True, if_not_exists=True
        )
        with self._db.atomic():
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
        version = self._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StorageUnavailable(
                f"{self.path} has schema_version {version}, this code reads {SCHEMA_VERSION}"
            )

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------- snapshots
    def snapshot_bytes(self, *, journal_index: int, epoch: int) -> bytes:
        """A consistent copy of the database (SQLite backup API) that records the journal
        position it holds, as one self-contained file's bytes (rollback journal, no WAL).

        Raises:
            StorageUnavailable: the copy could not be made.
        """
        tmp = f"{self.path}.snapshot-{uuid.uuid4().hex}"
        try:
            target = sqlite3.connect(tmp)
            try:
                with self._lock:
                    self._db.conn.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
                with target:
                    target.executemany(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        [("journal_index", str(journal_index)), ("epoch", str(epoch))],
                    )
            finally:
                target.close()
            return Path(tmp).read_bytes()
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"snapshot of {self.path} failed: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    @staticmethod
    def check_snapshot(path: str | Path) -> tuple[int, int]:
        """Verify a downloaded snapshot file; returns its ``(journal_index, epoch)``.

        Raises:
            CorruptData: not a SQLite file, fails ``quick_check``, or has no position.
        """
        try:
            with open(path, "rb") as f:
                if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise CorruptData(f"snapshot {path} is not a SQLite database")
            conn = sqlite3.connect(str(path))
            try:
                (check,) = conn.execute("PRAGMA quick_check").fetchone()
                rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            finally:
                conn.close()
            if check != "ok":
                raise CorruptData(f"snapshot {path} fails quick_check: {check}")
            return int(rows["journal_index"]), int(rows["epoch"])
        except (sqlite3.Error, OSError, KeyError, ValueError) as exc:
            raise CorruptData(f"snapshot {path} is unreadable: {exc!r}") from exc

    # ------------------------------------------------------------------ load
    def load(self) -> Sequencer:
        """Rebuild the sequencer from every persisted row.

        Raises:
            StorageUnavailable: the database cannot be read.
        """
        try:
            with self._lock:
                changes = self._read_all()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot read metadata database {self.path}: {exc}") from exc
        seq = Sequencer()
        seq.apply(changes)
        return seq

    def _read_all(self) -> Changes:
        q = self._db.execute
        topics = tuple(
            TopicInfo(name, topic_id, partitions, json.loads(config))
            for name, topic_id, partitions, config in q(
                "SELECT name, topic_id, partitions, config FROM topics ORDER BY name"
            )
        )
        partitions = tuple(
            PartitionRow(*row)
            for row in q(
                "SELECT topic, partition_index, log_start_offset, high_watermark FROM partitions"
            )
        )
        batches = tuple(
            BatchRow(t, p, BatchRef(key, pos, length, base, count, max_ts))
            for t, p, base, key, pos, length, count, max_ts in q(
                "SELECT topic, partition_index, base_offset, segment_key, position, length,"
                " record_count, max_timestamp FROM batches"
                " ORDER BY topic, partition_index, base_offset"
            )
        )
        producers = tuple(
            ProducerRow(pid, t, p, _decode_state(epoch, blob))
            for pid, t, p, epoch, blob in q(
                "SELECT producer_id, topic, partition_index, epoch, batches FROM producers"
            )
        )
        transactional = tuple(
            TransactionalRow(*row)
            for row in q("SELECT transactional_id, producer_id, epoch FROM transactional_ids")
        )
        group_offsets = tuple(
            GroupOffsetRow(g, t, p, CommittedOffset(off, md, le))
            for g, t, p, off, md, le in q(
                "SELECT group_id, topic, partition_index, committed_offset, metadata,"
                " leader_epoch FROM group_offsets"
            )
        )
        acls = tuple(
            AclBinding(*row)
            for row in q(
                "SELECT resource_type, resource_name, pattern_type, principal, host, operation,"
                " permission FROM acls ORDER BY rowid"
            )
        )
        scram = tuple(
            ScramCredential(user, mechanism, bytes(salt), iterations, bytes(stored), bytes(server))
            for user, mechanism, salt, iterations, stored, server in q(
                "SELECT user, mechanism, salt, iterations, stored_key, server_key"
                " FROM scram_credentials ORDER BY user, mechanism"
            )
        )
        next_pid = self._meta("next_producer_id")
        return Changes(
            acls=acls,
            scram=scram,
            topics=topics,
            partitions=partitions,
            batches=batches,
            producers=producers,
            transactional=transactional,
            group_offsets=group_offsets,
            next_producer_id=int(next_pid) if next_pid is not None else 0,
        )

    # --------------------------------------------------------------- persist
    def persist(self, changes: Changes) -> None:
        """Write ``changes`` in one transaction; returns once it is committed (durable).

        Raises:
            StorageUnavailable: the write failed; nothing of ``changes`` was written.
        """
        if changes.empty:
            return
        try:
            with self._lock, self._db.atomic():
                self._write(self._db.conn, changes)
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"metadata write to {self.path} failed: {exc}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, changes: Changes) -> None:
        for name in changes.deleted_topics:
            for table in _PER_TOPIC:
                column = "name" if table == "topics" else "topic"
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))
        if changes.deleted_groups:
            conn.executemany(
                "DELETE FROM group_offsets WHERE group_id = ?",
                [(g,) for g in changes.deleted_groups],
            )
        if changes.topics:
            conn.executemany(
                "INSERT OR REPLACE INTO topics (name, topic_id, partitions, config)"
                " VALUES (?, ?, ?, ?)",
                [
                    (t.name, t.topic_id, t.partitions, json.dumps(t.config, sort_keys=True))
                    for t in changes.topics
                ],
            )
        if changes.partitions:
            conn.executemany(
                "INSERT OR REPLACE INTO partitions"
                " (topic, partition_index, log_start_offset, high_watermark) VALUES (?, ?, ?, ?)",
                [
                    (r.topic, r.partition, r.log_start_offset, r.high_watermark)
                    for r in changes.partitions
                ],
            )
        if changes.batches:
            conn.executemany(
                "INSERT INTO batches (topic, partition_index, base_offset, segment_key,"
                " position, length, record_count, max_timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        b.topic,
                        b.partition,
                        b.ref.base_offset,
                        b.ref.segment_key,
                        b.ref.position,
                        b.ref.length,
                        b.ref.record_count,
                        b.ref.max_timestamp,
                    )
                    for b in changes.batches
                ],
            )
        if changes.producers:
            conn.executemany(
                "INSERT OR REPLACE INTO producers"
                " (producer_id, topic, partition_index, epoch, batches) VALUES (?, ?, ?, ?, ?)",
                [
                    (r.producer_id, r.topic, r.partition, r.state.epoch, _encode_state(r.state))
                    for r in changes.producers
                ],
            )
        if changes.transactional:
            conn.executemany(
                "INSERT OR REPLACE INTO transactional_ids (transactional_id, producer_id, epoch)"
                " VALUES (?, ?, ?)",
                [(r.transactional_id, r.producer_id, r.epoch) for r in changes.transactional],
            )
        if changes.group_offsets:
            conn.executemany(
                "INSERT OR REPLACE INTO group_offsets (group_id, topic, partition_index,"
                " committed_offset, metadata, leader_epoch) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.group,
                        r.topic,
                        r.partition,
                        r.offset.offset,
                        r.offset.metadata,
                        r.offset.leader_epoch,
                    )
                    for r in changes.group_offsets
                ],
            )
        if changes.next_producer_id is not None:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_producer_id', ?)",
                (str(changes.next_producer_id),),
            )
        _write_acls(conn, changes)
        _write_scram(conn, changes)


def _write_scram(conn: sqlite3.Connection, changes: Changes) -> None:
    if changes.deleted_scram:
        conn.executemany(
            "DELETE FROM scram_credentials WHERE user = ? AND mechanism = ?",
            list(changes.deleted_scram),
        )
    if changes.scram:
        conn.executemany(
            "INSERT OR REPLACE INTO scram_credentials (user, mechanism, salt, iterations,"
            " stored_key, server_key) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (c.user, c.mechanism, c.salt, c.iterations, c.stored_key, c.server_key)
                for c in changes.scram
            ],
        )


def _write_acls(conn: sqlite3.Connection, changes: Changes) -> None:
    where = (
        "resource_type = ? AND resource_name = ? AND pattern_type = ? AND principal = ?"
        " AND host = ? AND operation = ? AND permission = ?"
    )
    if changes.deleted_acls:
        conn.executemany(
            f"DELETE FROM acls WHERE {where}", [astuple(b) for b in changes.deleted_acls]
        )
    if changes.acls:
        conn.executemany(
            "INSERT OR IGNORE INTO acls (resource_type, resource_name, pattern_type, principal,"
            " host, operation, permission) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [tuple(int(v) if isinstance(v, int) else v for v in astuple(b)) for b in changes.acls],
        )


def _encode_state(state: ProducerState) -> str:
    return json.dumps(state.batches)


def _decode_state(epoch: int, blob: str) -> ProducerState:
    return ProducerState(epoch, tuple((int(a), int(b), int(c)) for a, b, c in json.loads(blob)))


# ------------------------------------------------------------- local cache files
def cache_dir(settings: Settings) -> Path:
    """``<data_dir>/metadata``: one SQLite cache per incarnation, named by its epoch."""
    return Path(settings.resolved_data_dir) / CACHE_DIR


def cache_epoch(path: Path) -> int | None:
    stem = path.name.split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
