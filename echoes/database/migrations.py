"""The schema's versions: SQL files in ``echoes/database/sql``, applied in order.

Why files.  An admin (or a DBA reviewing a site's upgrade) reads the schema
as plain SQL, and a version once released is never edited: a change is a new
file ``NNNN_what.sql``.  The database remembers what it has applied in
``schema_migrations``; :func:`pending` says what is left, from pure values,
so the rules are tested without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

#: The table that records applied versions (created before the first migration).
LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, name and SQL."""

    version: int
    name: str
    sql: str


def load(folder: Path = SQL_DIR) -> list[Migration]:
    """Every migration in ``folder``, by version; ValueError when the files are not
    numbered 1, 2, 3... without gaps (a gap would be a lost file)."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"{path.name}: a migration is named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    found.sort(key=lambda migration: migration.version)
    numbers = [migration.version for migration in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..{len(found)} without gaps, "
                         f"found {numbers}")
    return found


def pending(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """What is left to apply, in order; ValueError when the database is newer than
    this echoes (it was upgraded by a newer release: do not run an older one on it)."""
    known = {migration.version for migration in migrations}
    unknown = sorted(applied - known)
    if unknown:
        raise ValueError(f"the database has schema version {unknown[-1]}, newer than this "
                         f"echoes knows ({max(known, default=0)}): upgrade echoes")
    return [migration for migration in migrations if migration.version not in applied]
