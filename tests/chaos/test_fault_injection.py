"""FaultyStore's plain-dict control surface and the faulty+ URL scheme (no Ray)."""

from __future__ import annotations

import random

import pytest

from ray_stream.errors import InvalidConfig, NotFound, StorageUnavailable
from ray_stream.storage.faults import FaultyStore
from ray_stream.storage.memory import MemoryStore
from ray_stream.storage.url import inner_url, open_store


def test_configure_counts_fire_then_reset_clears_pending() -> None:
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    store.configure({"put_fail_before": 1, "put_fail_after": 1, "read_fail": 1})
    with pytest.raises(StorageUnavailable, match="before writing"):
        store.put("a", b"1")
    with pytest.raises(StorageUnavailable, match="response was lost"):
        store.put("a", b"2")
    assert store.inner.get("a") == b"2"  # written although the caller saw an error
    with pytest.raises(StorageUnavailable):
        store.get("a")
    store.configure({"put_fail_before": 5, "reset": True})
    store.configure({"reset": True})
    store.put("b", b"ok")
    counts = store.counts_dict()
    assert (counts["put_before"], counts["put_after"], counts["read"]) == (1, 1, 1)
    assert (counts["puts"], counts["reads"]) == (3, 1)


def test_key_prefix_limits_faults_to_matching_keys() -> None:
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    store.configure({"put_fail_before": 1, "key_prefix": "segments/"})
    store.put("journal/0001", b"j")  # not a segment: untouched, fault still pending
    with pytest.raises(StorageUnavailable):
        store.put("segments/x", b"s")
    assert store.counts_dict()["put_before"] == 1


def test_drop_acked_claims_success_but_keeps_nothing() -> None:
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    store.configure({"drop_acked": True})
    store.put("segments/lost", b"data")  # no error: the broken store lies
    with pytest.raises(NotFound):
        store.get("segments/lost")
    store.put("segments/kept", b"data")
    assert store.get("segments/kept") == b"data"
    assert store.counts_dict()["dropped"] == 1


def test_latency_is_counted_as_delayed_calls() -> None:
    slept: list[float] = []
    store = FaultyStore(MemoryStore(), rng=random.Random(0), sleep=slept.append)
    store.configure({"latency_s": 0.1})
    store.put("a", b"")
    store.get("a")
    assert slept == [0.1, 0.1]
    assert store.counts_dict()["delayed"] == 2


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"nope": 1}, "nope"),
        ({"put_fail_before": -1}, "put_fail_before"),
        ({"read_rate": 1.5}, "read_rate"),
        ({"latency_s": "slow"}, "latency_s"),
        ({"key_prefix": 3}, "key_prefix"),
    ],
)
def test_configure_rejects_bad_specs_naming_the_key(spec: dict, key: str) -> None:
    store = FaultyStore(MemoryStore(), rng=random.Random(0))
    with pytest.raises(InvalidConfig, match=key):
        store.configure(spec)


def test_faulty_url_wraps_the_inner_store_with_an_initial_spec(tmp_path) -> None:
    url = f"faulty+file://{tmp_path}/objects#seed=3&put_fail_before=1&key_prefix=segments/"
    store = open_store(url)
    assert isinstance(store, FaultyStore)
    assert store.url == url
    assert inner_url(url) == f"file://{tmp_path}/objects"
    store.put("other", b"x")
    with pytest.raises(StorageUnavailable):
        store.put("segments/a", b"x")
    plain = open_store(inner_url(url))
    assert plain.list() == ["other"]


@pytest.mark.parametrize("url", ["faulty+", "faulty+faulty+memory://", "faulty+memory://#seed=x"])
def test_faulty_url_rejects_malformed_urls(url: str) -> None:
    with pytest.raises(InvalidConfig):
        open_store(url)
