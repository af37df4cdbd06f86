"""Supervisor: starts, watches and restarts every echoes process.

It takes the signals meant for the whole server (the children's own
handling is the worker base's, :mod:`echoes.processes.worker`).  It binds
the store port once and passes the listening socket to each store worker
(so the port never closes while a worker restarts), then runs each role of
``ROLES`` as a child ``python -m echoes _worker ROLE``.  A child that exits is
started again at once (after a short back-off when it keeps dying) and the
event is logged.  SIGTERM or SIGINT stops the store workers first (no new
objects), then the ingester (which drains the spool), then the rest.

Each child gets the write end of a pipe of its own and beats on it
(:class:`echoes.processes.worker.Heartbeat`).  A child silent for
``heartbeat_timeout`` seconds is hung (stopped, deadlocked, stuck in a
loop): it is killed with SIGKILL, which never waits on the child, logged as
an ERROR, and restarted as any child that exits.  What it acknowledged is
safe: the spool and the job files are the truth, and the ingester's work is
idempotent.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from echoes import logs
from echoes.config import RESTART_KEYS, Config, Reloader, changed_keys, restart_needed
from echoes.processes.worker import HEARTBEAT_FD, set_title
from echoes.storage import spool

log = logging.getLogger("echoes.supervisor")

#: role -> how many processes of it the config asks for.  Stop order is the
#: order here: receivers first, so the ingester can drain what they took.
ROLES: dict[str, object] = {
    "store": lambda config: config.store_workers,
    "mwl": lambda config: 1,
    "ingester": lambda config: 1,
    "sender": lambda config: 1,
    "web": lambda config: 1,
}

#: role -> the config keys of the address and port the supervisor binds and
#: passes to it.
LISTENING_ROLES: dict[str, tuple[str, str]] = {
    "store": ("bind", "store_port"),
    "mwl": ("bind", "mwl_port"),
    "web": ("http_bind", "http_port"),
}

#: Roles the server can run without: when their port cannot be bound, the
#: supervisor logs why, runs everything else at once (images keep flowing
#: while the admin frees port 8080) and tries the port again every
#: REBIND_SECONDS, starting the role when it gets it; ``echoes check``
#: reports the role missing and who holds its port.
OPTIONAL_ROLES = frozenset({"web"})
#: How often an optional role's busy port is tried again.
REBIND_SECONDS = 2.0

#: A child that lived shorter than this is restarted after a back-off.
HEALTHY_SECONDS = 5.0
MAX_BACKOFF = 1.5
#: A child that has not beaten yet (Python starting, imports) is given at
#: least this long before heartbeat_timeout applies to it.
FIRST_BEAT_SECONDS = 15.0
POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 30.0


@dataclass
class Child:
    """One supervised process slot."""

    role: str
    slot: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    not_before: float = 0.0
    argv: list[str] = field(default_factory=list)
    #: read end of the child's heartbeat pipe (-1: none open)
    heartbeat: int = -1
    #: when the child last beat, or was started (time.monotonic)
    beaten: float = 0.0
    #: whether it has beaten at all since it was started
    has_beaten: bool = False
    #: killed for its silence, not reaped yet: not killed again
    silenced: bool = False


def bind_socket(address: str, port: int) -> socket.socket:
    """A listening port, bound once for all the workers of a role."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(128)
    except OSError:
        listener.close()  # tried again every REBIND_SECONDS: no descriptor left behind
        raise
    listener.set_inheritable(True)
    return listener


#: After a crash, workers of the old supervisor may still be finishing their
#: associations on the ports: wait this long for them before giving up.
BIND_PATIENCE_SECONDS = 30.0


def bind_with_patience(address: str, port: int) -> socket.socket:
    """bind_socket, retried while the port is busy (old workers draining)."""
    deadline = time.monotonic() + BIND_PATIENCE_SECONDS
    while True:
        try:
            return bind_socket(address, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            if not _held_by_old_echoes(port):
                raise
            time.sleep(0.5)


def _held_by_old_echoes(port: int) -> bool:
    """Whether ``port`` may still be held by an orphaned echoes worker.

    False only when its listener belongs to a process that is positively
    not ours; an owner that cannot be told (exiting, no pid, no access) or
    a listener already gone counts as ours, so a restarted supervisor goes
    on waiting instead of giving up while the old workers exit (soak seed 2:
    "cannot start: ... Address already in use" right after a kill -9).
    """
    try:
        import psutil

        for connection in psutil.net_connections("tcp"):
            if not (connection.laddr and connection.laddr.port == port
                    and connection.status == psutil.CONN_LISTEN):
                continue
            if not connection.pid:
                return True
            name = " ".join(psutil.Process(connection.pid).cmdline())
            return not name or name.startswith("echoes: ")
    except (psutil.Error, OSError):
        return True
    return True


class StartError(RuntimeError):
    """Why the server cannot start, in one line for the admin."""


class Supervisor:
    """Runs the children of ``ROLES`` until told to stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.children: list[Child] = []
        self.stopping = False
        self.sockets: dict[str, socket.socket] = {}
        #: optional role -> when its busy port is tried next (time.monotonic)
        self.waiting: dict[str, float] = {}
        #: seconds of silence after which a child is killed (applied on SIGHUP)
        self.heartbeat_timeout = config.heartbeat_timeout
        #: when watch_once last ran (time.monotonic)
        self.watched = time.monotonic()

    def _argv(self, role: str) -> list[str]:
        argv = [sys.executable, "-m", "echoes", "--config", str(self.config.path),
                "_worker", role]
        if role in self.sockets:
            argv += ["--listen-fd", str(self.sockets[role].fileno())]
        return argv

    def _spawn(self, child: Child) -> None:
        pass_fds = (self.sockets[child.role].fileno(),) if child.role in self.sockets else ()
        # Non-blocking at both ends (the flag is the pipe's, shared with the
        # child): a child never waits on a supervisor that is behind, and
        # the supervisor never waits on a silent child.
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        try:
            child.process = subprocess.Popen(
                self._argv(child.role), pass_fds=(*pass_fds, write_end),
                env={**os.environ, HEARTBEAT_FD: str(write_end)})
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        child.heartbeat = read_end
        child.started = child.beaten = time.monotonic()
        child.has_beaten = child.silenced = False
        log.info("started %s[%d] pid %d", child.role, child.slot, child.process.pid)

    def _listen_to_heartbeat(self, child: Child, now: float) -> None:
        """Note the child's beats; kill it (SIGKILL) when it has been silent too long."""
        try:
            if os.read(child.heartbeat, 4096):
                child.beaten, child.has_beaten = now, True
        except BlockingIOError:  # no beat since the last look
            pass
        silent = now - child.beaten
        allowed = (self.heartbeat_timeout if child.has_beaten
                   else max(self.heartbeat_timeout, FIRST_BEAT_SECONDS))
        if silent < allowed or child.silenced or child.process is None:
            return
        log.error("%s[%d] pid %d silent for %.1f s (heartbeat_timeout %g s): hung; "
                  "killing it (SIGKILL) and starting it again", child.role, child.slot,
                  child.process.pid, silent, self.heartbeat_timeout)
        child.process.kill()
        child.silenced = True

    @staticmethod
    def _close_heartbeat(child: Child) -> None:
        if child.heartbeat >= 0:
            os.close(child.heartbeat)
            child.heartbeat = -1

    def start(self) -> None:
        """Create folders, bind ports, start every child."""
        for folder in self.config.directories:
            folder.mkdir(parents=True, exist_ok=True)
        spool.SpoolLayout(self.config.spool_dir).create()
        for role, (address_key, port_key) in LISTENING_ROLES.items():
            address, port = getattr(self.config, address_key), getattr(self.config, port_key)
            if role in OPTIONAL_ROLES:
                # Never waited for: old workers draining (the patience below)
                # or a second echoes holding it must not hold the DICOM ports
                # back (35.6 s measured); watch_once tries it again.
                try:
                    self.sockets[role] = bind_socket(address, port)
                except OSError as exc:
                    log.error("%s: cannot listen on %s:%d: %s; running without the %s "
                              "process until the port is free (tried every %.0f s)",
                              port_key, address, port, exc.strerror, role, REBIND_SECONDS)
                    self.waiting[role] = time.monotonic() + REBIND_SECONDS
                continue
            try:
                self.sockets[role] = bind_with_patience(address, port)
            except OSError as exc:
                for listening in self.sockets.values():
                    listening.close()
                raise StartError(f"{port_key}: cannot listen on {address}:{port}: "
                                 f"{exc.strerror}") from None
        for role in ROLES:
            if role not in self.waiting:
                self._start_role(role)

    def _start_role(self, role: str) -> None:
        for slot in range(ROLES[role](self.config)):
            child = Child(role, slot)
            self.children.append(child)
            self._spawn(child)

    def _retry_ports(self, now: float) -> None:
        """Try again the ports of optional roles still waiting; start a role that got its."""
        for role, when in list(self.waiting.items()):
            if now < when:
                continue
            address_key, port_key = LISTENING_ROLES[role]
            address, port = getattr(self.config, address_key), getattr(self.config, port_key)
            try:
                self.sockets[role] = bind_socket(address, port)
            except OSError:
                self.waiting[role] = now + REBIND_SECONDS
                continue
            del self.waiting[role]
            log.info("%s %s:%d is free now: listening, starting the %s process",
                     port_key, address, port, role)
            self._start_role(role)

    def watch_once(self) -> None:
        """Restart any child that has exited or fallen silent (called every POLL_SECONDS)."""
        now = time.monotonic()
        if now - self.watched > self.heartbeat_timeout / 2:
            # The supervisor itself did not run (stopped, starved): the
            # children's silence since is not theirs to answer for.
            for child in self.children:
                child.beaten = now
        self.watched = now
        if self.waiting:
            self._retry_ports(now)
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is None:
                self._listen_to_heartbeat(child, now)
                continue
            if process is not None:
                self._close_heartbeat(child)
                lived = now - child.started
                child.failures = 0 if lived >= HEALTHY_SECONDS else child.failures + 1
                delay = min(MAX_BACKOFF, 0.1 * 2**child.failures) if child.failures else 0.0
                child.not_before = now + delay
                log.error("%s[%d] pid %d exited with %s after %.1f s; restarting in %.1f s",
                          child.role, child.slot, process.pid,
                          _describe_exit(process.returncode), lived, delay)
                child.process = None
            if now >= child.not_before:
                self._spawn(child)

    def stop(self) -> None:
        """Stop children role by role, in ROLES order, bounded."""
        self.stopping = True
        for role in ROLES:
            group = [c.process for c in self.children if c.role == role and c.process]
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            listening = self.sockets.pop(role, None)
            if listening is not None:
                # With the workers' copies closed too (they stop accepting at
                # once), a modality connecting now is refused at once instead
                # of waiting in the backlog for a timeout; open associations
                # go on to their end.
                listening.close()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for process in group:
                try:
                    code = process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("%s pid %d did not stop in %.0f s; killing",
                              role, process.pid, STOP_GRACE_SECONDS)
                    process.kill()
                    process.wait()
                    continue
                if code != 0:  # a clean stop is code 0: anything else is a bug to see
                    log.error("%s pid %d exited with %s while stopping", role, process.pid,
                              _describe_exit(code))
        for child in self.children:
            self._close_heartbeat(child)
        log.info("stopped")

    def slots(self) -> list[tuple[str, int | None, bool]]:
        """(role, pid, running) of every process slot, for the node's heartbeat (read
        from another thread: only what the watch loop already learnt, no syscall)."""
        found = []
        for child in list(self.children):
            process = child.process
            running = process is not None and process.returncode is None
            found.append((child.role, process.pid if process is not None else None, running))
        return found

    def wanted(self) -> dict[str, int]:
        """role -> how many processes of it the config asks for."""
        return {role: count(self.config) for role, count in ROLES.items()}

    def forward_signal(self, signum: int) -> None:
        """Pass a signal (SIGHUP) on to every running child."""
        for child in self.children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signum)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def run(config: Config, on_started: Callable[[], None] | None = None) -> int:
    """``echoes start`` in the foreground: supervise until SIGTERM/SIGINT.

    ``on_started`` runs once the ports are bound and the children started.
    SIGHUP re-reads the configuration (log level), reopens the log and is
    passed on to every child, which applies every key but those of
    ``RESTART_KEYS``; changes to those are named in a WARNING.
    """
    set_title("supervisor")
    supervisor = Supervisor(config)
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda num, _frame: received.append(num))
    try:
        supervisor.start()
    except StartError as exc:
        log.error("cannot start: %s", exc)
        return 1
    beacon = None
    if config.database_url:  # the node's row in the database, for echoes check anywhere
        from echoes.processes.beacon import Beacon

        beacon = Beacon(config, supervisor.slots, supervisor.wanted())
        beacon.start()
    if on_started is not None:
        on_started()
    log.info("echoes %s: store port %d, worklist port %d, Browser http://%s:%d/%s, pid %d",
             config.ae_title, config.store_port, config.mwl_port, config.http_bind,
             config.http_port, " (waiting for its port)" if "web" in supervisor.waiting else "",
             os.getpid())
    reloader = Reloader(config)
    while True:
        while received:
            signum = received.pop(0)
            if signum == signal.SIGHUP:
                previous = reloader.config
                reloader.request()
                fresh = reloader.current()
                supervisor.heartbeat_timeout = fresh.heartbeat_timeout
                logs.setup(fresh, "supervisor", to_stderr=logs.to_stderr())
                applied = [name for name in changed_keys(previous, fresh)
                           if name not in RESTART_KEYS]
                log.info("SIGHUP: configuration re-read, log reopened, passed on; %s",
                         f"applied: {', '.join(applied)}" if applied else "nothing to apply")
                waiting = restart_needed(supervisor.config, fresh)
                if waiting:
                    # Said on every SIGHUP until the restart: the server still
                    # runs on the old values of these.
                    log.warning("SIGHUP: changed keys that need a restart to take effect "
                                "(echoes stop, echoes start): %s", ", ".join(waiting))
                supervisor.forward_signal(signum)
            else:
                log.info("received %s, stopping", signal.Signals(signum).name)
                supervisor.stop()
                if beacon is not None:
                    beacon.stop()
                return 0
        supervisor.watch_once()
        time.sleep(POLL_SECONDS)
