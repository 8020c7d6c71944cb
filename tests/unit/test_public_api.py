"""The public surface: what ``import ray_stream`` offers, and errors that cross processes."""

from __future__ import annotations

import inspect
import pickle

import pytest

import ray_stream
from ray_stream import errors


def test_all_names_exist_and_nothing_private_leaks():
    for name in ray_stream.__all__:
        assert hasattr(ray_stream, name), name
        assert not name.startswith("_")
    assert {"start_local", "connect", "Cluster", "Producer", "Consumer"} <= set(ray_stream.__all__)


ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.RayStreamError)
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_with_kind_and_message(cls):
    exc = cls("topic 'x' is bad")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == "topic 'x' is bad"
    assert back.retryable == cls.retryable


def test_retryable_kinds():
    assert errors.Unavailable("x").retryable and errors.StorageUnavailable("x").retryable
    assert not errors.InvalidRequest("x").retryable and not errors.CorruptData("x").retryable


def test_settings_reject_bad_values_naming_the_key():
    with pytest.raises(errors.InvalidConfig, match="linger_ms"):
        ray_stream.Settings(linger_ms=-5)
    with pytest.raises(errors.InvalidConfig, match="agents"):
        ray_stream.Settings(agents=0)


def test_settings_from_env_names_the_variable(monkeypatch):
    from ray_stream.config import settings_from_env

    monkeypatch.setenv("RAY_STREAM_LINGER_MS", "soon")
    with pytest.raises(errors.InvalidConfig, match="RAY_STREAM_LINGER_MS"):
        settings_from_env()
    monkeypatch.setenv("RAY_STREAM_LINGER_MS", "40")
    assert settings_from_env(agents=2).linger_ms == 40
