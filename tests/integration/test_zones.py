"""Zones on the embedded cluster (the session's Ray): the shared chunk cache and agent loss.

Issue 9, "How we will know": GETs counted *at the store* for a cold read through 3
agents of one zone equal those through 1 agent; two zones cost one GET per chunk per
zone; killing an agent mid-consume loses nothing for a Kafka consumer.

S3 is moto's server behind a counting reverse proxy on 127.0.0.1 (``_CountingS3``),
which records every ranged GET of a segment object by key. A read is *cold* when no
reading agent wrote the data (the writer caches what it PUTs): the data is written by
one cluster, which is shut down, and read by a fresh one started on the same data
directory and object store.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import ray_stream
from ray_stream.agent.chunk_cache import CHUNK_BYTES
from ray_stream.client.cluster import Cluster as StreamCluster
from ray_stream.kafka.records import parse_batch_header, split_batches
from ray_stream.storage.url import open_store
from ray_stream.testing.nemesis import actor_call
from tests.fixtures_ray import wait_for
from tests.fixtures_s3 import TEST_BUCKET

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
confluent_kafka = pytest.importorskip("confluent_kafka")

TOPIC = "cold"
PARTITIONS = 3
ROUNDS = 6  # producer flushes while writing: about one segment each


# ------------------------------------------------------------------ a counting S3
class _CountingS3:
    """A reverse proxy in front of an S3 endpoint that counts GETs of each object key.

    Requests are forwarded unchanged (the client's ``Host`` header is kept, so SigV4
    still matches); ``segment_gets()`` are the GETs of ``segments/`` keys since the last
    ``reset()``.
    """

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        host = target.hostname or "127.0.0.1"
        counter = self
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(host, target.port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True)
                    for key, value in self.headers.items():
                        if key.lower() not in ("connection", "expect", "content-length"):
                            conn.putheader(key, value)
                    if body is not None:
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if self.command == "GET":
                    counter.count(unquote(urlsplit(self.path).path))
                self.send_response_only(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                size = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
                if size is not None:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def count(self, path: str) -> None:
        with self._lock:
            self.gets[path] += 1

    def reset(self) -> None:
        with self._lock:
            self.gets.clear()

    def segment_gets(self) -> Counter[str]:
        with self._lock:
            return Counter(
                {p.rsplit("/segments/", 1)[1]: n for p, n in self.gets.items() if "/segments/" in p}
            )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def counting_s3(s3_endpoint) -> Iterator[_CountingS3]:
    proxy = _CountingS3(s3_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def written(ray_session, counting_s3, tmp_path_factory) -> dict[str, Any]:
    """A topic written by a one-agent cluster that is then shut down: what a later
    cluster on the same storage reads cold. Returns its storage, segments and values."""
    prefix = "zones-" + uuid.uuid4().hex[:8]
    store_url = f"s3://{TEST_BUCKET}/{prefix}?endpoint_url={counting_s3.endpoint}&region=us-east-1"
    data_dir = str(tmp_path_factory.mktemp("zones"))
    cluster = _start(data_dir, store_url, agents=1, zones=["a"])
    values = []
    try:
        cluster.create_topic(TOPIC, PARTITIONS)
        producer = cluster.producer(agent=0, linger_ms=5)
        for r in range(ROUNDS):
            batch = [f"r{r}-{i}-".encode() + b"x" * 400 for i in range(150)]
            futures = [
                producer.send(TOPIC, v, partition=i % PARTITIONS) for i, v in enumerate(batch)
            ]
            producer.flush(60)
            assert all(f.result(timeout=60) for f in futures)
            values += batch
        producer.close(30)
    finally:
        cluster.shutdown()
    store = open_store(store_url)
    segments = {key: store.size(key) for key in store.list("segments/")}
    store.close()
    assert len(segments) >= ROUNDS // 2  # several objects, so counts can differ
    return {"data_dir": data_dir, "store": store_url, "segments": segments, "values": values}


def _start(data_dir: str, store_url: str, **options: Any) -> StreamCluster:
    return ray_stream.start_local(
        data_dir=data_dir,
        object_store=store_url,
        kafka_port=0,
        linger_ms=5,
        namespace="zones-" + uuid.uuid4().hex[:8],
        **options,
    )


def _chunks(segments: dict[str, int]) -> Counter[str]:
    """Chunks per segment object (segment keys as the proxy sees them)."""
    return Counter({k.split("/", 1)[1]: -(-size // CHUNK_BYTES) for k, size in segments.items()})


def _wait_for_rings(cluster: StreamCluster, agents: int) -> None:
    """Until every agent's cache ring is its whole zone (fleet views have converged)."""
    wait_for(lambda: len(cluster.fleet(refresh=True).agents) == agents, timeout=60)
    zones = {a.agent_id: a.zone for a in cluster.fleet().agents}

    def settled() -> bool:
        stats = {s["agent_id"]: s for s in cluster.status()["agents"]}
        return all(
            stats[i]["ring"] == sorted(j for j in zones if zones[j] == zone)
            for i, zone in zones.items()
        )

    wait_for(settled, timeout=30, interval=0.2)


def _read_everything(cluster: StreamCluster, agent_ids: list[int]) -> dict[int, list[bytes]]:
    """Every record of TOPIC read through each agent at once, by agent."""
    import ray

    refs = {
        i: cluster.agent_by_id(i).fetch.remote(
            [(TOPIC, p, 0, 64 << 20) for p in range(PARTITIONS)], 0, 1, 256 << 20
        )
        for i in agent_ids
    }
    read = {}
    for i, ref in refs.items():
        results = ray.get(ref, timeout=120)
        assert all(r.error is None for r in results), [r.error for r in results]
        read[i] = [b for r in results for b in _values(r.records)]
    return read


def _values(records: bytes) -> list[bytes]:
    from ray_stream.kafka.records import decode_batch

    out = []
    for batch in split_batches(records):
        assert parse_batch_header(batch).record_count >= 1
        out += [r.value or b"" for r in decode_batch(batch)]
    return out


def _fleet_ids(cluster: StreamCluster) -> set[int]:
    return {a.agent_id for a in cluster.fleet(refresh=True).agents}


def _agent_stats(cluster: StreamCluster) -> list[dict[str, Any]]:
    return cluster.status()["agents"]


# ----------------------------------------------------------------------------- tests
def test_cold_read_through_three_agents_of_a_zone_costs_the_gets_of_one(written, counting_s3):
    chunks = _chunks(written["segments"])
    costs, stats = {}, {}
    for agents in (1, 3):  # each on a fresh cluster: no reading agent has the data
        cluster = _start(written["data_dir"], written["store"], agents=agents, zones=["a"])
        try:
            _wait_for_rings(cluster, agents)
            counting_s3.reset()
            read = _read_everything(cluster, list(range(agents)))
            costs[agents] = counting_s3.segment_gets()
            stats[agents] = _agent_stats(cluster)
        finally:
            cluster.shutdown()
        for values in read.values():  # each agent served the whole topic
            assert sorted(values) == sorted(written["values"])
    assert costs[1] == chunks  # one GET per chunk, however many partitions it holds
    assert costs[3] == costs[1]  # the shared cache: 3 agents cost what 1 does
    for agents in (1, 3):  # the agents count what the store saw
        assert sum(s["gets"] for s in stats[agents]) == sum(costs[agents].values())
    peer = sum(s["peer_chunks"] for s in stats[3])
    assert peer == 2 * sum(chunks.values())  # the two non-owners got each chunk from its owner
    assert peer == sum(s["served_chunks"] for s in stats[3])
    assert sum(s["peer_failures"] for s in stats[3]) == 0


def test_cold_read_in_two_zones_costs_one_get_per_chunk_per_zone(written, counting_s3):
    chunks = _chunks(written["segments"])
    cluster = _start(written["data_dir"], written["store"], agents=4, zones=["a", "b"])
    try:
        _wait_for_rings(cluster, 4)
        assert {a.agent_id: a.zone for a in cluster.fleet().agents} == {
            0: "a",
            1: "b",
            2: "a",
            3: "b",
        }
        counting_s3.reset()
        read = _read_everything(cluster, [0, 1, 2, 3])
        gets = counting_s3.segment_gets()
        totals = cluster.status()["zones"]
    finally:
        cluster.shutdown()
    for values in read.values():
        assert sorted(values) == sorted(written["values"])
    assert gets == Counter({key: 2 * n for key, n in chunks.items()})
    for zone in ("a", "b"):
        assert totals[zone]["agents"] == 2
        assert totals[zone]["gets"] == sum(chunks.values())  # one GET per chunk per zone
        # chunks crossed between agents of the zone only: each one served is one fetched
        assert totals[zone]["served_chunks"] == totals[zone]["peer_chunks"]
        assert totals[zone]["peer_chunks"] == sum(chunks.values())


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "stays-dead"])
def test_killing_an_agent_mid_consume_loses_nothing_for_a_kafka_consumer(
    ray_session, tmp_path, restart
):
    """A restarted agent serves again; one killed for good leaves the fleet (its
    partitions' leadership moves to the other agents of the zone) and the fleet manager
    puts a new agent in its place."""
    from confluent_kafka import Consumer, Producer

    cluster = ray_stream.start_local(
        data_dir=str(tmp_path / "kill"),
        agents=3,
        zones=["a"],
        kafka_port=-1,
        linger_ms=5,
        namespace="zkill-" + uuid.uuid4().hex[:8],
    )
    try:
        topic = "kill-" + uuid.uuid4().hex[:6]
        cluster.create_topic(topic, 3)
        bootstrap = cluster.bootstrap_servers
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "ray_stream_az=a",
                "acks": "all",
                "batch.num.messages": 20,
                "linger.ms": 2,
            }
        )
        values = [f"m{i}-".encode() + b"y" * 200 for i in range(3000)]
        for value in values:
            producer.produce(topic, value=value)
            producer.poll(0)
        assert producer.flush(60) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "app,ray_stream_az=a",
                "group.id": "g-" + topic,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                # small fetches and a small local queue (~250 records): most of the
                # topic is still to be fetched when the agent dies
                "message.max.bytes": 8192,
                "fetch.max.bytes": 8192,
                "max.partition.fetch.bytes": 4096,
                "queued.max.messages.kbytes": 64,
            }
        )
        consumer.subscribe([topic])
        seen: list[bytes] = []
        killed, killed_pid, killed_at_count = None, None, 0
        deadline = time.monotonic() + 120
        while len(set(seen)) < len(values) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(msg.value() or b"")
            if killed is None and len(seen) >= len(values) // 3:
                # the agent leading partition 0 dies (the consumer is reading from it)
                meta = consumer.list_topics(topic, timeout=10)
                killed = meta.topics[topic].partitions[0].leader
                handle = cluster.agent_by_id(killed)
                killed_pid = actor_call(handle, "pid")
                ray_session.kill(handle, no_restart=not restart)
                killed_at_count = len(set(seen))
        consumer.close()
        assert killed is not None

        def replaced() -> bool:  # restarted by Ray, or re-created by the fleet manager
            try:
                return actor_call(cluster.agent_by_id(killed), "pid") != killed_pid
            except Exception:
                return False

        wait_for(replaced, timeout=60)
        wait_for(lambda: sorted(_fleet_ids(cluster)) == [0, 1, 2], timeout=30)
        fleet = _fleet_ids(cluster)
        stats = cluster.status()["agents"]
    finally:
        cluster.shutdown()
    print(f"killed agent-{killed} after {killed_at_count} of {len(values)} records")
    assert killed_at_count <= len(values) // 2  # it died mid-consume
    missing = set(values) - set(seen)
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:3]}"
    assert killed in fleet
    # the zone's cache ring is the live agents: a dead agent's chunks moved to the others
    assert all(s["ring"] == sorted(fleet) for s in stats)
    assert all(s["cross_zone_bytes"] == 0 for s in stats)
