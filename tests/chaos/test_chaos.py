"""Chaos runs: the CI-sized one (one of each fault, zero anomalies) and the checker's
self-test against a deliberately broken store.

The CI run starts its own multi-node Ray (``ray.cluster_utils.Cluster``) in a subprocess
through ``python -m ray_stream.chaos_cli``, so it never shares Ray with the test session.
The smaller runs reuse the session's Ray in-process (no node removal there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_stream.testing.nemesis import FAULT_KINDS
from ray_stream.testing.runner import ChaosConfig, run_chaos

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _nonzero(report: dict) -> dict:
    return {k: v for k, v in report["counts"].items() if v}


def _explain(report: dict) -> str:
    bad_events = [e for e in report["faults"]["events"] if not (e["fired"] and e["recovered"])]
    return json.dumps(
        {
            "anomalies": _nonzero(report),
            "examples": report["examples"],
            "faults": report["faults"]["by_kind"],
            "failed_fault_events": bad_events,
            "liveness": report["liveness"],
        },
        indent=1,
        default=str,
    )[:12000]


@pytest.mark.timeout(900)
def test_chaos_one_of_each_fault_reports_zero_anomalies(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_stream.chaos_cli",
            "--duration",
            "30",
            "--fault-interval",
            "4-6",
            "--seed",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert out.exists(), f"no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    by_kind = report["faults"]["by_kind"]
    assert set(by_kind) == set(FAULT_KINDS), _explain(report)
    assert all(row["fired"] == row["injected"] >= 1 for row in by_kind.values()), _explain(report)
    assert report["all_faults_fired"], _explain(report)
    assert report["stats"]["acknowledged"] > 1000, report["stats"]
    assert _nonzero(report) == {}, _explain(report)
    assert report["all_recovered"], _explain(report)
    assert report["live"], _explain(report)


def _small(tmp_path: Path, **overrides) -> ChaosConfig:
    base = dict(
        duration_s=6.0,
        faults=(),
        kafka_producers=0,
        producers=2,
        groups=1,
        consumers_per_group=2,
        assign_consumers=1,
        partitions=4,
        rate=30.0,
        warmup_s=0.0,
        quiet_s=0.0,
        drain_timeout_s=20.0,
        workdir=str(tmp_path / "work"),
    )
    return ChaosConfig(**{**base, **overrides})


@pytest.mark.timeout(300)
def test_chaos_quiet_run_is_clean(ray_session, tmp_path):
    """The control for the test below: no faults, no broken store, no anomalies."""
    report = run_chaos(_small(tmp_path), log=lambda _: None)
    assert report["valid"], _explain(report)
    assert report["stats"]["acknowledged"] > 100
    assert report["stats"]["final_records"] == report["stats"]["acknowledged"]
    assert report["stats"]["audit"]["checked"]


@pytest.mark.timeout(300)
def test_chaos_checker_names_a_store_that_drops_acknowledged_batches(ray_session, tmp_path):
    report = run_chaos(
        _small(tmp_path, broken_store="drop_acked", drain_timeout_s=5.0), log=lambda _: None
    )
    assert not report["valid"]
    counts = report["counts"]
    assert counts["lost-write"] >= 1, _explain(report)
    assert counts["missing-object"] >= 1, _explain(report)
    lost = report["examples"]["lost-write"]
    assert all("acked_offset" in e for e in lost), lost
    missing = report["examples"]["missing-object"]
    assert all(e["segment_key"].startswith("segments/") for e in missing)
    # What a dropped object cannot cause: the same value twice, or two values at one offset.
    assert counts["duplicate"] == counts["inconsistent-offsets"] == 0
