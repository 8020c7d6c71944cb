"""The Kafka listener over real TCP on 127.0.0.1 with real client libraries.

No Ray: the real agent core (``LogService``) over a ``MemoryStore`` and the real
``MetadataService`` (``tests/fakes.py``) runs in a background thread's event loop;
confluent-kafka (librdkafka), kafka-python and aiokafka connect to it. Also raw-socket
tests for ordering and bad input.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.kafka.records import parse_batch_header, split_batches
from ray_stream.kafka.versions import ApiKey
from tests.fakes import KafkaTestCluster, RawClient, decode_response, encode_request

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[KafkaTestCluster]:
    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("kafka-server")), max_request_bytes=16 * 1024 * 1024
    )
    with KafkaTestCluster(settings, agents=2) as running:
        yield running


@pytest.fixture
def topic(cluster) -> str:
    name = "t" + uuid.uuid4().hex[:10]
    cluster.run(cluster.meta.create_topic(name, 3))
    return name


def _all_batches(cluster: KafkaTestCluster, topic: str) -> list[bytes]:
    """Every batch the agents were given for ``topic`` (as the handlers passed it on)."""
    return [
        b
        for agent_calls in cluster.produce_calls
        for entries, _ in agent_calls
        for t, _, b in entries
        if t == topic
    ]


async def _latest(meta: Any, topic: str, partition: int) -> int:
    """The partition's high watermark (ListOffsets "latest")."""
    (answer,) = await meta.list_offsets([(topic, partition, -1)])
    assert answer.error is None
    return int(answer.offset)


def _consume_confluent(bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "check.crcs": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got.append(message)
    finally:
        consumer.close()
    return got


# ------------------------------------------------------------------ confluent-kafka
@pytest.mark.parametrize("codec", list(CODECS))
def test_server_confluent_round_trips_every_codec_byte_exact(cluster, topic, codec):
    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "compression.type": codec,
            "linger.ms": 5,
            "acks": "all",
        }
    )
    sent = {}
    for i in range(60):
        value = (b"%04d-" % i) + bytes(range(256)) * (i % 3)
        sent[(i % 3, i // 3)] = value
        producer.produce(topic, value=value, key=b"k%d" % i, partition=i % 3)
    assert producer.flush(20) == 0
    got = _consume_confluent(cluster.bootstrap, topic, 3, 60)
    assert {(m.partition(), m.offset()): m.value() for m in got} == sent
    codes = {parse_batch_header(b).compression for b in _all_batches(cluster, topic)}
    assert codes == {CODECS[codec]}  # the producer's batches were stored untouched


def test_server_confluent_idempotent_producer(cluster, topic):
    producer = Producer(
        {"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True, "linger.ms": 2}
    )
    for i in range(200):
        producer.produce(topic, value=b"%d" % i, partition=0)
    assert producer.flush(20) == 0
    batches = _all_batches(cluster, topic)
    assert all(parse_batch_header(b).producer_id >= 0 for b in batches)
    assert cluster.run(_latest(cluster.meta, topic, 0)) == 200


def test_server_confluent_admin_creates_lists_and_deletes(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    name = "adm" + uuid.uuid4().hex[:8]
    for future in admin.create_topics([NewTopic(name, 4, 1)]).values():
        assert future.result(10) is None
    listed = admin.list_topics(timeout=10).topics
    assert len(listed[name].partitions) == 4
    assert {p.leader for p in listed[name].partitions.values()} == {0, 1}  # spread over both agents
    for future in admin.delete_topics([name]).values():
        assert future.result(10) is None
    assert name not in admin.list_topics(timeout=10).topics


# -------------------------------------------------------------------- kafka-python
def test_server_kafka_python_default_producer_and_assigned_consumer(cluster, topic):
    import kafka

    producer = kafka.KafkaProducer(bootstrap_servers=cluster.bootstrap, compression_type="gzip")
    futures = [producer.send(topic, value=b"kp%d" % i, partition=i % 3) for i in range(30)]
    producer.flush(10)
    assert sorted(f.get(10).offset for f in futures if f.get(10).partition == 0) == list(range(10))
    producer.close()
    # kafka-python 3 enables idempotence by default: it needed InitProducerId.
    assert all(parse_batch_header(b).producer_id >= 0 for b in _all_batches(cluster, topic))

    consumer = kafka.KafkaConsumer(
        bootstrap_servers=cluster.bootstrap, check_crcs=True, fetch_max_wait_ms=100
    )
    consumer.assign([kafka.TopicPartition(topic, p) for p in range(3)])
    consumer.seek_to_beginning()
    got: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 20
    while len(got) < 30 and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got.update({(r.partition, r.offset): r.value for r in records})
    consumer.close()
    assert sorted(got.values()) == sorted(b"kp%d" % i for i in range(30))


def test_server_kafka_python_admin(cluster):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewPartitions
    from kafka.admin import NewTopic as KNewTopic

    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    name = "kpa" + uuid.uuid4().hex[:8]
    admin.create_topics([KNewTopic(name, 2, 1, topic_configs={"retention.ms": "1000"})])
    assert name in admin.list_topics()
    admin.create_partitions({name: NewPartitions(5)})
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    assert "retention.ms" in str(configs)
    admin.delete_topics([name])
    assert name not in admin.list_topics()
    admin.close()
    info = cluster.run(cluster.meta.list_topics())
    assert name not in [t.name for t in info]


# ------------------------------------------------------------------------- aiokafka
def test_server_aiokafka_idempotent_produce_and_assigned_consume(cluster, topic):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin import NewTopic as ANewTopic
    from aiokafka.structs import TopicPartition as ATopicPartition

    async def scenario() -> tuple[list[Any], list[str], list[str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        extra = "aio" + uuid.uuid4().hex[:8]
        await admin.create_topics([ANewTopic(extra, 2, 1)])
        listed = await admin.list_topics()
        await admin.delete_topics([extra])
        after = await admin.list_topics()
        await admin.close()

        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, enable_idempotence=True, compression_type="gzip"
        )
        await producer.start()
        for i in range(20):
            await producer.send_and_wait(topic, b"aio%d" % i, partition=i % 3)
        await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cluster.bootstrap,
            check_crcs=True,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        consumer.assign([ATopicPartition(topic, p) for p in range(3)])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += records
        await consumer.stop()
        return got, [extra] if extra in listed else [], [extra] if extra in after else []

    got, created, left_over = asyncio.run(scenario())
    assert sorted(r.value for r in got) == sorted(b"aio%d" % i for i in range(20))
    assert created
    assert not left_over


# --------------------------------------------------------------------------- raw wire
def _api_versions(correlation_id: int, version: int = 3) -> bytes:
    return encode_request(
        ApiKey.API_VERSIONS,
        version,
        {"client_software_name": "raw", "client_software_version": "1"},
        correlation_id=correlation_id,
    )


def _assert_server_healthy(cluster: KafkaTestCluster) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    assert admin.list_topics(timeout=10).brokers.keys() == {0, 1}
    client = RawClient(cluster.ports[0])
    client.send(_api_versions(1))
    frame = client.read_frame()
    assert frame is not None
    assert decode_response(ApiKey.API_VERSIONS, 3, frame)[1].error_code == 0
    client.close()


def test_server_answers_pipelined_requests_in_order_despite_a_long_poll(cluster, topic):
    from ray_stream.kafka.records import Record, decode_batch, encode_batch

    fetch = encode_request(
        ApiKey.FETCH,
        11,
        {
            "replica_id": -1,
            "max_wait": 600_000,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "isolation_level": 0,
            "session_id": 0,
            "session_epoch": -1,
            "rack_id": "",
            "forgotten_topics_data": [],
            "topics": [
                {
                    "topic": topic,
                    "partitions": [
                        {
                            "partition": 0,
                            "current_leader_epoch": -1,
                            "fetch_offset": 0,
                            "log_start_offset": -1,
                            "partition_max_bytes": 1 << 20,
                        }
                    ],
                }
            ],
        },
        correlation_id=10,
    )
    before = cluster.fetches_seen(1)
    client = RawClient(cluster.ports[1])  # its read timeout (10 s) bounds the long poll
    client.send(fetch)
    deadline = time.monotonic() + 10
    while cluster.fetches_seen(1) == before:
        assert time.monotonic() < deadline, "the fetch never reached the agent"
        time.sleep(0.01)
    # The fetch is long-polling (nothing to read yet); pipeline two quick requests
    # behind it, then make the data it waits for appear through the other agent.
    client.send(_api_versions(11) + _api_versions(12, version=0))
    producer = RawClient(cluster.ports[0])
    produce = {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [
            {
                "name": topic,
                "partition_data": [
                    {"index": 0, "records": encode_batch([Record(b"wake")], now_ms=1)}
                ],
            }
        ],
    }
    producer.send(encode_request(ApiKey.PRODUCE, 9, produce, correlation_id=20))
    acked = decode_response(ApiKey.PRODUCE, 9, producer.read_frame())[1]
    producer.close()
    assert acked.responses[0].partition_responses[0].error_code == 0
    first, second, third = (client.read_frame() for _ in range(3))
    client.close()
    correlation_id, fetched = decode_response(ApiKey.FETCH, 11, first)
    assert correlation_id == 10  # the long poll's answer went first, as it was asked first
    part = fetched.responses[0].partitions[0]
    assert (part.error_code, part.high_watermark) == (0, 1)
    assert [r.value for r in decode_batch(part.records)] == [b"wake"]  # woken by the commit
    assert decode_response(ApiKey.API_VERSIONS, 3, second)[0] == 11
    assert decode_response(ApiKey.API_VERSIONS, 0, third)[0] == 12


def test_server_unserved_api_versions_version_gets_v0_error_and_connection_stays(cluster):
    client = RawClient(cluster.ports[0])
    header = (18).to_bytes(2, "big") + (42).to_bytes(2, "big") + (7).to_bytes(4, "big")
    client.send(len(header + b"\x00\x00future").to_bytes(4, "big") + header + b"\x00\x00future")
    correlation_id, body = decode_response(ApiKey.API_VERSIONS, 0, client.read_frame())
    assert (correlation_id, body.error_code) == (7, ErrorCode.unsupported_version)
    assert any(k.api_key == ApiKey.FETCH for k in body.api_keys)
    client.send(_api_versions(8))  # the client retries with a served version
    assert decode_response(ApiKey.API_VERSIONS, 3, client.read_frame())[0] == 8
    client.close()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="garbage"),
        pytest.param((200 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 16, id="oversized-prefix"),
        pytest.param(b"\xff\xff\xff\xf0", id="negative-prefix"),
        pytest.param(
            (12).to_bytes(4, "big") + (4242).to_bytes(2, "big") + b"\x00" * 10, id="unknown-api-key"
        ),
        pytest.param(
            (12).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + b"\x00" * 8,
            id="unserved-produce-version",
        ),
        pytest.param(
            (20).to_bytes(4, "big")
            + (3).to_bytes(2, "big")
            + (12).to_bytes(2, "big")
            + b"\x01" * 16,
            id="undecodable-body",
        ),
    ],
)
def test_server_closes_only_the_offending_connection(cluster, payload):
    bystander = RawClient(cluster.ports[0])
    bad = RawClient(cluster.ports[0])
    bad.send(_api_versions(1))
    assert bad.read_frame() is not None  # answers due before the bad input still come
    bad.send(payload)
    assert bad.is_closed_by_server()
    bad.close()
    bystander.send(_api_versions(2))
    assert decode_response(ApiKey.API_VERSIONS, 3, bystander.read_frame())[0] == 2
    bystander.close()
    _assert_server_healthy(cluster)


def test_server_survives_a_truncated_frame_and_client_disconnects(cluster):
    for cut in (2, 6, 20):
        client = RawClient(cluster.ports[1])
        client.send(_api_versions(1)[:cut])
        client.close()
    _assert_server_healthy(cluster)


def test_server_idempotent_retry_over_the_wire_does_not_duplicate(cluster, topic):
    from ray_stream.kafka.records import Record, encode_batch

    identity = cluster.run(cluster.meta.init_producer_id(None))
    records = encode_batch(
        [Record(b"once")],
        now_ms=1,
        producer_id=identity.producer_id,
        producer_epoch=identity.epoch,
        base_sequence=0,
    )
    produce = {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 1, "records": records}]}],
    }
    client = RawClient(cluster.ports[0])
    client.send(encode_request(ApiKey.PRODUCE, 9, produce, correlation_id=1))
    client.send(encode_request(ApiKey.PRODUCE, 9, produce, correlation_id=2))  # a retry
    answers = [decode_response(ApiKey.PRODUCE, 9, client.read_frame())[1] for _ in range(2)]
    client.close()
    parts = [a.responses[0].partition_responses[0] for a in answers]
    assert [(p.error_code, p.base_offset) for p in parts] == [(0, 0), (0, 0)]
    assert cluster.run(_latest(cluster.meta, topic, 1)) == 1
    assert len(split_batches(b"".join(_all_batches(cluster, topic)))) == 2  # both reached the agent


def test_server_acks_zero_produce_survives_an_immediate_disconnect(cluster, topic):
    from ray_stream.kafka.records import Record, encode_batch

    records = encode_batch([Record(b"fire-and-forget")], now_ms=1)
    produce = {
        "transactional_id": None,
        "acks": 0,
        "timeout": 5000,
        "topic_data": [{"name": topic, "partition_data": [{"index": 2, "records": records}]}],
    }
    client = RawClient(cluster.ports[0])
    client.send(encode_request(ApiKey.PRODUCE, 7, produce, correlation_id=1))
    client.close()  # no response is due; the write must still happen
    deadline = time.monotonic() + 10
    while cluster.run(_latest(cluster.meta, topic, 2)) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_server_confluent_acks_zero(cluster, topic):
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": 0, "linger.ms": 2})
    for i in range(50):
        producer.produce(topic, value=b"a0-%d" % i, partition=1)
    assert producer.flush(20) == 0
    got = _consume_confluent(cluster.bootstrap, topic, 3, 50)
    assert sorted(m.value() for m in got) == sorted(b"a0-%d" % i for i in range(50))


class _SinkWriter:
    """Stands in for a StreamWriter: collects what the server writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport = self

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


def test_server_produce_that_arrives_together_with_eof_still_runs(tmp_path):
    """Bytes and EOF in one read: the handler task has not started when EOF is seen."""
    from ray_stream.core.types import BrokerInfo
    from ray_stream.kafka.handlers import KafkaHandlers
    from ray_stream.kafka.records import Record, encode_batch
    from ray_stream.server.kafka_server import _Connection
    from ray_stream.storage.memory import MemoryStore
    from tests.fakes import make_agent, make_meta, record_calls

    settings = Settings(data_dir=str(tmp_path))

    async def scenario() -> tuple[int, int]:
        store = MemoryStore()
        meta = make_meta(settings, store=store)
        backend = make_agent(settings, meta, store)
        backend.address = BrokerInfo(0, "127.0.0.1", 9092)
        produced, _ = record_calls(backend)
        await meta.create_topic("t", 1)
        produce = {
            "transactional_id": None,
            "acks": 0,
            "timeout": 5000,
            "topic_data": [
                {
                    "name": "t",
                    "partition_data": [
                        {"index": 0, "records": encode_batch([Record(b"x")], now_ms=1)}
                    ],
                }
            ],
        }
        reader = asyncio.StreamReader()
        reader.feed_data(encode_request(ApiKey.PRODUCE, 7, produce) + _api_versions(2))
        reader.feed_eof()
        sink = _SinkWriter()
        connection = _Connection(KafkaHandlers(backend), reader, sink, max_frame_bytes=1 << 20)  # type: ignore[arg-type]
        await connection.run()
        for _ in range(1000):  # the produce task runs on after the connection ended
            if produced:
                break
            await asyncio.sleep(0)
        await backend.drain()  # acks=0 was answered at buffering: wait for its flush
        latest = await _latest(meta, "t", 0)
        await meta.close()
        return latest, len(sink.data)

    latest, written = asyncio.run(scenario())
    assert latest == 1  # the acks=0 produce was not cancelled with the connection
    assert written == 0  # the client left: the ApiVersions answer was dropped, not sent


def test_server_bounds_the_request_bytes_in_flight_per_connection(tmp_path, monkeypatch):
    from ray_stream.core.types import BrokerInfo
    from ray_stream.kafka.handlers import KafkaHandlers
    from ray_stream.kafka.records import Record, encode_batch
    from ray_stream.server import kafka_server
    from ray_stream.storage.memory import MemoryStore
    from tests.fakes import make_agent, make_meta

    settings = Settings(data_dir=str(tmp_path))
    records = encode_batch([Record(bytes(1000))], now_ms=1)
    produce = {
        "transactional_id": None,
        "acks": 1,
        "timeout": 5000,
        "topic_data": [{"name": "t", "partition_data": [{"index": 0, "records": records}]}],
    }
    frames = [encode_request(ApiKey.PRODUCE, 7, produce, correlation_id=i) for i in range(5)]
    monkeypatch.setattr(kafka_server, "MAX_IN_FLIGHT_BYTES", 2 * len(frames[0]) + 10)

    async def scenario() -> tuple[int, list[int]]:
        store = MemoryStore()
        meta = make_meta(settings, store=store)
        backend = make_agent(settings, meta, store)
        backend.address = BrokerInfo(0, "127.0.0.1", 9092)
        await meta.create_topic("t", 1)
        gate, started = asyncio.Event(), []
        real_produce = backend.produce

        async def gated(entries: Any, acks: int = -1) -> Any:
            started.append(len(entries))
            await gate.wait()
            return await real_produce(entries, acks)

        backend.produce = gated  # type: ignore[method-assign,assignment]
        reader, sink = asyncio.StreamReader(), _SinkWriter()
        reader.feed_data(b"".join(frames))
        connection = kafka_server._Connection(
            KafkaHandlers(backend), reader, sink, max_frame_bytes=1 << 20
        )  # type: ignore[arg-type]
        running = asyncio.create_task(connection.run())
        for _ in range(50):
            await asyncio.sleep(0)
        admitted = len(started)
        gate.set()
        correlation_ids: list[int] = []
        for _ in range(500):
            correlation_ids = _frame_correlation_ids(bytes(sink.data))
            if len(correlation_ids) == 5:
                break
            await asyncio.sleep(0.01)
        reader.feed_eof()
        await running
        await meta.close()
        return admitted, correlation_ids

    admitted, correlation_ids = asyncio.run(scenario())
    assert admitted == 2  # the third frame waited for budget
    assert correlation_ids == [0, 1, 2, 3, 4]


def _frame_correlation_ids(data: bytes) -> list[int]:
    ids, at = [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        ids.append(int.from_bytes(data[at + 4 : at + 8], "big"))
        at += 4 + size
    return ids
