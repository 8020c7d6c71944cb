"""Where ray_stream meets Ray: actor options, creation, lookup and error translation.

``ray.remote(**options)`` is applied here and only here. Ray's actor-death errors are
translated to ``Unavailable`` at this boundary; errors raised *inside* an actor arrive as
``RayTaskError`` subclasses of the original ray_stream error, so ``except InvalidTopic``
works in callers.

Both singletons restart on their own (``max_restarts=-1``; ``max_task_retries=0``, so Ray
never re-runs a call that may have run: retrying is the caller's decision).
``MetadataProxy`` is how agents reach the metadata actor: it looks the actor up lazily and
retries calls that died with the actor (or reached a fenced incarnation) with backoff for
a bounded time, so a metadata restart looks like a slow call, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from ray_stream.config import METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.errors import Fenced, RayStreamError, Unavailable

# Ray binds the machine's external address unless told otherwise; keep it on loopback.
RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ensure_ray(*, address: str | None = None, namespace: str) -> bool:
    """Start or attach to Ray. Returns True when this call started it."""
    if ray.is_initialized():
        return False
    for key, value in RAY_ENV_DEFAULTS.items():
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


def create_metadata(settings: Settings, **options: Any) -> Any:
    """Create the named metadata actor; ``options`` add Ray actor options (placement)."""
    return _metadata_cls().options(
        name=METADATA_ACTOR_NAME,
        namespace=settings.namespace,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=-1,
        max_task_retries=0,
        **options,
    ).remote(settings)


def create_agent(settings: Settings, index: int, **options: Any) -> Any:
    """Create agent ``index``; it starts its Kafka listener on its own, also on restart."""
    return _agent_cls().options(
        name=agent_name(index),
        namespace=settings.namespace,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=-1,
        max_task_retries=0,
        **options,
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
    with contextlib.suppress(ValueError):
        ray.kill(handle, no_restart=True)


def gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


class MetadataProxy:
    """Makes ``await proxy.method(...)`` call ``actor.method.remote(...)``.

    Args:
        handle: an actor handle; or None to look the metadata actor of ``namespace`` up
            on first use (and again after it died).
        namespace: the Ray namespace (when ``handle`` is None).
        retry_s: how long to retry a call that failed because the actor died, was
            unreachable, was not registered yet, or answered ``Fenced`` (a stale
            incarnation). 0 never retries. Errors the actor raised on purpose (including
            StorageUnavailable) are never retried here.
    """

    def __init__(
        self, handle: Any = None, *, namespace: str | None = None, retry_s: float = 0.0
    ) -> None:
        if handle is None and namespace is None:
            raise ValueError("MetadataProxy needs a handle or a namespace")
        self._handle = handle
        self._namespace = namespace
        self._retry_s = retry_s

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def invoke(*args: Any, **kwargs: Any) -> Any:
            return await self._invoke(name, args, kwargs)

        return invoke

    async def _invoke(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_s
        delay = 0.05
        while True:
            try:
                return await self._call_once(name, args, kwargs)
            except Unavailable as exc:
                if loop.time() + delay > deadline:
                    raise Unavailable(
                        f"metadata actor call {name}() failed for {self._retry_s:.0f}s: {exc}"
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _call_once(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One attempt; raises plain ``Unavailable`` only for failures worth retrying."""
        handle = self._handle
        if handle is None:
            assert self._namespace is not None
            handle = self._handle = get_metadata(self._namespace)  # Unavailable if missing
        try:
            return await getattr(handle, name).remote(*args, **kwargs)
        except RayActorError as exc:  # died, restarting, unreachable
            if self._namespace is not None:
                self._handle = None  # look it up again: it may have been re-created
            raise Unavailable(f"metadata actor unavailable: {exc}") from None
        except RayTaskError as exc:
            cause = unwrap(exc)
            if isinstance(cause, Fenced):
                raise Unavailable(f"reached a fenced metadata incarnation: {cause}") from None
            raise cause from None
