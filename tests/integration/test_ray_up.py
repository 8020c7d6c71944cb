"""`ray up` on this machine: deploy/local.yaml's two nodes, a Kafka round trip, `ray down`.

The test gives Ray's cluster launcher deploy/local.yaml (head 127.0.0.3, worker 127.0.0.2,
the setup and start commands of deploy/ray-stream-node.sh, which cluster.yaml runs too)
with a key of its own, a temporary `file://` object store and a unique cluster name, and
an sshd of its own in a private network namespace (ray_up_harness.py). It checks that
`ray-stream status` shows one agent per node, that confluent-kafka produces and consumes
through the cluster's listeners, that re-running `ray up` starts nothing twice, and that
`ray down` stops the cluster and nothing else.

Rules this test keeps (the machine runs other Ray clusters and test sessions):

1. `ray stop` never runs. `ray down` runs it on the head, and on this machine it would stop
   every Ray process. The key's forced command (ray_up_ssh_command.sh) replaces it with
   ray_up_guard_stop.sh, which stops the processes tagged with this cluster's tag only. A
   dry run through the launcher's own path (`ray exec ... 'ray stop --dry-run'`) must
   reach the guard before `ray down` runs; a real `ray stop` rejects --dry-run unrun.
2. What else runs is checked untouched: a canary process `ray stop` would match
   (``log_monitor.py`` in its command line), the other raylets on the machine, and this
   session's Ray when it has one.
3. Whatever happens, the cluster's processes are stopped by tag and the sshd by pid, and
   the machine's Python still imports this checkout's ray_stream (a node's setup installs
   the synced copy into that node's own virtualenv only).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_ray import wait_for
from tests.integration.ray_up_harness import (
    ROOT,
    LocalCluster,
    Sshd,
    alive,
    host_listeners,
    preflight,
    raylet_pids,
    stop_pids,
    tagged_pids,
    wheelhouse,
)

pytestmark = pytest.mark.integration

TOPIC = "ray-up"
RECORDS = 20


@pytest.mark.timeout(600)
def test_ray_up_local_cluster_serves_kafka_and_ray_down_stops_only_it() -> None:
    reason = preflight()
    if reason:
        pytest.skip(f"`ray up` on this machine: {reason}")
    pytest.importorskip("confluent_kafka")
    wheels = wheelhouse()
    if wheels is None:
        pytest.skip("`ray up` on this machine: pip cannot download the build requirements")
    tag = uuid.uuid4().hex[:10]
    root = Path(tempfile.mkdtemp(prefix="ru", dir="/tmp"))  # short: Ray's socket paths
    with contextlib.ExitStack() as cleanup:  # rule 3: runs whatever happened, last first
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        cluster = LocalCluster(root, key=root / "sshd" / "id_ed25519", tag=tag, wheelhouse=wheels)
        sshd = Sshd(root, cluster.nodes, tag)
        cleanup.callback(shutil.rmtree, cluster.control_dir(), ignore_errors=True)
        cleanup.callback(sshd.stop)
        cleanup.callback(lambda: stop_pids(tagged_pids(tag)))
        canary = cleanup.enter_context(_canary())
        cleanup.push(lambda *exc: exc[0] is not None and print(cluster.diagnosis()))
        started = time.monotonic()
        sshd.start()
        cluster.netns = sshd.netns

        output = cluster.up()
        assert "ready kafka=" in output, output[-4000:]
        print(f"\nray up: {time.monotonic() - started:.0f} s")
        status = _check_one_agent_per_node_and_group(cluster)
        print(f"both nodes' agents listen: {time.monotonic() - started:.0f} s")
        got = _kafka_round_trip(cluster, status["kafka"])
        assert got == {f"k{i}": f"v{i}" for i in range(RECORDS)}
        assert any(cluster.objects.rglob("*")), "no segment reached the file:// object store"
        _check_ray_up_again_starts_nothing(cluster)
        _ray_down_through_the_guard(cluster, canary)
        print(f"ray up .. ray down: {time.monotonic() - started:.0f} s")
    _check_repository_ray_stream_is_installed()


def _check_one_agent_per_node_and_group(cluster: LocalCluster) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(lambda: _agents_ready(cluster), timeout=180, interval=2)
    table = cluster.exec("ray-stream status")
    print(table[table.index("namespace ") :])
    assert "zone total" in table
    # --agents-per-node 1: one agent of each group (default, analytics) on each node
    assert cluster.agent_homes() == {ip: 2 for ip in cluster.nodes}
    listeners = host_listeners(tagged_pids(cluster.tag))
    assert listeners == [], "a cluster process listens on the machine's own network"
    return status


def _ray_down_through_the_guard(cluster: LocalCluster, canary: subprocess.Popen[bytes]) -> None:
    dry_run = cluster.exec("ray stop --dry-run")  # rule 1, before any `ray down`
    line = next(x for x in dry_run.splitlines() if x.startswith("ray_up_guard_stop: "))
    print(line)
    assert "dry run, instead of ray stop: would stop" in line
    assert cluster.tag in line
    others = raylet_pids() - tagged_pids(cluster.tag)
    down = cluster.ray("down", "-y", str(cluster.config))
    assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
    guard_log = (cluster.root / "guard.log").read_text()
    print(guard_log)
    assert "instead of ray stop: stopping" in guard_log
    wait_for(lambda: not tagged_pids(cluster.tag), timeout=60, interval=0.5)
    assert canary.poll() is None, "a real `ray stop` ran: the canary process died"  # rule 2
    gone = {p for p in others if not alive(p)}
    assert not gone, f"raylets of other Ray clusters stopped meanwhile: {gone}"
    _check_session_ray_answers()


def _agents_ready(cluster: LocalCluster) -> dict[str, Any] | None:
    """The status once both nodes' default-group agents listen, else None."""
    try:
        status = cluster.status()
    except (AssertionError, ValueError, subprocess.TimeoutExpired):
        return None
    default = [a for a in status["agents"] if a.get("group") == "default" and a.get("listener")]
    return status if len(default) == len(cluster.nodes) else None


def _kafka_round_trip(cluster: LocalCluster, bootstrap: str) -> dict[str, str]:
    """ray_up_harness.kafka_round_trip, run in the cluster's network namespace."""
    argv = [sys.executable, "-m", "tests.integration.ray_up_harness", bootstrap, TOPIC]
    proc = subprocess.run(
        cluster.inside(*argv, str(RECORDS)), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _check_ray_up_again_starts_nothing(cluster: LocalCluster) -> None:
    pid = cluster.ray_stream_pid()
    raylets = raylet_pids() & tagged_pids(cluster.tag)
    again = cluster.up()
    print("\n".join(x for x in again.splitlines() if "already runs" in x))
    assert "ray-stream start already runs" in again
    assert "Ray already runs" in again
    assert cluster.ray_stream_pid() == pid
    assert alive(pid)
    assert raylet_pids() & tagged_pids(cluster.tag) == raylets


@contextlib.contextmanager
def _canary() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping process that `ray stop` would match (its command line names
    log_monitor.py, one of Ray's process patterns): it dies if a real `ray stop` runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(900)", "ray_up_canary_log_monitor.py"]
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _check_session_ray_answers() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        assert ray.get(ray.put(41)) + 1 == 42


def _check_repository_ray_stream_is_installed() -> None:
    """The machine's Python still imports this checkout's ray_stream, not a node's copy."""
    out = subprocess.run(
        [sys.executable, "-c", "import ray_stream; print(ray_stream.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()
    assert Path(out).resolve().is_relative_to(ROOT), out
