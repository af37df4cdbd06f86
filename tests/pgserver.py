"""A real PostgreSQL for the tests: Debian's server, started by the test session itself.

Why this shape.  The tests that claim PostgreSQL must run against the real
server (no mocks, no SQLite stand-in), and the default suite must stay fast:
one server per test session (``initdb`` costs a few seconds), one fresh
database per test (``CREATE DATABASE`` costs tens of milliseconds), so no
test sees another's rows.

PostgreSQL refuses to run as root, and the tests run as root here: the
server runs as an unprivileged user (``nobody``) in a temporary folder of
its own (data and unix socket), on a free loopback port, and is stopped and
removed at the end of the session.  Clients connect over TCP with a
password (SCRAM), as echoes does in production, so a wrong password is a
real authentication failure.  ``fsync = off``: the tests check what is
committed, not what survives a power cut of the test machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port

#: The unprivileged user the server runs as (tests run as root).
USER = "nobody"
SUPERUSER = "postgres"
PASSWORD = "echoes-test-secret"


def pg_bin(tool: str) -> str:
    """Path of a PostgreSQL server tool (Debian keeps them out of PATH), newest version."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                        key=lambda path: int(path.split("/")[4]))
    if not candidates:
        raise AssertionError(f"PostgreSQL's {tool} is not installed: run bin/test, which "
                             "installs Debian's postgresql")
    return candidates[-1]


def _as_user(command: list[str]) -> list[str]:
    """``command`` run as USER when we are root (as ourselves otherwise)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", USER, "--", *command]


class PgServer:
    """One PostgreSQL cluster in a temporary folder: start, stop, fresh databases."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="echoes-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._databases = 0

    def _chown(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(USER)
            for path in paths:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        """initdb with a superuser password; clients authenticate by SCRAM over TCP."""
        os.chmod(self.root, 0o755)
        self.sockets.mkdir()
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        self._chown(self.root, self.sockets, password_file)
        subprocess.run(_as_user([pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER,
                                 "--pwfile", str(password_file), "--auth-local=trust",
                                 "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
                                 "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        password_file.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.sockets}'\n"
                       "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
                       "shared_buffers = 32MB\n")

    def start(self) -> None:
        """Start (again) and wait until it accepts connections."""
        self.log.touch()
        self._chown(self.log)
        subprocess.run(_as_user([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                 "-w", "-t", "60", "start"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        """Stop (fast: open sessions are ended, as on a server shutdown)."""
        subprocess.run(_as_user([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                 "stop"]),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser outside a transaction (CREATE DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql)

    def fresh_database(self) -> str:
        """The URL of a new empty database of its own."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_pg() -> PgServer:
    """A new cluster, started (the caller removes it)."""
    server = PgServer()
    try:
        server.init()
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text() if server.log.exists() else ""
        server.remove()
        raise AssertionError(f"PostgreSQL did not start: {exc.stderr!r}\n{log}") from None
    return server
