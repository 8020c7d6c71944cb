"""TLS/SASL settings, their CLI flags and environment variables, the server TLS context,
and ``ray-stream users`` (no Ray, no network)."""

from __future__ import annotations

import io
import ssl

import pytest

from ray_stream.cli import _settings_kwargs, build_parser
from ray_stream.config import Settings, settings_from_env
from ray_stream.core.scram import ScramUserInfo
from ray_stream.errors import InvalidConfig, InvalidRequest
from ray_stream.server.tls import certificate_principal, server_context
from ray_stream.users_cli import read_password
from ray_stream.users_cli import run as run_users
from tests.tls_certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki, **extra):
    return Settings(
        tls_cert_pem=pki.server_cert.read_text(), tls_key_pem=pki.server_key.read_text(), **extra
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tls_cert_pem": "-----BEGIN CERTIFICATE-----"}, "--tls-key"),
        ({"tls_ca_pem": "-----BEGIN CERTIFICATE-----"}, "--tls-ca"),
        ({"tls_cert_pem": "junk", "tls_key_pem": "-----BEGIN KEY"}, "--tls-cert: not a PEM"),
        ({"sasl_mechanisms": ("GSSAPI",)}, "--sasl-mechanisms"),
        ({"sasl_mechanisms": ("PLAIN", "PLAIN"), "allow_plaintext_sasl": True}, "each once"),
        ({"sasl_mechanisms": ("PLAIN",)}, "--allow-plaintext-sasl"),
        ({"tls_handshake_timeout_s": 0}, "tls_handshake_timeout_s"),
    ],
)
def test_security_settings_refuse_bad_combinations_naming_the_flag(kwargs, match):
    with pytest.raises(InvalidConfig, match=match):
        Settings(**kwargs)


def test_security_settings_allow_plain_with_tls_or_when_asked(pki):
    assert _tls(pki, sasl_mechanisms=("PLAIN",)).sasl_mechanisms == ("PLAIN",)
    assert Settings(sasl_mechanisms=("PLAIN",), allow_plaintext_sasl=True).allow_plaintext_sasl


def test_security_settings_never_print_the_private_key(pki):
    settings = _tls(pki)
    assert "PRIVATE KEY" in settings.tls_key_pem
    assert "PRIVATE KEY" not in repr(settings)


def test_security_cli_reads_the_pem_files_where_the_cluster_starts(pki):
    args = build_parser().parse_args(
        [
            "start",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-ca",
            str(pki.ca),
            "--sasl-mechanisms",
            "scram-sha-256,PLAIN",
        ]
    )
    settings = Settings().with_overrides(**_settings_kwargs(args))
    assert settings.tls_cert_pem == pki.server_cert.read_text()
    assert settings.tls_ca_pem == pki.ca.read_text()
    assert settings.sasl_mechanisms == ("SCRAM-SHA-256", "PLAIN")
    assert not settings.allow_plaintext_sasl


def test_security_cli_missing_certificate_file_names_the_flag(tmp_path):
    args = build_parser().parse_args(
        ["start", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "k")]
    )
    with pytest.raises(InvalidConfig, match=r"--tls-cert .*nope\.pem"):
        _settings_kwargs(args)


def test_security_environment_variables(pki, monkeypatch):
    monkeypatch.setenv("RAY_STREAM_TLS_CERT", str(pki.server_cert))
    monkeypatch.setenv("RAY_STREAM_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("RAY_STREAM_SASL_MECHANISMS", "SCRAM-SHA-512")
    monkeypatch.setenv("RAY_STREAM_ALLOW_PLAINTEXT_SASL", "yes")
    settings = settings_from_env()
    assert settings.tls_key_pem == pki.server_key.read_text()
    assert settings.sasl_mechanisms == ("SCRAM-SHA-512",)
    assert settings.allow_plaintext_sasl
    monkeypatch.setenv("RAY_STREAM_ALLOW_PLAINTEXT_SASL", "maybe")
    with pytest.raises(InvalidConfig, match="RAY_STREAM_ALLOW_PLAINTEXT_SASL"):
        settings_from_env()


def test_security_server_context_loads_and_requires_client_certs_with_a_ca(pki):
    assert server_context(Settings()) is None
    plain = server_context(_tls(pki))
    assert plain is not None
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = server_context(_tls(pki, tls_ca_pem=pki.ca.read_text()))
    assert mutual is not None
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_security_server_context_refuses_a_key_of_another_certificate(pki):
    mismatched = Settings(
        tls_cert_pem=pki.server_cert.read_text(), tls_key_pem=pki.client_key.read_text()
    )
    with pytest.raises(InvalidConfig, match="--tls-cert/--tls-key"):
        server_context(mismatched)


def test_security_certificate_principal_is_the_subject_cn():
    cert = {"subject": ((("countryName", "NL"),), (("commonName", "alice"),))}
    assert certificate_principal(cert) == "User:alice"
    assert certificate_principal({"subject": ((("organizationName", "x"),),)}) is None
    assert certificate_principal(None) is None


def test_users_cli_password_comes_from_stdin_and_must_not_be_empty():
    assert read_password(io.StringIO("s3cret\nignored\n")) == "s3cret"
    with pytest.raises(InvalidRequest, match="no password"):
        read_password(io.StringIO("\n"))


class _Recorder:
    """Records what ``users`` asks of a Cluster (the real one needs Ray)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    def add_user(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("add_user", args, kwargs))

    def delete_user(self, *args: object) -> None:
        self.calls.append(("delete_user", args, {}))

    def list_users(self) -> list[ScramUserInfo]:
        return [
            ScramUserInfo("bob", "SCRAM-SHA-256", 8192),
            ScramUserInfo("bob", "SCRAM-SHA-512", 8192),
        ]


def test_users_cli_add_list_delete(monkeypatch, capsys):
    cluster = _Recorder()
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-from-stdin\n"))
    run_users(cluster, build_parser().parse_args(["users", "add", "bob", "--iterations", "4096"]))
    run_users(cluster, build_parser().parse_args(["users", "list"]))
    run_users(cluster, build_parser().parse_args(["users", "delete", "bob"]))
    assert cluster.calls == [
        ("add_user", ("bob", "pw-from-stdin"), {"iterations": 4096}),
        ("delete_user", ("bob",), {}),
    ]
    out = capsys.readouterr().out
    assert "bob\tSCRAM-SHA-256(i=8192) SCRAM-SHA-512(i=8192)" in out
    assert "pw-from-stdin" not in out


def test_security_cli_refuses_a_key_that_does_not_fit_the_certificate(pki):
    args = build_parser().parse_args(
        ["start", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)]
    )
    with pytest.raises(InvalidConfig, match="--tls-cert/--tls-key"):
        _settings_kwargs(args)
