"""The nemesis: faults injected into a running cluster, each checked to have happened.

Kinds (``FAULT_KINDS``):

* ``kill-agent`` — ``ray.kill`` one agent, letting Ray restart it. Fired: its pid changed.
* ``kill-metadata`` — the same for the metadata actor.
* ``remove-metadata-node`` — SIGKILL the Ray node the metadata actor runs on
  (``ray.cluster_utils.Cluster.remove_node``), wipe that node's metadata files from
  ``data_dir`` (the node's disk is gone with it: the actor must rebuild from the object
  store), add a fresh node. Fired: the actor answers from another node.
* ``store-faults`` — PUTs that fail before writing, PUTs that write but lose their answer,
  and slow calls, in every agent's store (and the metadata actor's, when it has a
  ``FaultyStore``). Fired: the stores' fault counters went up by kind.
* ``restart-cluster`` — kill every actor at once (a crash, no flush) and start the
  cluster again on the same data_dir and object store. Fired: every pid changed.

Every fault ends with a probe: one recorded send through the Python API must succeed
(``recovered``), and every agent the fault restarted must listen for Kafka clients again
by itself. The time from the fault to that success is in ``evidence``.

Actor introspection and fault injection (``pid``, ``node_id``, ``inject_faults``,
``fault_counts``) run inside the actor through Ray's ``__ray_call__``: the hooks live
here, in one place, and the production actors carry none of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_stream.actors import handles
from ray_stream.client.cluster import pid_alive
from ray_stream.config import METADATA_ACTOR_NAME, agent_name
from ray_stream.core.keys import SEGMENT_PREFIX
from ray_stream.errors import InvalidRequest
from ray_stream.testing.history import OK, FaultEvent, History, Send
from ray_stream.testing.workload import ClusterHolder, classify, error_text

__all__ = ["FAULT_KINDS", "Nemesis", "NemesisContext", "actor_call"]

FAULT_KINDS = (
    "kill-agent",
    "kill-metadata",
    "store-faults",
    "remove-metadata-node",
    "restart-cluster",
    "scale-agents",
)
STORE_SPEC = {
    "put_fail_before": 2,
    "put_fail_after": 2,
    "latency_s": 0.2,
    "key_prefix": SEGMENT_PREFIX,
}
META_STORE_SPEC = {"put_fail_before": 1, "put_fail_after": 1}
# The metadata actor's node-local files: the legacy database and the per-incarnation
# SQLite caches under <data_dir>/metadata/ (all lost with the node).
METADATA_FILES = ("metadata.sqlite", "metadata.sqlite-wal", "metadata.sqlite-shm")
METADATA_DIR = "metadata"


# ----------------------------------------------------------------- actor introspection
def _pid(actor: Any) -> int:
    return os.getpid()


def _node_id(actor: Any) -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _faulty(actor: Any) -> Any:
    store = getattr(actor, "store", None)
    if store is None or not hasattr(store, "configure"):
        raise InvalidRequest(
            f"{type(actor).__name__} has no FaultyStore (start with object_store='faulty+...')"
        )
    return store


def _inject_faults(actor: Any, spec: dict[str, Any]) -> dict[str, int]:
    store = _faulty(actor)
    store.configure(spec)
    return dict(store.counts_dict())


def _fault_counts(actor: Any) -> dict[str, int]:
    return dict(_faulty(actor).counts_dict())


_HOOKS: dict[str, Callable[..., Any]] = {
    "pid": _pid,
    "node_id": _node_id,
    "inject_faults": _inject_faults,
    "fault_counts": _fault_counts,
}


def actor_call(handle: Any, hook: str, *args: Any, timeout_s: float = 10.0) -> Any:
    """Run the test hook ``hook`` (``pid``, ``node_id``, ``inject_faults``,
    ``fault_counts``) inside the actor, through Ray's ``__ray_call__``."""
    return handles.get(handle.__ray_call__.remote(_HOOKS[hook], *args), timeout_s=timeout_s)


def _try(handle: Any, method: str, *args: Any) -> Any | None:
    try:
        return actor_call(handle, method, *args, timeout_s=5.0)
    except Exception:
        return None


def _wait_for(pred: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


# ---------------------------------------------------------------------------- context
@dataclass
class NemesisContext:
    """What the faults act on; ``restart`` starts a fresh cluster on the same storage."""

    holder: ClusterHolder
    history: History
    topic: str
    partitions: int
    restart: Callable[[], Any]
    ray_cluster: Any | None = None
    node_args: dict[str, Any] = field(default_factory=dict)
    wipe_metadata_disk: bool = True
    recovery_timeout_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    _probes: int = 0


class Nemesis:
    """Injects faults by kind; each call returns (and records) one ``FaultEvent``."""

    def __init__(self, ctx: NemesisContext) -> None:
        self.ctx = ctx

    def applicable(self, kind: str) -> bool:
        return kind != "remove-metadata-node" or self.ctx.ray_cluster is not None

    def inject(self, kind: str) -> FaultEvent:
        run = {
            "kill-agent": self._kill_agent,
            "kill-metadata": self._kill_metadata,
            "remove-metadata-node": self._remove_metadata_node,
            "store-faults": self._store_faults,
            "restart-cluster": self._restart_cluster,
            "scale-agents": self._scale_agents,
        }[kind]
        start = self.ctx.history.now()
        evidence: dict[str, Any] = {}
        try:
            fired = bool(run(evidence))
            error = None
        except Exception as exc:
            fired, error = False, error_text(exc)
        recovered = False
        if error is None:
            took = self._probe(evidence.get("agent"))
            evidence["first_produce_after_s"] = (
                None
                if took is None
                else round(self.ctx.history.now() - evidence.get("at_s", start), 3)
            )
            recovered = took is not None and self._serves_kafka(kind, evidence)
        event = FaultEvent(kind, start, self.ctx.history.now(), fired, recovered, evidence, error)
        self.ctx.history.add(event)
        return event

    def heal(self) -> None:
        """Clear injected store faults everywhere (best effort)."""
        cluster = self.ctx.holder.current
        for actor in [cluster.metadata, *_agents(cluster)]:
            _try(actor, "inject_faults", {"reset": True})

    # ---------------------------------------------------------------- the faults
    def _kill(self, handle: Any, evidence: dict[str, Any]) -> bool:
        import ray

        before = actor_call(handle, "pid")
        evidence["pid_before"] = before
        evidence["at_s"] = self.ctx.history.now()
        ray.kill(handle, no_restart=False)
        after = _wait_for(
            lambda: (p := _try(handle, "pid")) is not None and p != before and p,
            self.ctx.recovery_timeout_s,
        )
        evidence["pid_after"] = after or None
        evidence["fired_at_s"] = self.ctx.history.now()
        evidence["restart_s"] = round(evidence["fired_at_s"] - evidence["at_s"], 3)
        return bool(after)

    def _kill_agent(self, evidence: dict[str, Any]) -> bool:
        cluster = self.ctx.holder.current
        index = self.ctx.rng.randrange(cluster.settings.agents)
        evidence["agent"] = index
        return self._kill(cluster.agent_by_id(index), evidence)

    def _serves_kafka(self, kind: str, evidence: dict[str, Any]) -> bool:
        """After agents restarted: does each listen for Kafka clients again on its own?

        ``kill-agent`` restarts one agent; node removal (agents on that node) and a cluster
        restart may restart all. ``evidence["kafka_listeners"]`` maps agent -> listening.
        """
        cluster = self.ctx.holder.current
        if cluster.settings.kafka_port == 0 or kind in ("kill-metadata", "store-faults"):
            return True
        indexes = [evidence["agent"]] if kind == "kill-agent" else range(cluster.settings.agents)
        listening = {i: _listening(cluster.agent_by_id(i), 20.0) for i in indexes}
        evidence["kafka_listeners"] = listening
        return all(listening.values())

    def _scale_agents(self, evidence: dict[str, Any]) -> bool:
        """A fleet change under load: one more agent joins (it must serve Kafka and
        appear in the fleet), then the cluster scales back, retiring it (it flushes,
        leaves Metadata and the cache rings, and its Kafka clients move on)."""
        cluster = self.ctx.holder.current
        count = cluster.settings.agents
        evidence["at_s"] = self.ctx.history.now()
        placed = cluster.scale(count + 1)
        added = max(p.agent_id for p in placed if p.group == "default")
        evidence["agent_added"] = added

        def in_fleet() -> bool:
            return any(a.agent_id == added for a in cluster.fleet(refresh=True).agents)

        joined = _wait_for(in_fleet, 20.0)
        serving = cluster.settings.kafka_port == 0 or _listening(cluster.agent_by_id(added), 20.0)
        evidence.update(joined=bool(joined), serving=bool(serving))
        cluster.scale(count)
        left = _wait_for(lambda: not in_fleet(), 20.0)
        evidence["left"] = bool(left)
        evidence["fired_at_s"] = self.ctx.history.now()
        return bool(joined and serving and left)

    def _kill_metadata(self, evidence: dict[str, Any]) -> bool:
        return self._kill(self.ctx.holder.current.metadata, evidence)

    def _remove_metadata_node(self, evidence: dict[str, Any]) -> bool:
        import ray

        rc = self.ctx.ray_cluster
        if rc is None:
            raise InvalidRequest("remove-metadata-node needs a ray.cluster_utils.Cluster")
        meta = self.ctx.holder.current.metadata
        node, pid = actor_call(meta, "node_id"), actor_call(meta, "pid")
        victim = next((n for n in rc.worker_nodes if n.node_id == node), None)
        if victim is None:
            raise InvalidRequest(f"metadata actor runs on node {node[:12]}, not a removable worker")
        evidence.update(node_before=node, pid_before=pid, at_s=self.ctx.history.now())
        rc.remove_node(victim, allow_graceful=False)
        if self.ctx.wipe_metadata_disk:
            _wait_for(lambda: not pid_alive(pid), 30, 0.05)
            alive = any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())  # type: ignore[no-untyped-call]
            evidence["wiped"] = self._wipe() if alive else "skipped: node already declared dead"
        rc.add_node(**self.ctx.node_args)
        after = _wait_for(
            lambda: (n := _try(meta, "node_id")) is not None and n != node and n,
            self.ctx.recovery_timeout_s,
        )
        evidence["node_after"] = after or None
        evidence["fired_at_s"] = self.ctx.history.now()
        evidence["moved_s"] = round(evidence["fired_at_s"] - evidence["at_s"], 3)
        return bool(after)

    def _wipe(self) -> list[str]:
        data_dir = Path(self.ctx.holder.current.settings.resolved_data_dir)
        paths = [data_dir / name for name in METADATA_FILES]
        if (data_dir / METADATA_DIR).is_dir():
            paths += sorted(p for p in (data_dir / METADATA_DIR).rglob("*") if p.is_file())
        wiped = []
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                wiped.append(str(path.relative_to(data_dir)))
        return wiped

    def _store_faults(self, evidence: dict[str, Any]) -> bool:
        cluster = self.ctx.holder.current
        agents = _agents(cluster)
        before = [actor_call(a, "fault_counts") for a in agents]
        evidence["at_s"] = self.ctx.history.now()
        for agent in agents:
            actor_call(agent, "inject_faults", STORE_SPEC)
        meta_before = _try(cluster.metadata, "fault_counts")
        meta_ok = (
            meta_before is not None
            and _try(cluster.metadata, "inject_faults", META_STORE_SPEC) is not None
        )
        evidence["metadata_store"] = "injected" if meta_ok else "no FaultyStore (not injected)"

        def deltas() -> dict[str, int]:
            now = [_try(a, "fault_counts") or b for a, b in zip(agents, before, strict=True)]
            out = {k: 0 for k in ("put_before", "put_after", "delayed")}
            for b, n in zip(before, now, strict=True):
                for k in out:
                    out[k] += max(0, n.get(k, 0) - b.get(k, 0))
            return out

        def meta_deltas() -> dict[str, int]:
            now = _try(cluster.metadata, "fault_counts") or meta_before or {}
            return {
                k: max(0, now.get(k, 0) - (meta_before or {}).get(k, 0))
                for k in ("put_before", "put_after")
            }

        def done() -> bool:
            agent_ok = all(v >= 1 for v in deltas().values())
            return agent_ok and (not meta_ok or all(v >= 1 for v in meta_deltas().values()))

        fired = _wait_for(done, 30.0, 0.3)
        evidence["agent_faults_fired"] = deltas()
        if meta_ok:
            evidence["metadata_faults_fired"] = meta_deltas()
        for actor in [*agents, cluster.metadata]:
            _try(actor, "inject_faults", {"reset": True})
        return bool(fired)

    def _restart_cluster(self, evidence: dict[str, Any]) -> bool:
        old = self.ctx.holder.begin_restart()
        try:
            actors = [old.metadata, *_agents(old)]
            before = [_try(a, "pid") for a in actors]
            evidence.update(pids_before=before, at_s=self.ctx.history.now())
            for actor in actors:
                handles.kill(actor)  # a crash: nothing is flushed or closed
            with contextlib.suppress(Exception):
                old.shutdown()
            ns = old.settings.namespace
            names = [METADATA_ACTOR_NAME] + [agent_name(i) for i in range(old.settings.agents)]
            _wait_for(lambda: not any(handles.actor_exists(n, ns) for n in names), 30)
            new = self.ctx.restart()
        except BaseException:
            self.ctx.holder.finish_restart(old)
            raise
        self.ctx.holder.finish_restart(new)
        after = [_try(a, "pid") for a in [new.metadata, *_agents(new)]]
        evidence.update(
            pids_after=after,
            fired_at_s=self.ctx.history.now(),
            restart_s=round(self.ctx.history.now() - evidence["at_s"], 3),
        )
        return all(a is not None and a not in before for a in after)

    # ------------------------------------------------------------------- probes
    def _probe(self, agent: int | None) -> float | None:
        """Send one recorded record until it is acknowledged; seconds it took, or None."""
        ctx = self.ctx
        started = time.monotonic()
        deadline = started + ctx.recovery_timeout_s
        while time.monotonic() < deadline:
            ctx._probes += 1
            n = ctx._probes
            cluster = ctx.holder.get(5.0)
            if cluster is None:
                continue
            value, process = f"probe-{n}", f"nemesis.{n}"
            partition = n % ctx.partitions
            invoke = ctx.history.now()
            producer = None
            try:
                producer = cluster.producer(agent=agent if agent is not None else n, linger_ms=0)
                meta = producer.send(ctx.topic, value.encode(), partition=partition).result(
                    timeout=15
                )
            except Exception as exc:
                outcome = classify(exc) if producer is not None else "fail"
                if "TimeoutError" in type(exc).__name__:
                    outcome = "info"
                ctx.history.add(
                    Send(
                        process,
                        value,
                        outcome,
                        invoke,
                        ctx.history.now(),
                        partition=partition,
                        error=error_text(exc),
                    )
                )
                time.sleep(0.3)
                continue
            finally:
                if producer is not None:
                    with contextlib.suppress(Exception):
                        producer.close(timeout=1)
            ctx.history.add(
                Send(
                    process,
                    value,
                    OK,
                    invoke,
                    ctx.history.now(),
                    partition=meta.partition,
                    offset=meta.offset,
                )
            )
            return time.monotonic() - started
        return None


def _agents(cluster: Any) -> list[Any]:
    return [cluster.agent_by_id(i) for i in range(cluster.settings.agents)]


def _listening(agent: Any, timeout_s: float) -> bool:
    """Does a restarted agent serve Kafka again (address known and accepting)?"""
    import socket

    def check() -> bool:
        try:
            address = handles.get(agent.kafka_address.remote(), timeout_s=5)
        except Exception:
            return False
        if address is None:
            return False
        try:
            with socket.create_connection((address.host, address.port), timeout=2):
                return True
        except OSError:
            return False

    return bool(_wait_for(check, min(timeout_s, 20.0), 0.5))
