"""The supervisor restarts a killed child quickly and keeps the port open meanwhile."""

import os
import signal
import socket
import time

import pytest
from conftest import echo_ok, make_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification


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
