"""The chaos workload: producers and consumers that record everything they are told.

The harness never retries a send (Jepsen's rule: a retry above the client would make
duplicates the harness's fault). The Python producers are the product's idempotent
producer, which resends retriable failures itself (deduplicated by the metadata actor,
which is what the checker then holds it to) until its delivery timeout. A send is
recorded as ``ok`` with the offset the system acknowledged, ``fail`` when the error
guarantees nothing was written, and ``info`` otherwise. After any error a client is
torn down and recreated as a new *process* (a new incarnation name), as Jepsen does with
crashed clients. Producers pipeline, so one
process may have many sends in flight; the invariant kept is that no send of a process
starts after one of its errors was observed (the error handler marks the process broken
before recording, and a send checks the mark after taking its start time). The
assign-mode consumer keeps its name across reconnects and seeks explicitly to where it
left off, so its poll continuity stays checked.

Threads: one per worker. Workers only talk to the cluster through the ``ClusterHolder``,
which a whole-cluster restart swaps underneath them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from ray_stream.errors import CorruptData, InvalidRequest, StorageUnavailable
from ray_stream.testing.history import (
    FAIL,
    INFO,
    OK,
    Assign,
    Commit,
    CommittedRead,
    History,
    Poll,
    Send,
)

__all__ = [
    "ClusterHolder",
    "ConsumerWorker",
    "ProducerWorker",
    "classify",
]

MAX_UNANSWERED = 2000  # stop sending while this many sends wait for an answer
ERROR_TEXT = 240


def classify(exc: BaseException) -> str:
    """``fail`` if ``exc`` guarantees the record was not written, else ``info``.

    Definite: input errors (nothing was sent anywhere) and a failed segment PUT, after
    which the agent never asks the metadata actor to commit. Everything else — a dead
    actor, a failed or lost commit answer, a timeout — may or may not have happened.
    """
    if isinstance(exc, InvalidRequest | CorruptData):
        return FAIL
    if isinstance(exc, StorageUnavailable) and "segment PUT" in str(exc):
        return FAIL
    return INFO


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_TEXT]


class ClusterHolder:
    """The current ``Cluster``; a whole-cluster restart swaps it (clients wait meanwhile)."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster
        self._ready = threading.Event()
        self._ready.set()
        self.generation = 0

    def get(self, timeout_s: float = 5.0) -> Any | None:
        """The cluster, or None while a restart is in progress (after ``timeout_s``)."""
        if not self._ready.wait(timeout_s):
            return None
        return self._cluster

    @property
    def current(self) -> Any:
        return self._cluster

    def begin_restart(self) -> Any:
        self._ready.clear()
        return self._cluster

    def finish_restart(self, cluster: Any) -> None:
        self._cluster = cluster
        self.generation += 1
        self._ready.set()


class _Worker:
    """A thread with a name, a stop flag and liveness bookkeeping."""

    def __init__(self, name: str, history: History, stop: threading.Event) -> None:
        self.name = name
        self.history = history
        self.stop = stop
        self.last_ok_s: float | None = None
        self.last_error: tuple[float, str] | None = None
        self.errors = 0
        self.incarnation = 0
        self._thread = threading.Thread(target=self._main, name=f"chaos-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        """True if the thread ended in time."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a harness bug must show in the report, not vanish
            self.crash = error_text(exc)

    crash: str | None = None

    def run(self) -> None:
        raise NotImplementedError

    def failed(self, exc: BaseException | str) -> None:
        """Count an error and remember the latest (for the liveness report)."""
        self.errors += 1
        text = exc if isinstance(exc, str) else error_text(exc)
        self.last_error = (round(self.history.now(), 3), text)

    def liveness(self) -> dict[str, Any]:
        return {
            "last_ok_s": self.last_ok_s,
            "errors": self.errors,
            "last_error": self.last_error,
            "incarnations": self.incarnation,
            "crash": self.crash,
        }


class ProducerWorker(_Worker):
    """Sends ``p<index>-<n>`` through the Python API, round robin over partitions."""

    def __init__(
        self,
        index: int,
        holder: ClusterHolder,
        history: History,
        stop: threading.Event,
        *,
        topic: str,
        partitions: int,
        rate: float,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(f"p{index}", history, stop)
        self.index = index
        self.delivery_timeout_s = delivery_timeout_s
        self.holder = holder
        self.topic = topic
        self.partitions = partitions
        self.interval_s = 1.0 / rate
        self._lock = threading.Lock()
        self._unanswered: dict[
            str, tuple[str, float, int]
        ] = {}  # value -> (process, invoke, partition)

    def run(self) -> None:
        n = 0
        producer: Any = None
        broken = threading.Event()
        process = ""
        next_at = time.monotonic()
        generation = -1
        while not self.stop.is_set():
            if producer is not None and generation != self.holder.generation:
                broken.set()  # the whole cluster was restarted: a new process, as after a crash
            if producer is None or broken.is_set():
                _close_later(producer)
                producer, broken = None, threading.Event()
                cluster = self.holder.get()
                if cluster is None:
                    continue
                generation = self.holder.generation
                try:
                    producer = cluster.producer(
                        agent=self.index, delivery_timeout_s=self.delivery_timeout_s
                    )
                except Exception as exc:
                    self.failed(exc)
                    time.sleep(0.2)
                    continue
                self.incarnation += 1
                process = f"{self.name}.{self.incarnation}"
            if len(self._unanswered) >= MAX_UNANSWERED:
                time.sleep(0.05)
                continue
            value, partition = f"{self.name}-{n}", n % self.partitions
            n += 1
            self._send(producer, process, value, partition, broken)
            next_at = max(next_at + self.interval_s, time.monotonic() - 1.0)
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
        _close_later(producer)

    def _send(
        self, producer: Any, process: str, value: str, partition: int, broken: threading.Event
    ) -> None:
        invoke = self.history.now()
        if broken.is_set():  # an error arrived: this process is over (Jepsen's crash)
            return
        with self._lock:
            self._unanswered[value] = (process, invoke, partition)
        try:
            future = producer.send(self.topic, value.encode(), partition=partition)
        except Exception as exc:  # refused before anything left this process
            self._answer(value, FAIL, error=error_text(exc))
            broken.set()
            return
        future.add_done_callback(lambda f: self._done(f, value, broken))

    def _done(self, future: Any, value: str, broken: threading.Event) -> None:
        exc = future.exception()
        if exc is None:
            meta = future.result()
            self._answer(value, OK, partition=meta.partition, offset=meta.offset)
        else:
            broken.set()  # first: no later send of this process may start after the error
            self._answer(value, classify(exc), error=error_text(exc))

    def _answer(
        self,
        value: str,
        outcome: str,
        *,
        partition: int | None = None,
        offset: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._lock:
            entry = self._unanswered.pop(value, None)
        if entry is None:
            return
        process, invoke, aimed = entry
        now = self.history.now()
        self.history.add(
            Send(
                process,
                value,
                outcome,
                invoke,
                now,
                partition=partition if partition is not None else aimed,
                offset=offset,
                error=error,
            )
        )
        if outcome == OK:
            self.last_ok_s = now
        else:
            self.failed(error or outcome)

    def pending(self) -> int:
        with self._lock:
            return len(self._unanswered)

    def abandon(self) -> int:
        """Record every still-unanswered send as ``info`` (the run is over)."""
        with self._lock:
            left, self._unanswered = self._unanswered, {}
        for value, (process, invoke, partition) in left.items():
            self.history.add(
                Send(
                    process,
                    value,
                    INFO,
                    invoke,
                    None,
                    partition=partition,
                    error="no answer before the end of the run",
                )
            )
        return len(left)


class ConsumerWorker(_Worker):
    """Polls a fixed set of partitions; in group mode commits after every non-empty poll."""

    def __init__(
        self,
        name: str,
        holder: ClusterHolder,
        history: History,
        stop: threading.Event,
        *,
        topic: str,
        partitions: list[int],
        group: str | None,
        agent: int,
    ) -> None:
        super().__init__(name, history, stop)
        self.holder = holder
        self.topic = topic
        self.partitions = list(partitions)
        self.group = group
        self.agent = agent
        self.reader = f"group:{group}" if group else "assign"
        self.positions: dict[int, int] = {}  # next offset to read, per partition
        self._targets: dict[int, int] | None = None
        self.caught_up = threading.Event()
        self.process = name

    def drain_to(self, high_watermarks: dict[int, int]) -> None:
        """Ask the worker to signal ``caught_up`` once it has read up to these offsets."""
        self._targets = {p: high_watermarks.get(p, 0) for p in self.partitions}
        self._check_caught_up()

    def _check_caught_up(self) -> None:
        targets = self._targets
        if targets is not None and all(self.positions.get(p, 0) >= t for p, t in targets.items()):
            self.caught_up.set()

    def run(self) -> None:
        consumer: Any = None
        while not self.stop.is_set():
            if consumer is None:
                consumer = self._open()
                if consumer is None:
                    self.stop.wait(0.3)
                    continue
            invoke = self.history.now()
            try:
                records = consumer.poll(timeout=0.5)
            except Exception as exc:
                self.failed(exc)
                consumer = None
                continue
            if records:
                self._record(records, invoke)
                if self.group is not None and not self._commit(consumer):
                    consumer = None
            self._check_caught_up()

    def _open(self) -> Any | None:
        cluster = self.holder.get()
        if cluster is None:
            return None
        tps = [(self.topic, p) for p in self.partitions]
        try:
            consumer = cluster.consumer(
                group_id=self.group, agent=self.agent, fetch_max_wait_ms=300
            )
            consumer.assign(tps)
            if self.group is None:
                for p, offset in self.positions.items():
                    consumer.seek((self.topic, p), offset)
        except Exception as exc:
            self.failed(exc)
            return None
        first = self.incarnation == 0
        self.incarnation += 1
        if self.group is not None:
            self.process = f"{self.name}.{self.incarnation}"
            committed = read_committed(
                cluster, self.history, self.process, self.group, self.topic, self.partitions
            )
            if committed is None:
                self.failed("could not read committed offsets")
                return None
            self.positions = dict(committed)
        if self.group is not None or first:
            self.history.add(Assign(self.process, tuple(self.partitions), self.history.now()))
        return consumer

    def _record(self, records: list[Any], invoke: float) -> None:
        rows = tuple(
            (r.partition, r.offset, (r.value or b"").decode("utf-8", "replace")) for r in records
        )
        now = self.history.now()
        self.history.add(Poll(self.process, self.reader, rows, invoke, now))
        for p, o, _ in rows:
            self.positions[p] = o + 1
        self.last_ok_s = now

    def _commit(self, consumer: Any) -> bool:
        offsets = {(self.topic, p): o for p, o in self.positions.items()}
        invoke = self.history.now()
        pairs = tuple(sorted((p, o) for p, o in self.positions.items()))
        try:
            consumer.commit(offsets)
        except Exception as exc:
            self.failed(exc)
            self.history.add(
                Commit(
                    self.process, self.group or "", pairs, INFO, invoke, None, error=error_text(exc)
                )
            )
            return False
        self.history.add(
            Commit(self.process, self.group or "", pairs, OK, invoke, self.history.now())
        )
        return True


def read_committed(
    cluster: Any, history: History, process: str, group: str, topic: str, partitions: list[int]
) -> dict[int, int] | None:
    """Read ``group``'s committed offsets and record the read; None if it failed."""
    from ray_stream.actors import handles
    from ray_stream.core.types import TopicPartition

    invoke = history.now()
    try:
        wanted = [TopicPartition(topic, p) for p in partitions]
        got = handles.get(cluster.metadata.fetch_offsets.remote(group, wanted), timeout_s=15)
    except Exception:
        return None
    offsets = {
        tp.partition: c.offset
        for tp, c in got.items()
        if tp.topic == topic and c is not None and c.offset >= 0
    }
    history.add(
        CommittedRead(
            process, group, tuple(partitions), tuple(sorted(offsets.items())), invoke, history.now()
        )
    )
    return offsets


def _close_later(producer: Any) -> None:
    """Close a producer without blocking the sender (its futures still resolve)."""
    if producer is not None:
        threading.Thread(target=_quiet_close, args=(producer,), daemon=True).start()


def _quiet_close(producer: Any) -> None:
    with contextlib.suppress(Exception):
        producer.close(timeout=30)
