"""Agents name the advertised host to real Kafka clients (multi-node deployments)."""

from __future__ import annotations

import uuid

import pytest

import ray_stream

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")


def test_kafka_metadata_names_the_advertised_host_of_every_agent(ray_session, tmp_path):
    c = ray_stream.start_local(
        data_dir=str(tmp_path / "data"),
        namespace="adv-" + uuid.uuid4().hex[:8],
        agents=2,
        kafka_port=-1,  # listeners still bind 127.0.0.1 (kafka_host's default)
        kafka_advertised_host="localhost",
    )
    try:
        ports = sorted(b.port for b in c.brokers())
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{ports[0]}"})
        brokers = admin.list_topics(timeout=20).brokers
        seen = sorted((b.host, b.port) for b in brokers.values())
        bootstrap = c.bootstrap_servers
    finally:
        c.shutdown()
    assert seen == [("localhost", p) for p in ports]
    assert sorted(bootstrap.split(",")) == sorted(f"localhost:{p}" for p in ports)
