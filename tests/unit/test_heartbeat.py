"""The worker base's heartbeat, on a pipe of the test's own (no process, no socket)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator

import pytest

from echoes import config as config_module
from echoes.processes.worker import HEARTBEAT_FD, Heartbeat

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def beats(read_end: int) -> int:
    """How many beats are waiting in the pipe (and takes them)."""
    try:
        return len(os.read(read_end, 65536))
    except BlockingIOError:
        return 0


def test_beats_are_rate_limited(pipe) -> None:
    read_end, write_end = pipe
    heartbeat = Heartbeat(write_end, every=0.2)
    for _ in range(1000):  # per object in a batch: one write, not a thousand
        heartbeat.beat()
    assert beats(read_end) == 1
    time.sleep(0.25)
    heartbeat.beat()
    assert beats(read_end) == 1


def test_a_wait_beats_while_it_waits_and_returns_as_event_wait_does(pipe) -> None:
    read_end, write_end = pipe
    heartbeat = Heartbeat(write_end, every=0.05)
    event = threading.Event()
    started = time.monotonic()
    assert heartbeat.wait(event, 0.5) is False
    assert time.monotonic() - started >= 0.5
    assert beats(read_end) >= 5  # an ingester sweeping every 5 s still beats
    threading.Timer(0.1, event.set).start()
    assert heartbeat.wait(event, 5) is True


def test_covering_beats_through_one_long_call_and_stops_after_it(pipe) -> None:
    read_end, write_end = pipe
    heartbeat = Heartbeat(write_end, every=0.05)
    with heartbeat.covering():
        time.sleep(0.5)  # a reindex, a large worklist read at start
    assert beats(read_end) >= 5
    time.sleep(0.2)
    beats(read_end)  # the helper's last beat, if it was under way
    time.sleep(0.3)
    assert beats(read_end) == 0  # silent again: a hang after the call is seen
    with heartbeat.covering(), heartbeat.covering():  # nested, and the helper reused
        time.sleep(0.2)
    assert beats(read_end) >= 2


def test_beat_while_stops_with_the_loop_it_watches(pipe) -> None:
    read_end, write_end = pipe
    heartbeat = Heartbeat(write_end, every=0.05)
    serving = threading.Event()
    serving.set()
    thread = heartbeat.beat_while(serving.is_set)
    time.sleep(0.3)
    assert beats(read_end) >= 3
    serving.clear()  # the accept loop ended: the process falls silent
    thread.join(1)
    assert not thread.is_alive()


def test_a_full_pipe_or_a_gone_supervisor_never_blocks_nor_raises(pipe) -> None:
    read_end, write_end = pipe
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    heartbeat = Heartbeat(write_end, every=0)
    for _ in range(10_000):  # more than the pipe holds: the supervisor is behind
        heartbeat.beat()
    os.close(read_end)  # the supervisor is gone
    heartbeat.beat()
    assert heartbeat.fd is None


def test_the_pipe_comes_from_the_environment_and_is_not_passed_on(monkeypatch) -> None:
    monkeypatch.setenv(HEARTBEAT_FD, "7")
    assert Heartbeat.inherited().fd == 7
    assert HEARTBEAT_FD not in os.environ
    assert Heartbeat.inherited().fd is None  # started by hand: nobody listens
    Heartbeat.inherited().beat()


def load_with(tmp_path, line: str) -> config_module.Config:
    path = tmp_path / "echoes.ini"
    path.write_text(f"[echoes]\n{line}\n")
    return config_module.load(path)


def test_heartbeat_timeout_defaults_to_a_minute_and_refuses_less_than_3_s(tmp_path) -> None:
    assert load_with(tmp_path, "").heartbeat_timeout == 60
    assert load_with(tmp_path, "heartbeat_timeout = 3").heartbeat_timeout == 3
    with pytest.raises(config_module.ConfigError, match="heartbeat_timeout: must be between 3"):
        load_with(tmp_path, "heartbeat_timeout = 1")
