"""``RayMetricsSink``: ray_stream's metrics (core/metrics.py) through ``ray.util.metrics``.

Each Ray worker process reports the metrics recorded in it to its node's metrics agent
(every ``metrics_report_interval_ms``, 10 s by default), which serves them to Prometheus
at the node's ``--metrics-export-port`` (``ray.init(_metrics_export_port=...)``); the Ray
dashboard's Grafana panels read the same Prometheus.

Rules this module keeps:

1. **One metric object per name and process**, created on first use from the catalog
   and cached; a sink crosses Ray (it is an actor constructor argument) without them
   and builds its own on the other side.
2. **Names as Prometheus shows them.** Ray's exporter puts ``ray_`` before every
   application metric (as Ray Serve's ``serve_*`` become ``ray_serve_*``), so the
   catalog's ``ray_stream_produced_bytes`` is registered as ``stream_produced_bytes``
   and scraped as ``ray_stream_produced_bytes_total``.
3. Never raises into the data path: a metric that cannot be recorded is logged once and
   dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray.util import metrics as ray_metrics

from ray_stream.core.metrics import METRICS, Kind, Tags, full_tags

__all__ = ["RayMetricsSink", "ray_metric_name"]

log = logging.getLogger(__name__)

RAY_EXPORT_PREFIX = "ray_"  # what Ray's Prometheus exporter adds (rule 2)


def ray_metric_name(name: str) -> str:
    """The name to register ``name`` under so that Prometheus shows ``name``."""
    return name.removeprefix(RAY_EXPORT_PREFIX)


class RayMetricsSink:
    """A ``MetricsSink`` that records through ``ray.util.metrics`` (see the module doc)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._broken: set[str] = set()
        self._lock = threading.Lock()  # object-store counts come from worker threads

    def __getstate__(self) -> dict[str, Any]:
        return {}  # rule 1: metric objects are made again in the receiving process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def count(self, name: str, value: float, tags: Tags) -> None:
        self._record(name, "counter", value, tags)

    def observe(self, name: str, value: float, tags: Tags) -> None:
        self._record(name, "histogram", value, tags)

    def set(self, name: str, value: float, tags: Tags) -> None:
        self._record(name, "gauge", value, tags)

    def _record(self, name: str, kind: Kind, value: float, tags: Tags) -> None:
        try:
            metric = self._metrics.get(name) or self._create(name)
            final = full_tags(name, kind, tags)
            if kind == "counter":
                metric.inc(value, tags=final)
            elif kind == "histogram":
                metric.observe(value, tags=final)
            else:
                metric.set(value, tags=final)
        except Exception as exc:  # rule 3: metrics never fail a produce or a fetch
            if name not in self._broken:
                self._broken.add(name)
                log.warning("metric %s not recorded: %r", name, exc)

    def _create(self, name: str) -> Any:
        with self._lock:
            return self._metrics.get(name) or self._make(name)

    def _make(self, name: str) -> Any:
        spec = METRICS[name]
        ray_name = ray_metric_name(name)
        metric: Any
        if spec.kind == "counter":
            metric = ray_metrics.Counter(ray_name, spec.description, tag_keys=spec.tag_keys)
        elif spec.kind == "histogram":
            metric = ray_metrics.Histogram(
                ray_name,
                spec.description,
                boundaries=list(spec.boundaries),
                tag_keys=spec.tag_keys,
            )
        else:
            metric = ray_metrics.Gauge(ray_name, spec.description, tag_keys=spec.tag_keys)
        self._metrics[name] = metric
        return metric
