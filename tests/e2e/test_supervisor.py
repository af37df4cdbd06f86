"""The supervisor restarts a killed child quickly and keeps the port open meanwhile."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Server, echo_ok, make_dataset, stop_server, web_ok, write_config
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from echoes import config as config_module


@pytest.mark.parametrize("role", ["store", "ingester"])
def test_killed_child_is_restarted_within_two_seconds(server, role):
    before = server.children(role)
    os.kill(before[0], signal.SIGKILL)
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 2.0:
        now = server.children(role)
        if len(now) == len(before) and before[0] not in now:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"{role} not restarted within 2 s")
    assert echo_ok(server.port)
    log = server.config.log_file.read_text()
    assert f"pid {before[0]} exited with signal SIGKILL" in log


def stopped_cleanly(server) -> None:
    """Every child exited with code 0 and nothing printed a traceback."""
    output = server.home.with_name(server.home.name + ".out").read_text(errors="replace")
    assert "Traceback" not in output, output[-3000:]
    log = server.config.log_file.read_text(errors="replace")
    assert "while stopping" not in log and "did not stop" not in log


def test_sigterm_stops_everything(server):
    roles = ("store", "ingester", "mwl", "sender", "web")
    children = [pid for role in roles for pid in server.children(role)]
    assert len(children) == 6
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not server.config.pid_file.exists()
    stopped_cleanly(server)


def refused_soon(port: int, within: float = 10.0) -> bool:
    """True once a TCP connect to ``port`` is refused (not accepted, not hanging)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_an_open_association_is_served_to_its_end_on_stop(server):
    """SIGTERM stops accepting, but an association already open may still store
    (the modality's study in progress is not cut off) and release; then all stop.
    """
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")
    assert assoc.is_established
    server.process.send_signal(signal.SIGTERM)
    assert refused_soon(server.port)  # a new connection is refused, not left waiting
    dataset = make_dataset(syntax=ExplicitVRLittleEndian)
    status = assoc.send_c_store(dataset)
    assert status and status.Status == 0x0000
    assoc.release()
    assert server.process.wait(60) == 0
    stopped_cleanly(server)
    assert dataset.SOPInstanceUID in server.archived_sops()  # the ingester drained the spool


#: A process that listens on a port and looks like another echoes' Browser to the
#: supervisor (``echoes: web``): what a second echoes on the host with the same
#: http_port is.  It holds the port until its stdin closes.
SQUATTER = """
import socket, sys, setproctitle
setproctitle.setproctitle("echoes: web")
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("listening", flush=True)
sys.stdin.read()
"""


def occupy(port: int, holder: str) -> Callable[[], None]:
    """Listen on ``port`` as ``holder``; returns what frees it (safe to call twice)."""
    if holder == "a plain socket":
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock.close
    squatter = subprocess.Popen([sys.executable, "-c", SQUATTER, str(port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert squatter.stdout is not None and squatter.stdout.readline() == "listening\n"

    def release() -> None:
        if squatter.poll() is None:
            squatter.stdin.close()  # type: ignore[union-attr]
            squatter.wait(10)

    return release


def echoes_check(config_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                           "check"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("holder", ["another echoes", "a plain socket"])
def test_taken_http_port_holds_back_only_the_browser(tmp_path: Path, holder: str) -> None:
    """The DICOM ports answer at once while http_port is taken (they answered
    after 35.6 s when another echoes held it); ``echoes check`` names the port
    and its holder; once the port is free the Browser comes up by itself.
    """
    home = tmp_path / "home"
    config_path = write_config(home, store_workers=1)
    config = config_module.load(config_path)
    port = config.http_port
    release = occupy(port, holder)
    output = open(home.with_name("home.out"), "wb")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config_path),
                                "start"], stdout=output, stderr=subprocess.STDOUT)
    server = Server(home, config, process)
    try:
        while not (echo_ok(config.store_port) and echo_ok(config.mwl_port)):
            assert process.poll() is None, "echoes exited"
            assert time.monotonic() - started < 10, "DICOM ports silent for 10 s"
            time.sleep(0.2)
        answered = time.monotonic() - started
        checked = echoes_check(config_path)
        assert checked.returncode == 1, checked.stdout
        assert f"WARNING: Browser port {port} is taken by another program (pid " \
            in checked.stdout
        assert "WARNING: web: 0 of 1 processes running" in checked.stdout
        assert not web_ok(port)

        release()
        deadline = time.monotonic() + 20
        while not web_ok(port):
            assert time.monotonic() < deadline, "the Browser did not come up on the freed port"
            time.sleep(0.2)
        log = config.log_file.read_text()
        assert f"http_port: cannot listen on 127.0.0.1:{port}: Address already in use" in log
        assert f"http_port 127.0.0.1:{port} is free now: listening, starting the web" in log
        assert echoes_check(config_path).returncode == 0
        print(f"\nhttp_port held by {holder}: DICOM ports answered after {answered:.1f} s")
    finally:
        release()
        stop_server(server)
