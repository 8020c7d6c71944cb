"""An autoscaled node gets an agent: Ray's fake multi-node autoscaler with per-node agents.

Issue 9, "How we will know": with ``agents_per_node=1`` the fleet follows the nodes the
autoscaler adds (a ``ray up`` cluster that scales up gains agents).

``ray.cluster_utils.AutoscalingCluster`` cannot be used as it is: it runs
``ray stop --force`` (which would stop every Ray on this shared machine) and reads an
``example.yaml`` the Ray wheel does not ship. So this module does what it does, with
its own config: ``ray start --head --block`` with ``RAY_FAKE_CLUSTER=1`` and a
``fake_multinode`` autoscaling config, in a process group of its own that the fixture
kills at the end (the fake nodes are processes of that group too). The session's Ray
is shut down meanwhile and started again afterwards, as in test_failover.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ray_stream
from ray_stream.client.cluster import Cluster as StreamCluster
from ray_stream.core.fleet import AgentRecord
from tests.fixtures_ray import init_session_ray, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
confluent_kafka = pytest.importorskip("confluent_kafka")

JOIN_S = 30.0
WORKER_TYPE = "ray.worker.zone_c"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _autoscaling_config(gcs_port: int) -> dict[str, Any]:
    """Ray's fake_multi_node/example.yaml, with one worker type in zone c (0..1 nodes)."""
    return {
        "cluster_name": "rs-fake-" + uuid.uuid4().hex[:6],
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": 1, "zone:a": 1},
                "node_config": {},
                "max_workers": 0,
            },
            WORKER_TYPE: {
                "resources": {"CPU": 1, "zone:c": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End the process group this module started (and only it): TERM, then KILL."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
        if not _group_alive(proc.pid):
            return


def _forget_address(address: str) -> None:
    """What `ray stop` does besides stopping: drop the "current cluster" file that
    `ray start` wrote, or a later ray.init() with no address would try to attach to
    this dead cluster. Only when it still names this one."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(os.environ["RAY_TMPDIR"]))  # our --temp-dir
    with contextlib.suppress(OSError):
        if path.read_text().strip() == address:
            path.unlink()


def _group_alive(pgid: int) -> bool:
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, check=False)
    return bool(found.stdout.strip())


@pytest.fixture(scope="module")
def fake_autoscaler(tmp_path_factory) -> Iterator[str]:
    """A fake autoscaling Ray (head in zone a); yields its GCS address."""
    import ray

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    work = tmp_path_factory.mktemp("autoscaler")
    port = _free_port()
    config = work / "autoscaling.json"
    config.write_text(json.dumps(_autoscaling_config(port)))
    Path(os.environ["RAY_TMPDIR"], "ray").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--autoscaling-config={config}",
        "--num-cpus=1",
        "--resources=" + json.dumps({"zone:a": 1}),
        "--include-dashboard=false",
        f"--temp-dir={os.environ['RAY_TMPDIR']}",
    ]
    with (work / "ray-start.log").open("wb") as log:
        proc = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        _stop_group(proc)
        _forget_address(f"127.0.0.1:{port}")
        if was_up:  # give the session its Ray back
            init_session_ray()


@pytest.fixture(scope="module")
def stream(fake_autoscaler, tmp_path_factory) -> Iterator[StreamCluster]:
    wait_for(lambda: _accepts(fake_autoscaler), timeout=60, interval=0.5)  # the GCS is up
    cluster = ray_stream.start_local(
        address=fake_autoscaler,
        data_dir=str(tmp_path_factory.mktemp("autoscaled")),
        agents_per_node=1,
        kafka_port=-1,
        linger_ms=10,
        namespace="as-" + uuid.uuid4().hex[:8],
    )
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def _agents(cluster: StreamCluster) -> list[AgentRecord]:
    return [a for a in cluster.fleet(refresh=True).agents if a.port]


def test_a_node_the_autoscaler_adds_gets_an_agent_within_30s(stream):
    import ray
    from confluent_kafka.admin import AdminClient
    from ray.autoscaler.sdk import request_resources

    (head_agent,) = wait_for(lambda: _agents(stream), timeout=60)
    assert head_agent.zone == "a"
    nodes_before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    request_resources(bundles=[{"zone:c": 1}])  # only the zone-c worker type has it
    new_node = wait_for(
        lambda: next(
            (n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in nodes_before),
            None,
        ),
        timeout=120,
        interval=0.5,
    )
    joined_at = time.monotonic()
    agent = wait_for(
        lambda: next((a for a in _agents(stream) if a.node == new_node), None),
        timeout=JOIN_S,
        interval=0.5,
    )
    print(f"autoscaled node: agent-{agent.agent_id} {time.monotonic() - joined_at:.1f}s later")
    assert agent.zone == "c"  # from the node type's resource zone:c
    admin = AdminClient(
        {"bootstrap.servers": f"{agent.host}:{agent.port}", "client.id": "ray_stream_az=c"}
    )
    listed = admin.list_topics(timeout=30)
    assert set(listed.brokers) == {agent.agent_id}  # it serves its zone's clients
    request_resources(bundles=[])
