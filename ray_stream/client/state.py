"""The record ``ray-stream start`` keeps of the cluster it runs: ``<state_dir>/cluster.json``.

``connect()`` reads it to find the cluster's Ray (``ray_address``, ``namespace``) and the
process that runs it (``pid``: when that process is gone, so is the record).

Rules this module keeps:

1. The record is replaced atomically (temp file + rename): a reader sees the old record
   or the new one, never half of one.
2. Only the process a record names removes it (``clear_state``), so a second
   ``ray-stream start`` that failed to start never erases the running one's record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from ray_stream.actors import handles
from ray_stream.actors.attachment import process_alive
from ray_stream.config import Settings, state_dir

__all__ = ["STATE_FILE", "clear_state", "pid_alive", "read_state", "write_state"]

STATE_FILE = "cluster.json"


class Recorded(Protocol):
    """What the record is written from (a ``Cluster``; typed here so this module does
    not import the one that imports it)."""

    settings: Settings

    @property
    def bootstrap_servers(self) -> str: ...


def write_state(cluster: Recorded) -> Path:
    """Record how to reach ``cluster``, run by this process (rule 1)."""
    path = state_dir() / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "ray_address": handles.gcs_address(),
        "namespace": cluster.settings.namespace,
        "kafka": cluster.bootstrap_servers,
        "data_dir": cluster.settings.resolved_data_dir,
        "pid": os.getpid(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


def read_state() -> dict[str, Any] | None:
    """The record of a running ``ray-stream start``, or None (none, or its process exited)."""
    path = state_dir() / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        return None
    return record


def clear_state() -> None:
    """Remove the record if this process wrote it (rule 2)."""
    path = state_dir() / STATE_FILE
    try:
        record = json.loads(path.read_text())
        if record.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probe); a zombie is not."""
    return process_alive(pid)
