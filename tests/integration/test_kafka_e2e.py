"""Real Kafka clients against real agents on a real local Ray (2 agents).

The wire-level tests in tests/unit run against the agent core in-process; this module
re-runs the client-facing ones against ``start_local`` (AgentActors writing Arrow
segments to a local directory, the metadata actor reached through the agents' own Ray
adapter), plus checks that only the Ray path can answer.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import ray_stream
from ray_stream.actors import handles
from ray_stream.actors.metadata_client import RayMetadataClient
from ray_stream.kafka.records import parse_batch_header, split_batches, verify_crc
from tests.unit.test_kafka_groups import (  # noqa: F401  (re-run against real agents)
    test_groups_admin_lists_describes_and_deletes_a_group,
    test_groups_aiokafka_group_consumer,
    test_groups_kafka_python_range_group_of_two,
    test_groups_three_consumers_share_six_partitions_through_leave_join_and_restart,
)
from tests.unit.test_kafka_server import (  # noqa: F401
    test_server_aiokafka_idempotent_produce_and_assigned_consume,
    test_server_answers_pipelined_requests_in_order_despite_a_long_poll,
    test_server_closes_only_the_offending_connection,
    test_server_confluent_acks_zero,
    test_server_confluent_admin_creates_lists_and_deletes,
    test_server_confluent_idempotent_producer,
    test_server_kafka_python_admin,
    test_server_kafka_python_default_producer_and_assigned_consumer,
    test_server_survives_a_truncated_frame_and_client_disconnects,
    test_server_unserved_api_versions_version_gets_v0_error_and_connection_stays,
    topic,
)

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")


class RayKafkaCluster:
    """The shape the wire tests expect (bootstrap, ports, meta, run) over start_local.

    ``meta`` is the agents' own ``RayMetadataClient``: the tests call the metadata actor
    the way agents do.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.bootstrap = cluster.bootstrap_servers
        self.ports = [b.port for b in cluster.brokers()]
        self.meta = RayMetadataClient(
            namespace=cluster.settings.namespace, retry_s=0, handle=cluster.metadata
        )

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def fetches_seen(self, index: int) -> int:
        return int(handles.get(self.cluster.agent(index).stats.remote())["fetches"])

    @property
    def produce_calls(self) -> list[Any]:
        """What the agents stored, in the shape of the unit cluster's produce log."""
        entries = []
        for info in self.cluster.list_topics():
            for p in range(info.partitions):
                fetch = self.cluster.agent(0).fetch.remote([(info.name, p, 0, 64 << 20)], 0)
                (result,) = handles.get(fetch)
                entries += [(info.name, p, b) for b in split_batches(result.records)]
        return [[(entries, -1)]]


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory):
    real = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("kafka-e2e")),
        namespace="kafka-" + uuid.uuid4().hex[:8],
        kafka_port=-1,
        agents=2,
        linger_ms=20,
    )
    yield RayKafkaCluster(real)
    real.shutdown()


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_and_served_byte_exact(cluster, codec):
    from confluent_kafka import Consumer, Producer, TopicPartition

    name = "c" + uuid.uuid4().hex[:8]
    cluster.cluster.create_topic(name, 1)
    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "compression.type": codec,
            "linger.ms": 50,
            "acks": "all",
        }
    )
    values = [f"{codec}-{i}-".encode() * 20 for i in range(300)]
    for v in values:
        producer.produce(name, value=v, partition=0)
    assert producer.flush(30) == 0
    # The stored batches keep the producer's codec and a valid CRC.
    (result,) = handles.get(cluster.cluster.agent(0).fetch.remote([(name, 0, 0, 8 << 20)], 0))
    batches = split_batches(result.records)
    expected_code = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
    assert batches and all(verify_crc(b) for b in batches)
    assert {parse_batch_header(b).compression for b in batches} <= {expected_code, 0}
    if codec != "none":
        assert expected_code in {parse_batch_header(b).compression for b in batches}
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": "c-" + name,
            "check.crcs": True,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(name, 0, 0)])
    got = []
    while len(got) < len(values):
        msg = consumer.poll(10)
        assert msg is not None, f"stalled after {len(got)}"
        assert msg.error() is None, msg.error()
        got.append(msg.value())
    consumer.close()
    assert got == values


def test_kafka_and_python_api_see_the_same_log(cluster):
    from confluent_kafka import Producer

    name = "x" + uuid.uuid4().hex[:8]
    cluster.cluster.create_topic(name, 3)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(100):
        producer.produce(name, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0
    with cluster.cluster.producer() as py_producer:
        metas = [
            py_producer.send(name, f"v{i}".encode(), key=f"k{i}".encode()).result()
            for i in range(100, 110)
        ]
    table = cluster.cluster.read_table(name)
    assert table.num_rows == 110
    # librdkafka's default partitioner for keyed records is murmur2-compatible only with
    # partitioner=murmur2_random; the Python API uses Kafka's Java default (murmur2).
    assert {m.partition for m in metas} <= {0, 1, 2}


def test_idempotent_retry_over_the_wire_is_stored_once(cluster, topic):
    from ray_stream.kafka.records import Record, encode_batch
    from ray_stream.kafka.versions import ApiKey
    from tests.fakes import RawClient, decode_response, encode_request

    identity = cluster.run(cluster.meta.init_producer_id(None))
    pid, epoch = identity.producer_id, identity.epoch
    records = encode_batch(
        [Record(b"once")], now_ms=1, producer_id=pid, producer_epoch=epoch, base_sequence=0
    )
    produce = {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 1, "records": records}]}],
    }
    client = RawClient(cluster.ports[1])
    client.send(encode_request(ApiKey.PRODUCE, 9, produce, correlation_id=1))
    client.send(encode_request(ApiKey.PRODUCE, 9, produce, correlation_id=2))  # a retry
    answers = [decode_response(ApiKey.PRODUCE, 9, client.read_frame())[1] for _ in range(2)]
    client.close()
    parts = [a.responses[0].partition_responses[0] for a in answers]
    assert [(p.error_code, p.base_offset) for p in parts] == [(0, 0), (0, 0)]
    table = cluster.cluster.read_table(topic, partitions=[1])
    assert table["value"].to_pylist() == [b"once"]
