"""echoes on PostgreSQL (database_url), end to end: the real server, a real PostgreSQL
(tests/pgserver.py), dcmtk peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, write_config
from pgserver import PgServer


def start_once(home: Path, **extra: object) -> subprocess.CompletedProcess:
    """``echoes start`` in the foreground, expected to give up at once."""
    config_path = write_config(home, **extra)
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path), "start"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_the_database_down_at_start_is_one_line_and_nothing_is_created(
        tmp_path: Path, daemon: bool) -> None:
    home = tmp_path / "home"
    url = f"postgresql://echoes:pw@127.0.0.1:{free_port()}/echoes"  # nobody listens there
    config_path = write_config(home, database_url=url)
    command = [sys.executable, "-m", "echoes", "--config", str(config_path), "start"]
    done = subprocess.run(command + (["--daemon"] if daemon else []), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "database_url: PostgreSQL at 127.0.0.1:" in lines[0]
    assert "Connection refused" in lines[0] and "pw" not in lines[0]
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [
        "etc", "etc/echoes.ini"]


def test_a_wrong_password_at_start_is_one_line(tmp_path: Path, postgres: PgServer,
                                               database_url: str) -> None:
    home = tmp_path / "home"
    done = start_once(home, database_url=database_url.replace(":echoes-test-secret@", ":bad@"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"echoes: database_url: PostgreSQL at 127.0.0.1:{postgres.port}/"
        f"{database_url.rsplit('/', 1)[1]}: password authentication failed for user "
        '"postgres"']
    assert not (home / "var").exists() and not (home / "spool").exists()
