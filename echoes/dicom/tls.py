"""DICOM over TLS (PS3.15 Annex B): the SSL contexts, from three files.

When the three files are given, both inbound ports speak only TLS and
require a client certificate signed by one of the CAs (the "authenticated"
secure transport of Annex B); outbound associations to a TLS destination
present the same certificate and verify the peer's chain against the same
CAs.  Peers are usually addressed by IP, so host names are not checked; the
CA list is the trust decision.  TLS 1.2 at least.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """Our certificate, its private key, and the CAs we trust (PEM files)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path


def server_context(files: TLSFiles | None) -> ssl.SSLContext | None:
    """The context for accepted associations, or None without TLS."""
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(files.ca_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.certificate), str(files.private_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TLSFiles | None) -> ssl.SSLContext:
    """The context for associations echoes starts to a TLS destination."""
    if files is None:
        raise ValueError("an [ae:*] section says tls = yes but tls_certificate, "
                         "tls_private_key and tls_ca_certificates are not set")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(files.ca_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.load_cert_chain(str(files.certificate), str(files.private_key))
    return context
