"""Metrics through Ray: produce and fetch on real agents, then scrape Ray's Prometheus
endpoint and find ray_stream's counters moved.

The session's Ray (tests/fixtures_ray.py) runs its metrics agent even without the
dashboard; the head node's export port is in ``ray.nodes()``. Ray workers report every
``metrics_report_interval_ms`` (10 s by default), so the scrape is polled.
"""

from __future__ import annotations

import urllib.request
import uuid
from typing import Any

import pytest

import ray_stream
from tests.fixtures_ray import wait_for

pytestmark = pytest.mark.integration

PYTHON_RECORDS = 50
KAFKA_RECORDS = 10
COMMITTED = 30


def _export_url(ray: Any) -> str:
    node_ip = ray.util.get_node_ip_address()
    (node,) = [n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == node_ip]
    return f"http://{node_ip}:{node['MetricsExportPort']}/metrics"


def _scrape(url: str, namespace: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The ray_stream samples of this cluster, summed over Ray's own labels (worker,
    session, ...): ``{(name, our labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    ray_labels = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId"}
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.startswith("ray_stream_"):
                continue
            if labels.get("ray_namespace") != namespace:
                continue
            ours = frozenset(
                (k, v) for k, v in labels.items() if k not in ray_labels and "otel" not in k
            )
            key = (sample.name, ours)
            found[key] = found.get(key, 0.0) + sample.value
    return found


def _total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (metric, ours), value in samples.items()
        if metric == name and set(labels.items()) <= ours
    )


def test_metrics_scraped_from_rays_endpoint_after_produce_and_fetch(
    ray_session, tmp_path, unique_name
):
    url = _export_url(ray_session)
    namespace = "ns-" + uuid.uuid4().hex[:8]
    cluster = ray_stream.start_local(
        data_dir=str(tmp_path / "data"), namespace=namespace, kafka_port=-1, linger_ms=20
    )
    try:
        cluster.create_topic(unique_name, 1)
        with cluster.producer() as producer:
            futures = [
                producer.send(unique_name, f"v{i}".encode(), partition=0)
                for i in range(PYTHON_RECORDS)
            ]
        [f.result(timeout=30) for f in futures]
        _produce_with_kafka_python(cluster.bootstrap_servers, unique_name)
        with cluster.consumer(group_id="g1") as consumer:
            consumer.assign([(unique_name, 0)])
            got: list[Any] = []
            wait_for(lambda: got.extend(consumer.poll(1.0)) or len(got) >= 60, timeout=60)
            consumer.commit({(unique_name, 0): COMMITTED})

        def moved() -> Any:
            samples = _scrape(url, namespace)
            produced = _total(samples, "ray_stream_produced_records_total", topic=unique_name)
            lag = _total(samples, "ray_stream_consumer_group_lag", consumer_group="g1")
            ready = produced == PYTHON_RECORDS + KAFKA_RECORDS and lag > 0
            return samples if ready else None

        samples = wait_for(moved, timeout=90, interval=2)
    finally:
        cluster.shutdown()

    total = PYTHON_RECORDS + KAFKA_RECORDS
    assert _total(samples, "ray_stream_produced_bytes_total", topic=unique_name) > 0
    assert _total(samples, "ray_stream_fetched_records_total", topic=unique_name) >= total
    assert _total(samples, "ray_stream_fetched_bytes_total", topic=unique_name) > 0
    assert _total(samples, "ray_stream_produce_latency_ms_count", agent_id="0") >= 2
    assert _total(samples, "ray_stream_fetch_latency_ms_count") >= 1
    assert _total(samples, "ray_stream_flush_bytes_count") >= 1
    assert _total(samples, "ray_stream_commit_calls_total", outcome="ok") >= 1
    assert _total(samples, "ray_stream_commit_latency_ms_count") >= 1
    assert _total(samples, "ray_stream_cache_hits_total") >= 1
    puts = _total(samples, "ray_stream_object_store_requests_total", operation="put")
    assert _total(samples, "ray_stream_object_store_requests_total", component="agent") >= 1
    assert puts >= 2  # a segment and a metadata journal entry
    assert _total(samples, "ray_stream_metadata_commit_rounds_total") >= 1
    assert _total(samples, "ray_stream_metadata_epoch") >= 1
    lag = _total(samples, "ray_stream_consumer_group_lag", consumer_group="g1", partition="0")
    assert lag == total - COMMITTED


def _produce_with_kafka_python(bootstrap: str, topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [
            producer.send(topic, f"k{i}".encode(), partition=0) for i in range(KAFKA_RECORDS)
        ]
        producer.flush(timeout=30)
        [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)
