"""The supervisor's heartbeat in the database: this node's row of the ``nodes`` table.

Why in the supervisor.  It alone knows every process of the node (which
run, which are being restarted); its row, written every
:data:`echoes.database.nodes.BEAT_SECONDS` by a thread of its own (the
watch loop never waits on the database), lets ``echoes check`` on any node
tell that this one is down (no beat for 30 s) or short of a process.  A
database that does not answer costs one WARNING per outage; the beats
resume by themselves.  A clean stop writes a last row saying so.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

from echoes.config import Config
from echoes.database import DatabaseError
from echoes.database import nodes as node_rows
from echoes.ops import nodes
from echoes.storage import spool

log = logging.getLogger("echoes.supervisor")

#: A stopping node waits at most this long for its last beat's thread.
JOIN_SECONDS = 10.0


class Beacon:
    """Writes this node's row now and every BEAT_SECONDS until :meth:`stop`.

    ``children`` gives (role, pid, running) of each process slot, ``wanted``
    how many processes of each role the config asks for.
    """

    def __init__(self, config: Config,
                 children: Callable[[], Iterable[tuple[str, int | None, bool]]],
                 wanted: dict[str, int]) -> None:
        self.config = config
        self.children = children
        self.wanted = wanted
        self.heartbeat = node_rows.Heartbeat(config.database_url, config.node_name,
                                             socket.gethostname(), os.getpid(), time.time())
        self.incoming = spool.SpoolLayout(config.spool_dir).incoming
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beacon", daemon=True)
        self._failing = False
        #: this beacon wrote its row at least once (a row naming another supervisor
        #: before that is this node's own previous run)
        self._written = False
        self._quiet_until = 0.0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(node_rows.BEAT_SECONDS):
                return

    def beat(self, stopped: bool = False) -> None:
        """Write the row; a database that does not answer is said once per outage."""
        try:
            before = self.heartbeat.write(nodes.roles_state(self.children(), self.wanted),
                                          count_files(self.incoming), stopped)
        except DatabaseError as exc:
            if not self._failing:
                log.warning("node heartbeat not written (tried every %.0f s): %s",
                            node_rows.BEAT_SECONDS, exc)
            self._failing = True
            return
        if self._failing:
            log.info("node heartbeat written again")
        self._failing = False
        ours = (self.heartbeat.values["host"], self.heartbeat.values["pid"])
        if self._written and tuple(before) != ours and time.monotonic() >= self._quiet_until:
            # Since our last beat another supervisor wrote this node's row.
            log.error("node_name %s is used by another node too (host %s, pid %s): their "
                      "senders would take each other's jobs; give each node its own "
                      "node_name", self.config.node_name, before[0], before[1])
            self._quiet_until = time.monotonic() + 60
        self._written = True

    def stop(self) -> None:
        """End the beats with one saying this node stopped cleanly."""
        self._stop.set()
        self._thread.join(JOIN_SECONDS)
        self.beat(stopped=True)
        self.heartbeat.close()


def count_files(folder: os.PathLike | str) -> int:
    """Entries in ``folder`` (0 when it is missing): the spool's backlog."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for _ in entries)
    except FileNotFoundError:
        return 0
