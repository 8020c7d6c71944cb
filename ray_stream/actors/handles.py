"""Where ray_stream meets Ray: starting Ray, actor options, creation and lookup.

``ray.remote(**options)`` is applied here and only here (STYLE.md rule 2). The metadata
actor is the Ray-free ``MetadataService`` run as an actor; an agent is ``AgentActor``,
the shell around the Ray-free ``LogService``.

Both singletons restart on their own (``max_restarts=-1``; ``max_task_retries=0``, so Ray
never re-runs a call that may have run: retrying is the caller's decision). Calls and
Ray's errors go through ``ray_calls`` (re-exported here for the client shell).
"""

from __future__ import annotations

import os
from typing import Any

import ray

from ray_stream.actors.metrics import RayMetricsSink
from ray_stream.actors.ray_calls import actor_exists, call, get, kill, lookup, unwrap
from ray_stream.config import FLEET_ACTOR_NAME, METADATA_ACTOR_NAME, Settings, agent_name
from ray_stream.core.fleet import AgentRecord

__all__ = [
    "RAY_ENV_DEFAULTS",
    "actor_exists",
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
    "unwrap",
]

# Ray binds the machine's external address unless told otherwise; keep it on loopback.
RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts workers at nice 15 by default; an agent is a server that Kafka clients
    # wait on, so it runs at the same priority as they do.
    "RAY_worker_niceness": "0",
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
