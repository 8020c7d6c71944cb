"""Failover on a multi-node Ray cluster (``ray.cluster_utils.Cluster``): nothing acknowledged
is lost when the metadata actor is killed or its node removed, and a killed agent serves
again (Python API and its Kafka port) without any manual step.

This module runs its own 3-node Ray cluster (a head for the driver and the agents, two
workers that can host the metadata actor), so it shuts down the session's single-node Ray
first and starts it again afterwards for the modules that follow.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ray_stream.actors import handles
from ray_stream.client.cluster import Cluster as StreamCluster
from ray_stream.config import Settings
from ray_stream.testing.nemesis import actor_call
from tests.fixtures_ray import init_session_ray, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

META_RESOURCE = "rs_failover_meta"  # only worker nodes have it: the head is never removed
AGENT_RESOURCE = "rs_failover_agent"  # only the head has it


def _free_port_pair() -> int:
    """A port p such that p and p + 1 are both free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second, contextlib.suppress(OSError):
                second.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "temp_dir": os.environ["RAY_TMPDIR"],
            "resources": {AGENT_RESOURCE: 10},
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, resources={META_RESOURCE: 1})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_up:  # give the session its Ray back
            init_session_ray()


@pytest.fixture(scope="module")
def stream(ray_cluster, tmp_path_factory) -> Iterator[StreamCluster]:
    data = tmp_path_factory.mktemp("failover")
    settings = Settings(
        data_dir=str(data / "data"),
        agents=2,
        kafka_port=_free_port_pair(),
        linger_ms=10,
        namespace="fo-" + uuid.uuid4().hex[:8],
    )
    meta = handles.create_metadata(settings, resources={META_RESOURCE: 0.01})
    handles.get(meta.ping.remote(), timeout_s=60)
    agents = [
        handles.create_agent(settings, i, resources={AGENT_RESOURCE: 0.01})
        for i in range(settings.agents)
    ]
    for agent in agents:
        handles.get(agent.start.remote(), timeout_s=60)
    cluster = StreamCluster(settings, owned=True, started_ray=False, actors=(meta, agents))
    yield cluster
    cluster.shutdown()


class _Writer:
    """Sends unique values through one agent until stopped; records what was acked."""

    def __init__(self, cluster: StreamCluster, topic: str, *, agent: int) -> None:
        self._producer = cluster.producer(agent=agent, linger_ms=2)
        self._topic = topic
        self.acked: dict[bytes, tuple[int, int, float]] = {}  # value -> (partition, offset, t)
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            values = [f"{self._topic}-{n + i}".encode() for i in range(20)]
            n += len(values)
            futures = [self._producer.send(self._topic, v) for v in values]
            for value, future in zip(values, futures, strict=True):
                try:
                    meta = future.result(timeout=60)
                except Exception:
                    self.failed += 1
                    continue
                self.acked[value] = (meta.partition, meta.offset, time.monotonic())

    def acked_after(self, moment: float) -> int:
        return sum(1 for *_, t in list(self.acked.values()) if t > moment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        self._producer.close(30)


def _check_log(
    cluster: StreamCluster, topic: str, acked: dict[bytes, tuple[int, int, float]]
) -> None:
    """Every acked value at its acked offset; no value twice; offsets dense per partition."""
    table = cluster.read_table(topic)
    rows = table.to_pylist()
    at = {(r["partition"], r["offset"]): r["value"] for r in rows}
    lost = [v for v, (p, o, _) in acked.items() if at.get((p, o)) != v]
    assert lost == [], f"{len(lost)} acknowledged records lost or moved, e.g. {lost[:3]}"
    values = [r["value"] for r in rows]
    assert len(values) == len(set(values)), "a value was stored twice"
    for partition in {r["partition"] for r in rows}:
        offsets = sorted(o for p, o in at if p == partition)
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


def _call(handle: Any, method: str, timeout_s: float = 10.0) -> Any:
    """One actor call (or test hook: pid, node_id), or None while it is restarting."""
    try:
        if method in ("pid", "node_id"):
            return actor_call(handle, method, timeout_s=timeout_s)
        return handles.get(getattr(handle, method).remote(), timeout_s=timeout_s)
    except Exception:
        return None


def test_killing_the_metadata_actor_mid_produce_loses_nothing(stream):
    topic = "kill-meta-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, 4)
    meta = stream.metadata
    epoch_before = handles.get(meta.ping.remote())["epoch"]
    writer = _Writer(stream, topic, agent=0)
    try:
        wait_for(lambda: len(writer.acked) >= 300, timeout=60)
        import ray

        killed_at = time.monotonic()
        ray.kill(meta, no_restart=False)
        wait_for(lambda: writer.acked_after(killed_at + 0.05) > 0, timeout=60)
        failover_s = min(t for *_, t in writer.acked.values() if t > killed_at) - killed_at
        wait_for(lambda: ((_call(meta, "ping") or {}).get("epoch") or 0) > epoch_before, timeout=60)
        back_at = time.monotonic()
        wait_for(lambda: writer.acked_after(back_at) >= 100, timeout=60)
    finally:
        writer.stop()
    print(f"metadata kill: first ack after {failover_s:.2f}s; {len(writer.acked)} acked")
    assert writer.failed == 0  # agents resend commits while the metadata actor restarts
    _check_log(stream, topic, writer.acked)


def test_a_killed_agent_serves_again_on_its_own(stream):
    import ray
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = "kill-agent-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, 2)
    agent = stream.agent(1)
    before_pid = actor_call(agent, "pid")
    address = handles.get(agent.kafka_address.remote())
    writer = _Writer(stream, topic, agent=1)
    try:
        wait_for(lambda: len(writer.acked) >= 100, timeout=60)
        ray.kill(agent, no_restart=False)
        wait_for(lambda: _call(agent, "pid") not in (None, before_pid), timeout=60)
        restarted_at = time.monotonic()
        wait_for(lambda: writer.acked_after(restarted_at) >= 50, timeout=60)
    finally:
        writer.stop()
    # Same port, no manual start() (the listener may come up after the Python API serves).
    wait_for(lambda: _call(agent, "kafka_address") == address, timeout=60)
    bootstrap = f"{address.host}:{address.port}"  # only the restarted agent
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    assert topic in listed.topics
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(10):
        producer.produce(topic, value=f"kafka-{i}".encode(), partition=1)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "g-" + topic, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 1, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while sum(v.startswith(b"kafka-") for v in seen) < 10 and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is not None and msg.error() is None:
            seen.append(msg.value())
    consumer.close()
    assert [v for v in seen if v.startswith(b"kafka-")] == [
        f"kafka-{i}".encode() for i in range(10)
    ]
    _check_log(stream, topic, writer.acked)  # callers of the dead agent got errors, not lies


def test_removing_the_metadata_node_restarts_it_elsewhere_with_everything(stream, ray_cluster):
    topic = "rm-node-" + uuid.uuid4().hex[:6]
    stream.create_topic(topic, 3)
    meta = stream.metadata
    node = actor_call(meta, "node_id")
    victim = next(n for n in ray_cluster.worker_nodes if n.node_id == node)
    writer = _Writer(stream, topic, agent=0)
    try:
        wait_for(lambda: len(writer.acked) >= 300, timeout=60)
        removed_at = time.monotonic()
        ray_cluster.remove_node(victim)
        wait_for(lambda: writer.acked_after(removed_at + 0.05) > 0, timeout=90)
        failover_s = min(t for *_, t in writer.acked.values() if t > removed_at) - removed_at
        wait_for(lambda: _call(meta, "node_id") not in (None, node), timeout=60)
        back_at = time.monotonic()
        wait_for(lambda: writer.acked_after(back_at) >= 100, timeout=60)
    finally:
        writer.stop()
        ray_cluster.add_node(num_cpus=1, resources={META_RESOURCE: 1})
    print(f"metadata node removal: first ack after {failover_s:.2f}s; {len(writer.acked)} acked")
    assert writer.failed == 0
    _check_log(stream, topic, writer.acked)
    stats = handles.get(meta.stats.remote())
    assert stats["epoch"] >= 2
