"""DICOM over TLS (PS3.15 Annex B): the SSL contexts, from the three config keys.

When ``tls_certificate``, ``tls_private_key`` and ``tls_ca_certificates`` are
set, both inbound ports speak only TLS and require a client certificate
signed by one of the CAs (the "authenticated" secure transport of Annex B);
outbound associations to an ``[ae:X]`` with ``tls = yes`` present the same
certificate and verify the peer's chain against the same CAs.  Peers are
usually addressed by IP, so host names are not checked; the CA list is the
trust decision.  TLS 1.2 at least.
"""

from __future__ import annotations

import ssl

from echoes.config import Config


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context for accepted associations, or None without TLS."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(config.tls_ca_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_certificate), str(config.tls_private_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(config: Config) -> ssl.SSLContext:
    """The context for associations echoes starts to a TLS destination."""
    if not config.tls:
        raise ValueError("an [ae:*] section says tls = yes but tls_certificate, "
                         "tls_private_key and tls_ca_certificates are not set")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(config.tls_ca_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.load_cert_chain(str(config.tls_certificate), str(config.tls_private_key))
    return context
