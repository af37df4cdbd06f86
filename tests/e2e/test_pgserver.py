"""The PostgreSQL the tests start (tests/pgserver.py): real, password-checked, one
fresh database per test."""

from __future__ import annotations

import psycopg
import pytest
from pgserver import PgServer


def test_each_test_gets_an_empty_database_of_its_own(postgres: PgServer,
                                                     database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute("CREATE TABLE t (n int)")
        connection.execute("INSERT INTO t VALUES (1)")
    other = postgres.fresh_database()
    assert other != database_url
    with psycopg.connect(other) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_a_wrong_password_is_refused(postgres: PgServer, database_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.url(password="wrong"), connect_timeout=5)
