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
        *_acl_frames(),
    ]


def _acl_frames() -> list[bytes]:
    """CreateAcls, DescribeAcls, DeleteAcls (the agent enforces ACLs: see the fixture)."""
    acl_filter = {
        "resource_type_filter": 2,
        "resource_name_filter": "fuzz-acl",
        "pattern_type_filter": 3,
        "principal_filter": "User:fuzz",
        "host_filter": None,
        "operation": 1,
        "permission_type": 1,
    }
    creation = {
        "resource_type": 2,
        "resource_name": "fuzz-acl",
        "resource_pattern_type": 4,
        "principal": "User:fuzz",
        "host": "*",
        "operation": 3,
        "permission_type": 3,
    }
    return [
        encode_request(ApiKey.CREATE_ACLS, 3, {"creations": [creation]}),
        encode_request(ApiKey.CREATE_ACLS, 1, {"creations": [creation, creation]}),
        encode_request(ApiKey.DESCRIBE_ACLS, 1, acl_filter),
        encode_request(ApiKey.DESCRIBE_ACLS, 3, acl_filter),
        encode_request(ApiKey.DELETE_ACLS, 2, {"filters": [acl_filter]}),
        encode_request(ApiKey.DELETE_ACLS, 3, {"filters": [acl_filter, acl_filter]}),
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

    def __init__(self, bootstrap: str, **config: object) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.config = config  # more librdkafka settings (SASL_SSL for the SASL fuzz)
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
                **self.config,
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
        # ACLs enforced, so garbage ACL requests reach the authorizer and the metadata's
        # ACL validation; the normal client (User:ANONYMOUS) is a super-user.
        authorizer="acl",
        super_users=("User:ANONYMOUS",),
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


# ---------------------------------------------------------------- TLS + SASL listener
# Issue 14's bad input: garbage in a SASL exchange, SCRAM replays, oversized auth frames,
# requests before authenticating, TLS handshakes that never finish (or carry garbage).
SASL_USER, SASL_PASSWORD = "fuzzer", "fuzz-password"
SASL_SEED_TOKENS = [
    b"n,,n=fuzzer,r=fuzznonce",
    b"n,a=fuzzer,n=fuzzer,r=x,tokenauth=true",
    b"c=biws,r=fuzznonceSERVER,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    b"\0fuzzer\0not-the-password",
    b"\0\0",
    b"=" * 64,
]
AUTH_FRAME_LIMIT = 512 * 1024  # kafka/sasl.py MAX_AUTH_FRAME_BYTES


@st.composite
def sasl_tokens(draw: st.DrawFn) -> bytes:
    """A seed token (SCRAM/PLAIN shaped) with byte mutations, or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    token = bytearray(draw(st.sampled_from(SASL_SEED_TOKENS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, max(0, len(token) - 1)))
        token[pos : pos + draw(st.integers(0, 3))] = draw(st.binary(max_size=4))
    return bytes(token)


@st.composite
def sasl_exchanges(draw: st.DrawFn) -> bytes:
    """SaslHandshake (v0/v1; served, unknown or absurd mechanism), then 1-3 tokens inside
    SaslAuthenticate v0-2 or, after a v0 handshake, raw; sometimes a request after."""
    version = draw(st.sampled_from([0, 1]))
    mechanism = draw(
        st.sampled_from(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "", "M" * 300])
    )
    data = encode_request(ApiKey.SASL_HANDSHAKE, version, {"mechanism": mechanism})
    for _ in range(draw(st.integers(1, 3))):
        token = draw(sasl_tokens())
        if version == 0 and draw(st.booleans()):
            data += struct.pack(">i", len(token)) + token
        else:
            data += encode_request(
                ApiKey.SASL_AUTHENTICATE, draw(st.integers(0, 2)), {"auth_bytes": token}
            )
    if draw(st.booleans()):
        data += draw(st.sampled_from(VALID))
    return data


@st.composite
def before_login(draw: st.DrawFn) -> bytes:
    """Requests other than ApiVersions first, or an auth-time frame over the limit."""
    if draw(st.booleans()):
        size = draw(st.integers(AUTH_FRAME_LIMIT + 1, 100 * 2**20))
        return struct.pack(">i", size) + draw(st.binary(max_size=64))
    return draw(st.sampled_from(VALID[2:]))  # VALID[:2] are ApiVersions (allowed)


def _tls_context():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tls_exchange(port: int, data: bytes) -> bytes:
    """``data`` on a fresh TLS connection; whatever came back before the server closed
    (or 0.2 s of silence)."""
    received = b""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            _tls_context().wrap_socket(raw) as sock,
        ):
            sock.sendall(data)
            sock.settimeout(0.2)
            while chunk := sock.recv(65536):
                received += chunk
    except OSError:  # reset, TLS alert or silence: the server refused, as it should
        pass
    return received


def _scram_final(bare: str, server_first: bytes) -> bytes:
    import base64
    import hashlib
    import hmac

    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", SASL_PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def _frames(data: bytes) -> list[bytes]:
    """Length-prefixed frames of ``data`` (a trailing partial frame is dropped)."""
    frames = []
    while len(data) >= 4:
        (size,) = struct.unpack(">i", data[:4])
        if len(data) < 4 + size:
            break
        frames.append(data[4 : 4 + size])
        data = data[4 + size :]
    return frames


def _replayed_client_final_is_refused(port: int) -> None:
    """A real client-final, captured, then replayed on a second connection: refused.

    After a v0 handshake the tokens are raw frames (KIP-152): the answers are the
    handshake response, the server-first, and (only if accepted) the server-final.
    """
    bare = f"n={SASL_USER},r=replay"
    login = encode_request(ApiKey.SASL_HANDSHAKE, 0, {"mechanism": "SCRAM-SHA-256"})
    login += struct.pack(">i", len(bare) + 3) + f"n,,{bare}".encode()
    _, server_first = _frames(_tls_exchange(port, login))
    assert server_first.startswith(b"r=replay"), server_first
    captured = _scram_final(bare, server_first)
    replay = _frames(_tls_exchange(port, login + struct.pack(">i", len(captured)) + captured))
    assert len(replay) == 2, "a replayed SCRAM client-final was answered with a server-final"


@pytest.fixture(scope="module")
def sasl_fuzz_cluster(ray_session, tmp_path_factory):
    from tests.tls_certs import make_pki

    pki = make_pki(tmp_path_factory.mktemp("fuzz-pki"))
    cluster = ray_stream.start_local(
        data_dir=str(tmp_path_factory.mktemp("sasl-fuzz")),
        namespace="sasl-fuzz-" + uuid.uuid4().hex[:8],
        kafka_port=-1,
        linger_ms=10,
        tls_cert_pem=pki.server_cert.read_text(),
        tls_key_pem=pki.server_key.read_text(),
        tls_handshake_timeout_s=2.0,
        sasl_mechanisms=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    cluster.create_topic(TOPIC, 2)
    cluster.add_user(SASL_USER, SASL_PASSWORD)
    yield cluster, pki
    cluster.shutdown()


def test_fuzzed_tls_and_sasl_never_crash_the_agent_and_clients_are_served(sasl_fuzz_cluster):
    cluster, pki = sasl_fuzz_cluster
    (broker,) = cluster.brokers()
    port = broker.port
    pid = actor_call(cluster.agent(0), "pid")
    _tls_exchange(port, VALID[0])  # warm the TLS and SASL paths before the baseline
    rss_before, fds_before = _rss_and_fds(pid)
    client = NormalClient(
        f"127.0.0.1:{port}",
        **{
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": SASL_USER,
            "sasl.password": SASL_PASSWORD,
            "ssl.ca.location": str(pki.ca),
        },
    )
    client.start()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    counts = {"sasl": 0, "before_login": 0, "tls_garbage": 0}

    def alive(data: bytes) -> None:
        now = actor_call(cluster.agent(0), "pid", timeout_s=30)
        if now != pid:
            pytest.fail(f"agent pid {pid} -> {now} after this {len(data)}-byte input: {data.hex()}")

    @settings(SETTINGS, max_examples=150)
    @given(sasl_exchanges())
    def fuzz_sasl(data: bytes) -> None:
        counts["sasl"] += 1
        _tls_exchange(port, data)
        alive(data)

    @settings(SETTINGS, max_examples=60)
    @given(before_login())
    def fuzz_before_login(data: bytes) -> None:
        counts["before_login"] += 1
        answer = _tls_exchange(port, data)
        assert answer == b"", f"answered {len(answer)} bytes before a login: {data[:64].hex()}"
        alive(data)

    @settings(SETTINGS, max_examples=60)
    @given(random_frames() | mutated_frames())
    def fuzz_tls_garbage(data: bytes) -> None:  # no TLS at all: garbage as a ClientHello
        counts["tls_garbage"] += 1
        _exchange(port, data)
        alive(data)

    started = time.monotonic()
    try:
        fuzz_sasl()
        fuzz_before_login()
        fuzz_tls_garbage()
        _replayed_client_final_is_refused(port)
        for sock in silent:  # TLS handshakes never started: dropped after 2 s
            sock.settimeout(10)
            assert sock.recv(1) == b""
        time.sleep(7.0)  # refused logins are held back (up to 5 s) and linger 1 s
        rss_after, fds_after = _rss_and_fds(pid)
    finally:
        client.stop.set()
        client.join(30)
        for sock in silent:
            sock.close()
    elapsed = time.monotonic() - started
    print(
        f"tls/sasl fuzz: {counts} in {elapsed:.1f}s; rss {rss_before / 2**20:.1f}->"
        f"{rss_after / 2**20:.1f} MiB; fds {fds_before}->{fds_after}; "
        f"normal client delivered {len(client.delivered)}"
    )
    assert rss_after - rss_before < RSS_BUDGET
    assert fds_after - fds_before <= FD_BUDGET, f"agent fds {fds_before} -> {fds_after}"
    assert not client.failed, client.failed[:5]
    assert len(client.delivered) >= min(10, elapsed / 2), (len(client.delivered), elapsed)
    logged = set(cluster.read_table(TOPIC, partitions=[1]).column("value").to_pylist())
    assert set(client.delivered) <= logged
