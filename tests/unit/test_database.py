"""PostgreSQL settings and schema versions, as pure values: the config keys, the
migration files and what is left to apply, the one-line connection errors."""

from __future__ import annotations

import configparser
import socket
from pathlib import Path

import pytest

from echoes import config, database
from echoes.database import migrations


def parse(text: str) -> config.Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    return config.from_parser(parser, Path("/srv/echoes/etc/echoes.ini"))


def test_defaults_are_the_embedded_index_and_the_host_name() -> None:
    cfg = parse("[echoes]\n")
    assert cfg.database_url == ""
    assert cfg.node_name == socket.gethostname()


def test_a_postgresql_url_and_a_node_name_are_read() -> None:
    cfg = parse("[echoes]\ndatabase_url = postgresql://e:pw@db:5432/echoes\nnode_name = n1\n")
    assert cfg.database_url == "postgresql://e:pw@db:5432/echoes"
    assert cfg.node_name == "n1"


@pytest.mark.parametrize("text, message", [
    ("database_url = mysql://db/echoes", "database_url: must be empty"),
    ("node_name = two words", "node_name: must be at most 64 printable characters"),
])
def test_bad_values_are_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        parse(f"[echoes]\n{text}\n")


def test_a_changed_database_url_is_named_without_its_password() -> None:
    old = parse("[echoes]\ndatabase_url = postgresql://e:secret1@db/echoes\n")
    new = parse("[echoes]\ndatabase_url = postgresql://e:secret2@db/echoes\n")
    changes = config.restart_needed(old, new)
    assert changes == ["database_url (changed)"]


def test_the_shipped_migrations_are_numbered_from_one_and_create_both_seams() -> None:
    found = migrations.load()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    first = found[0].sql
    for table in ("instances", "studies", "series", "study_keys", "index_state", "jobs"):
        assert f"CREATE TABLE {table} " in first


def test_a_gap_in_the_numbers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 3;")
    with pytest.raises(ValueError, match="without gaps"):
        migrations.load(tmp_path)
    (tmp_path / "4_bad.sql").write_text("")
    with pytest.raises(ValueError, match="NNNN_name.sql"):
        migrations.load(tmp_path)


def test_pending_is_what_the_database_has_not_applied_in_order() -> None:
    found = [migrations.Migration(n, f"m{n}", "") for n in (1, 2, 3)]
    assert [m.version for m in migrations.pending(found, set())] == [1, 2, 3]
    assert [m.version for m in migrations.pending(found, {1})] == [2, 3]
    assert migrations.pending(found, {1, 2, 3}) == []
    with pytest.raises(ValueError, match="schema version 4, newer"):
        migrations.pending(found, {1, 2, 3, 4})


def test_describe_hides_user_and_password() -> None:
    assert database.describe("postgresql://u:pw@db.example:6543/echoes") == (
        "db.example:6543/echoes")
    assert database.describe("postgresql://u:pw@db/echoes") == "db:5432/echoes"


@pytest.mark.parametrize("text, said", [
    ('connection failed: connection to server at "10.0.0.9", port 5432 failed: FATAL:  '
     'password authentication failed for user "e"',
     'password authentication failed for user "e"'),
    ('connection failed: connection to server at "127.0.0.1", port 1 failed: '
     "Connection refused\n\tIs the server running on that host?", "Connection refused"),
])
def test_a_connection_error_is_one_line_naming_the_server(text: str, said: str) -> None:
    message = str(database.explain("postgresql://e:pw@db/echoes", RuntimeError(text)))
    assert message == f"PostgreSQL at db:5432/echoes: {said}"
    assert "pw" not in message and "\n" not in message
