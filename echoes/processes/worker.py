"""The worker base: what every supervised role shares, written once.

A role (store, mwl, ingester, sender, web) is a thin shell: a subclass of
:class:`Worker` that says how its work starts (:meth:`Worker.start`), what a
SIGHUP changes in it (:meth:`Worker.reload`) and how it stops
(:meth:`Worker.stop`).  The base owns the rest, as gunicorn's worker class
does for its worker kinds:

- the process: its title ``echoes: ROLE`` (ps, top, and how the supervisor
  tells its own old workers from strangers on a port), logging set up from
  the configuration, and SIGTERM from the kernel when the supervisor dies;
- signals: SIGTERM and SIGINT stop gracefully (the role finishes what it
  acknowledged), SIGHUP re-reads the configuration, reopens the log and
  calls the role's :meth:`Worker.reload`.  The handlers only set flags; the
  work is done by the main thread, which does nothing else (logging takes
  locks, so never from inside a handler);
- the heartbeat (:class:`Heartbeat`), which the supervisor watches: a role
  silent for ``heartbeat_timeout`` seconds is killed and restarted.

A role's work runs in threads of its own (:meth:`Worker.spawn`).  One that
ends before the process was asked to stop (an exception, a loop that
returned) stops the process at once, with that exception, so the supervisor
restarts it now rather than after ``heartbeat_timeout``.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from echoes import logs
from echoes.config import Config

#: The environment variable naming the write end of the heartbeat pipe the
#: supervisor holds the read end of (absent: nobody watches, no beats).
HEARTBEAT_FD = "ECHOES_HEARTBEAT_FD"

#: A beat is written at most this often, and the waits that beat wake this
#: often: well under the smallest heartbeat_timeout (3 s), so one late beat
#: is never fatal.
BEAT_SECONDS = 0.5

#: role -> the module of its shell, imported only in the process of that role
#: (the web process never imports the DICOM services, and so on).  Each has
#: ``run(config, listen_fd=-1) -> int``.
SHELLS = {
    "store": "echoes.processes.store",
    "mwl": "echoes.processes.mwl",
    "ingester": "echoes.processes.ingester",
    "sender": "echoes.processes.sender",
    "web": "echoes.processes.web",
}


class Heartbeat:
    """A process's proof of life: one byte written to the supervisor's pipe.

    Why a pipe: the supervisor already holds one descriptor per child, a
    write costs one system call and no file system (no stale files after a
    crash, no clock to trust), and a frozen process (SIGSTOP, a deadlock,
    a loop stuck in one call) simply stops writing.  Beats are rate-limited
    to one per BEAT_SECONDS, so calling :meth:`beat` per object is cheap.
    The pipe is non-blocking: when the supervisor has not read for a while
    the pipe is full of beats already and a write is dropped.
    """

    def __init__(self, fd: int | None, every: float = BEAT_SECONDS) -> None:
        self.fd = fd
        self.every = every
        self._last = float("-inf")
        self._covering = 0  # blocks open in covering()
        self._covered = threading.Event()  # set while _covering > 0
        self._cover_lock = threading.Lock()
        self._helper: threading.Thread | None = None

    @classmethod
    def inherited(cls) -> Heartbeat:
        """The pipe the supervisor passed to this process (none: beats go nowhere)."""
        text = os.environ.pop(HEARTBEAT_FD, "")  # not passed on to anything started here
        return cls(int(text) if text.isdigit() else None)

    def beat(self) -> None:
        """Tell the supervisor this process is alive (at most one write per BEAT_SECONDS)."""
        now = time.monotonic()
        if self.fd is None or now - self._last < self.every:
            return
        self._last = now
        try:
            os.write(self.fd, b".")
        except BlockingIOError:  # the supervisor is behind: beats are waiting for it
            pass
        except OSError:  # EPIPE: the supervisor is gone (its SIGTERM follows)
            self.fd = None

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """``event.wait(timeout)`` that beats meanwhile: for a role's loop that
        sleeps longer than a beat (the ingester sweeps every 5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            self.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return event.is_set()
            if event.wait(min(left, self.every)):
                return True

    def beat_while(self, alive: Callable[[], bool], name: str = "heartbeat") -> threading.Thread:
        """A thread that beats as long as ``alive()``: for roles whose work runs in
        request threads (the DICOM ports, the Browser), where no loop of the
        role's own could beat; ``alive`` says that their serving loop still runs.
        """
        def beat() -> None:
            while alive():
                self.beat()
                time.sleep(self.every)

        thread = threading.Thread(target=beat, name=name, daemon=True)
        thread.start()
        return thread

    @contextmanager
    def covering(self) -> Iterator[None]:
        """Beat from a helper thread while the block runs: for one long call that
        is progress by itself and has no loop to beat from (a start-up that
        reads a large worklist or warms the Browser's catalog, a reindex).

        Cheap enough to wrap a call that is usually quick: one helper thread,
        started the first time, beats while any block is open.
        """
        with self._cover_lock:
            self._covering += 1
            self._covered.set()
            if self._helper is None:
                self._helper = threading.Thread(target=self._cover, name="heartbeat-cover",
                                                daemon=True)
                self._helper.start()
        try:
            yield
        finally:
            with self._cover_lock:
                self._covering -= 1
                if not self._covering:
                    self._covered.clear()

    def _cover(self) -> None:
        while True:
            self._covered.wait()
            self.beat()
            time.sleep(self.every)


class RoleRefused(Exception):
    """The role cannot run with what it was given: an ERROR in the role's log, exit code 1."""


class Worker:
    """The base of every supervised role (see the module docstring)."""

    #: the role's name: the process title, the log's process name
    role = ""

    def __init__(self, config: Config, listen_fd: int = -1) -> None:
        self.config = config
        #: the listening socket the supervisor bound for the role (-1: none)
        self.listen_fd = listen_fd
        self.heartbeat = Heartbeat.inherited()
        self._stop = threading.Event()
        #: Set by the signal handlers: plain flags, no lock a handler could
        #: deadlock on (it runs on the main thread, between any two bytecodes).
        self._stop_requested = False
        self._hangup_requested = False
        #: The main thread sleeps reading this pipe: signals (set_wakeup_fd) and
        #: a role thread that ended write to it.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._failure: BaseException | None = None

    # -- what a role says --------------------------------------------------------

    def start(self) -> None:
        """Begin the role's work in threads of its own (:meth:`spawn`); return at once.

        The base beats meanwhile (:meth:`Heartbeat.covering`): a start-up may
        read a large worklist or catalog.
        """

    def reload(self, fresh: Config) -> None:
        """SIGHUP: apply ``fresh`` to what the role keeps (the log is reopened already)."""

    def stop(self) -> None:
        """SIGTERM: end the role's work gracefully and return when it has ended."""

    # -- what the base does ------------------------------------------------------

    def spawn(self, target: Callable[[], object], name: str) -> threading.Thread:
        """Run ``target`` on a thread of the role; its end before a stop ends the process."""
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:
                self._failure = exc
            else:
                if not self._stop.is_set():
                    self._failure = RuntimeError(f"{self.role}: thread {name} ended by itself")
            finally:
                if self._failure is not None:
                    self._stop.set()
                    self._wake()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _wake(self) -> None:
        """Wake the main thread (from any thread)."""
        try:
            os.write(self._wake_write, b"!")
        except BlockingIOError:
            pass  # full: it has enough to wake up

    def _sleep(self) -> None:
        """Block the main thread until a signal or :meth:`_wake`.

        Why a pipe and not a threading.Event: the kernel may deliver SIGHUP or
        SIGTERM to any thread of the process; Python runs the handler on the
        main thread only when that thread next runs Python code, and a main
        thread blocked on a lock never does.  A reload could then wait forever
        (seen once: a store worker still plain DICOM 10 s after a SIGHUP that
        turned TLS on).  ``signal.set_wakeup_fd`` has the C-level handler, on
        whichever thread, write to this pipe: the read returns, and the
        pending handlers run before the next line.
        """
        try:
            os.read(self._wake_read, 512)
        except InterruptedError:
            pass

    def main(self) -> int:
        """The process of the role, from its title to its exit code."""
        set_title(self.role)
        logs.setup(self.config, self.role)

        def request_stop(*_args: object) -> None:
            self._stop_requested = True

        def request_reload(*_args: object) -> None:
            self._hangup_requested = True

        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_reload)
        try:
            with self.heartbeat.covering():
                self.start()
        except RoleRefused as exc:
            logging.getLogger(f"echoes.{self.role}").error("%s", exc)
            return 1
        while True:
            if self._stop_requested:
                self._stop.set()
            if self._hangup_requested and not self._stop.is_set():
                self._hangup_requested = False
                self.config = logs.reload(self.config, self.role)
                self.reload(self.config)
            if self._stop.is_set():
                break
            self._sleep()
        self.stop()
        if self._failure is not None:
            raise self._failure
        return 0


def run_role(role: str, config: Config, listen_fd: int) -> int:
    """A supervised child (``echoes _worker ROLE``): run the shell of ``role``."""
    die_with_parent()
    shell = SHELLS.get(role)
    if shell is None:
        import sys

        print(f"echoes: unknown worker role {role!r}", file=sys.stderr)
        return 2
    # An archive keeps what it receives: pydicom's warnings about values
    # that break VR rules (leading zeros in UIDs...) are noise here.
    from pydicom import config as pydicom_config

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    return importlib.import_module(shell).run(config, listen_fd)


def die_with_parent() -> None:
    """In a child: get SIGTERM when the supervisor dies, even by kill -9.

    Without it, workers orphaned by a killed supervisor keep the DICOM ports
    and a restarted supervisor could not bind them.  SIGTERM (not SIGKILL)
    so the orphans still finish what they acknowledged.  Linux only
    (prctl PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def set_title(role: str) -> None:
    """Name this process ``echoes: ROLE`` for ps and top."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"echoes: {role}")
    except ImportError:  # pragma: no cover - a declared dependency
        pass
