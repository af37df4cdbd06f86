"""The ``web`` role: the Browser (:mod:`echoes.web`) served by waitress on the supervisor's socket.

waitress's loop runs on a thread of the role, its requests on waitress's
own threads; the heartbeat comes from a thread of its own for as long as
that loop runs.  Nothing is served on an address other than ``http_bind``:
a socket bound elsewhere is refused (exit 1, logged), so a wiring mistake
never serves patient data to the network.
"""

from __future__ import annotations

import logging
import os
import socket

from echoes.config import Config
from echoes.processes.worker import RoleRefused, Worker
from echoes.web import create_app, make_server, stop_server

log = logging.getLogger("echoes.web")


class WebWorker(Worker):
    """Serves the Browser until SIGTERM; SIGHUP re-reads what the Browser shows."""

    role = "web"

    def start(self) -> None:
        config = self.config
        sock = socket.socket(fileno=os.dup(self.listen_fd))
        os.close(self.listen_fd)
        bound = sock.getsockname()[0]
        if bound != config.http_bind:
            sock.close()
            raise RoleRefused(f"web: socket bound to {bound}, but http_bind is "
                              f"{config.http_bind}: not serving")
        self.app = create_app(config)
        self.app.extensions["echoes"].catalog.warm_up()
        self.server = make_server(self.app, sock)
        self.loop = self.spawn(self.server.run, "waitress")
        self.heartbeat.beat_while(self.loop.is_alive)
        log.info("Browser on http://%s:%d/", config.http_bind, sock.getsockname()[1])

    def reload(self, _fresh: Config) -> None:
        self.app.extensions["echoes"].config_changed()

    def stop(self) -> None:
        if self.loop.is_alive():  # else its sockets are closed already
            stop_server(self.server)
            self.loop.join()
        self.app.extensions["echoes"].close()  # after the last request
        log.info("web stopped")


def run(config: Config, listen_fd: int = -1) -> int:
    """Serve the Browser on the supervisor's socket until SIGTERM; the ``web`` role."""
    return WebWorker(config, listen_fd).main()
