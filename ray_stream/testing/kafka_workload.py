"""A workload producer speaking the Kafka protocol (kafka-python) to the agents.

Same contract as ``workload.ProducerWorker`` (it subclasses it): unique values
``k<index>-<n>``, every outcome recorded, ``retries=0`` and idempotence off so the client
never retries on its own, recreated as a new process after any error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ray_stream.testing.history import FAIL, INFO, OK, History
from ray_stream.testing.workload import MAX_UNANSWERED, ClusterHolder, ProducerWorker, error_text

__all__ = ["KafkaProducerWorker"]


class KafkaProducerWorker(ProducerWorker):
    """Like ``ProducerWorker`` but through an agent's Kafka port with kafka-python
    (``retries=0``, idempotence off: the client must not retry on its own)."""

    def __init__(
        self,
        index: int,
        bootstrap: Callable[[], str],
        history: History,
        stop: threading.Event,
        *,
        topic: str,
        partitions: int,
        rate: float,
        client_id: str = "ray_stream-chaos",
    ) -> None:
        super().__init__(
            index, ClusterHolder(None), history, stop, topic=topic, partitions=partitions, rate=rate
        )
        self.name = f"k{index}"
        self.bootstrap = bootstrap
        self.client_id = client_id  # may name a zone: ray_stream_az=<zone>

    def run(self) -> None:
        from kafka import KafkaProducer  # type: ignore[import-untyped]

        n = 0
        producer: Any = None
        broken = threading.Event()
        process = ""
        while not self.stop.is_set():
            if producer is None or broken.is_set():
                _close_kafka_later(producer)
                producer, broken = None, threading.Event()
                try:
                    producer = KafkaProducer(
                        bootstrap_servers=self.bootstrap(),
                        client_id=self.client_id,
                        acks="all",
                        retries=0,
                        enable_idempotence=False,
                        linger_ms=5,
                        request_timeout_ms=10_000,
                        max_block_ms=10_000,
                        delivery_timeout_ms=20_000,
                        reconnect_backoff_ms=200,
                    )
                except Exception as exc:
                    self.failed(exc)
                    self.stop.wait(1.0)
                    continue
                self.incarnation += 1
                process = f"{self.name}.{self.incarnation}"
            if self.pending() >= MAX_UNANSWERED:
                time.sleep(0.05)
                continue
            value, partition = f"{self.name}-{n}", n % self.partitions
            n += 1
            self._kafka_send(producer, process, value, partition, broken)
            self.stop.wait(self.interval_s)
        _close_kafka_later(producer)

    def _kafka_send(
        self, producer: Any, process: str, value: str, partition: int, broken: threading.Event
    ) -> None:
        invoke = self.history.now()
        if broken.is_set():
            return
        with self._lock:
            self._unanswered[value] = (process, invoke, partition)
        try:
            future = producer.send(self.topic, value=value.encode(), partition=partition)
        except Exception as exc:  # e.g. metadata never arrived: nothing was sent
            self._answer(value, FAIL, error=error_text(exc))
            broken.set()
            return

        def ok(meta: Any) -> None:
            self._answer(value, OK, partition=meta.partition, offset=meta.offset)

        def failed(exc: BaseException) -> None:
            broken.set()
            self._answer(value, INFO, error=error_text(exc))

        future.add_callback(ok)
        future.add_errback(failed)


def _close_kafka_later(producer: Any) -> None:
    if producer is not None:
        threading.Thread(target=lambda: _quiet_kafka_close(producer), daemon=True).start()


def _quiet_kafka_close(producer: Any) -> None:
    with contextlib.suppress(Exception):
        producer.close(timeout=10)
