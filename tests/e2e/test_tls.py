"""DICOM over TLS (PS3.15 Annex B), proven with dcmtk's TLS-enabled tools.

The test makes its own CA and certificates with openssl.  Inbound: dcmtk
echoscu/storescu +tls against echoes (and a peer without a certificate, or
without TLS, is refused).  Outbound: echoes forwards to a TLS storescp.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DCMTK_ENV, free_port, make_dataset, write_config, write_part10

from echoes import config as config_module

#: Without openssl every test here fails saying so (conftest), never skips.
pytestmark = pytest.mark.usefixtures("openssl")


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, and a certificate + key for echoes and for the dcmtk peer."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("echoes", "peer"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem")
    return {name: folder / name for name in
            ("ca.pem", "echoes.pem", "echoes.key", "peer.pem", "peer.key")}


def dcmtk_tls(pki: dict[str, Path]) -> list[str]:
    return ["+tls", str(pki["peer.key"]), str(pki["peer.pem"]), "+cf", str(pki["ca.pem"])]


def start_tls_server(home: Path, pki: dict[str, Path], extra: str = "") -> tuple:
    path = write_config(home, store_workers=1, acse_timeout=3, network_timeout=5,
                        tls_certificate=pki["echoes.pem"],
                        tls_private_key=pki["echoes.key"], tls_ca_certificates=pki["ca.pem"])
    path.write_text(path.read_text() + extra)
    config = config_module.load(path)
    started = subprocess.run([sys.executable, "-m", "echoes", "--config", str(path), "start",
                              "--daemon"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr  # readiness C-ECHO went over TLS
    return config, path


def stop(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "echoes", "--config", str(path), "stop"],
                   capture_output=True, timeout=120)


def test_inbound_tls_with_dcmtk(tmp_path: Path, dcmtk: None) -> None:
    pki = make_pki(tmp_path / "pki")
    config, path = start_tls_server(tmp_path / "home", pki)
    try:
        check = subprocess.run([sys.executable, "-m", "echoes", "--config", str(path), "check"],
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr  # its C-ECHOs over TLS
        for port in (config.store_port, config.mwl_port):
            echo = subprocess.run(["echoscu", *dcmtk_tls(pki), "127.0.0.1", str(port)],
                                  env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
            assert echo.returncode == 0, echo.stderr
        image = write_part10(make_dataset(), tmp_path / "image.dcm")
        sent = subprocess.run(["storescu", *dcmtk_tls(pki), "127.0.0.1", str(config.store_port),
                               str(image)], env=DCMTK_ENV, capture_output=True, text=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(config.archive_dir.rglob("*.dcm")):
            time.sleep(0.1)
        assert len(list(config.archive_dir.rglob("*.dcm"))) == 1

        plain = subprocess.run(["echoscu", "127.0.0.1", str(config.store_port)], env=DCMTK_ENV,
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0  # no TLS: no association
        anonymous = subprocess.run(["echoscu", "+tla", "-ic", "127.0.0.1",
                                    str(config.store_port)], env=DCMTK_ENV,
                                   capture_output=True, text=True, timeout=60)
        assert anonymous.returncode != 0  # no client certificate: refused
        echo = subprocess.run(["echoscu", *dcmtk_tls(pki), "127.0.0.1", str(config.store_port)],
                              env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, "the port stopped working after refused peers"
    finally:
        stop(path)


def test_outbound_tls_to_storescp(tmp_path: Path, dcmtk: None) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(["storescp", "+tls", str(pki["peer.key"]), str(pki["peer.pem"]),
                                 "+cf", str(pki["ca.pem"]), "-od", str(received), str(port)],
                                env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    extra = f"\n[ae:SECURE]\nhost = 127.0.0.1\nport = {port}\nforward = yes\ntls = yes\n"
    config, path = start_tls_server(tmp_path / "home", pki, extra)
    try:
        image = write_part10(make_dataset(), tmp_path / "image.dcm")
        sent = subprocess.run(["storescu", *dcmtk_tls(pki), "127.0.0.1", str(config.store_port),
                               str(image)], env=DCMTK_ENV, capture_output=True, text=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(received.iterdir()):
            time.sleep(0.1)
        assert len(list(received.iterdir())) == 1
    finally:
        stop(path)
        storescp.terminate()
        storescp.wait()
