"""Ray and ray_stream start-up for chaos runs: nodes, placement, settings, ports.

``start_ray`` makes a ``ray.cluster_utils.Cluster`` whose head has no CPUs and whose
worker nodes carry ``WORKER_RESOURCE``; ``placement`` gives the metadata actor and the
agents a sliver of that resource, so they always run on (removable) worker nodes and
Ray restarts them on another worker when theirs is removed. An already running Ray (a
test session) is reused as is: no worker nodes, so no node faults.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "WORKER_RESOURCE",
    "chaos_settings",
    "start_cluster",
    "start_ray",
    "stop_ray",
    "tmp_root",
]

WORKER_RESOURCE = "ray_stream_chaos_worker"
# Notice a dead node in ~3 s instead of Ray's default ~15-30 s.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def tmp_root() -> str | None:
    root = Path.cwd() / ".tmp"
    return str(root) if root.is_dir() else None


def start_ray(worker_nodes: int) -> tuple[Any | None, bool]:
    """(the Cluster with worker nodes or None, whether this call started Ray)."""
    import ray

    if ray.is_initialized():
        return None, False  # an existing Ray (e.g. a test session): no node faults
    from ray_stream.actors.handles import RAY_ENV_DEFAULTS

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    temp = os.environ.get("RAY_TMPDIR")
    if worker_nodes <= 0:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if temp:
            kwargs["_temp_dir"] = temp
        ray.init(**kwargs)
        return None, True
    from ray.cluster_utils import Cluster

    head: dict[str, Any] = {
        "num_cpus": 0,
        "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECKS,
    }
    if temp:
        head["temp_dir"] = temp
        Path(temp, "ray").mkdir(parents=True, exist_ok=True)  # Cluster writes its address there
    rc = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(worker_nodes):
        rc.add_node(num_cpus=1, resources={WORKER_RESOURCE: 1000})
    rc.wait_for_nodes()
    # A client thread that outlives ray.shutdown() would auto-init Ray and could join
    # another cluster on this machine; pin it to ours (dead by then) instead.
    os.environ["RAY_ADDRESS"] = rc.address
    ray.init(address=rc.address, log_to_driver=False)
    return rc, True


def stop_ray(ray_cluster: Any | None, started: bool) -> None:
    import ray

    if started:
        ray.shutdown()
    if ray_cluster is not None:
        with contextlib.suppress(Exception):
            ray_cluster.shutdown()
        if os.environ.get("RAY_ADDRESS") == ray_cluster.address:
            del os.environ["RAY_ADDRESS"]


def chaos_settings(
    workdir: Path,
    *,
    agents: int,
    linger_ms: int,
    kafka: bool,
    zones: tuple[str, ...] = (),
    resources: dict[str, float] | None = None,
) -> Any:
    """The cluster under test; ``resources``: a custom resource only worker nodes have,
    so the metadata actor and agents live on removable nodes."""
    from ray_stream.config import Settings

    return Settings(
        zones=zones,
        actor_resources=tuple((resources or {}).items()),
        data_dir=str(workdir / "data"),
        object_store=f"faulty+file://{workdir / 'objects'}",
        agents=agents,
        linger_ms=linger_ms,
        kafka_port=_free_port_block(agents + 1) if kafka else 0,  # + 1: scale-agents
        namespace="chaos-" + uuid.uuid4().hex[:8],
    )


def start_cluster(settings: Any) -> Any:
    import ray_stream

    return ray_stream.start_local(settings=settings)


def _free_port_block(count: int) -> int:
    """A base port such that base .. base+count-1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count >= 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError(f"no block of {count} free ports found")
