"""Where ray_stream meets Ray: actor options, creation, lookup and error translation.

``ray.remote(**options)`` is applied here and only here. Ray's actor-death errors are
translated to ``Unavailable`` at this boundary; errors raised *inside* an actor arrive as
``RayTaskError`` subclasses of the original ray_stream error, so ``except InvalidTopic``
works in callers.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayTaskError

from ray_stream.config import METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.errors import RayStreamError, Unavailable

# Ray binds the machine's external address unless told otherwise; keep it on loopback.
_RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ensure_ray(*, address: str | None = None, namespace: str) -> bool:
    """Start or attach to Ray. Returns True when this call started it."""
    if ray.is_initialized():
        return False
    for key, value in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
    if address is None:
        kwargs.update(include_dashboard=False)
        tmp = os.environ.get("RAY_TMPDIR")
        if tmp:
            kwargs["_temp_dir"] = tmp
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def _metadata_cls() -> Any:
    from ray_stream.actors.metadata import MetadataActor

    return ray.remote(MetadataActor)


def _agent_cls() -> Any:
    from ray_stream.actors.agent import AgentActor

    return ray.remote(AgentActor)


def create_metadata(settings: Settings) -> Any:
    return _metadata_cls().options(
        name=METADATA_ACTOR_NAME,
        namespace=settings.namespace,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=-1,
        max_task_retries=0,
    ).remote(settings)


def create_agent(settings: Settings, index: int) -> Any:
    return _agent_cls().options(
        name=agent_name(index),
        namespace=settings.namespace,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=-1,
        max_task_retries=0,
    ).remote(settings, index)


def get_metadata(namespace: str) -> Any:
    return _lookup(METADATA_ACTOR_NAME, namespace)


def get_agent(namespace: str, index: int) -> Any:
    return _lookup(agent_name(index), namespace)


def _lookup(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise Unavailable(
            f"no actor {name!r} in Ray namespace {namespace!r}: is the cluster running? "
            "start it with `ray-stream start` or ray_stream.start_local()"
        ) from exc


def actor_exists(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


def unwrap(exc: BaseException) -> BaseException:
    """The ray_stream error behind a Ray error, or Unavailable for a dead actor."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return cause if isinstance(cause, RayStreamError) else exc
    if isinstance(exc, ActorDiedError | ActorUnavailableError):
        return Unavailable(f"actor unavailable: {exc}")
    if isinstance(exc, GetTimeoutError):
        return Unavailable(f"timed out waiting for an actor: {exc}")
    return exc


def get(ref: Any, *, timeout_s: float | None = None) -> Any:
    """``ray.get`` that raises ray_stream errors (plain, not Ray-wrapped)."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except (RayTaskError, ActorDiedError, ActorUnavailableError, GetTimeoutError) as exc:
        raise unwrap(exc) from None


async def call(ref: Any) -> Any:
    """Await an actor call from inside an async actor, translating Ray errors."""
    try:
        return await ref
    except (RayTaskError, ActorDiedError, ActorUnavailableError) as exc:
        raise unwrap(exc) from None


def kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except ValueError:
        pass


def gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


class MetadataProxy:
    """Makes ``await proxy.method(...)`` call ``actor.method.remote(...)``."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handle, name)

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            return await call(method.remote(*args, **kwargs))

        return invoke
