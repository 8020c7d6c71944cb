"""Where ray_stream meets Ray: starting Ray, actor options, creation and lookup.

``ray.remote(**options)`` is applied here and only here (STYLE.md rule 2). The metadata
actor is the Ray-free ``MetadataService`` run as an actor; an agent is ``AgentActor``,
the shell around the Ray-free ``LogService``.

Both singletons restart on their own (``max_restarts=-1``; ``max_task_retries=0``, so Ray
never re-runs a call that may have run: retrying is the caller's decision). Calls and
Ray's errors go through ``ray_calls`` (re-exported here for the client shell); ``get``
and ``unwrap`` here add what a driver attached by ``connect()`` needs (``attachment``):
no ``ray.get`` into a lost session, and an old session's handle used after a reattach
reads as ``Unavailable`` naming ``connect()``.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from ray_stream.actors import ray_calls
from ray_stream.actors.attachment import (
    RAY_ENV_DEFAULTS,
    Attachment,
    attach,
    check_current,
    drop_lost,
    release,
)
from ray_stream.actors.metrics import RayMetricsSink
from ray_stream.actors.ray_calls import actor_exists, call, kill, lookup
from ray_stream.config import FLEET_ACTOR_NAME, METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.core.fleet import AgentRecord
from ray_stream.errors import Unavailable

__all__ = [
    "RAY_ENV_DEFAULTS",
    "Attachment",
    "actor_exists",
    "attach",
    "call",
    "create_agent",
    "create_fleet",
    "create_metadata",
    "ensure_ray",
    "gcs_address",
    "get",
    "get_agent",
    "get_fleet",
    "get_metadata",
    "kill",
    "release",
    "unwrap",
]

# Ray raises a bare Exception (no Ray type) when a handle of an earlier session is used.
FOREIGN_HANDLE = "from a different cluster"


def ensure_ray(*, address: str | None = None, namespace: str) -> bool:
    """Start or attach to Ray (a lost ``connect()`` session is shut down first).
    Returns True when this call started it."""
    drop_lost()
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


def get(ref: Any, *, timeout_s: float | None = None) -> Any:
    """``ray.get`` that raises ray_stream errors (plain, not Ray-wrapped).

    Raises:
        Unavailable: the actor is down or restarting, no answer within ``timeout_s``,
            or the cluster this driver attached to is gone (call ``connect()`` again).
    """
    check_current()
    return ray_calls.get(ref, timeout_s=timeout_s)


def unwrap(exc: BaseException) -> BaseException:
    """The ray_stream error behind a Ray error (``ray_calls.unwrap``); a handle of a
    cluster this driver has since left becomes ``Unavailable`` naming ``connect()``."""
    if type(exc) is Exception and FOREIGN_HANDLE in str(exc):
        return Unavailable(
            "the cluster was restarted (this handle belongs to the one before); "
            "call ray_stream.connect() again and use the new handle"
        )
    return ray_calls.unwrap(exc)


def _placed(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus ``settings.actor_resources``, unless pinned to a node."""
    if settings.actor_resources and "scheduling_strategy" not in options:
        return {"resources": dict(settings.actor_resources), **options}
    return options


def _metadata_cls() -> Any:
    from ray_stream.metadata.service import MetadataService

    return ray.remote(MetadataService)


def _agent_cls() -> Any:
    from ray_stream.actors.agent import AgentActor

    return ray.remote(AgentActor)


def create_metadata(settings: Settings, **options: Any) -> Any:
    """Create the named metadata actor; ``options`` add Ray actor options (placement)."""
    return (
        _metadata_cls()
        .options(
            name=METADATA_ACTOR_NAME,
            namespace=settings.namespace,
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=-1,
            max_task_retries=0,
            **_placed(settings, options),
        )
        .remote(settings, settle_heap=True, metrics=RayMetricsSink())
    )


def _fleet_cls() -> Any:
    from ray_stream.actors.fleet import FleetManager

    return ray.remote(FleetManager)


def create_fleet(settings: Settings, **options: Any) -> Any:
    """Create the named fleet actor (it creates and places the agents: actors/fleet.py)."""
    return (
        _fleet_cls()
        .options(
            name=FLEET_ACTOR_NAME,
            namespace=settings.namespace,
            num_cpus=0,
            max_concurrency=100,
            max_restarts=-1,
            max_task_retries=0,
            **_placed(settings, options),
        )
        .remote(settings, create_agent)
    )


def create_agent(
    settings: Settings, index: int, *, placement: AgentRecord | None = None, **options: Any
) -> Any:
    """Create agent ``index`` (``placement``: its group, zone, node, slot and port);
    it starts its Kafka listener on its own, also on restart."""
    return (
        _agent_cls()
        .options(
            name=agent_name(index),
            namespace=settings.namespace,
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=-1,
            max_task_retries=0,
            **_placed(settings, options),
        )
        .remote(settings, index, placement=placement)
    )


def get_metadata(namespace: str) -> Any:
    return lookup(METADATA_ACTOR_NAME, namespace)


def get_fleet(namespace: str) -> Any:
    return lookup(FLEET_ACTOR_NAME, namespace)


def get_agent(namespace: str, index: int) -> Any:
    return lookup(agent_name(index), namespace)


def gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)
