"""The metrics ray_stream reports: their catalog, the sink they go to, and a bound meter.

The agent and metadata services (Ray-free) report through a ``MetricsSink`` they are
given; the Ray shells give them ``RayMetricsSink`` (actors/metrics.py, through
``ray.util.metrics``, so each node's Ray metrics agent serves them to Prometheus at
Ray's ``--metrics-export-port``), unit tests a ``MemorySink``, and everything else
nothing (``Meter()`` with no sink does no work at all).

Rules this module keeps:

1. **One catalog.** Every metric is declared once in ``METRICS`` with its kind, unit,
   tag keys and (histograms) bucket boundaries; a name outside it is a bug that
   ``MemorySink`` (unit tests) and the Ray sink both refuse. Names are what Prometheus
   shows: ``ray_stream_`` prefixed, in base units named in the name (``_bytes``,
   ``_ms``); Prometheus adds ``_total`` to counters (``ray_stream_produced_bytes_total``).
2. **Per request, never per record.** Callers report once per produce call, fetch,
   flush, commit call, object-store request or chunk; counts of records are summed by
   the caller first. A zero count is not reported (Ray's counters refuse 0).
3. **Missing tags are empty**: a sink fills every tag key a metric declares that the
   caller did not name with "" (the metadata actor has no ``agent_id``), so callers pass
   only what they know.
4. Pure: no Ray, no clocks; latencies are measured by the caller with its ``Clock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "LATENCY_MS_BOUNDARIES",
    "METRICS",
    "SIZE_BYTES_BOUNDARIES",
    "MemorySink",
    "Meter",
    "MetricSpec",
    "MetricsSink",
    "full_tags",
]

Kind = Literal["counter", "histogram", "gauge"]
Tags = Mapping[str, str]

# Milliseconds: a produce acks after linger (default 250 ms) plus a PUT and a commit
# round, so the buckets reach 10 s (an S3 PUT under throttling) with detail below 1 s.
LATENCY_MS_BOUNDARIES = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Bytes: flushes range from one small batch (linger-bound) to segments past flush_bytes
# (8 MiB by default; they grow past it under backlog).
SIZE_BYTES_BOUNDARIES = tuple(4**i * 1024 for i in range(10))  # 1 KiB .. 256 MiB

AGENT = ("ray_namespace", "agent_id", "zone", "group")
TOPIC = (*AGENT, "topic")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: how it aggregates, what it means, which tags it carries."""

    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


def _counter(description: str, tags: tuple[str, ...] = AGENT) -> MetricSpec:
    return MetricSpec("counter", description, tags)


def _latency(description: str, tags: tuple[str, ...] = AGENT) -> MetricSpec:
    return MetricSpec("histogram", description, tags, LATENCY_MS_BOUNDARIES)


METRICS: dict[str, MetricSpec] = {
    # agents: the write path
    "ray_stream_produced_bytes": _counter(
        "RecordBatch bytes acknowledged to producers (committed)", TOPIC
    ),
    "ray_stream_produced_records": _counter("Records acknowledged to producers", TOPIC),
    "ray_stream_produce_latency_ms": _latency(
        "One produce call, from the agent buffering it to its answer (linger, segment "
        "PUT and metadata commit included)"
    ),
    "ray_stream_flush_bytes": MetricSpec(
        "histogram", "Size of each segment object an agent flushed", AGENT, SIZE_BYTES_BOUNDARIES
    ),
    "ray_stream_overloaded": _counter(
        "Produce calls refused with Overloaded (agent_buffer_bytes full)"
    ),
    "ray_stream_commit_calls": _counter(
        "Metadata commit calls an agent made (one metadata commit round each at most)",
        (*AGENT, "outcome"),
    ),
    "ray_stream_commit_latency_ms": _latency("One agent commit call to the metadata service"),
    # agents: the read path
    "ray_stream_fetched_bytes": _counter("RecordBatch bytes served to consumers", TOPIC),
    "ray_stream_fetched_records": _counter("Records served to consumers", TOPIC),
    "ray_stream_fetch_latency_ms": _latency(
        "One fetch, from the agent taking it to its answer (the long-poll wait included)"
    ),
    "ray_stream_cache_hits": _counter("Chunk reads the agent's cache answered"),
    "ray_stream_cache_misses": _counter("Chunk reads that went to a peer or the object store"),
    "ray_stream_peer_chunks": _counter(
        "Chunks moved between agents of a zone (direction: received or served)",
        (*AGENT, "direction"),
    ),
    "ray_stream_peer_bytes": _counter(
        "Bytes of chunks moved between agents of a zone", (*AGENT, "direction")
    ),
    # every object-store request, agents and metadata actor (component)
    "ray_stream_object_store_requests": _counter(
        "Object-store requests by operation (put, get, list, delete, size)",
        (*AGENT, "component", "operation"),
    ),
    "ray_stream_object_store_bytes": _counter(
        "Bytes moved by object-store puts and gets", (*AGENT, "component", "operation")
    ),
    # the metadata actor
    "ray_stream_metadata_epoch": MetricSpec(
        "gauge",
        "Epoch of the running metadata incarnation (+1 per restart)",
        ("ray_namespace",),
    ),
    "ray_stream_metadata_commit_rounds": _counter(
        "Metadata group-commit rounds (one journal PUT each)", ("ray_namespace",)
    ),
    "ray_stream_consumer_group_lag": MetricSpec(
        "gauge",
        "High watermark minus the group's committed offset, per partition",
        ("ray_namespace", "consumer_group", "topic", "partition"),
    ),
}


class MetricsSink(Protocol):
    """Where metrics go. ``tags`` may omit tag keys (rule 3), never add unknown ones."""

    def count(self, name: str, value: float, tags: Tags) -> None:
        """Add ``value`` (> 0) to counter ``name``."""
        ...

    def observe(self, name: str, value: float, tags: Tags) -> None:
        """Record one observation of histogram ``name``."""
        ...

    def set(self, name: str, value: float, tags: Tags) -> None:
        """Set gauge ``name``."""
        ...


class Meter:
    """A sink with a component's tags bound (its agent id, zone, group); no sink: no-op.

    Args:
        sink: where metrics go (None: nowhere, at the cost of one attribute test).
        tags: tags every metric of this meter carries.
    """

    __slots__ = ("_sink", "_tags")

    def __init__(self, sink: MetricsSink | None = None, tags: Tags | None = None) -> None:
        self._sink = sink
        self._tags: dict[str, str] = dict(tags or {})

    @property
    def enabled(self) -> bool:
        return self._sink is not None

    def child(self, **tags: str) -> Meter:
        """This meter with more tags bound."""
        return Meter(self._sink, {**self._tags, **tags})

    def count(self, name: str, value: float = 1, **tags: str) -> None:
        if self._sink is not None and value > 0:
            self._sink.count(name, value, {**self._tags, **tags} if tags else self._tags)

    def observe(self, name: str, value: float, **tags: str) -> None:
        if self._sink is not None:
            self._sink.observe(name, value, {**self._tags, **tags} if tags else self._tags)

    def set(self, name: str, value: float, **tags: str) -> None:
        if self._sink is not None:
            self._sink.set(name, value, {**self._tags, **tags} if tags else self._tags)


def full_tags(name: str, kind: Kind, tags: Tags) -> dict[str, str]:
    """``tags`` with every tag key of ``name`` present (rule 3).

    Raises:
        KeyError: ``name`` is not in the catalog. ValueError: wrong kind or an
            undeclared tag key (rule 1).
    """
    spec = METRICS[name]
    if spec.kind != kind:
        raise ValueError(f"{name} is a {spec.kind}, not a {kind}")
    extra = set(tags) - set(spec.tag_keys)
    if extra:
        raise ValueError(f"{name} has no tag(s) {sorted(extra)}; it has {spec.tag_keys}")
    return {key: tags.get(key, "") for key in spec.tag_keys}


@dataclass(slots=True)
class MemorySink:
    """Keeps what it is told, checked against the catalog (unit tests, debugging).

    ``counters``/``gauges`` map ``(name, sorted tag items)`` to a value, ``histograms``
    to the list of observations.
    """

    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = field(
        default_factory=dict
    )
    gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def count(self, name: str, value: float, tags: Tags) -> None:
        if value <= 0:
            raise ValueError(f"{name}: counters only grow, got {value}")
        key = (name, tuple(sorted(full_tags(name, "counter", tags).items())))
        self.counters[key] = self.counters.get(key, 0) + value

    def observe(self, name: str, value: float, tags: Tags) -> None:
        key = (name, tuple(sorted(full_tags(name, "histogram", tags).items())))
        self.histograms.setdefault(key, []).append(value)

    def set(self, name: str, value: float, tags: Tags) -> None:
        self.gauges[(name, tuple(sorted(full_tags(name, "gauge", tags).items())))] = value

    def total(self, name: str, **tags: str) -> float:
        """Sum of counter ``name`` (or count of histogram observations) over the series
        whose tags include ``tags``."""
        found = 0.0
        for (metric, items), value in self.counters.items():
            if metric == name and tags.items() <= dict(items).items():
                found += value
        for (metric, items), values in self.histograms.items():
            if metric == name and tags.items() <= dict(items).items():
                found += len(values)
        return found
