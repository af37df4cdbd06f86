"""The unit tests' rule, enforced: no network socket, no child process.

Pure logic (PDUs, matching, job state, config, index files) is tested here in
microseconds; anything that needs a port or a process belongs in tests/e2e.
A test that tries gets a failure naming what it did (socketpair and other
AF_UNIX sockets stay allowed: they are in-process plumbing).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

NETWORK = (socket.AF_INET, socket.AF_INET6)


class NotInAUnitTest(AssertionError):
    """Raised when a unit test reaches for the network or a process."""


@pytest.fixture(autouse=True)
def no_network_no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def guarded(name: str):
        original = getattr(socket.socket, name)

        def call(self: socket.socket, *args: object, **kwargs: object) -> object:
            if self.family in NETWORK:
                raise NotInAUnitTest(f"socket.{name}{args}: unit tests open no network "
                                     "socket (move the test to tests/e2e)")
            return original(self, *args, **kwargs)
        return call

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, guarded(name))

    def no_process(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        raise NotInAUnitTest(f"subprocess {args!r}: unit tests start no process "
                             "(move the test to tests/e2e)")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    yield
