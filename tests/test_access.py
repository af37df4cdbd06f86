"""Access control end to end: calling and called AE titles, source networks.

dcmtk echoscu asks; a refused peer must get an A-ASSOCIATE-RJ with the
right reason (not a dropped connection or a hang), and the log says why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from conftest import DCMTK_ENV, Server, start_server, stop_server


def echoscu(port: int, calling: str = "ECHOSCU", called: str = "ECHOES") -> str:
    done = subprocess.run(["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1",
                           str(port)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=30)
    output = done.stdout + done.stderr
    if done.returncode == 0:
        return "accepted"
    if "Association Rejected" in output:
        for reason in ("Calling AE Title Not Recognized", "Called AE Title Not Recognized",
                       "No Reason", "Local Limit Exceeded"):
            if reason.lower() in output.lower():
                return reason
        return "rejected: " + output[-300:]
    return "failed: " + output[-300:]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("access") / "home"
    server = start_server(home, store_workers=1, allowed_calling_aes="GOOD, CT01, TESTSCU",
                          mwl_allowed_calling_aes="CT01, TESTSCU", require_called_ae="yes")
    yield server
    stop_server(server)


@pytest.mark.parametrize(("port", "calling", "called", "outcome"), [
    ("store", "GOOD", "ECHOES", "accepted"),
    ("store", "CT01", "ECHOES", "accepted"),
    ("store", "EVIL", "ECHOES", "Calling AE Title Not Recognized"),
    ("store", "GOOD", "SOMEONE", "Called AE Title Not Recognized"),
    ("mwl", "CT01", "ECHOES", "accepted"),
    ("mwl", "GOOD", "ECHOES", "Calling AE Title Not Recognized"),
    ("mwl", "CT01", "OTHER", "Called AE Title Not Recognized"),
])
def test_calling_and_called_ae_titles(guarded: Server, dcmtk: None, port: str, calling: str,
                                      called: str, outcome: str) -> None:
    number = guarded.config.store_port if port == "store" else guarded.config.mwl_port
    assert echoscu(number, calling, called) == outcome


def test_rejections_are_logged(guarded: Server, dcmtk: None) -> None:
    echoscu(guarded.config.store_port, "EVIL")
    log = guarded.config.log_file.read_text()
    assert "rejected association from EVIL" in log
    assert "calling AE 'EVIL' not in the allowed list" in log


@pytest.mark.parametrize(("networks", "outcome"), [
    ("10.0.0.0/8, 192.168.0.0/16", "No Reason"),
    ("10.0.0.0/8, 127.0.0.0/8", "accepted"),
])
def test_allowed_networks(tmp_path, dcmtk: None, networks: str, outcome: str) -> None:
    # start_server itself C-ECHOes from 127.0.0.1: allow it while starting.
    server = start_server(tmp_path / "home", store_workers=1)
    try:
        config_path = server.config.path
        config_path.write_text(config_path.read_text() + f"allowed_networks = {networks}\n")
    finally:
        stop_server(server)
    server = start_server_unchecked(tmp_path / "home")
    try:
        assert echoscu(server.config.store_port) == outcome
        assert echoscu(server.config.mwl_port) == outcome
        if outcome != "accepted":
            assert "address not in allowed_networks" in server.config.log_file.read_text()
    finally:
        stop_server(server)


def start_server_unchecked(home) -> Server:
    """Start on the existing config and wait for the worker processes only."""
    import sys
    import time

    from echoes import config as config_module

    config = config_module.load(home / "etc" / "echoes.ini")
    out = open(home.with_name(home.name + ".out2"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config.path),
                                "start"], stdout=out, stderr=subprocess.STDOUT)
    server = Server(home, config, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (server.children("store")
                                               and server.children("mwl")):
        time.sleep(0.2)
    time.sleep(1.5)  # workers bind their handlers
    return server
