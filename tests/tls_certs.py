"""Test certificates made with ``cryptography``: a CA, a server certificate for
127.0.0.1/localhost, and client certificates whose CN becomes the principal."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """PEM files under one directory: ``ca``, ``server_cert``/``server_key``, and
    ``client_cert``/``client_key`` (CN ``alice``), signed by ``ca``; ``rogue_*`` is a
    client certificate (CN ``mallory``) from another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, server and client certificates into ``directory``."""
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("ray-stream test CA", ca_key, "ray-stream test CA", ca_key, ca=True)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert("127.0.0.1", server_key, "ray-stream test CA", ca_key, server=True)
    client = _cert("alice", client_key, "ray-stream test CA", ca_key)
    rogue = _cert("mallory", rogue_key, "rogue CA", rogue_ca_key)
    server_path = _write(directory / "server.pem", server, server_key)
    client_path = _write(directory / "client.pem", client, client_key)
    rogue_path = _write(directory / "rogue.pem", rogue, rogue_key)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=server_path,
        server_key=server_path.with_suffix(".key"),
        client_cert=client_path,
        client_key=client_path.with_suffix(".key"),
        rogue_cert=rogue_path,
        rogue_key=rogue_path.with_suffix(".key"),
    )
