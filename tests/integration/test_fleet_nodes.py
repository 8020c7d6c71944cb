"""Agents that follow the Ray nodes, on a simulated multi-node Ray (``ray.cluster_utils``).

Issue 9, "How we will know": with ``agents_per_node=1`` every node runs one agent whose
zone is the node's custom resource ``zone:<name>``; a Kafka client that names its zone in
``client.id`` (``ray_stream_az=`` for confluent-kafka, ``warpstream_az=`` inside other
pairs for kafka-python) sees only that zone's agents, with the zone as ``rack``, and a
malformed or unknown zone sees them all; nodes that join get serving agents within 30 s;
a node that leaves takes its agent out of the fleet while a producer carries on and loses
nothing it had acknowledged.

This module runs its own Ray (a head in zone ``a`` and a worker in zone ``b``; the tests
add and remove more), so it shuts down the session's single-node Ray first and starts it
again afterwards, as tests/integration/test_failover.py does. All nodes share 127.0.0.1,
so agents listen on free ports (``kafka_port=-1``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ray_stream
from ray_stream.actors import handles
from ray_stream.client.cluster import Cluster as StreamCluster
from ray_stream.core.fleet import AgentRecord
from ray_stream.errors import Unavailable
from ray_stream.testing.nemesis import actor_call
from tests.fixtures_ray import init_session_ray, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
confluent_kafka = pytest.importorskip("confluent_kafka")

JOIN_S = 30.0  # the bound: a node that joins gets serving agents within 30 s
AT_START: dict[str, list[AgentRecord]] = {}  # the fleet as start_local returned


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[Any]:
    """A head node in zone a and a worker in zone b; the session Ray is paused meanwhile."""
    import ray
    from ray.cluster_utils import Cluster

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    # Ray writes the cluster's address under $RAY_TMPDIR/ray before the head is up.
    Path(os.environ["RAY_TMPDIR"], "ray").mkdir(parents=True, exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        connect=False,  # start_local(address=...) attaches the driver, as on `ray up`
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "temp_dir": os.environ["RAY_TMPDIR"],
            "resources": {"zone:a": 1},
        },
    )
    try:
        cluster.add_node(num_cpus=1, resources={"zone:b": 1})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_up:  # give the session its Ray back
            init_session_ray()


@pytest.fixture(scope="module")
def stream(ray_nodes, tmp_path_factory) -> Iterator[StreamCluster]:
    cluster = ray_stream.start_local(
        address=ray_nodes.address,
        data_dir=str(tmp_path_factory.mktemp("fleet-nodes")),
        agents_per_node=1,
        kafka_port=-1,
        zones=None,
        linger_ms=10,
        namespace="nodes-" + uuid.uuid4().hex[:8],
    )
    try:
        AT_START["agents"] = _alive_agents(cluster)
        wait_for(lambda: len(_alive_agents(cluster)) == 2, timeout=60, interval=0.2)
        yield cluster
    finally:
        cluster.shutdown()


# --------------------------------------------------------------------------- helpers
def _alive_agents(cluster: StreamCluster) -> list[AgentRecord]:
    """The registered agents that listen (per-node agents start in the background)."""
    return [a for a in cluster.fleet(refresh=True).agents if a.port]


def _node_zones() -> dict[str, str]:
    """Ray node id -> its zone (resource ``zone:<name>``, else its zone label), for the
    alive nodes."""
    import ray

    zones = {}
    for node in ray.nodes():
        if node.get("Alive"):
            names = [r[len("zone:") :] for r in node["Resources"] if r.startswith("zone:")]
            label = (node.get("Labels") or {}).get("ray.io/availability-zone", "")
            zones[node["NodeID"]] = names[0] if names else label
    return zones


def _pid(handle: Any) -> int | None:
    try:
        return actor_call(handle, "pid", timeout_s=5)
    except Exception:  # dead, or restarting
        return None


def _address(agent: AgentRecord) -> str:
    return f"{agent.host}:{agent.port}"


def _bootstrap(agents: list[AgentRecord]) -> str:
    return ",".join(_address(a) for a in agents)


def _confluent_view(bootstrap: str, client_id: str, topic: str) -> dict[str, Any]:
    """What a confluent-kafka client with ``client_id`` learns: the brokers and partition
    leaders of a Metadata answer, and each broker's rack (DescribeCluster)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": client_id})
    listed = admin.list_topics(topic, timeout=30)
    described = admin.describe_cluster(request_timeout=30).result(timeout=30)
    return {
        "brokers": set(listed.brokers),
        "leaders": {p.leader for p in listed.topics[topic].partitions.values()},
        "racks": {node.id: node.rack for node in described.nodes},
    }


def _kafka_python_view(bootstrap: str, client_id: str, topic: str) -> dict[str, Any]:
    """The same through kafka-python: the brokers (with racks) and leaders it learns."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), client_id=client_id, request_timeout_ms=30000
    )
    try:
        partitions = consumer.partitions_for_topic(topic)  # a Metadata round trip
        assert partitions, f"kafka-python did not see topic {topic}"
        cluster = consumer._client.cluster
        brokers = {_node_id(b): b.rack for b in cluster.brokers()}
        return {
            "brokers": set(brokers),
            "leaders": {cluster.leader_for_partition(_tp(topic, p)) for p in partitions},
            "racks": brokers,
        }
    finally:
        consumer.close()


def _node_id(broker: Any) -> int:
    """kafka-python 3 names it ``node_id``; 2.x's BrokerMetadata ``nodeId``."""
    found = getattr(broker, "node_id", None)
    return int(broker.nodeId if found is None else found)


def _tp(topic: str, partition: int) -> Any:
    from kafka import TopicPartition

    return TopicPartition(topic, partition)


def _consume_all(bootstrap: str, topic: str, expected: int, client_id: str = "") -> list[bytes]:
    """Every value of ``topic`` from the beginning, through confluent-kafka, until
    ``expected`` distinct values arrived (or 60 s passed)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id or "plain",
            "group.id": "g-" + uuid.uuid4().hex[:8],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(set(seen)) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(msg.value() or b"")
    finally:
        consumer.close()
    return seen


def _stats(cluster: StreamCluster) -> dict[int, dict[str, Any]]:
    return {s["agent_id"]: s for s in cluster.status()["agents"]}


class _Producer:
    """A confluent-kafka producer (acks=all, idempotent) sending unique values from a
    thread until stopped; remembers which values were acknowledged."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._topic = topic
        self.acked: dict[bytes, float] = {}
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked[msg.value()] = time.monotonic()
        else:
            self.failed.append(str(err))

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            value = f"{self._topic}-{n}".encode()
            self._producer.produce(self._topic, value=value, on_delivery=self._on_delivery)
            n += 1
            self._producer.poll(0.005)
        self._producer.flush(120)

    def acked_after(self, moment: float) -> int:
        return sum(1 for t in list(self.acked.values()) if t > moment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(150)


# ----------------------------------------------------------------------------- tests
def test_start_local_returns_once_every_node_has_a_serving_agent(stream):
    """As the counted cluster does: `ray-stream start --agents-per-node` prints and
    records the Kafka bootstrap list when start_local returns."""
    assert sorted(a.node for a in AT_START["agents"]) == sorted(_node_zones())
    assert all(a.port > 0 for a in AT_START["agents"])


def test_each_agent_takes_its_zone_from_its_node_resource(stream):
    zones = _node_zones()
    agents = _alive_agents(stream)
    assert {a.node for a in agents} == set(zones)  # one agent per alive node
    assert {a.agent_id: a.zone for a in agents} == {a.agent_id: zones[a.node] for a in agents}
    assert sorted(a.zone for a in agents) == ["a", "b"]
    totals = stream.status()["zones"]
    assert {zone: t["agents"] for zone, t in totals.items()} == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    ("client_id", "zone"),
    [
        ("ray_stream_az=a", "a"),
        ("ray_stream_az=b", "b"),
        ("app,warpstream_az=a", "a"),
        ("ray_stream_az=", None),  # an empty zone is no zone
        ("ray_stream_az=nowhere", None),  # an unknown zone is no zone
        ("==,ray_stream_az,a=", None),  # malformed pairs: no zone, not an error
    ],
)
def test_confluent_metadata_lists_only_the_agents_of_its_zone(stream, client_id, zone):
    topic = "cz-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 4)
    agents = _alive_agents(stream)
    expected = {a.agent_id for a in agents if zone is None or a.zone == zone}
    # Bootstrap through an agent of the *other* zone: the answer still names its own.
    other = [a for a in agents if a.zone != zone] or agents
    view = _confluent_view(_address(other[0]), client_id, topic)
    assert view["brokers"] == expected
    assert view["leaders"] == expected  # leadership spread over exactly those agents
    assert view["racks"] == {a.agent_id: a.zone for a in agents if a.agent_id in expected}


@pytest.mark.parametrize(
    ("client_id", "zone"),
    [("app,warpstream_az=b", "b"), ("ray_stream_az=a,other=1", "a"), ("app,warpstream_az", None)],
)
def test_kafka_python_metadata_lists_only_the_agents_of_its_zone(stream, client_id, zone):
    topic = "kz-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 4)
    agents = _alive_agents(stream)
    expected = {a.agent_id for a in agents if zone is None or a.zone == zone}
    view = _kafka_python_view(_bootstrap(agents), client_id, topic)
    assert view["brokers"] == expected
    assert view["leaders"] == expected  # leadership spread over exactly those agents
    assert view["racks"] == {a.agent_id: a.zone for a in agents if a.agent_id in expected}


def test_zone_aware_clients_produce_and_consume_through_their_zone_only(stream):
    from confluent_kafka import Producer
    from kafka import KafkaConsumer

    topic = "zpc-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 3)
    agents = _alive_agents(stream)
    zone_of = {a.agent_id: a.zone for a in agents}
    before = _stats(stream)
    producer = Producer(
        {"bootstrap.servers": _bootstrap(agents), "client.id": "ray_stream_az=a", "acks": "all"}
    )
    values = [f"v{i}".encode() for i in range(300)]
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=_bootstrap(agents).split(","),
        client_id="app,warpstream_az=b",
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
    )
    try:
        seen = []
        for record in consumer:
            seen.append(record.value)
            if len(seen) == len(values):
                break
    finally:
        consumer.close()
    assert sorted(seen) == sorted(values)
    after = _stats(stream)
    produced = {i: after[i]["batches_in"] - before[i]["batches_in"] for i in after}
    served = {i: after[i]["client_bytes"] - before[i]["client_bytes"] for i in after}
    assert {zone_of[i] for i, n in produced.items() if n} == {"a"}  # the producer's zone
    assert {zone_of[i] for i, n in served.items() if n} == {"b"}  # the consumer's zone
    assert all(s["cross_zone_bytes"] == 0 for s in after.values())


def test_python_clients_with_a_zone_talk_to_that_zones_agents(stream):
    topic = "pyz-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 2)
    zone_of = {a.agent_id: a.zone for a in _alive_agents(stream)}
    before = _stats(stream)
    with stream.producer(zone="b") as producer:
        futures = [producer.send(topic, f"p{i}".encode()) for i in range(50)]
        producer.flush(30)
        assert all(f.result(timeout=30) for f in futures)
    consumer = stream.consumer(zone="a")
    consumer.assign_topic(topic)
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        seen += [r.value for r in consumer.poll(1.0)]
    consumer.close()
    assert sorted(seen) == sorted(f"p{i}".encode() for i in range(50))
    after = _stats(stream)
    produced = {i for i in after if after[i]["batches_in"] > before[i]["batches_in"]}
    served = {i for i in after if after[i]["client_bytes"] > before[i]["client_bytes"]}
    assert {zone_of[i] for i in produced} == {"b"}
    assert {zone_of[i] for i in served} == {"a"}
    assert all(s["cross_zone_bytes"] == 0 for s in after.values())


def test_nodes_that_join_get_agents_that_serve_kafka_within_30s(stream, ray_nodes):
    """One node names its zone with a resource, the other with the node label."""
    topic = "join-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 2)
    before = {a.node for a in _alive_agents(stream)}
    joined_at, zone_of = {}, {}
    for zone, options in (
        ("a", {"resources": {"zone:a": 1}}),
        ("b", {"labels": {"ray.io/availability-zone": "b"}}),
    ):
        node = ray_nodes.add_node(num_cpus=1, **options)
        joined_at[node.node_id], zone_of[node.node_id] = time.monotonic(), zone
    serving_at: dict[str, float] = {}

    def all_serving() -> bool:
        for agent in _alive_agents(stream):
            if agent.node not in joined_at or agent.node in serving_at:
                continue
            # it answers Metadata itself, for a client of its zone, and lists itself
            view = _confluent_view(_address(agent), f"ray_stream_az={agent.zone}", topic)
            if agent.agent_id in view["brokers"]:
                serving_at[agent.node] = time.monotonic()
        return len(serving_at) == len(joined_at)

    wait_for(all_serving, timeout=JOIN_S, interval=0.5)
    waited = {zone_of[n]: round(serving_at[n] - joined_at[n], 1) for n in joined_at}
    print(f"joined nodes: agents serving after {waited} s")
    assert all(s <= JOIN_S for s in waited.values())
    fresh = [a for a in _alive_agents(stream) if a.node in joined_at]
    assert sorted((a.node, a.zone) for a in fresh) == sorted(zone_of.items())
    assert {a.node for a in _alive_agents(stream)} == before | set(joined_at)
    from confluent_kafka import Producer

    values = [f"new-{i}".encode() for i in range(100)]
    only_new = _bootstrap(fresh)
    producer = Producer({"bootstrap.servers": only_new, "acks": "all"})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    assert sorted(_consume_all(only_new, topic, len(values))) == sorted(values)
    rings = {a.agent_id: _stats(stream)[a.agent_id]["ring"] for a in _alive_agents(stream)}
    for agent in fresh:  # in its zone's cache ring, as every agent of that zone sees it
        zone_ids = sorted(a.agent_id for a in _alive_agents(stream) if a.zone == agent.zone)
        assert rings[agent.agent_id] == zone_ids


def test_an_agent_that_dies_for_good_is_replaced_on_its_node(stream):
    """Per-node mode keeps K agents on every alive node: one that Ray will not restart
    (killed with no_restart, or out of restarts) is replaced within 30 s."""
    victim = max(_alive_agents(stream), key=lambda a: a.agent_id)
    handle = handles.get_agent(stream.settings.namespace, victim.agent_id)
    old_pid = _pid(handle)
    assert old_pid is not None
    import ray

    ray.kill(handle, no_restart=True)

    def replaced() -> AgentRecord | None:
        for agent in _alive_agents(stream):
            if agent.node != victim.node:
                continue
            try:  # the registry lists the dead one until its lease runs out
                new = handles.get_agent(stream.settings.namespace, agent.agent_id)
            except Unavailable:
                continue
            if _pid(new) not in (None, old_pid):
                return agent
        return None

    agent = wait_for(replaced, timeout=JOIN_S, interval=0.5)
    assert agent.zone == victim.zone
    nodes = [a.node for a in _alive_agents(stream)]
    assert sorted(nodes) == sorted(set(nodes))  # still exactly one agent per node


def test_a_restarted_fleet_manager_keeps_following_the_nodes(stream, ray_nodes):
    """The fleet actor restarts on its own (max_restarts=-1); it must adopt the running
    agents and go on placing agents on nodes that join."""
    import ray

    fleet = handles.get_fleet(stream.settings.namespace)
    old_pid = _pid(fleet)
    agents_before = {a.agent_id for a in _alive_agents(stream)}
    ray.kill(fleet, no_restart=False)
    wait_for(lambda: _pid(fleet) not in (None, old_pid), timeout=60, interval=0.5)
    assert {a.agent_id for a in _alive_agents(stream)} == agents_before  # adopted, kept
    node = ray_nodes.add_node(num_cpus=1, resources={"zone:b": 1})
    joined_at = time.monotonic()
    agent = wait_for(
        lambda: next((a for a in _alive_agents(stream) if a.node == node.node_id), None),
        timeout=JOIN_S,
        interval=0.5,
    )
    print(f"after a fleet restart: agent on a new node {time.monotonic() - joined_at:.1f}s")
    assert agent.zone == "b"
    assert handles.get(fleet.status.remote())["agents"] == len(_alive_agents(stream))


def test_a_node_that_leaves_takes_its_agent_and_loses_nothing_acknowledged(stream, ray_nodes):
    topic = "leave-" + uuid.uuid4().hex[:8]
    stream.create_topic(topic, 4)
    pinned = {actor_call(stream.metadata, "node_id"), actor_call(stream._fleet_handle(), "node_id")}
    if not [n for n in ray_nodes.worker_nodes if n.node_id not in pinned]:
        ray_nodes.add_node(num_cpus=1, resources={"zone:b": 1})
        wait_for(lambda: len(_alive_agents(stream)) == len(ray_nodes.list_all_nodes()), JOIN_S)
    agents = _alive_agents(stream)
    zones = [a.zone for a in agents]
    candidates = [n for n in ray_nodes.worker_nodes if n.node_id not in pinned]
    # Prefer a node whose zone keeps another agent: that agent's ring must then drop it.
    (gone, victim) = max(
        ((a, n) for n in candidates for a in agents if a.node == n.node_id),
        key=lambda pair: (zones.count(pair[0].zone), pair[0].agent_id),
    )
    survivors = [a for a in agents if a.agent_id != gone.agent_id]
    writer = _Producer(_bootstrap(agents), topic)
    try:
        wait_for(lambda: len(writer.acked) >= 300, timeout=60)
        removed_at = time.monotonic()
        ray_nodes.remove_node(victim)
        wait_for(
            lambda: gone.agent_id not in {a.agent_id for a in _alive_agents(stream)},
            timeout=JOIN_S,
        )
        left_s = time.monotonic() - removed_at
        back_at = time.monotonic()
        wait_for(lambda: writer.acked_after(back_at) >= 300, timeout=60)
    finally:
        writer.stop()
    print(f"node removal: agent-{gone.agent_id} left the fleet {left_s:.1f}s later")
    assert writer.failed == []  # the producer carried on: every send was delivered
    view = _confluent_view(_bootstrap(survivors), "plain", topic)
    assert view["brokers"] == {a.agent_id for a in survivors}
    seen = _consume_all(_bootstrap(survivors), topic, len(writer.acked))
    missing = set(writer.acked) - set(seen)
    assert not missing, f"{len(missing)} acknowledged values lost, e.g. {sorted(missing)[:3]}"
    ring_zone = [a for a in survivors if a.zone == gone.zone]
    for agent in ring_zone:  # the zone's cache ring no longer has the departed agent
        wait_for(
            lambda agent=agent: gone.agent_id not in _stats(stream)[agent.agent_id]["ring"],
            timeout=JOIN_S,
        )
