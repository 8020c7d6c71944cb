"""Backend-specific behaviour of the memory and local stores, ``open_store`` URL parsing,
``FaultyStore`` and the botocore error translation table (no network, no Ray)."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ray_stream.errors import (
    InvalidConfig,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from ray_stream.storage import local as local_module
from ray_stream.storage.faults import FaultCounts, FaultyStore
from ray_stream.storage.local import TEMP_PREFIX, LocalStore
from ray_stream.storage.memory import MemoryStore
from ray_stream.storage.s3 import S3Store, _client_error
from ray_stream.storage.url import open_store

# -- LocalStore ----------------------------------------------------------------------------


def test_local_creates_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = LocalStore(root)
    assert root.is_dir()
    assert store.url == f"file://{root}"


def test_local_key_maps_to_relative_path(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("segments/x/01.arrow", b"data")
    assert (tmp_path / "segments" / "x" / "01.arrow").read_bytes() == b"data"


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../outside", "a/./b"])
def test_local_rejects_escaping_keys(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidRequest):
        store.put(key, b"x")
    assert not (tmp_path / "outside").exists()
    assert list((tmp_path / "root").iterdir()) == []


def test_local_rejects_reserved_temp_prefix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InvalidRequest, match=TEMP_PREFIX):
        store.put(f"a/{TEMP_PREFIX}x", b"x")


def test_local_put_fsyncs_file_and_directory(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    store = LocalStore(tmp_path)
    store.put("existing-dir-warmup", b"")  # root exists; next put creates no directory
    synced.clear()
    monkeypatch.setattr(local_module.os, "fsync", recording_fsync)
    store.put("k", b"payload")
    assert synced == ["file", "dir"]  # data before the rename, the rename before return


def test_local_new_directories_are_fsynced_into_parent(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    store = LocalStore(tmp_path)
    monkeypatch.setattr(local_module.os, "fsync", recording_fsync)
    store.put("x/y/z", b"1")
    assert store.root in synced  # entry "x" made durable
    assert os.path.join(store.root, "x") in synced  # entry "y" made durable


def test_local_failed_put_keeps_old_object_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(local_module.os, "fsync", broken_fsync)
    with pytest.raises(StorageUnavailable, match="'k'"):
        store.put("k", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_local_list_ignores_leftover_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("seg/a", b"a")
    (tmp_path / "seg" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"half-written")
    (tmp_path / f"{TEMP_PREFIX}cafe").write_bytes(b"half-written")
    assert store.list() == ["seg/a"]
    assert store.list("seg/") == ["seg/a"]


def test_local_get_range_reads_only_the_range(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    store.put("big", b"x" * 1_000_000)
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def recording_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append((n, offset))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(local_module.os, "pread", recording_pread)
    assert store.get_range("big", 500_000, 10) == b"x" * 10
    assert reads == [(10, 500_000)]


def test_local_key_colliding_with_directory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    with pytest.raises(InvalidRequest, match="collides"):
        store.put("a", b"2")
    with pytest.raises(InvalidRequest, match="collides"):
        store.put("a", b"2", if_none_match=True)
    with pytest.raises(InvalidRequest, match="collides"):
        store.put("a/b/c", b"3")
    with pytest.raises(NotFound):
        store.get("a")
    with pytest.raises(NotFound):
        store.size("a")
    store.delete("a")  # a directory is not an object: nothing to delete
    assert store.get("a/b") == b"1"


def test_local_two_instances_share_create_only(tmp_path: Path) -> None:
    first, second = LocalStore(tmp_path), LocalStore(tmp_path)
    first.put("m/1", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        second.put("m/1", b"second", if_none_match=True)
    assert second.get("m/1") == b"first"


# -- MemoryStore ---------------------------------------------------------------------------


def test_memory_stores_a_copy() -> None:
    store = MemoryStore()
    body = bytearray(b"abc")
    store.put("k", body)  # type: ignore[arg-type]
    body[0] = ord("z")
    assert store.get("k") == b"abc"
    assert isinstance(store.get("k"), bytes)


def test_memory_instances_are_independent() -> None:
    a, b = MemoryStore(), MemoryStore()
    a.put("k", b"1")
    assert b.list() == []


# -- open_store ----------------------------------------------------------------------------


def test_open_store_memory_unnamed_is_private_and_named_is_shared() -> None:
    assert open_store("memory://").list() == []
    fresh = open_store("memory://")
    fresh.put("k", b"1")
    assert open_store("memory://").list() == []
    named = open_store("memory://unit-shared")
    named.put("k", b"1")
    assert open_store("memory://unit-shared").get("k") == b"1"
    assert open_store("memory://unit-other").list() == []


def test_open_store_file_url_and_bare_path(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/objs")
    assert isinstance(store, LocalStore)
    assert store.root == str(tmp_path / "objs")
    assert store.url == f"file://{tmp_path}/objs"
    store.put("k", b"1")
    assert open_store(str(tmp_path / "objs")).get("k") == b"1"
    assert open_store(f"file://localhost{tmp_path}/objs").get("k") == b"1"


def test_open_store_file_url_percent_decoded(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/with%20space")
    assert isinstance(store, LocalStore)
    assert store.root == str(tmp_path / "with space")


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://127.0.0.1:9000/b", "ftp://x"])
def test_open_store_unknown_scheme_names_url_and_schemes(url: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        open_store(url)
    assert url in str(info.value)
    for scheme in ("memory://", "file://", "s3://"):
        assert scheme in str(info.value)


@pytest.mark.parametrize("url", ["", "   ", "file://"])
def test_open_store_empty_is_invalid_config(url: str) -> None:
    with pytest.raises(InvalidConfig):
        open_store(url)


def test_open_store_s3_parses_url_without_network() -> None:
    url = "s3://my-bucket/some/prefix/?endpoint_url=http://127.0.0.1:9999&region=us-east-1"
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "my-bucket",
        "some/prefix",
        "http://127.0.0.1:9999",
    )
    assert store.url == url
    store.close()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("s3://b-ok/p?endpoint=http://x", "endpoint"),
        ("s3://b-ok/p?create_bucket=maybe", "create_bucket"),
        ("s3:///p", "bucket"),
    ],
)
def test_open_store_s3_bad_options_are_invalid_config(url: str, named: str) -> None:
    with pytest.raises(InvalidConfig, match=named):
        open_store(url)


# -- botocore translation --------------------------------------------------------------------


def _boto_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, NotFound),
        ("404", 404, NotFound),
        ("PreconditionFailed", 412, PreconditionFailed),
        ("ConditionalRequestConflict", 409, PreconditionFailed),
        ("InternalError", 500, StorageUnavailable),
        ("ServiceUnavailable", 503, StorageUnavailable),
        ("SlowDown", 503, StorageUnavailable),
        ("RequestTimeout", 400, StorageUnavailable),
        ("NoSuchBucket", 404, InvalidConfig),
        ("AccessDenied", 403, InvalidConfig),
        ("InvalidArgument", 400, InvalidRequest),
    ],
)
def test_s3_client_error_translation(code: str, status: int, kind: type) -> None:
    error = _client_error(_boto_error(code, status), "put 'k'")
    assert type(error) is kind
    assert "put 'k'" in str(error)
    assert code in str(error)


# -- FaultyStore -----------------------------------------------------------------------------


def test_faulty_store_passes_through_when_quiet() -> None:
    faulty = FaultyStore(MemoryStore(), rng=random.Random(0))
    faulty.put("a", b"12345")
    assert faulty.get("a") == b"12345"
    assert faulty.get_range("a", 1, 2) == b"23"
    assert faulty.size("a") == 5
    assert faulty.list() == ["a"]
    faulty.delete("a")
    assert faulty.list() == []
    assert faulty.counts() == FaultCounts()


def test_faulty_store_fails_next_reads_then_recovers() -> None:
    inner = MemoryStore()
    inner.put("a", b"x")
    faulty = FaultyStore(inner, rng=random.Random(0))
    faulty.fail_next_reads(4)
    for call in (
        lambda: faulty.get("a"),
        lambda: faulty.get_range("a", 0, 1),
        lambda: faulty.size("a"),
        lambda: faulty.list(),
    ):
        with pytest.raises(StorageUnavailable, match="injected"):
            call()
    assert faulty.get("a") == b"x"
    assert faulty.counts() == FaultCounts(read=4)


def test_faulty_store_lost_precondition_consumes_no_after_fault() -> None:
    inner = MemoryStore()
    inner.put("a", b"old")
    faulty = FaultyStore(inner, rng=random.Random(0))
    faulty.fail_next_puts(1, after_write=True)
    with pytest.raises(PreconditionFailed):
        faulty.put("a", b"new", if_none_match=True)
    assert faulty.counts().put_after == 0
    with pytest.raises(StorageUnavailable):
        faulty.put("b", b"new")
    assert inner.get("b") == b"new"


def test_faulty_store_rates_are_reproducible_from_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        faulty = FaultyStore(MemoryStore(), rng=random.Random(seed))
        faulty.set_failure_rates(put_before=0.5)
        outcome = []
        for n in range(40):
            try:
                faulty.put(f"k{n}", b"")
                outcome.append(True)
            except StorageUnavailable:
                outcome.append(False)
        assert faulty.counts().put_before == outcome.count(False)
        return outcome

    first = pattern(42)
    assert first == pattern(42)
    assert 5 < first.count(False) < 35


def test_faulty_store_latency_uses_injected_sleep() -> None:
    slept: list[float] = []
    faulty = FaultyStore(MemoryStore(), rng=random.Random(0), sleep=slept.append)
    faulty.put("a", b"")
    assert slept == []
    faulty.set_latency(0.25, jitter_s=0.1)
    faulty.put("a", b"")
    faulty.get("a")
    assert len(slept) == 2
    assert all(0.25 <= s < 0.35 for s in slept)
