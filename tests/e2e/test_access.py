"""Access control end to end: calling and called AE titles, source networks.

dcmtk echoscu asks; a refused peer must get an A-ASSOCIATE-RJ with the
right reason (not a dropped connection or a hang), and the log says why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from helpers import DCMTK_ENV, Server, start_server, stop_server


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


# -- echoes reload applies the access keys to new associations (issue 14 item 7) -----


def reload(server: Server, **keys: object) -> None:
    """Set ``keys`` in the running server's file (replacing their lines) and SIGHUP it."""
    import sys

    path = server.config.path
    lines = [line for line in path.read_text().splitlines()
             if line.split("=")[0].strip() not in keys]
    path.write_text("\n".join(lines + [f"{k} = {v}" for k, v in keys.items()]) + "\n")
    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(path), "reload"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def becomes(port: int, calling: str, called: str, outcome: str, within: float = 10.0) -> None:
    """echoscu gets ``outcome`` within ``within`` s (SIGHUP is asynchronous), then again
    on four more associations (store workers each apply it, whichever accepts)."""
    import time

    deadline = time.monotonic() + within
    while (seen := echoscu(port, calling, called)) != outcome:
        assert time.monotonic() < deadline, f"{calling}->{called}: {seen}, not {outcome}"
        time.sleep(0.3)
    assert [echoscu(port, calling, called) for _ in range(4)] == [outcome] * 4


def test_reload_applies_access_keys_to_new_associations(tmp_path, dcmtk: None) -> None:
    server = start_server(tmp_path / "home", store_workers=2)
    store, mwl = server.config.store_port, server.config.mwl_port
    try:
        assert echoscu(store, "ANYONE", "WRONG") == "accepted"
        reload(server, require_called_ae="yes", allowed_calling_aes="GOOD, CT01",
               mwl_allowed_calling_aes="CT01")
        becomes(store, "GOOD", "WRONG", "Called AE Title Not Recognized")
        becomes(mwl, "CT01", "WRONG", "Called AE Title Not Recognized")
        assert echoscu(store, "EVIL", "ECHOES") == "Calling AE Title Not Recognized"
        assert echoscu(mwl, "GOOD", "ECHOES") == "Calling AE Title Not Recognized"
        assert echoscu(store, "GOOD", "ECHOES") == "accepted"
        assert echoscu(mwl, "CT01", "ECHOES") == "accepted"
        # A new AE title is what a peer must call from now on.
        reload(server, ae_title="NEWNAME")
        becomes(store, "GOOD", "ECHOES", "Called AE Title Not Recognized")
        assert echoscu(store, "GOOD", "NEWNAME") == "accepted"
        # And the networks: loopback no longer allowed.
        reload(server, allowed_networks="10.0.0.0/8")
        becomes(store, "GOOD", "NEWNAME", "No Reason")
        becomes(mwl, "CT01", "NEWNAME", "No Reason")
        log = server.config.log_file.read_text()
        assert ("SIGHUP: configuration re-read, log reopened, passed on; applied: "
                "allowed_calling_aes, mwl_allowed_calling_aes, require_called_ae") in log
        assert "need a restart" not in log
    finally:
        stop_server(server)


def test_reload_names_the_keys_that_need_a_restart(tmp_path, dcmtk: None) -> None:
    from helpers import free_port

    server = start_server(tmp_path / "home", store_workers=1)
    old_port, new_port = server.config.store_port, free_port()
    try:
        reload(server, store_port=new_port, store_workers=3, max_associations=5)
        import time

        deadline = time.monotonic() + 10
        while "need a restart" not in server.config.log_file.read_text():
            assert time.monotonic() < deadline, "no restart warning in the log"
            time.sleep(0.2)
        log = server.config.log_file.read_text()
        [line] = [line for line in log.splitlines() if "need a restart" in line]
        assert " WARNING " in line
        assert (f"SIGHUP: changed keys that need a restart to take effect (echoes stop, "
                f"echoes start): store_port ({old_port} -> {new_port}), "
                f"store_workers (1 -> 3)") in line
        assert "max_associations" not in line  # applied: not waiting for a restart
        assert "applied: max_associations" in log
        assert echoscu(old_port) == "accepted"  # still served where it was
        assert len(server.children("store")) == 1
    finally:
        stop_server(server)


def test_reload_turns_tls_on_for_new_associations(tmp_path, dcmtk: None) -> None:
    import shutil

    from test_tls import dcmtk_tls, make_pki

    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed: run bin/test, which installs it")
    pki = make_pki(tmp_path / "pki")
    server = start_server(tmp_path / "home", store_workers=1)
    store = server.config.store_port
    try:
        assert echoscu(store) == "accepted"
        reload(server, tls_certificate=pki["echoes.pem"], tls_private_key=pki["echoes.key"],
               tls_ca_certificates=pki["ca.pem"])
        import time

        deadline = time.monotonic() + 10
        while echoscu(store) == "accepted":  # plain DICOM: refused from now on
            assert time.monotonic() < deadline, "still plain DICOM after reload"
            time.sleep(0.3)
        over_tls = subprocess.run(["echoscu", *dcmtk_tls(pki), "-aec", "ECHOES", "127.0.0.1",
                                   str(store)], env=DCMTK_ENV, capture_output=True, text=True,
                                  timeout=30)
        assert over_tls.returncode == 0, over_tls.stderr
    finally:
        stop_server(server)


def test_restart_keys_are_config_keys_and_compared_by_value(tmp_path) -> None:
    from helpers import write_config

    from echoes import config as config_module

    assert set(config_module.RESTART_KEYS) <= set(config_module.KEYS)
    running = config_module.load(write_config(tmp_path / "a", store_workers=1))
    path = running.path
    path.write_text(path.read_text().replace("store_workers = 1", "store_workers = 4")
                    + "require_called_ae = yes\n\n[ae:PACS]\nhost = 10.0.0.1\nport = 104\n")
    fresh = config_module.load(path)
    assert config_module.changed_keys(running, fresh) == [
        "store_workers", "require_called_ae", "[ae:*]"]
    assert config_module.restart_needed(running, fresh) == ["store_workers (1 -> 4)"]
    assert config_module.restart_needed(running, running) == []
