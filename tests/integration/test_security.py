"""TLS + SASL on a real local Ray: the agents (Ray actors) get the certificates through
the cluster's Settings, confluent-kafka logs in with SCRAM and PLAIN, and the users
survive a metadata failover (the actor killed and restarted by Ray) and a full restart
(shutdown, then a new cluster on the same object store); a plaintext client gets no
Kafka answer from a TLS agent."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import ray_stream
from ray_stream.errors import InvalidRequest
from tests.fixtures_ray import wait_for
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.integration

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient  # noqa: E402

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _start(pki: Pki, data_dir: str, namespace: str) -> Any:
    return ray_stream.start_local(
        data_dir=data_dir,
        namespace=namespace,
        kafka_port=-1,
        linger_ms=10,
        auto_create_topics=True,
        tls_cert_pem=pki.server_cert.read_text(),
        tls_key_pem=pki.server_key.read_text(),
        sasl_mechanisms=MECHANISMS,
    )


def _config(cluster: Any, pki: Pki, mechanism: str, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": cluster.bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": str(pki.ca),
        "log_level": 2,
    }


def _round_trip(cluster: Any, pki: Pki, mechanism: str, user: str, password: str) -> bool:
    """Produce one record and read it back; False if the login (or anything) failed."""
    config = _config(cluster, pki, mechanism, user, password)
    topic = "sec-" + uuid.uuid4().hex[:8]
    errors: list[Any] = []
    producer = confluent_kafka.Producer({**config, "error_cb": errors.append})
    delivered: list[Any] = []
    producer.produce(topic, b"secret-data", on_delivery=lambda e, m: delivered.append(e or m))
    deadline = time.monotonic() + 15
    while not delivered and not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    producer.purge()
    producer.flush(1)
    if errors or not delivered or isinstance(delivered[0], confluent_kafka.KafkaError):
        return False
    consumer = confluent_kafka.Consumer(
        {**config, "group.id": "g-" + topic, "fetch.wait.max.ms": 100}
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                return bool(message.value() == b"secret-data")
        return False
    finally:
        consumer.close()


def test_security_users_survive_a_metadata_failover_and_a_full_restart(ray_session, tmp_path, pki):
    import ray

    namespace, data_dir = "sec-" + uuid.uuid4().hex[:8], str(tmp_path / "data")
    first = _start(pki, data_dir, namespace)
    try:
        first.add_user("alice", "alice-pw")
        first.add_user("bob", "bob-pw")
        first.delete_user("bob")
        with pytest.raises(InvalidRequest, match="no user 'bob'"):
            first.delete_user("bob")
        assert _round_trip(first, pki, "SCRAM-SHA-512", "alice", "alice-pw")
        assert not _round_trip(first, pki, "SCRAM-SHA-256", "bob", "bob-pw")

        ray.kill(first.metadata, no_restart=False)  # Ray restarts it from the object store
        assert wait_for(lambda: _round_trip(first, pki, "PLAIN", "alice", "alice-pw"), timeout=90)
        assert sorted((u.user, u.mechanism) for u in first.list_users()) == [
            ("alice", "SCRAM-SHA-256"),
            ("alice", "SCRAM-SHA-512"),
        ]
    finally:
        first.shutdown()

    second = _start(pki, data_dir, namespace)
    try:
        assert _round_trip(second, pki, "SCRAM-SHA-256", "alice", "alice-pw")
        assert not _round_trip(second, pki, "SCRAM-SHA-256", "alice", "wrong-pw")
        assert not _round_trip(second, pki, "PLAIN", "bob", "bob-pw")
        plaintext = AdminClient({"bootstrap.servers": second.bootstrap_servers, "log_level": 2})
        with pytest.raises(confluent_kafka.KafkaException):  # no TLS: no Kafka answer
            plaintext.list_topics(timeout=3)
    finally:
        second.shutdown()
