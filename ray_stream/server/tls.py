"""TLS for the Kafka listeners: the server ``SSLContext`` and a client certificate's principal.

Responsibility: turn the PEM contents in ``Settings`` (``tls_cert_pem``, ``tls_key_pem``,
``tls_ca_pem``; read by the CLI where the cluster is started, so they reach agents on
every node) into an ``ssl.SSLContext``, and name the principal of a verified client
certificate.

Rules:

1. TLS 1.2 at least (``ssl.create_default_context``'s server defaults otherwise).
2. With a CA, a client certificate is required and verified (``CERT_REQUIRED``);
   without one, none is asked for.
3. ``SSLContext.load_cert_chain`` reads files only: the certificate and key are written
   to a private (0700) temporary directory, loaded, and removed at once.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Any

from ray_stream.config import Settings
from ray_stream.errors import InvalidConfig

__all__ = ["certificate_principal", "server_context"]


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None when TLS is off.

    Raises:
        InvalidConfig: the certificate, key or CA does not load (the message names
            the flag; an encrypted key is refused: there is nobody to type its password).
    """
    if not settings.tls_cert_pem:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="ray-stream-tls-") as private:
        cert, key = Path(private) / "cert.pem", Path(private) / "key.pem"
        cert.write_text(settings.tls_cert_pem)
        key.touch(mode=0o600)
        key.write_text(settings.tls_key_pem)
        try:
            context.load_cert_chain(cert, key, password=_no_password)
        except (ssl.SSLError, OSError, TypeError) as exc:
            raise InvalidConfig(
                f"--tls-cert/--tls-key do not load as a certificate chain and its "
                f"unencrypted private key: {exc}"
            ) from exc
    if settings.tls_ca_pem:
        try:
            context.load_verify_locations(cadata=settings.tls_ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidConfig(f"--tls-ca does not load as PEM CA certificates: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _no_password() -> str:
    raise TypeError("the private key is encrypted")


def certificate_principal(peercert: Any) -> str | None:
    """``User:<CN>`` of a verified client certificate (``getpeercert()``), or None.

    Kafka's default principal is the whole distinguished name; the subject's common
    name is what ACLs here name (issue 14), the same as Kafka with
    ``ssl.principal.mapping.rules=RULE:^CN=([^,]*).*$/$1/``.
    """
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return f"User:{value}"
    return None
