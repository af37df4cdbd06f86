"""The supervisor restarts a killed child quickly and keeps the port open meanwhile."""

import os
import signal
import time

import pytest
from conftest import echo_ok


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


def test_sigterm_stops_everything(server):
    children = server.children("store") + server.children("ingester")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not server.config.pid_file.exists()
