"""Metrics (core/metrics.py) as the Ray-free services report them, into a MemorySink.

What an operator relies on: the counters a dashboard plots move with the traffic they
name (bytes, records, requests), are tagged with the agent and topic, and every name
is a catalogued ``ray_stream_`` metric the Ray sink can register. The scrape of Ray's
real Prometheus endpoint is tests/integration/test_metrics_ray.py.
"""

from __future__ import annotations

import asyncio
import pickle
import random
from dataclasses import replace
from typing import Any

import pytest

from ray_stream.actors.metrics import RayMetricsSink, ray_metric_name
from ray_stream.agent.log_service import LogService
from ray_stream.clock import SystemClock
from ray_stream.config import Settings
from ray_stream.core.fleet import AgentRecord
from ray_stream.core.metadata_api import OffsetCommitRequest
from ray_stream.core.metrics import METRICS, MemorySink, Meter, full_tags
from ray_stream.core.types import CommittedOffset, TopicPartition
from ray_stream.errors import Overloaded
from ray_stream.kafka.records import Record, encode_batch
from ray_stream.metadata.service import MetadataService
from ray_stream.storage.memory import MemoryStore
from ray_stream.storage.metered import MeteredStore

NOW_MS = 1_700_000_000_000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), namespace="ns1", linger_ms=0)


def batch(*values: bytes) -> bytes:
    return encode_batch([Record(v) for v in values], now_ms=NOW_MS)


def agent(settings, meta, store, sink, node_id=0, **kw) -> LogService:
    return LogService(
        settings,
        node_id=node_id,
        store=store,
        metadata=meta,
        clock=SystemClock(),
        rand=random.Random(node_id),
        record=AgentRecord(node_id, "", 0, zone="z1"),
        metrics=sink,
        **kw,
    )


def run(settings: Settings, scenario: Any) -> tuple[Any, MemorySink]:
    """``scenario(service, agents)`` with two agents and the metadata service reporting
    to one sink; its result and the sink."""
    sink = MemorySink()

    async def main() -> Any:
        store = MemoryStore()
        service = MetadataService(settings, store=store, metrics=sink)
        agents = [agent(settings, service, store, sink, node_id=i) for i in range(2)]
        try:
            return await scenario(service, agents)
        finally:
            for a in agents:
                await a.close()
            await service.close()

    return asyncio.run(main()), sink


def test_metrics_catalog_names_are_ray_stream_and_registrable_in_ray():
    for name, spec in METRICS.items():
        assert name.startswith("ray_stream_"), name
        assert ray_metric_name(name) == name.removeprefix("ray_")  # Ray adds "ray_" back
        assert not name.endswith("_total")  # Prometheus adds it to counters
        assert spec.kind != "histogram" or list(spec.boundaries) == sorted(spec.boundaries)


def test_metrics_sink_fills_missing_tags_and_refuses_unknown_ones():
    assert full_tags("ray_stream_metadata_epoch", "gauge", {}) == {"ray_namespace": ""}
    with pytest.raises(ValueError, match="no tag"):
        full_tags("ray_stream_metadata_epoch", "gauge", {"agent_id": "0"})
    with pytest.raises(ValueError, match="is a counter"):
        full_tags("ray_stream_produced_bytes", "histogram", {})
    with pytest.raises(KeyError):
        MemorySink().count("ray_stream_no_such_metric", 1, {})


def test_metrics_meter_without_a_sink_does_nothing():
    meter = Meter()
    meter.count("ray_stream_no_such_metric", 1)  # not even looked up
    assert not meter.enabled


def test_metrics_produce_and_fetch_move_bytes_records_and_latencies(settings):
    async def scenario(service, agents) -> Any:
        writer, reader = agents
        await service.create_topic("t", 1)
        data = [batch(b"a", b"b"), batch(b"c")]
        await writer.produce([("t", 0, data[0]), ("t", 0, data[1])])
        await writer.fetch([("t", 0, 0, 1 << 20)])  # written here: the cache has it
        await reader.fetch([("t", 0, 0, 1 << 20)])  # another agent: a store GET
        return sum(len(d) for d in data)

    size, sink = run(settings, scenario)
    total = sink.total
    agent0 = {"agent_id": "0", "zone": "z1", "group": "default", "ray_namespace": "ns1"}
    assert total("ray_stream_produced_bytes", topic="t", **agent0) == size
    assert total("ray_stream_produced_records", topic="t", **agent0) == 3
    assert total("ray_stream_fetched_bytes", topic="t") == 2 * size
    assert total("ray_stream_fetched_records", topic="t", agent_id="1") == 3
    assert total("ray_stream_produce_latency_ms", **agent0) == 1  # one call
    assert total("ray_stream_fetch_latency_ms") == 2
    assert total("ray_stream_flush_bytes", agent_id="0") == 1
    assert total("ray_stream_commit_calls", agent_id="0", outcome="ok") == 1
    assert total("ray_stream_commit_latency_ms", agent_id="0") == 1
    assert total("ray_stream_cache_hits", agent_id="0") >= 1
    assert total("ray_stream_cache_misses", agent_id="1") >= 1
    assert total("ray_stream_object_store_requests", component="agent", operation="put") == 1
    assert total("ray_stream_object_store_requests", agent_id="1", operation="get") == 1
    assert total("ray_stream_object_store_bytes", agent_id="1", operation="get") > 0
    assert total("ray_stream_object_store_requests", component="metadata", operation="put") >= 2
    assert total("ray_stream_metadata_commit_rounds") >= 1
    assert sink.gauges[("ray_stream_metadata_epoch", (("ray_namespace", "ns1"),))] >= 1


def test_metrics_overloaded_refusals_are_counted(settings):
    tight = replace(settings, linger_ms=200, agent_buffer_bytes=100)

    async def scenario(service, agents) -> Any:
        await service.create_topic("t", 1)
        first = asyncio.ensure_future(agents[0].produce([("t", 0, batch(b"x" * 80))]))
        await asyncio.sleep(0)  # buffered
        (refused,) = await agents[0].produce([("t", 0, batch(b"y" * 80))])
        await first
        return refused

    refused, sink = run(tight, scenario)
    assert isinstance(refused.error, Overloaded)
    assert sink.total("ray_stream_overloaded", agent_id="0") == 1


def test_metrics_consumer_group_lag_is_high_watermark_minus_committed(settings):
    async def scenario(service, agents) -> Any:
        await service.create_topic("t", 2)
        await agents[0].produce([("t", 1, batch(b"a", b"b", b"c"))])
        offsets = {TopicPartition("t", 1): CommittedOffset(1)}
        await service.commit_offsets(OffsetCommitRequest("g", offsets))  # a "simple" commit
        service.report_lag()

    _, sink = run(settings, scenario)
    key = (
        "ray_stream_consumer_group_lag",
        (
            ("consumer_group", "g"),
            ("partition", "1"),
            ("ray_namespace", "ns1"),
            ("topic", "t"),
        ),
    )
    assert sink.gauges[key] == 2


def test_metrics_metered_store_counts_requests_even_when_they_fail():
    sink = MemorySink()
    store = MeteredStore(MemoryStore(), Meter(sink, {"component": "agent"}))
    store.put("k", b"12345")
    assert store.get_range("k", 1, 2) == b"23"
    store.list("")
    with pytest.raises(Exception, match="k2"):
        store.get("k2")
    store.delete("k")
    counts = {
        op: sink.total("ray_stream_object_store_requests", operation=op)
        for op in ("put", "get", "list", "delete")
    }
    assert counts == {"put": 1, "get": 2, "list": 1, "delete": 1}
    assert sink.total("ray_stream_object_store_bytes", operation="put") == 5
    assert sink.total("ray_stream_object_store_bytes", operation="get") == 2


def test_metrics_ray_sink_crosses_ray_without_its_metric_objects():
    sink = RayMetricsSink()
    sink._metrics["ray_stream_overloaded"] = object()  # not picklable on purpose
    again = pickle.loads(pickle.dumps(sink))
    assert again._metrics == {}
