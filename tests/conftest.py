"""Fixtures for every test: a real echoes server in a temporary home, the peers' tools.

The functions behind them are in helpers.py (importable as ``helpers`` from
every test folder: pyproject.toml puts tests/ on the path).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Server, start_server, stop_server
from pgserver import PgServer, start_pg


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path / "home")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def dcmtk() -> None:
    if not shutil.which("storescu"):
        pytest.fail("dcmtk is not installed: run bin/test, which installs it")


@pytest.fixture(scope="session")
def openssl() -> None:
    """Fail (never skip) without the openssl command: a skip would hide untested TLS."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (the TLS tests make their certificates with it):"
                    " run bin/test, which installs it, or apt-get install openssl")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One real PostgreSQL for the whole session (see pgserver.py), removed after."""
    server = start_pg()
    yield server
    server.remove()


@pytest.fixture
def database_url(postgres: PgServer) -> str:
    """The URL of a fresh, empty database of this test's own on the session's server."""
    return postgres.fresh_database()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the Browser's and the viewer's page screenshots go: ``$ECHOES_SCREENSHOTS``
    when set (tools/viewer-screenshots refreshes docs/screenshots so), else a
    temporary folder."""
    chosen = os.environ.get("ECHOES_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
