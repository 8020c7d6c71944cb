"""Calls into Ray and the translation of its errors: the one place Ray errors are seen.

Errors raised *inside* an actor arrive as ``RayTaskError`` subclasses of the original
ray_stream error; ``unwrap`` returns the original, so callers catch ``InvalidTopic``,
not Ray types. An actor that died, is restarting or is unreachable becomes
``Unavailable`` (STYLE.md section 6: foreign errors are translated at the boundary).
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from ray_stream.errors import RayStreamError, Unavailable

__all__ = ["actor_exists", "call", "get", "kill", "lookup", "unwrap"]


def lookup(name: str, namespace: str) -> Any:
    """The named actor's handle.

    Raises:
        Unavailable: no such actor (the message says how to start the cluster).
    """
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
    if isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError):
        return Unavailable(f"actor unavailable: {exc}")
    if isinstance(exc, GetTimeoutError):
        return Unavailable(f"timed out waiting for an actor: {exc}")
    return exc


def get(ref: Any, *, timeout_s: float | None = None) -> Any:
    """``ray.get`` that raises ray_stream errors (plain, not Ray-wrapped)."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except (RayTaskError, RayActorError, GetTimeoutError) as exc:
        raise unwrap(exc) from None


async def call(ref: Any) -> Any:
    """Await an actor call from inside an async actor, translating Ray errors."""
    try:
        return await ref
    except (RayTaskError, RayActorError) as exc:
        raise unwrap(exc) from None


def kill(handle: Any) -> None:
    with contextlib.suppress(ValueError):
        ray.kill(handle, no_restart=True)
