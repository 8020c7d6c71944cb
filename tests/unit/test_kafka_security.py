"""TLS and SASL on the Kafka listener, over real TCP on 127.0.0.1 with real clients.

No Ray: real agents (``LogService``) and the real ``MetadataService`` run in a background
loop (``tests/fakes.KafkaTestCluster``); confluent-kafka (librdkafka), kafka-python and
aiokafka connect with SASL_SSL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), with a client
certificate, with a wrong password, and in plaintext to a TLS port. Raw-socket tests
send what a hostile client would: requests before authenticating, garbage tokens,
replayed SCRAM messages, oversized frames, a TLS handshake that never finishes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from ray_stream.config import Settings
from ray_stream.core.scram import credential_from_password
from ray_stream.kafka.context import ANONYMOUS
from ray_stream.kafka.handlers import KafkaHandlers
from ray_stream.kafka.versions import ApiKey
from tests.fakes import KafkaTestCluster, RawClient, decode_response, encode_request
from tests.tls_certs import Pki, make_pki

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USER, PASSWORD = "alice", "correct horse battery staple"


@dataclass
class Secured:
    cluster: KafkaTestCluster
    pki: Pki
    peers: list[Any]  # every Peer a handler was given (who sent what)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def port(self) -> int:
        return self.cluster.ports[0]


def add_user(cluster: KafkaTestCluster, user: str, password: str) -> None:
    """What ``ray-stream users add`` stores: both SCRAM mechanisms, salted and hashed."""
    creds = [
        credential_from_password(user, m, password, salt=uuid.uuid4().bytes, iterations=4096)
        for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")
    ]
    cluster.run(cluster.meta.alter_scram_credentials(creds, []))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def peers_seen() -> Iterator[list[Any]]:
    """Spy on the Peer every handler call gets (module-wide: patched for the clusters)."""
    seen: list[Any] = []
    real = KafkaHandlers.handle

    async def spy(self: Any, request: Any, *, peer: Any) -> Any:
        seen.append((request.api_key, peer.principal))
        return await real(self, request, peer=peer)

    KafkaHandlers.handle = spy  # type: ignore[method-assign]
    yield seen
    KafkaHandlers.handle = real  # type: ignore[method-assign]


def _start(tmp_path_factory, **settings: Any) -> KafkaTestCluster:
    base = Settings(
        data_dir=str(tmp_path_factory.mktemp("secure")), auto_create_topics=True, **settings
    )
    return KafkaTestCluster(base, agents=1).__enter__()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pki, peers_seen) -> Iterator[Secured]:
    """TLS + SASL with every mechanism; user alice."""
    cluster = _start(
        tmp_path_factory,
        tls_cert_pem=pki.server_cert.read_text(),
        tls_key_pem=pki.server_key.read_text(),
        sasl_mechanisms=MECHANISMS,
        tls_handshake_timeout_s=1.0,
    )
    add_user(cluster, USER, PASSWORD)
    yield Secured(cluster, pki, peers_seen)
    cluster.close()


@pytest.fixture
def sasl_plaintext(tmp_path_factory) -> Iterator[KafkaTestCluster]:
    """SASL without TLS (PLAIN explicitly allowed), for raw-socket tests: one per test,
    so the failed logins of one test do not slow the next (the delay is per address)."""
    cluster = _start(tmp_path_factory, sasl_mechanisms=MECHANISMS, allow_plaintext_sasl=True)
    add_user(cluster, USER, PASSWORD)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory, pki, peers_seen) -> Iterator[Secured]:
    """TLS with client certificates required (no SASL): the CN is the principal."""
    cluster = _start(
        tmp_path_factory,
        tls_cert_pem=pki.server_cert.read_text(),
        tls_key_pem=pki.server_key.read_text(),
        tls_ca_pem=pki.ca.read_text(),
    )
    yield Secured(cluster, pki, peers_seen)
    cluster.close()


def _topic() -> str:
    return "sec" + uuid.uuid4().hex[:10]


# ------------------------------------------------------------------ confluent-kafka
def _confluent(secured: Secured, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "bootstrap.servers": secured.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mechanism,
        "sasl.username": USER,
        "sasl.password": password,
        "ssl.ca.location": str(secured.pki.ca),
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_security_confluent_sasl_ssl_produces_and_consumes(secured, mechanism):
    topic = _topic()
    producer = Producer(_confluent(secured, mechanism))
    for i in range(5):
        producer.produce(topic, b"c%d" % i)
    assert producer.flush(20) == 0
    consumer = Consumer(
        {
            **_confluent(secured, mechanism),
            "group.id": "g" + topic,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    got, deadline = [], time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None:
            assert message.error() is None, message.error()
            got.append(message.value())
    consumer.close()
    assert got == [b"c%d" % i for i in range(5)]
    assert (ApiKey.PRODUCE, f"User:{USER}") in secured.peers


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_security_confluent_wrong_password_fails(secured, mechanism):
    errors: list[Any] = []
    producer = Producer({**_confluent(secured, mechanism, "wrong"), "error_cb": errors.append})
    producer.produce(_topic(), b"never")
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert producer.purge() is None
    assert producer.flush(1) == 0  # purged: nothing was delivered


def test_security_plaintext_client_cannot_talk_to_a_tls_listener(secured):
    admin = AdminClient({"bootstrap.servers": secured.bootstrap, "socket.timeout.ms": 2000})
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=3)
    raw = RawClient(secured.port)
    raw.send(encode_request(ApiKey.API_VERSIONS, 0, {}))
    assert raw.read_frame() is None  # not a Kafka answer: the TLS layer hung up
    raw.close()


# --------------------------------------------------------------------- kafka-python
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_security_kafka_python_sasl_ssl_produces_and_consumes(secured, mechanism):
    import kafka

    options = {
        "bootstrap_servers": secured.bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": USER,
        "sasl_plain_password": PASSWORD,
        "ssl_cafile": str(secured.pki.ca),
    }
    topic = _topic()
    producer = kafka.KafkaProducer(**options)
    futures = [producer.send(topic, b"k%d" % i, partition=0) for i in range(5)]
    producer.flush(20)
    assert [f.get(10).offset for f in futures] == list(range(5))
    producer.close()
    consumer = kafka.KafkaConsumer(**options, fetch_max_wait_ms=100)
    consumer.assign([kafka.TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got, deadline = [], time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += [r.value for r in records]
    consumer.close()
    assert got == [b"k%d" % i for i in range(5)]


def test_security_kafka_python_wrong_password_fails(secured, caplog):
    import kafka
    from kafka.errors import KafkaTimeoutError

    with caplog.at_level(logging.WARNING, logger="kafka"), pytest.raises(KafkaTimeoutError):
        kafka.KafkaProducer(  # kafka-python retries a refused login until bootstrap times out
            bootstrap_servers=secured.bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username=USER,
            sasl_plain_password="wrong",
            ssl_cafile=str(secured.pki.ca),
            bootstrap_timeout_ms=2000,
        )
    assert "SaslAuthenticationFailedError" in caplog.text


# ------------------------------------------------------------------------- aiokafka
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_security_aiokafka_sasl_ssl_produces_and_consumes(secured, mechanism):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.helpers import create_ssl_context
    from aiokafka.structs import TopicPartition as ATopicPartition

    topic = _topic()

    async def scenario() -> list[bytes]:
        options = {
            "bootstrap_servers": secured.bootstrap,
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=str(secured.pki.ca)),
            "sasl_mechanism": mechanism,
            "sasl_plain_username": USER,
            "sasl_plain_password": PASSWORD,
        }
        producer = AIOKafkaProducer(**options)
        await producer.start()
        for i in range(5):
            await producer.send_and_wait(topic, b"a%d" % i, partition=0)
        await producer.stop()
        consumer = AIOKafkaConsumer(**options, auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        consumer.assign([ATopicPartition(topic, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [r.value for r in records]
        await consumer.stop()
        return got

    assert asyncio.run(scenario()) == [b"a%d" % i for i in range(5)]


def test_security_aiokafka_wrong_password_fails(secured):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as AIOError
    from aiokafka.helpers import create_ssl_context

    async def scenario() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=secured.bootstrap,
            security_protocol="SASL_SSL",
            ssl_context=create_ssl_context(cafile=str(secured.pki.ca)),
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=USER,
            sasl_plain_password="wrong",
            request_timeout_ms=5000,
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(AIOError):
        asyncio.run(scenario())


# ------------------------------------------------------------------ client certificates
def test_security_client_certificate_cn_is_the_principal(mutual_tls):
    config = {
        "bootstrap.servers": mutual_tls.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(mutual_tls.pki.ca),
        "ssl.certificate.location": str(mutual_tls.pki.client_cert),
        "ssl.key.location": str(mutual_tls.pki.client_key),
    }
    topic = _topic()
    producer = Producer(config)
    producer.produce(topic, b"cert")
    assert producer.flush(20) == 0
    assert (ApiKey.PRODUCE, "User:alice") in mutual_tls.peers


@pytest.mark.parametrize("certificate", ["none", "rogue"])
def test_security_client_without_a_trusted_certificate_is_refused(mutual_tls, certificate):
    context = ssl.create_default_context(cafile=str(mutual_tls.pki.ca))
    if certificate == "rogue":
        context.load_cert_chain(mutual_tls.pki.rogue_cert, mutual_tls.pki.rogue_key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _api_versions_over_tls(context, mutual_tls.port)


def _api_versions_over_tls(context: ssl.SSLContext, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
        tls.sendall(encode_request(ApiKey.API_VERSIONS, 0, {}))
        if not tls.recv(4):  # TLS 1.3: the refusal arrives with the first read
            raise ConnectionError("closed by the server")


# ------------------------------------------------------------------------- raw wire
def _handshake(version: int, mechanism: str, correlation_id: int = 1) -> bytes:
    return encode_request(
        ApiKey.SASL_HANDSHAKE, version, {"mechanism": mechanism}, correlation_id=correlation_id
    )


def _authenticate(token: bytes, version: int = 2, correlation_id: int = 2) -> bytes:
    return encode_request(
        ApiKey.SASL_AUTHENTICATE, version, {"auth_bytes": token}, correlation_id=correlation_id
    )


def _answer(client: RawClient, api_key: int, version: int) -> Any:
    frame = client.read_frame()
    assert frame is not None, "the server closed the connection"
    return decode_response(api_key, version, frame)[1]


def _login(client: RawClient, mechanism: str, *, user: str = USER, password: str = PASSWORD):
    """Handshake v1 then SaslAuthenticate v2; returns the last SaslAuthenticate answer."""
    client.send(_handshake(1, mechanism))
    assert _answer(client, ApiKey.SASL_HANDSHAKE, 1).error_code == ErrorCode.none
    if mechanism == "PLAIN":
        client.send(_authenticate(b"\0%s\0%s" % (user.encode(), password.encode())))
        return _answer(client, ApiKey.SASL_AUTHENTICATE, 2)
    bare = f"n={user},r=clientnonce"
    client.send(_authenticate(f"n,,{bare}".encode()))
    first = _answer(client, ApiKey.SASL_AUTHENTICATE, 2)
    if first.error_code != ErrorCode.none:
        return first
    final = _scram_final(mechanism, password, bare, first.auth_bytes)
    client.send(_authenticate(final, correlation_id=3))
    return _answer(client, ApiKey.SASL_AUTHENTICATE, 2)


def _scram_final(mechanism: str, password: str, bare: str, server_first: bytes) -> bytes:
    digest = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}[mechanism]
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(
        digest().name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(digest(client_key).digest(), auth, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def _metadata_request(correlation_id: int = 9) -> bytes:
    return encode_request(ApiKey.METADATA, 1, {"topics": None}, correlation_id=correlation_id)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_security_raw_login_then_requests_are_served(sasl_plaintext, mechanism):
    client = RawClient(sasl_plaintext.ports[0])
    assert _login(client, mechanism).error_code == ErrorCode.none
    client.send(_metadata_request())
    assert _answer(client, ApiKey.METADATA, 1).brokers
    client.close()


def test_security_raw_v0_handshake_uses_raw_tokens(sasl_plaintext):
    """KIP-152: after SaslHandshake v0 the tokens are bare length-prefixed frames."""
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_handshake(0, "SCRAM-SHA-256"))
    assert _answer(client, ApiKey.SASL_HANDSHAKE, 0).error_code == ErrorCode.none
    bare = f"n={USER},r=rawnonce"
    token = f"n,,{bare}".encode()
    client.send(len(token).to_bytes(4, "big") + token)
    server_first = client.read_frame()
    assert server_first is not None
    assert server_first.startswith(b"r=rawnonce")
    final = _scram_final("SCRAM-SHA-256", PASSWORD, bare, server_first)
    client.send(len(final).to_bytes(4, "big") + final)
    server_final = client.read_frame()
    assert server_final is not None
    assert server_final.startswith(b"v=")
    client.send(_metadata_request())
    assert _answer(client, ApiKey.METADATA, 1).brokers
    client.close()


def test_security_request_before_authentication_closes_the_connection(sasl_plaintext, caplog):
    client = RawClient(sasl_plaintext.ports[0])
    client.send(encode_request(ApiKey.API_VERSIONS, 0, {}))  # allowed before a login
    assert _answer(client, ApiKey.API_VERSIONS, 0).error_code == ErrorCode.none
    with caplog.at_level(logging.WARNING, logger="ray_stream.server.kafka_server"):
        client.send(_metadata_request())
        assert client.read_frame() is None
    assert "before authenticating" in caplog.text
    client.close()


@pytest.mark.parametrize(
    "token",
    [b"", b"\xff" * 64, b"n,,garbage", b"n,,n=alice", b"p=tls,,n=alice,r=x"],
)
def test_security_garbage_scram_token_is_refused_and_closed(sasl_plaintext, token):
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_handshake(1, "SCRAM-SHA-256"))
    _answer(client, ApiKey.SASL_HANDSHAKE, 1)
    client.send(_authenticate(token))
    answer = _answer(client, ApiKey.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert client.read_frame() is None
    client.close()


def test_security_scram_nonce_replay_is_refused(sasl_plaintext):
    """A client-final captured from one login fails on another connection."""
    bare = f"n={USER},r=replayed"
    first_client = RawClient(sasl_plaintext.ports[0])
    first_client.send(_handshake(1, "SCRAM-SHA-256"))
    _answer(first_client, ApiKey.SASL_HANDSHAKE, 1)
    first_client.send(_authenticate(f"n,,{bare}".encode()))
    server_first = _answer(first_client, ApiKey.SASL_AUTHENTICATE, 2).auth_bytes
    captured = _scram_final("SCRAM-SHA-256", PASSWORD, bare, server_first)
    first_client.close()

    replay = RawClient(sasl_plaintext.ports[0])
    replay.send(_handshake(1, "SCRAM-SHA-256"))
    _answer(replay, ApiKey.SASL_HANDSHAKE, 1)
    replay.send(_authenticate(f"n,,{bare}".encode()))
    _answer(replay, ApiKey.SASL_AUTHENTICATE, 2)
    replay.send(_authenticate(captured, correlation_id=3))
    answer = _answer(replay, ApiKey.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    assert "nonce" in answer.error_message
    assert replay.read_frame() is None
    replay.close()


def test_security_wrong_password_answers_58_without_the_secret_and_is_delayed(
    sasl_plaintext, caplog
):
    with caplog.at_level(logging.WARNING, logger="ray_stream.server.kafka_server"):
        took = []
        for _ in range(3):
            client = RawClient(sasl_plaintext.ports[0])
            started = time.monotonic()
            answer = _login(client, "PLAIN", password="hunter2-wrong")
            took.append(time.monotonic() - started)
            assert answer.error_code == ErrorCode.sasl_authentication_failed
            assert client.read_frame() is None
            client.close()
    assert took[2] >= 0.35  # 0.1, 0.2, 0.4 s: the delay grows per address
    assert "hunter2" not in caplog.text
    assert "failed SASL authentication" in caplog.text
    client = RawClient(sasl_plaintext.ports[0])  # the right password still works
    assert _login(client, "SCRAM-SHA-512").error_code == ErrorCode.none
    client.close()


def test_security_unknown_mechanism_and_unknown_user_are_refused(sasl_plaintext):
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_handshake(1, "GSSAPI"))
    answer = _answer(client, ApiKey.SASL_HANDSHAKE, 1)
    assert answer.error_code == ErrorCode.unsupported_sasl_mechanism
    assert set(answer.mechanisms) == set(MECHANISMS)
    assert client.read_frame() is None
    client.close()
    client = RawClient(sasl_plaintext.ports[0])
    answer = _login(client, "SCRAM-SHA-256", user="nobody")
    assert answer.error_code == ErrorCode.sasl_authentication_failed
    client.close()


def test_security_oversized_auth_frame_closes_the_connection(sasl_plaintext):
    client = RawClient(sasl_plaintext.ports[0])
    client.send((1024 * 1024).to_bytes(4, "big") + b"\0" * 16)  # over 512 KiB before login
    assert client.read_frame() is None
    client.close()


def test_security_authenticate_before_handshake_is_illegal(sasl_plaintext):
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_authenticate(b"\0alice\0pw"))
    answer = _answer(client, ApiKey.SASL_AUTHENTICATE, 2)
    assert answer.error_code == ErrorCode.illegal_sasl_state
    assert client.read_frame() is None
    client.close()


def test_security_tls_handshake_that_never_finishes_is_dropped(secured):
    silent = socket.create_connection(("127.0.0.1", secured.port), timeout=10)
    started = time.monotonic()
    # Meanwhile another client is served.
    producer = Producer(_confluent(secured, "SCRAM-SHA-256"))
    producer.produce(_topic(), b"served")
    assert producer.flush(20) == 0
    assert silent.recv(1) == b""  # closed by the server after tls_handshake_timeout_s
    assert time.monotonic() - started < 8
    silent.close()


def test_security_principal_is_anonymous_until_the_login_then_the_user(sasl_plaintext, peers_seen):
    peers_seen.clear()
    client = RawClient(sasl_plaintext.ports[0])
    client.send(encode_request(ApiKey.API_VERSIONS, 0, {}))
    _answer(client, ApiKey.API_VERSIONS, 0)
    assert _login(client, "SCRAM-SHA-256").error_code == ErrorCode.none
    client.send(_metadata_request())
    _answer(client, ApiKey.METADATA, 1)
    client.close()
    assert peers_seen == [(ApiKey.API_VERSIONS, ANONYMOUS), (ApiKey.METADATA, f"User:{USER}")]


def test_security_sasl_handshake_to_a_listener_without_sasl_is_unsupported(tmp_path):
    cluster = KafkaTestCluster(Settings(data_dir=str(tmp_path))).__enter__()
    try:
        client = RawClient(cluster.ports[0])
        client.send(_handshake(1, "PLAIN"))
        answer = _answer(client, ApiKey.SASL_HANDSHAKE, 1)
        assert answer.error_code == ErrorCode.unsupported_sasl_mechanism
        assert answer.mechanisms == ()
        assert client.read_frame() is None
        client.close()
    finally:
        cluster.close()


def test_security_admin_client_manages_scram_users_over_the_wire(secured):
    """AlterUserScramCredentials / DescribeUserScramCredentials from librdkafka's admin
    client; the new user then logs in with SCRAM and PLAIN."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(_confluent(secured, "SCRAM-SHA-256"))
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    upsert = UserScramCredentialUpsertion("carol", info, b"carol-pw", b"carol-salt")
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=20)
    described = admin.describe_user_scram_credentials(["carol"])["carol"].result(timeout=20)
    infos = described.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_512, 4096)]

    for mechanism in ("SCRAM-SHA-512", "PLAIN"):
        config = {**_confluent(secured, mechanism), "sasl.username": "carol"}
        config["sasl.password"] = "carol-pw"
        producer = Producer(config)
        producer.produce(_topic(), b"by carol")
        assert producer.flush(20) == 0

    bad = UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_256)  # never stored
    (refused,) = admin.alter_user_scram_credentials([bad]).values()
    with pytest.raises(confluent_kafka.KafkaException, match="no SCRAM-SHA-256 credential"):
        refused.result(timeout=20)
    gone = UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)
    for future in admin.alter_user_scram_credentials([gone]).values():
        future.result(timeout=20)
    with pytest.raises(confluent_kafka.KafkaException, match="no SCRAM credential"):
        admin.describe_user_scram_credentials(["carol"])["carol"].result(timeout=20)


def test_security_connection_that_never_logs_in_is_dropped(sasl_plaintext, monkeypatch):
    from ray_stream.server import kafka_server

    monkeypatch.setattr(kafka_server, "LOGIN_TIMEOUT_S", 0.5)
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_handshake(1, "SCRAM-SHA-256"))  # then nothing more
    assert _answer(client, ApiKey.SASL_HANDSHAKE, 1).error_code == ErrorCode.none
    started = time.monotonic()
    assert client.read_frame() is None
    assert time.monotonic() - started < 5
    client.close()
    logged_in = RawClient(sasl_plaintext.ports[0])  # a login in time is not affected
    assert _login(logged_in, "PLAIN").error_code == ErrorCode.none
    time.sleep(0.7)
    logged_in.send(_metadata_request())
    assert _answer(logged_in, ApiKey.METADATA, 1).brokers
    logged_in.close()


def test_security_raw_v0_plain_login_answers_an_empty_token(sasl_plaintext):
    client = RawClient(sasl_plaintext.ports[0])
    client.send(_handshake(0, "PLAIN"))
    assert _answer(client, ApiKey.SASL_HANDSHAKE, 0).error_code == ErrorCode.none
    token = b"\0%s\0%s" % (USER.encode(), PASSWORD.encode())
    client.send(len(token).to_bytes(4, "big") + token)
    assert client.read_frame() == b""  # Kafka answers a raw PLAIN token with an empty one
    client.send(_metadata_request())
    assert _answer(client, ApiKey.METADATA, 1).brokers
    client.close()
    wrong = RawClient(sasl_plaintext.ports[0])
    wrong.send(_handshake(0, "PLAIN"))
    _answer(wrong, ApiKey.SASL_HANDSHAKE, 0)
    token = b"\0%s\0nope" % USER.encode()
    wrong.send(len(token).to_bytes(4, "big") + token)
    assert wrong.read_frame() is None  # raw exchanges carry no error: just closed
    wrong.close()
