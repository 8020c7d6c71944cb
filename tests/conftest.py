"""Session-wide test set-up: loopback-only Ray, project-local temp dirs, shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TMP = ROOT / ".tmp"
_TMP.mkdir(exist_ok=True)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", str(_TMP / "ray"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_STREAM_STATE_DIR", str(_TMP / "state"))
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)

pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_ray"]
