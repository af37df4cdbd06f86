"""Being a well-behaved unix daemon: the pid file, detaching, readiness.

The pid file is also a lock: the supervisor holds an exclusive ``flock`` on
it for its whole life.  So "running" means "the lock is held", never "some
process has that pid": a stale file left by kill -9 or a power cut (its
lock died with the process) is simply taken over, and a reused pid cannot
fool ``status`` or ``stop``.  Two ``echoes start`` racing cannot both win.

``start --daemon`` returns only when the server answers: the detached
process reports over a pipe once its ports are bound, and the waiting parent
then C-ECHOes the store and worklist ports before it prints and exits 0.
"""

from __future__ import annotations

import fcntl
import os
import select
import time
from pathlib import Path

from echoes.config import Config, RemoteAE

#: How long ``start --daemon`` waits for the ports to answer.
START_TIMEOUT = 120.0
READY = b"ready\n"


def lock_pid_file(path: Path) -> int | None:
    """Open and lock ``path`` for this process; None when another echoes holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.set_inheritable(fd, False)
    return fd


def write_pid(fd: int, pid: int) -> None:
    """Record ``pid`` in the locked pid file."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def running_pid(path: Path) -> int | None:
    """The supervisor's pid when one holds the pid file's lock, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None  # nobody holds it: stale
    finally:
        os.close(fd)


def detach() -> int | None:
    """Double fork.  In the original process: the read end of the readiness
    pipe (the caller waits on it); in the daemon: None, with the write end
    kept for ``report_ready``."""
    global _ready_fd
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        return read_end
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _ready_fd = write_end
    return None


_ready_fd: int | None = None


def report_ready() -> None:
    """In the daemon: tell the waiting ``start`` that the ports are bound."""
    global _ready_fd
    if _ready_fd is not None:
        try:
            os.write(_ready_fd, READY)
        except OSError:
            pass
        os.close(_ready_fd)
        _ready_fd = None


def reachable_address(bind: str) -> str:
    """Where a local client reaches a port bound on ``bind`` (the wildcard
    addresses are not something to connect to: use loopback).
    """
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def answers(config: Config, port: int, timeout: float = 5.0) -> str | None:
    """None when ``port`` answers C-ECHO, else why not in words (for start and check).

    The Browser's verify button, aimed at our own port (TLS when the server's
    ports use it), calling as ECHOES-CHECK so the log tells these apart.
    """
    from echoes.services import dicom_settings

    ourselves = RemoteAE(title=config.ae_title, host=reachable_address(config.bind),
                         port=port, forward=False, tls=config.tls)
    ok, why, _ms = dicom_settings.verify(config, ourselves, timeout, calling_ae="ECHOES-CHECK")
    return None if ok else why


def wait_until_serving(config: Config, ready_fd: int) -> tuple[bool, str]:
    """In the original process: (started, message) once the daemon answers,
    failed, or START_TIMEOUT passed."""
    deadline = time.monotonic() + START_TIMEOUT
    reported = b""
    while time.monotonic() < deadline and READY not in reported:
        readable, _, _ = select.select([ready_fd], [], [], 0.2)
        if readable:
            chunk = os.read(ready_fd, 64)
            if not chunk:
                os.close(ready_fd)
                return False, "failed to start"
            reported += chunk
    os.close(ready_fd)
    while time.monotonic() < deadline:
        problems = [problem for port in (config.store_port, config.mwl_port)
                    if (problem := answers(config, port, timeout=2.0))]
        if not problems:
            return True, f"running (pid {running_pid(config.pid_file)})"
        if running_pid(config.pid_file) is None:
            return False, "stopped while starting"
        time.sleep(0.2)
    return False, f"not answering on ports {config.store_port}/{config.mwl_port} " \
                  f"after {START_TIMEOUT:.0f} s"


def log_tail(config: Config, lines: int = 5) -> str:
    """The last lines of the log, to show with a failed start."""
    try:
        text = config.log_file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
