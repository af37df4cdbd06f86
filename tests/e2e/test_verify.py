"""requestor.verify: the Browser's verify button, against real peers on loopback.

dcmtk storescp (plain, refusing, over TLS), echoes' own store port with
``require_called_ae``, a pynetdicom SCP that takes no Verification, a port
nobody listens on and one that listens but never answers.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import DCMTK_ENV, free_port, start_server, stop_server, write_config
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from test_forward import _listening, wait_for

from echoes import config as config_module
from echoes.config import Config, RemoteAE
from echoes.dicom import requestor
from echoes.services import dicom_settings


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_module.load(write_config(tmp_path / "home", ae_title="ECHOES"))


@pytest.fixture
def storescp(tmp_path: Path, dcmtk: None) -> Iterator:
    """Start dcmtk storescp with options; every one started is stopped afterwards."""
    started: list[subprocess.Popen] = []

    def start(*options: str, title: str = "DEST") -> tuple[int, Path]:
        port = free_port()
        log = tmp_path / f"storescp-{port}.log"
        started.append(subprocess.Popen(
            ["storescp", "-v", "-aet", title, *options, "-od", str(tmp_path), str(port)],
            env=DCMTK_ENV, stdout=open(log, "wb"), stderr=subprocess.STDOUT))
        wait_for(lambda: _listening(port), 10, "storescp did not start")
        return port, log

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def test_c_echo_ok_with_storescp(config: Config, storescp) -> None:
    port, log = storescp()
    ok, message, ms = dicom_settings.verify(config, RemoteAE("DEST", "127.0.0.1", port, False))
    assert ok, message
    assert message == f"C-ECHO ok in {ms:.0f} ms"
    assert 0 < ms < 5000
    assert "Received Echo Request" in log.read_text(errors="replace")


def test_send_c_echo_proposes_verification(config: Config, storescp) -> None:
    port, _log = storescp()
    assoc = dicom_settings.associate(config, RemoteAE("DEST", "127.0.0.1", port, False),
                                     [("1.2.840.10008.1.1", requestor.VERIFICATION_SYNTAXES)], 5)
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == ["1.2.840.10008.1.1"]
        assert assoc.send_c_echo() == 0x0000
        assert assoc.send_c_echo() == 0x0000  # twice on one association
    finally:
        assoc.release()


def test_connection_refused(config: Config) -> None:
    port = free_port()  # nobody listens
    ok, message, ms = dicom_settings.verify(config, RemoteAE("NOBODY", "127.0.0.1", port, False))
    assert not ok
    assert message == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert ms < 2000


def test_unknown_host(config: Config) -> None:
    ok, message, _ms = dicom_settings.verify(
        config, RemoteAE("NOBODY", "no-such-host.invalid", 104, False), timeout=5)
    assert not ok
    assert message.startswith("cannot connect to no-such-host.invalid:104: ")


def test_association_refused_by_storescp(config: Config, storescp) -> None:
    port, _log = storescp("--refuse")
    ok, message, _ms = dicom_settings.verify(config, RemoteAE("DEST", "127.0.0.1", port, False))
    assert not ok
    assert message.startswith("association rejected by DEST (permanent")


def test_ae_titles_checked_by_echoes(tmp_path: Path, config: Config) -> None:
    """Our own store port: the called title must be its title, the calling one allowed."""
    server = start_server(tmp_path / "server", require_called_ae="yes",
                          store_allowed_calling_aes="TESTSCU,ECHOES")
    try:
        wrong = RemoteAE("NOTECHOES", "127.0.0.1", server.port, False)
        ok, message, _ms = dicom_settings.verify(config, wrong)
        assert not ok
        assert message == ("association rejected by NOTECHOES "
                           "(permanent: called AE title not recognized)")
        right = RemoteAE("ECHOES", "127.0.0.1", server.port, False)
        ok, message, _ms = dicom_settings.verify(config, right)
        assert ok, message  # calling AE: config.ae_title, which is ECHOES
        stranger = replace(config, ae_title="STRANGER")
        ok, message, _ms = dicom_settings.verify(stranger, right)
        assert not ok
        assert message == ("association rejected by ECHOES "
                           "(permanent: calling AE title not recognized)")
    finally:
        stop_server(server)


def test_peer_without_verification(config: Config) -> None:
    port = free_port()
    scp = AE(ae_title="STOREONLY")
    scp.add_supported_context(SecondaryCaptureImageStorage)
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        ok, message, _ms = dicom_settings.verify(config, RemoteAE("STOREONLY", "127.0.0.1", port,
                                                             False))
        assert not ok
        assert message == "STOREONLY accepted the association but not Verification"
    finally:
        server.shutdown()


def test_silent_peer_times_out(config: Config) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts the connection; nobody ever answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        ok, message, ms = dicom_settings.verify(
            config, RemoteAE("SILENT", "127.0.0.1", port, False), timeout=0.5)
        took = time.monotonic() - started
    assert not ok
    assert message == f"no answer from SILENT at 127.0.0.1:{port} within 0.5 s (timed out)"
    assert 400 < ms < 3000
    assert took < 3


def test_tls_asked_for_but_not_configured(config: Config, storescp) -> None:
    port, _log = storescp()
    ok, message, _ms = dicom_settings.verify(config, RemoteAE("DEST", "127.0.0.1", port, False,
                                                         tls=True))
    assert not ok
    assert message.startswith("TLS not usable: ")


@pytest.mark.usefixtures("openssl")
def test_c_echo_over_tls(tmp_path: Path, storescp) -> None:
    from test_tls import make_pki

    pki = make_pki(tmp_path / "pki")
    tls_config = config_module.load(write_config(
        tmp_path / "tlshome", tls_certificate=pki["echoes.pem"],
        tls_private_key=pki["echoes.key"], tls_ca_certificates=pki["ca.pem"]))
    port, _log = storescp("+tls", str(pki["peer.key"]), str(pki["peer.pem"]),
                          "+cf", str(pki["ca.pem"]))
    ok, message, _ms = dicom_settings.verify(tls_config, RemoteAE("DEST", "127.0.0.1", port, False,
                                                             tls=True))
    assert ok, message
    ok, message, _ms = dicom_settings.verify(tls_config, RemoteAE("DEST", "127.0.0.1", port, False),
                                        timeout=3)
    assert not ok  # the same peer without TLS: no association
