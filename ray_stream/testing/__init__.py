"""Correctness harness: workload, nemesis, checker and runner for chaos runs.

``checker`` and ``history`` are pure (no Ray) and usable on saved histories; ``runner``
starts a cluster, runs the workload under faults and returns the checker's report.
See ``ray_stream.testing.runner.run_chaos`` and the ``ray-stream chaos`` command.
"""

from __future__ import annotations

from ray_stream.testing.checker import ANOMALIES, check
from ray_stream.testing.history import FinalRead, History, StoreAudit

__all__ = ["ANOMALIES", "FinalRead", "History", "StoreAudit", "check"]
