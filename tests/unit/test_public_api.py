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


GROUP_ERRORS = [cls for cls in ERROR_CLASSES if issubclass(cls, errors.GroupError)]


def test_every_exception_errors_py_defines_is_in_the_hierarchy():
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    }
    assert defined == set(ERROR_CLASSES)  # so the pickle test above covers each one
    assert {c.__name__ for c in GROUP_ERRORS} >= {
        "GroupError",
        "UnknownMemberId",
        "IllegalGeneration",
        "RebalanceInProgress",
        "MemberIdRequired",
        "InconsistentGroupProtocol",
        "FencedInstanceId",
        "InvalidGroupId",
        "InvalidSessionTimeout",
        "GroupIdNotFound",
        "NonEmptyGroup",
    }


@pytest.mark.parametrize(
    "cls",
    [c for c in GROUP_ERRORS if c is not errors.GroupError] + [errors.CoordinatorNotAvailable],
    ids=lambda c: c.__name__,
)
def test_group_error_names_the_kafka_error_it_stands_for(cls):
    from ray_stream.kafka.errors_map import error_code

    snake = "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in cls.__name__).lstrip("_")
    back = pickle.loads(pickle.dumps(cls("m")))
    assert error_code(back).name == snake


def test_retryable_kinds():
    assert errors.Unavailable("x").retryable
    assert errors.StorageUnavailable("x").retryable
    assert not errors.InvalidRequest("x").retryable
    assert not errors.CorruptData("x").retryable


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
