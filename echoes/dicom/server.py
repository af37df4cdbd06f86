"""Serving a DICOM port on a listening socket inherited from the supervisor.

The supervisor binds each DICOM port once and passes the listening socket to
the worker processes (``--listen-fd``), so a port never closes while a worker
restarts and several store workers can share one port.  This module is the
thin shell every DICOM worker uses to serve on such a socket and to stop
gracefully on SIGTERM.  Each accepted connection runs one association of
:mod:`echoes.dicom.acceptor` on its own thread.  Its rules come in as
:class:`PortSettings` (plain values), at start and on each SIGHUP.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from echoes.dicom import acceptor as association
from echoes.dicom import pdu, tls, transport

log = logging.getLogger("echoes.listener")


@dataclass(frozen=True)
class PortSettings:
    """Everything a DICOM port is served by, as plain values (built from the
    configuration outside this package, again on each SIGHUP)."""

    #: The rules each association is accepted and run under.
    association: association.Settings
    #: Networks peers may connect from (empty: anywhere).
    allowed_networks: tuple[str, ...] = ()
    #: TLS on this port (None: plain TCP).
    tls: tls.TLSFiles | None = None
    #: How long open associations may finish after SIGTERM.
    drain_seconds: float = 30.0


#: How long a finished association's thread waits for the next one.
IDLE_THREAD_SECONDS = 5.0
#: How many finished associations' threads wait at most.
KEEP_IDLE_THREADS = 4


class HandlerThreads:
    """Threads for associations, kept after their association ends and reused.

    Why not a thread per connection (socketserver's ThreadingMixIn): a
    modality that opens one association per object paid for a new thread
    each time, about 0.1-0.6 ms between accept() and the first read of its
    A-ASSOCIATE-RQ (strace of a store worker, 2026-12-04), time the peer
    waits for its A-ASSOCIATE-AC.  Not concurrent.futures' pool either: its
    threads are joined at interpreter exit, so one hung association would keep
    a stopping worker alive.  A new thread is started only when none is idle.
    At most ``keep_idle`` wait for the next association, each for at most
    ``idle_seconds`` (a modality's next association comes milliseconds
    later); the others exit, so a burst of connections leaves no threads
    behind for long.  Daemon threads, as before.
    """

    def __init__(self, idle_seconds: float = IDLE_THREAD_SECONDS,
                 keep_idle: int = KEEP_IDLE_THREADS) -> None:
        self.idle_seconds = idle_seconds
        self.keep_idle = keep_idle
        self.jobs: queue.SimpleQueue[tuple[Callable[..., object], tuple]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        #: Threads waiting for a job (decremented by the submitter that hands them one).
        self.idle = 0

    def submit(self, function: Callable[..., object], *args: object) -> None:
        """Run ``function(*args)`` on an idle thread, or on a new one."""
        with self.lock:
            if self.idle:
                self.idle -= 1
                self.jobs.put((function, args))
                return
        threading.Thread(target=self._work, args=(function, args), name="association",
                         daemon=True).start()

    def _work(self, function: Callable[..., object], args: tuple) -> None:
        while True:
            function(*args)
            with self.lock:
                if self.idle >= self.keep_idle:
                    return
                self.idle += 1
            while True:
                try:
                    function, args = self.jobs.get(timeout=self.idle_seconds)
                    break
                except queue.Empty:
                    with self.lock:
                        if self.idle:  # nobody is handing this thread a job: leave
                            self.idle -= 1
                            return
                    # A submitter took this thread as idle and is putting its job.


class AssociationServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Accepts on the listening socket inherited from the supervisor; each
    connection runs one :mod:`echoes.dicom.acceptor` on a thread of its own
    while it lasts (:class:`HandlerThreads`).

    Also enforces ``allowed_networks``: a peer from elsewhere gets, in its
    own thread, an A-ASSOCIATE-RJ (permanent, service user, no reason given)
    to its request, a log line, and the connection closed.  Accepted
    connections get TCP_NODELAY, QUICKACK before every read, a read timeout
    and (when configured) TLS.  :meth:`configure` takes these rules, at
    start and again on SIGHUP.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, service: Any, settings: PortSettings, listen_fd: int) -> None:
        self.limiter = association.Limiter()
        self.service = service
        self.listen_fd = listen_fd
        self.port_settings: PortSettings | None = None
        self.settings: association.Settings | None = None
        self.allowed_networks: tuple = ()
        self.read_timeout: float | None = None
        self.ssl_context: Any = None
        self.threads = HandlerThreads()
        socketserver.TCPServer.__init__(self, ("", 0), _AssociationHandler)
        self.configure(settings)

    @property
    def role(self) -> str:
        """The port's name in log lines."""
        assert self.settings is not None
        return self.settings.role

    def configure(self, settings: PortSettings) -> None:
        """Serve associations accepted from now on by these rules: calling
        and called AE titles, networks, association limit, timeouts, TLS.

        Open associations keep the rules they were accepted under.  Each
        attribute is replaced whole, so the accept thread sees the old rule or
        the new one.  New TLS files that do not load (a key that does not match
        its certificate) are logged and the previous context kept: a reload
        must not take the port down.
        """
        try:
            self.ssl_context = tls.server_context(settings.tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            if self.settings is None:
                raise  # at start: the worker fails and the log says why
            log.error("TLS files not loaded, new associations keep the previous ones: %s", exc)
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in settings.allowed_networks)
        self.read_timeout = settings.association.network_timeout
        self.port_settings = settings
        self.settings = settings.association

    def finish_request(self, request, client_address) -> None:
        if self.allowed_networks and not _address_allowed(client_address[0],
                                                          self.allowed_networks):
            _refuse_connection(request, client_address, self.role)
            return
        super().finish_request(request, client_address)

    def server_bind(self) -> None:
        self.socket.close()  # type: ignore[has-type]
        self.socket = socket.socket(fileno=os.dup(self.listen_fd))
        # One descriptor of the listener per worker: when the worker stops
        # accepting (SIGTERM) the port is free for a restarted supervisor at
        # once, while open associations drain.
        os.close(self.listen_fd)
        # Several workers may accept on this socket: whoever loses the race
        # must not block in accept(), so the listener is non-blocking.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The supervisor already called listen()."""

    def process_request(self, request, client_address) -> None:
        """Run the connection on a reused thread (see :class:`HandlerThreads`)."""
        self.threads.submit(self.process_request_thread, request, client_address)

    def get_request(self):
        accepted, address = self.socket.accept()
        return transport.accepted(accepted, self.read_timeout, self.ssl_context), address

    def server_close(self) -> None:
        # Never shutdown() the shared listener: that would stop every worker.
        self.socket.close()

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        request.close()

    @property
    def active_associations(self) -> list:
        """Open associations, as a list for the drain loop."""
        return [None] * self.limiter.active


class _AssociationHandler(socketserver.BaseRequestHandler):
    """Runs one association on its own thread (ThreadingMixIn)."""

    def handle(self) -> None:
        server = self.server
        association.serve(self.request, self.client_address, server.service,  # type: ignore[attr-defined]
                          server.settings, server.limiter)  # type: ignore[attr-defined]


def _address_allowed(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _refuse_connection(request: socket.socket, client_address: tuple, role: str) -> None:
    """Read (briefly) the peer's A-ASSOCIATE-RQ, answer A-ASSOCIATE-RJ, close."""
    try:
        request.settimeout(2.0)
        request.recv(65536)
        # Rejected-permanent, DICOM UL service-user, no reason given.
        request.sendall(pdu.associate_rj(pdu.REJECT_NO_REASON))
    except OSError:
        pass
    log.warning("rejected association from %s:%s on the %s port: address not in "
                "allowed_networks", client_address[0], client_address[1], role)
