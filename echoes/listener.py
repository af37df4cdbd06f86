"""Serving a pynetdicom AE on a listening socket inherited from the supervisor.

The supervisor binds each DICOM port once and passes the listening socket to
the worker processes (``--listen-fd``), so a port never closes while a worker
restarts and several store workers can share one port.  This module is the
thin shell every DICOM worker uses to serve on such a socket and to stop
gracefully on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from echoes.config import Config

log = logging.getLogger("echoes.listener")


class SharedSocketServer(ThreadedAssociationServer):
    """An association server on a listening socket inherited from the supervisor."""

    listen_fd: int = -1

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = socket.socket(fileno=os.dup(self.listen_fd))
        # Several workers may accept on this socket: whoever loses the race
        # must not block in accept(), so the listener is non-blocking.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The supervisor already called listen()."""

    def get_request(self):  # type: ignore[override]
        client, address = self.socket.accept()
        client.setblocking(True)
        # Immune to peers that leave Nagle on: answer each PDU at once.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def server_close(self) -> None:
        # Never shutdown() the shared listener: that would stop every worker.
        self.socket.close()


def acceptor_ae(config: Config) -> AE:
    """An AE for serving: our title, the configured timeouts and association limit,
    any called AE title accepted (SPEC).  The caller adds its contexts."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.require_called_aet = False
    return ae


def serve(
    ae: AE,
    handlers: list[tuple[Any, Callable[..., Any]]],
    listen_fd: int,
    drain_seconds: float,
    tick: Callable[[], None] | None = None,
    tick_seconds: float = 30.0,
    on_hangup: Callable[[], None] | None = None,
) -> ThreadedAssociationServer:
    """Serve until SIGTERM/SIGINT, then let open associations finish.

    ``tick`` runs every ``tick_seconds`` in the main thread; ``on_hangup``
    runs on SIGHUP (which is otherwise ignored, so a reload signal from the
    supervisor never kills a worker).  Returns the stopped server.
    """
    SharedSocketServer.listen_fd = listen_fd
    server = ae.make_server(("", 0), evt_handlers=handlers, server_class=SharedSocketServer)
    stop = threading.Event()
    hangup = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_sighup(*_: object) -> None:
        hangup.set()
        stop.set()  # wakes the loop below

    signal.signal(signal.SIGHUP, on_sighup)
    thread = threading.Thread(target=server.serve_forever, name="accept", daemon=True)
    thread.start()
    log.info("%s serving on %s:%d (pid %d)", ae.ae_title, *server.server_address[:2], os.getpid())
    next_tick = time.monotonic() + tick_seconds
    while True:
        stop.wait(max(0.0, next_tick - time.monotonic()))
        if hangup.is_set():
            hangup.clear()
            stop.clear()
            if on_hangup is not None:
                on_hangup()
            continue
        if stop.is_set():
            break
        if tick is not None:
            tick()
        next_tick = time.monotonic() + tick_seconds
    # Stop accepting (pynetdicom's own shutdown() expects start_server()).
    socketserver.BaseServer.shutdown(server)
    server.server_close()
    deadline = time.monotonic() + drain_seconds
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    left = len(server.active_associations)
    if left:
        log.warning("%d associations still open at exit (pid %d)", left, os.getpid())
    return server
