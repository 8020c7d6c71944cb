"""Hostile Kafka frames at a live agent: it never crashes, stays bounded, keeps serving.

Hypothesis throws random bytes, mutated valid frames (ApiVersions, Metadata, Produce,
Fetch encoded through kio), truncated frames and absurd length prefixes at the agent's
Kafka port, one connection per example. Meanwhile a confluent-kafka producer sends a
record every ~0.3 s through the same port. Afterwards: the agent has the same pid, its
RSS grew by less than ``RSS_BUDGET`` and its open file descriptors by a handful, and
every record the normal client was told was delivered is in the log. (RSS and fds come
from /proc: the agent and the test share the machine.)
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import ray_stream
from ray_stream.kafka.records import Record, encode_batch
from ray_stream.kafka.versions import ApiKey
from ray_stream.testing.nemesis import actor_call
from tests.fakes import encode_request, fetch_request

pytestmark = pytest.mark.integration

RSS_BUDGET = 128 * 1024 * 1024
FD_BUDGET = 16
TOPIC = "fuzz"
SETTINGS = settings(
    deadline=None,
    # No shrinking: once the agent has died every later example fails too, so the first
    # failing frame (named in the message) is the culprit.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)


def _valid_frames() -> list[bytes]:
    batch = encode_batch([Record(value=b"fuzz-seed", key=b"k")], now_ms=0)
    produce = {
        "transactional_id": None,
        "acks": -1,
        "timeout": 5000,
        "topic_data": [{"name": TOPIC, "partition_data": [{"index": 0, "records": batch}]}],
    }
    metadata = {
        "topics": [{"name": TOPIC, "topic_id": None}],
        "allow_auto_topic_creation": False,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }
    return [
        encode_request(ApiKey.API_VERSIONS, 0, {}),
        encode_request(
            ApiKey.API_VERSIONS, 3, {"client_software_name": "fuzz", "client_software_version": "1"}
        ),
        encode_request(ApiKey.METADATA, 1, {"topics": [{"name": TOPIC}]}),
        encode_request(ApiKey.METADATA, 9, metadata),
        encode_request(ApiKey.PRODUCE, 3, {**produce, "acks": 1}),
        encode_request(ApiKey.PRODUCE, 9, produce),
        encode_request(ApiKey.FETCH, 11, fetch_request(TOPIC, 0, 0, 0, 1)),
    ]


VALID = _valid_frames()
EXTREME_INTS = [-(2**31), -2, -1, 0, 1, 2**15, 2**31 - 1]
# Unsigned varints as flexible versions encode compact array/string/bytes lengths + 1.
HUGE_UVARINTS = [b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x08", b"\x00"]
# Found by this test: a Metadata v9 request whose topics compact-array length is 2**32-2.
# kio's native reader tried to allocate ~253 GB and the Rust allocator aborted the agent.
KNOWN_CRASHER = bytes.fromhex(
    "000000250003000900000001000f7261792d73747265616d2d7465737400ffffffff0f7a0000000000"
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with 1-8 byte-level mutations; usually re-framed so the body parses."""
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "int32", "int16", "uvarint"]))
        pos = draw(st.integers(4, max(4, len(frame) - 1)))
        if op == "flip" and pos < len(frame):
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(frame):
            frame[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del frame[pos : pos + draw(st.integers(1, 16))]
        elif op == "int32":  # array lengths, string lengths, sizes
            frame[pos : pos + 4] = struct.pack(">i", draw(st.sampled_from(EXTREME_INTS)))
        elif op == "int16":
            frame[pos : pos + 2] = struct.pack(
                ">h", draw(st.sampled_from([-1, 0, 2**15 - 1, -(2**15)]))
            )
        elif op == "uvarint":
            patch = draw(st.sampled_from(HUGE_UVARINTS))
            frame[pos : pos + len(patch)] = patch
    if len(frame) >= 4 and draw(st.booleans() | st.just(True)):
        frame[0:4] = struct.pack(">i", len(frame) - 4)
    return bytes(frame)


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    """Random bodies: raw, or behind a correct length prefix and a plausible header."""
    body = draw(st.binary(max_size=2048))
    kind = draw(st.sampled_from(["raw", "framed", "header"]))
    if kind == "raw":
        return body
    if kind == "header":
        api_key = draw(st.integers(-1, 70))
        version = draw(st.integers(-1, 20))
        body = struct.pack(">hhi", api_key, version, draw(st.integers(0, 2**31 - 1))) + body
    return struct.pack(">i", len(body)) + body


@st.composite
def huge_prefixes(draw: st.DrawFn) -> bytes:
    size = draw(
        st.sampled_from([-(2**31), -1, 0, 50 * 2**20, 100 * 2**20 + 1, 2**31 - 1])
        | st.integers(-(2**31), 2**31 - 1)
    )
    return struct.pack(">i", size) + draw(st.binary(max_size=256))


def _rss_and_fds(pid: int) -> tuple[int, int]:
    """Resident set size in bytes and open file descriptors of a local process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb * 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _exchange(port: int, data: bytes, *, close_early: bool = False) -> None:
    """Send ``data`` on a fresh connection, read whatever comes back briefly, close."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(data)
            if close_early:
                return
            sock.settimeout(0.05)
            while sock.recv(65536):
                pass
    except OSError:  # reset/refused by a server closing a bad connection: expected
        pass


class NormalClient(threading.Thread):
    """A confluent-kafka producer sending one record every ~0.3 s until stopped."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.stop = threading.Event()
        self.delivered: list[bytes] = []
        self.failed: list[str] = []

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "linger.ms": 0,
                "message.timeout.ms": 20000,
                "log_level": 3,
            }
        )
        n = 0
        while not self.stop.is_set():
            value = f"normal-{n}".encode()
            n += 1
            outcome: list[object] = []

            def report(err: object, msg: object, outcome: list[object] = outcome) -> None:
                outcome.append(err or msg)

            producer.produce(
                TOPIC,
                value=value,
                partition=1,
                on_delivery=report,
            )
            producer.flush(20)
            if outcome and not isinstance(outcome[0], Exception) and hasattr(outcome[0], "offset"):
                self.delivered.append(value)
            else:
                self.failed.append(f"{value!r}: {outcome[0] if outcome else 'no delivery report'}")
            self.stop.wait(0.3)


@pytest.fixture(scope="module")
def fuzz_cluster(ray_session, tmp_path_factory):
    cluster = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("fuzz")),
        namespace="fuzz-" + uuid.uuid4().hex[:8],
        kafka_port=-1,
        linger_ms=10,
    )
    cluster.create_topic(TOPIC, 2)
    yield cluster
    cluster.shutdown()


def test_fuzzed_frames_never_crash_or_bloat_the_agent_and_clients_are_served(fuzz_cluster):
    cluster = fuzz_cluster
    (broker,) = cluster.brokers()
    port = broker.port
    pid = actor_call(cluster.agent(0), "pid")
    for frame in VALID:  # warm every handler path once before the baseline
        _exchange(port, frame)
    rss_before, fds_before = _rss_and_fds(pid)
    client = NormalClient(f"127.0.0.1:{port}")
    client.start()
    counts = {"mutated": 0, "random": 0, "truncated": 0, "huge": 0}

    def alive(data: bytes) -> None:
        """Fail naming ``data`` if the agent process did not survive it."""
        try:
            now = actor_call(cluster.agent(0), "pid", timeout_s=30)
        except Exception as exc:
            now = f"unreachable ({type(exc).__name__})"
        if now != pid:
            pytest.fail(f"agent pid {pid} -> {now} after this {len(data)}-byte input: {data.hex()}")

    started = time.monotonic()

    @settings(SETTINGS, max_examples=1200)
    @given(mutated_frames())
    @example(KNOWN_CRASHER)
    def fuzz_mutated(data: bytes) -> None:
        counts["mutated"] += 1
        _exchange(port, data)
        alive(data)

    @settings(SETTINGS, max_examples=600)
    @given(random_frames())
    def fuzz_random(data: bytes) -> None:
        counts["random"] += 1
        _exchange(port, data)
        alive(data)

    @settings(SETTINGS, max_examples=300)
    @given(st.sampled_from(VALID), st.integers(min_value=1, max_value=200))
    def fuzz_truncated(frame: bytes, cut: int) -> None:
        counts["truncated"] += 1
        data = frame[: max(1, len(frame) - cut)]
        _exchange(port, data, close_early=True)
        alive(data)

    @settings(SETTINGS, max_examples=200)
    @given(huge_prefixes())
    def fuzz_huge(data: bytes) -> None:
        counts["huge"] += 1
        _exchange(port, data, close_early=len(data) % 2 == 0)
        alive(data)

    try:
        fuzz_mutated()
        fuzz_random()
        fuzz_truncated()
        fuzz_huge()
        assert actor_call(cluster.agent(0), "pid") == pid, "the agent process was replaced"
        time.sleep(1.0)  # let closed connections be reaped before measuring
        rss_after, fds_after = _rss_and_fds(pid)
    finally:
        client.stop.set()
        client.join(30)
    elapsed = time.monotonic() - started
    print(
        f"fuzz: {counts} in {elapsed:.1f}s; rss {rss_before / 2**20:.1f}->"
        f"{rss_after / 2**20:.1f} MiB; fds {fds_before}->{fds_after}; "
        f"normal client delivered {len(client.delivered)}"
    )
    assert sum(counts.values()) >= 2000, counts
    assert rss_after - rss_before < RSS_BUDGET, (
        f"agent RSS grew {(rss_after - rss_before) / 2**20:.1f} MiB over {counts}"
    )
    assert fds_after - fds_before <= FD_BUDGET, f"agent fds {fds_before} -> {fds_after}"
    assert not client.failed, client.failed[:5]
    assert len(client.delivered) >= min(10, elapsed / 2), (len(client.delivered), elapsed)
    logged = set(cluster.read_table(TOPIC, partitions=[1]).column("value").to_pylist())
    assert set(client.delivered) <= logged
