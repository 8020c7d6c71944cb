"""Settings: the host agents advertise to Kafka clients."""

from __future__ import annotations

import pytest

from ray_stream.config import Settings


@pytest.mark.parametrize(
    ("kafka_host", "advertised", "expected"),
    [
        ("127.0.0.1", "", "127.0.0.1"),  # the embedded default: loopback both ways
        ("0.0.0.0", "", "10.0.3.7"),  # every interface: each agent names its node
        ("::", "", "10.0.3.7"),
        ("0.0.0.0", "kafka.example.com", "kafka.example.com"),  # behind a name or NAT
        ("10.0.3.9", "", "10.0.3.9"),
    ],
)
def test_advertised_host(kafka_host, advertised, expected):
    settings = Settings(kafka_host=kafka_host, kafka_advertised_host=advertised)
    assert settings.advertised_host("10.0.3.7") == expected


def test_kafka_hosts_come_from_the_environment(monkeypatch):
    from ray_stream.config import settings_from_env

    monkeypatch.setenv("RAY_STREAM_KAFKA_HOST", "0.0.0.0")
    monkeypatch.setenv("RAY_STREAM_KAFKA_ADVERTISED_HOST", "broker.internal")
    settings = settings_from_env()
    assert (settings.kafka_host, settings.advertised_host("10.1.1.1")) == (
        "0.0.0.0",
        "broker.internal",
    )
