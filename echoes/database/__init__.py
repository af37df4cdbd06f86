"""PostgreSQL for the index and job store backends: connecting, pools, the schema.

Why a package of its own.  Both seams (:mod:`echoes.index`,
:mod:`echoes.queue`) keep their data in the same database when
``database_url`` is set; connecting, reporting a database that cannot be
reached in one line, and upgrading the schema are written once here.

A connection problem (server down, wrong password, unknown host or database)
becomes :class:`DatabaseError`, whose message is one line naming the server
without the password: ``echoes start`` prints it and exits non-zero, a
long-running process logs it and retries.  Processes open their pool
themselves, after the supervisor forked them (a connection must not be
shared across a fork).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from echoes.database import migrations

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

#: Seconds to wait for the server before calling it unreachable.
CONNECT_TIMEOUT = 5
#: Seconds to wait for a connection of the pool: statements hold one for
#: milliseconds, so a longer wait means the server is gone (and a caller such
#: as the sender's dispatch must not hang on it).
POOL_WAIT = 2
#: Key of the advisory lock that serialises schema upgrades of several nodes.
MIGRATION_LOCK = 0x6563686F  # "echo"


class DatabaseError(ConnectionError):
    """The database cannot be used; the message is one line for the admin.

    An OSError, as a full disk or a lost mount is: the ingester and the sender
    already pause and try again on those, and a database that comes back is
    caught up with the same way.
    """


def describe(url: str) -> str:
    """``host:port/dbname`` of a URL, without user and password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or '/'}"


def explain(url: str, exc: BaseException) -> DatabaseError:
    """A one-line DatabaseError for a psycopg error (the server's first line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "FATAL:" in line), lines[0] if lines else "")
    if "FATAL:" in detail:
        detail = detail.split("FATAL:", 1)[1].strip()
    elif "failed: " in detail:  # "connection to server at ..., port 5432 failed: why"
        detail = detail.rsplit("failed: ", 1)[1].strip()
    detail = detail or type(exc).__name__
    return DatabaseError(f"PostgreSQL at {describe(url)}: {detail}")


def connect(url: str, autocommit: bool = False) -> psycopg.Connection:
    """One connection (DatabaseError when the server cannot be used)."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=autocommit)
    except psycopg.Error as exc:
        raise explain(url, exc) from None


@contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """One connection of its own in one transaction for the ``with`` block: committed
    at its end, rolled back by any exception (psycopg's as DatabaseError)."""
    import psycopg

    try:
        with connect(url) as connection, connection.transaction():
            yield connection
    except psycopg.Error as exc:
        raise explain(url, exc) from None


class Database:
    """This process's connections to one database: a pool opened at first use, errors
    as :class:`DatabaseError`, and a quick answer while the server is down.

    Why the last.  A pool whose server is gone makes each caller wait its whole
    timeout for a connection that never comes (the sender's twice-a-second
    dispatch then runs late, again and again).  After a connection error the
    next use first tries one direct connection: refused at once while the
    server is down; once it answers, the pool's connections (each killed by
    the restart) are tested and replaced, and work goes on.  Connections are
    in autocommit mode: one statement, one round trip.
    """

    def __init__(self, url: str, name: str, max_size: int = 4) -> None:
        self.url = url
        self.name = name
        self.max_size = max_size
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._down = False
        self.closed = False

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = open_pool(self.url, self.name, self.max_size)
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection of the pool for the ``with`` block (DatabaseError when the
        database cannot be used, the block's own connection errors included)."""
        import psycopg

        if self._down:
            connect(self.url).close()  # DatabaseError while it is still down
            self._down = False
            drop_broken(self.pool)
        try:
            with self.pool.connection() as connection:
                yield connection
        except psycopg.errors.UndefinedTable:
            raise DatabaseError(f"PostgreSQL at {describe(self.url)}: no echoes schema in "
                                "this database (echoes start creates it)") from None
        except psycopg.OperationalError as exc:
            self._down = True
            raise explain(self.url, exc) from None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self._pool is not None:
                self._pool.close()
                self._pool = None


_SHARED: dict[tuple[int, str], Database] = {}
_SHARED_LOCK = threading.Lock()


def shared(url: str) -> Database:
    """This process's one :class:`Database` for ``url`` (the index and the job store
    of a process share its pool, and learn together that the server went away).
    Keyed by process id too: a pool must not cross a fork."""
    key = (os.getpid(), url)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None or found.closed:
            found = _SHARED[key] = Database(url, "echoes", max_size=6)
        return found


def open_pool(url: str, name: str, max_size: int = 4) -> ConnectionPool:
    """A pool of this process's connections to ``url`` (a process starts while the
    server is down: the pool connects in the background, its first use says so)."""
    from psycopg_pool import ConnectionPool

    # The pool logs each failed (re)connection, several lines each; the callers
    # log one line per outage themselves (DatabaseError).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    # autocommit: a single statement is its own transaction (no BEGIN and COMMIT
    # round trips); several statements that belong together use transaction().
    return ConnectionPool(url, min_size=1, max_size=max_size, name=name, open=True,
                          kwargs={"connect_timeout": CONNECT_TIMEOUT, "autocommit": True},
                          timeout=POOL_WAIT, reconnect_timeout=0)


def drop_broken(pool: ConnectionPool) -> None:
    """Test the pool's idle connections, replacing the broken ones (the server was
    restarted: each would fail once)."""
    try:
        pool.check()
    except Exception:  # down again: the next use finds out
        pass


def prepare(url: str) -> list[int]:
    """Create or upgrade the schema; return the versions applied now.

    All pending versions go in one transaction under an advisory lock: two
    nodes starting at once do not both apply a version, and a failure leaves
    the database as it was.
    """
    import psycopg

    wanted = migrations.load()
    try:
        with connect(url) as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            connection.execute(migrations.LEDGER)
            applied = {row[0] for row in connection.execute(
                "SELECT version FROM schema_migrations")}
            try:
                todo = migrations.pending(wanted, applied)
            except ValueError as exc:
                raise DatabaseError(f"PostgreSQL at {describe(url)}: {exc}") from None
            for migration in todo:
                connection.execute(migration.sql.encode())
                connection.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                   (migration.version, migration.name))
    except psycopg.Error as exc:
        raise explain(url, exc) from None
    return [migration.version for migration in todo]
