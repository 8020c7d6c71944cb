"""One real local Ray per test session (ray.init costs seconds and ~0.8 GiB)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def init_session_ray() -> None:
    """Start the test session's Ray: also how a module that ran its own multi-node Ray
    gives the session its Ray back."""
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        namespace="ray_stream",
        log_to_driver=False,
        _temp_dir=os.environ["RAY_TMPDIR"],
    )


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    if not ray.is_initialized():
        init_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
