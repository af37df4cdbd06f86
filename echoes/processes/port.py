"""The base of the roles that serve a DICOM port: store and mwl.

The supervisor binds the port once and passes the listening socket
(``--listen-fd``); the role accepts on it in a thread, each association on
a thread of its own.  On SIGTERM it stops accepting at once (its copy of the
listener is closed, so with the supervisor's closed too a modality
connecting now is refused instead of waiting in the backlog) and lets the
associations already open run to their end, up to ``dimse_timeout``.  On
SIGHUP the port's rules (AE titles, networks, limits, timeouts, TLS) apply to
the associations accepted from then on.

The associations run in request threads, so the heartbeat comes from a
thread of its own, for as long as the accept loop runs.

Every call into :mod:`echoes.dicom` of the two roles is in :meth:`DicomPort.start`
and :meth:`DicomPort.reload`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from echoes.config import Config
from echoes.dicom import server as listener
from echoes.dicom.service import Port
from echoes.processes.worker import Worker
from echoes.services import dicom_settings, verification

#: The DICOM layer's logger: these lines were written there before the roles
#: had a base of their own, and admins look for them under this name.
log = logging.getLogger("echoes.listener")


class DicomPort(Worker):
    """A role serving one DICOM port on the supervisor's socket."""

    #: Largest PDU the role announces for receiving.
    maximum_length = 0

    def service(self) -> Any:
        """The port's service (see echoes.dicom.acceptor.Service), made at start."""
        raise NotImplementedError

    def reconfigure(self, fresh: Config) -> None:
        """SIGHUP: what the service itself keeps (the port's rules are applied already)."""

    def closed(self) -> None:
        """After the last association ended: the role's own cleanup."""

    def start(self) -> None:
        # Every port answers C-ECHO besides its own service.
        port = Port(verification.service(), self.service())
        self.server = listener.AssociationServer(port, self.port_settings(self.config),
                                                 self.listen_fd)
        accepting = self.spawn(self.server.serve_forever, "accept")
        self.heartbeat.beat_while(accepting.is_alive)
        log.info("%s serving on %s:%d (pid %d)", self.config.ae_title,
                 *self.server.server_address[:2], os.getpid())

    def port_settings(self, config: Config) -> listener.PortSettings:
        return dicom_settings.port_settings(config, self.role, self.maximum_length)

    def reload(self, fresh: Config) -> None:
        self.server.configure(self.port_settings(fresh))
        self.reconfigure(fresh)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        deadline = time.monotonic() + self.config.dimse_timeout
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        left = len(self.server.active_associations)
        if left:
            log.warning("%d associations still open at exit (pid %d)", left, os.getpid())
        self.closed()
