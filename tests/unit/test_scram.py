"""SCRAM server side (core/scram.py) against RFC 7677's SCRAM-SHA-256 exchange, plus
SHA-512 round trips through a client written from RFC 5802, and refusals of bad input."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ray_stream.core.scram import (
    MIN_ITERATIONS,
    ScramServer,
    credential_from_password,
    credential_from_salted_password,
    mechanism_code,
    mechanism_name,
    salted_password,
    verify_password,
)
from ray_stream.errors import AuthenticationFailed, InvalidRequest

# RFC 7677 section 3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_credential():
    return credential_from_password(
        "user", "SCRAM-SHA-256", "pencil", salt=RFC_SALT, iterations=4096
    )


def test_scram_sha256_rfc7677_exchange_byte_for_byte():
    server = ScramServer("SCRAM-SHA-256", server_nonce=RFC_SERVER_NONCE)
    assert server.receive_client_first(RFC_CLIENT_FIRST) == "user"
    assert server.server_first(rfc_credential()) == RFC_SERVER_FIRST
    assert server.receive_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.done


def test_scram_credential_never_holds_the_password_or_salted_password():
    cred = rfc_credential()
    salted = salted_password("SCRAM-SHA-256", "pencil", RFC_SALT, 4096)
    for value in (cred.stored_key, cred.server_key, cred.salt):
        assert b"pencil" not in value
        assert value != salted
    assert "pencil" not in repr(cred)


def test_scram_wrong_proof_fails_without_the_secret_in_the_message():
    server = ScramServer("SCRAM-SHA-256", server_nonce=RFC_SERVER_NONCE)
    server.receive_client_first(RFC_CLIENT_FIRST)
    server.server_first(credential_from_password("user", "SCRAM-SHA-256", "other", salt=RFC_SALT))
    with pytest.raises(AuthenticationFailed) as info:
        server.receive_client_final(RFC_CLIENT_FINAL)
    assert "pencil" not in str(info.value)
    assert "dHzb" not in str(info.value)
    assert not server.done


def test_scram_replayed_client_final_from_another_exchange_fails_on_the_nonce():
    server = ScramServer("SCRAM-SHA-256", server_nonce="a-fresh-nonce")
    server.receive_client_first(RFC_CLIENT_FIRST)
    server.server_first(rfc_credential())
    with pytest.raises(AuthenticationFailed, match="nonce mismatch"):
        server.receive_client_final(RFC_CLIENT_FINAL)


def test_scram_messages_out_of_order_fail_and_the_exchange_stays_failed():
    server = ScramServer("SCRAM-SHA-256", server_nonce=RFC_SERVER_NONCE)
    with pytest.raises(AuthenticationFailed, match="out of order"):
        server.receive_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(AuthenticationFailed, match="out of order"):
        server.receive_client_first(RFC_CLIENT_FIRST)


def test_scram_unknown_user_fails_at_server_first():
    server = ScramServer("SCRAM-SHA-256", server_nonce=RFC_SERVER_NONCE)
    server.receive_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        server.server_first(None)


def test_scram_credential_of_the_other_mechanism_is_refused():
    server = ScramServer("SCRAM-SHA-512", server_nonce=RFC_SERVER_NONCE)
    server.receive_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed):
        server.server_first(rfc_credential())


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\xff\xfe garbage",
        b"p=tls-unique,,n=user,r=abc",  # channel binding asked for
        b"n,,r=abc,n=user",  # attributes out of order
        b"n,,n=,r=abc",  # no user
        b"n,,n=us=er,r=abc",  # invalid escape
        b"n,,n=user,r=",  # empty nonce
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=user,r=abc,m=mandatory",
        b"n,,n=user,r=abc,tokenauth=true",
        b"n,a=admin,n=user,r=abc",  # authzid of another user
        b"n,,n=user,r=abc," + b"x=" + b"y" * 5000,
    ],
)
def test_scram_garbage_client_first_is_refused(message):
    server = ScramServer("SCRAM-SHA-256", server_nonce="sn")
    with pytest.raises(AuthenticationFailed):
        server.receive_client_first(message)


@pytest.mark.parametrize(
    "message",
    [
        b"garbage",
        b"c=biws,r=x",  # no proof
        b"c=!!!,r=rOprNGfwEbeRWgbNEkqOsn,p=AAAA",  # channel binding not base64
        b"c=eSws,r=rOprNGfwEbeRWgbNEkqOsn,p=AAAA",  # channel binding differs
        b"c=biws,r=rOprNGfwEbeRWgbNEkqOsn,p=!!!",  # proof not base64
        b"c=biws,r=rOprNGfwEbeRWgbNEkqOsn,p=AAAA",  # proof of the wrong length
        b"c=biws,p=AAAA,r=rOprNGfwEbeRWgbNEkqOsn",  # proof not last
    ],
)
def test_scram_garbage_client_final_is_refused(message):
    server = ScramServer("SCRAM-SHA-256", server_nonce="sn")
    server.receive_client_first(RFC_CLIENT_FIRST)
    server.server_first(rfc_credential())
    with pytest.raises(AuthenticationFailed):
        server.receive_client_final(message)


def _client_final(mechanism, password, client_first_bare, server_first):
    """RFC 5802 section 3, the client's side, for the round-trip tests."""
    digest = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}[mechanism]
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(
        digest().name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(digest(client_key).digest(), auth, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    expected = b"v=" + base64.b64encode(hmac.new(server_key, auth, digest).digest())
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode(), expected


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_round_trip_with_escaped_user_name(mechanism):
    user = "a,b=c"
    cred = credential_from_password(user, mechanism, "s3cret", salt=b"salty", iterations=4096)
    server = ScramServer(mechanism, server_nonce="srv")
    bare = "n=a=2Cb=3Dc,r=cli"
    assert server.receive_client_first(f"n,,{bare}".encode()) == user
    first = server.server_first(cred)
    final, expected = _client_final(mechanism, "s3cret", bare, first)
    assert server.receive_client_final(final) == expected


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_verify_password_serves_plain(mechanism):
    cred = credential_from_password("alice", mechanism, "right", salt=b"0123456789abcdef")
    assert verify_password(cred, "right")
    assert not verify_password(cred, "wrong")
    assert not verify_password(cred, "")


def test_scram_salted_password_from_a_kafka_admin_client_gives_the_same_keys():
    salted = salted_password("SCRAM-SHA-512", "pw", b"salt", 4096)
    via_admin = credential_from_salted_password(
        "bob", "SCRAM-SHA-512", salt=b"salt", iterations=4096, salted=salted
    )
    assert via_admin == credential_from_password(
        "bob", "SCRAM-SHA-512", "pw", salt=b"salt", iterations=4096
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": MIN_ITERATIONS - 1}, "iterations"),
        ({"iterations": 10**6}, "iterations"),
        ({"salt": b""}, "salt"),
        ({"salted": b"short"}, "salted password"),
    ],
)
def test_scram_credential_checks_name_the_field(kwargs, match):
    args = {"salt": b"s", "iterations": 4096, "salted": bytes(32)} | kwargs
    with pytest.raises(InvalidRequest, match=match):
        credential_from_salted_password("u", "SCRAM-SHA-256", **args)


def test_scram_mechanism_ids_are_kafkas():
    assert mechanism_code("SCRAM-SHA-256") == 1
    assert mechanism_name(2) == "SCRAM-SHA-512"
    with pytest.raises(InvalidRequest):
        mechanism_name(0)
    with pytest.raises(InvalidRequest):
        mechanism_code("PLAIN")
