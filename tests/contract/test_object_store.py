"""The ``ObjectStore`` contract, run against memory, local and S3 (moto over real HTTP).

One suite for every backend (Litestream's ``RunWithReplicaClient``): a backend that ignores
a create-only precondition, returns unsorted listings or the wrong range fails here.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_stream.errors import (
    InvalidConfig,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    StorageUnavailable,
)
from ray_stream.storage.base import ObjectStore
from ray_stream.storage.faults import FaultyStore
from ray_stream.storage.local import LocalStore
from ray_stream.storage.memory import MemoryStore
from ray_stream.storage.url import open_store

BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "memory":
        opened: ObjectStore = MemoryStore()
    elif request.param == "local":
        opened = LocalStore(tmp_path / "objects")
    else:
        opened = open_store(request.getfixturevalue("s3_url"))
    yield opened
    opened.close()


def test_store_implements_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.url


def test_store_put_get_round_trip(store: ObjectStore) -> None:
    body = bytes(range(256)) * 40
    store.put("segments/one.arrow", body)
    store.put("empty", b"")
    assert store.get("segments/one.arrow") == body
    assert store.get("empty") == b""


def test_store_put_overwrites(store: ObjectStore) -> None:
    store.put("k", b"first")
    store.put("k", b"second, longer")
    assert store.get("k") == b"second, longer"
    assert store.size("k") == len(b"second, longer")


def test_store_create_only_conflict_keeps_original(store: ObjectStore) -> None:
    store.put("manifest/00000000000000000001.json", b"v1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("manifest/00000000000000000001.json", b"v2", if_none_match=True)
    assert store.get("manifest/00000000000000000001.json") == b"v1"


def _race_create(store: ObjectStore, key: str, contenders: int) -> tuple[list[int], list[int]]:
    """``contenders`` threads create ``key`` at once; return (winners, losers)."""
    barrier = threading.Barrier(contenders)
    winners: list[int] = []
    losers: list[int] = []
    unexpected: list[BaseException] = []

    def create(n: int) -> None:
        barrier.wait()
        try:
            store.put(key, f"writer-{n}".encode(), if_none_match=True)
            winners.append(n)
        except PreconditionFailed:
            losers.append(n)
        except BaseException as exc:  # re-raised in the test thread below
            unexpected.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if unexpected:
        raise unexpected[0]
    return winners, losers


def test_store_create_only_race_has_exactly_one_winner(store: ObjectStore) -> None:
    contenders = 6
    for round_ in range(5):
        key = f"manifest/{round_:020d}.json"
        winners, losers = _race_create(store, key, contenders)
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert len(losers) == contenders - 1
        assert store.get(key) == f"writer-{winners[0]}".encode()


def test_store_get_range(store: ObjectStore) -> None:
    body = bytes(range(100))
    store.put("r", body)
    assert store.get_range("r", 0, 100) == body
    assert store.get_range("r", 10, 5) == body[10:15]
    assert store.get_range("r", 95, 50) == body[95:]  # cut short at the end
    assert store.get_range("r", 100, 10) == b""  # starts at the end
    assert store.get_range("r", 500, 10) == b""  # starts past the end
    assert store.get_range("r", 7, 0) == b""


def test_store_get_range_rejects_negative(store: ObjectStore) -> None:
    store.put("r", b"abc")
    with pytest.raises(InvalidRequest):
        store.get_range("r", -1, 2)
    with pytest.raises(InvalidRequest):
        store.get_range("r", 0, -2)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get("missing/key"),
        lambda s: s.get_range("missing/key", 0, 10),
        lambda s: s.get_range("missing/key", 0, 0),
        lambda s: s.size("missing/key"),
    ],
    ids=["get", "get_range", "get_range_empty", "size"],
)
def test_store_missing_key_raises_not_found(store: ObjectStore, call) -> None:
    store.put("missing/other", b"x")  # a neighbour must not be mistaken for the key
    with pytest.raises(NotFound):
        call(store)


def test_store_size(store: ObjectStore) -> None:
    store.put("s", b"x" * 12345)
    assert store.size("s") == 12345


def test_store_list_sorted_and_prefix_filtered(store: ObjectStore) -> None:
    keys = ["b/c/d", "a/z", "ab", "a-b", "a/b", "segments/02.arrow", "segments/01.arrow"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("a/") == ["a/b", "a/z"]
    assert store.list("a") == ["a-b", "a/b", "a/z", "ab"]
    assert store.list("segments/") == ["segments/01.arrow", "segments/02.arrow"]
    assert store.list("segments/02") == ["segments/02.arrow"]
    assert store.list("b/c/") == ["b/c/d"]
    assert store.list("zz") == []
    assert store.list("../") == []


def test_store_list_many_keys_in_order(store: ObjectStore) -> None:
    order = list(range(40))
    random.Random(7).shuffle(order)
    for n in order:
        store.put(f"m/{n:04d}", b"")
    assert store.list("m/") == [f"m/{n:04d}" for n in range(40)]


def test_store_delete_idempotent(store: ObjectStore) -> None:
    store.put("d/1", b"one")
    store.put("d/2", b"two")
    store.delete("d/1")
    store.delete("d/1")
    store.delete("never/existed")
    assert store.list("d/") == ["d/2"]
    with pytest.raises(NotFound):
        store.get("d/1")


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../b", "a//b", "./a", "a/"])
def test_store_rejects_malformed_keys(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidRequest):
        store.put(key, b"x")
    with pytest.raises(InvalidRequest):
        store.get(key)
    assert store.list() == []


def test_store_put_succeeds_but_caller_sees_error(store: ObjectStore) -> None:
    faulty = FaultyStore(store, rng=random.Random(1))
    faulty.fail_next_puts(1, after_write=True)
    with pytest.raises(StorageUnavailable):
        faulty.put("manifest/00000000000000000007.json", b"mine", if_none_match=True)
    assert faulty.counts().put_after == 1
    # The write landed; a blind create-only retry now "loses" to itself, so the writer
    # must read back to learn that it actually won.
    with pytest.raises(PreconditionFailed):
        faulty.put("manifest/00000000000000000007.json", b"mine", if_none_match=True)
    assert store.get("manifest/00000000000000000007.json") == b"mine"


def test_store_put_fails_before_writing(store: ObjectStore) -> None:
    faulty = FaultyStore(store, rng=random.Random(1))
    faulty.fail_next_puts(1)
    with pytest.raises(StorageUnavailable):
        faulty.put("k", b"lost")
    with pytest.raises(NotFound):
        store.get("k")
    faulty.put("k", b"kept")  # the fault was used up
    assert store.get("k") == b"kept"
    assert faulty.counts().put_before == 1


def test_store_reopens_by_url(store: ObjectStore) -> None:
    if isinstance(store, MemoryStore):
        pytest.skip("an unnamed memory:// store is private to its instance by design")
    store.put("persist/me", b"still here")
    again = open_store(store.url)
    try:
        assert again.get("persist/me") == b"still here"
        assert again.list() == ["persist/me"]
    finally:
        again.close()


# -- S3 only ---------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_prefixes_isolate_stores(s3_endpoint: str) -> None:
    base = f"?endpoint_url={s3_endpoint}&region=us-east-1"
    left = open_store(f"s3://ray-stream-test/iso-left{base}")
    right = open_store(f"s3://ray-stream-test/iso-left-2{base}")
    left.put("k", b"left")
    right.put("k", b"right")
    assert left.list() == ["k"]
    assert right.list() == ["k"]
    assert left.get("k") == b"left"
    assert right.get("k") == b"right"


@pytest.mark.integration
def test_s3_missing_bucket_without_create_is_invalid_config(s3_endpoint: str) -> None:
    store = open_store(
        f"s3://no-such-bucket-here/p?endpoint_url={s3_endpoint}&region=us-east-1"
        "&create_bucket=false"
    )
    with pytest.raises(InvalidConfig, match=r"no-such-bucket-here|NoSuchBucket"):
        store.put("k", b"x")


@pytest.mark.integration
def test_s3_unreachable_endpoint_is_storage_unavailable() -> None:
    from ray_stream.storage.s3 import S3Store

    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(
        "ray-stream-test",
        "p",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        create_bucket=False,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        max_attempts=1,
    )
    with pytest.raises(StorageUnavailable):
        store.get("k")
    with pytest.raises(StorageUnavailable):
        store.put("k", b"x")
