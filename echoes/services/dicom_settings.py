"""The one place the configuration becomes :mod:`echoes.dicom`'s plain settings.

echoes.dicom imports nothing else from echoes: its ports, TLS contexts and
outbound associations take dataclasses of plain values.  This module builds
them from a :class:`~echoes.config.Config` (and an ``[ae:*]`` section): a
port's rules (:func:`port_settings`, at start and on every SIGHUP, by
:mod:`echoes.processes.port`) and the way to a configured AE
(:func:`associate`, :func:`verify`: the sender, the Browser's verify button,
``echoes start``/``check``).
"""

from __future__ import annotations

from echoes.config import Config, RemoteAE
from echoes.dicom import acceptor, requestor, server, tls


def tls_files(config: Config) -> tls.TLSFiles | None:
    """Our TLS certificate, key and CAs, or None when TLS is not configured."""
    if not config.tls:
        return None
    assert config.tls_private_key is not None and config.tls_ca_certificates is not None
    assert config.tls_certificate is not None
    return tls.TLSFiles(config.tls_certificate, config.tls_private_key,
                        config.tls_ca_certificates)


def association_settings(config: Config, role: str, maximum_length: int) -> acceptor.Settings:
    """The rules of the port of ``role`` ("store" or "mwl") for each association."""
    return acceptor.Settings(
        ae_title=config.ae_title,
        acse_timeout=config.acse_timeout,
        network_timeout=config.network_timeout,
        maximum_length=maximum_length,
        max_associations=config.max_associations,
        allowed_calling_aes=frozenset(config.calling_aes_for(role)),
        require_called_ae=config.require_called_ae,
        role=role,
    )


def port_settings(config: Config, role: str, maximum_length: int) -> server.PortSettings:
    """Everything the port of ``role`` is served by."""
    return server.PortSettings(
        association=association_settings(config, role, maximum_length),
        allowed_networks=tuple(config.allowed_networks),
        tls=tls_files(config),
        drain_seconds=config.dimse_timeout,
    )


def destination(config: Config, remote: RemoteAE, timeout: float | None = None,
                calling_ae: str | None = None) -> requestor.Destination:
    """How to reach ``remote`` from ``config.ae_title`` (or ``calling_ae``).

    ``timeout`` bounds the connect, the negotiation and each response
    (default: the configured acse_timeout and dimse_timeout).
    """
    return requestor.Destination(
        host=remote.host, port=remote.port, called_ae=remote.title,
        calling_ae=calling_ae or config.ae_title,
        acse_timeout=timeout or config.acse_timeout,
        dimse_timeout=timeout or config.dimse_timeout,
        tls=remote.tls, tls_files=tls_files(config),
    )


def associate(config: Config, remote: RemoteAE, contexts: list[tuple[str, list[str]]],
              timeout: float | None = None,
              calling_ae: str | None = None,
              roles: dict[str, tuple[bool, bool]] | None = None) -> requestor.Requestor:
    """One try at an association to a configured AE (:func:`echoes.dicom.requestor.associate`)."""
    return requestor.associate(destination(config, remote, timeout, calling_ae), contexts,
                               roles)


def verify(config: Config, remote: RemoteAE, timeout: float = 10.0,
           calling_ae: str | None = None) -> tuple[bool, str, float]:
    """C-ECHO a configured AE as the sender would reach it
    (:func:`echoes.dicom.requestor.verify`)."""
    return requestor.verify(destination(config, remote, timeout, calling_ae))
