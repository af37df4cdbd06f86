"""The ``nodes`` table: each node's heartbeat, written by its supervisor, read by
``echoes check`` and ``echoes nodes`` on any node.

Why in the database.  Several nodes share one archive (``database_url``);
the database is the one place every node can see, so each node's
supervisor writes there who it is and how its processes are, every
:data:`BEAT_SECONDS`, and any node can tell that another has gone silent.
Times are the database server's ``now()``: the nodes' clocks may differ,
the age of a beat must not depend on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from echoes.database import DatabaseError, connect, explain

#: How often a node's supervisor writes its row.
BEAT_SECONDS = 5.0

BEAT = """WITH old AS (SELECT host, pid FROM nodes WHERE node_name = %(node)s)
INSERT INTO nodes (node_name, host, pid, started, last_seen, stopped, roles,
                   spool_waiting)
VALUES (%(node)s, %(host)s, %(pid)s, to_timestamp(%(started)s), now(), %(stopped)s,
        %(roles)s, %(spool_waiting)s)
ON CONFLICT (node_name) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
    started = EXCLUDED.started, last_seen = EXCLUDED.last_seen, stopped = EXCLUDED.stopped,
    roles = EXCLUDED.roles, spool_waiting = EXCLUDED.spool_waiting
RETURNING (SELECT host FROM old), (SELECT pid FROM old)"""

READ = """SELECT node_name, host, pid, extract(epoch FROM started)::float8,
       extract(epoch FROM now() - last_seen)::float8, stopped, roles, spool_waiting
FROM nodes ORDER BY node_name"""


@dataclass(frozen=True)
class NodeRow:
    """One node as its last beat said, with the seconds since that beat."""

    name: str
    host: str
    pid: int
    started: float
    silent: float
    stopped: bool
    roles: dict[str, Any]
    spool_waiting: int


class Heartbeat:
    """Writes one node's row, on a connection of its own (not the pool: the supervisor
    holds no pool, and a beat must not wait behind a busy one).

    A connection error drops the connection (the next beat connects again) and
    raises :class:`~echoes.database.DatabaseError`.
    """

    def __init__(self, url: str, node: str, host: str, pid: int, started: float) -> None:
        self.url = url
        self.values = {"node": node, "host": host, "pid": pid, "started": started}
        self._connection: Any = None

    def write(self, roles: dict, spool_waiting: int,
              stopped: bool = False) -> tuple[str | None, int | None]:
        """This node's row, now (one statement, committed: autocommit); return the
        host and pid the row named before (None, None: there was none)."""
        import psycopg

        try:
            if self._connection is None:
                self._connection = connect(self.url, autocommit=True)
            return self._connection.execute(BEAT, {**self.values, "stopped": stopped,
                                                   "roles": json.dumps(roles),
                                                   "spool_waiting": spool_waiting}).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise explain(self.url, exc) from None
        except DatabaseError:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


def read(url: str) -> list[NodeRow]:
    """Every node's row, by name (DatabaseError when the database cannot be used)."""
    import psycopg

    try:
        with connect(url, autocommit=True) as connection:
            rows = connection.execute(READ).fetchall()
    except psycopg.errors.UndefinedTable:  # schema 1: no node has started on 2 yet
        return []
    except psycopg.Error as exc:
        raise explain(url, exc) from None
    return [NodeRow(*row) for row in rows]


def forget(url: str, node: str) -> bool:
    """Remove a node's row (a node gone for good); whether there was one."""
    with connect(url, autocommit=True) as connection:
        return connection.execute("DELETE FROM nodes WHERE node_name = %s",
                                  (node,)).rowcount > 0
