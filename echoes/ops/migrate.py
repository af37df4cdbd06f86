"""``echoes migrate --to URL``: the embedded index and the open job files into PostgreSQL.

Why all in one transaction.  A copy cut short (the database went away, the
disk of the old index is unreadable, Ctrl-C) must leave nothing behind:
the database stays empty, and running the command again is the whole
recovery.  PostgreSQL holds a transaction of a million rows without
trouble; the index is read study shard by study shard and written in
batches, so memory stays that of one batch.

Why only into an empty database and from a stopped node.  Another node's
objects, or a half-filled earlier attempt, in the same tables would mix
two archives; a running ingester would write the embedded index behind the
copy's back.  Both are refused with one line before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields

from echoes import database
from echoes.config import Config
from echoes.index import copy_into_postgres as copy_index
from echoes.index.embedded import EmbeddedIndex
from echoes.index.instance import InstanceRecord
from echoes.ops import daemon
from echoes.queue import copy_into_postgres as copy_jobs
from echoes.queue import jobs
from echoes.queue.jobs import JobStore
from echoes.storage.spool import SpoolLayout

#: Instance records written per statement batch.
BATCH = 2000
#: The tables that must be empty: an archive's rows (nodes and schema rows aside).
ARCHIVE_TABLES = ("instances", "studies", "jobs")
_FIELDS = tuple(field.name for field in fields(InstanceRecord))


class MigrateError(RuntimeError):
    """Why nothing was copied, in one line for the admin."""


@dataclass(frozen=True)
class Copied:
    """What a migration copied."""

    instances: int
    studies: int
    jobs: int


def record_of(doc: dict) -> InstanceRecord:
    """The record of an embedded instance document (fields it lacks, from before a key
    was indexed, are empty as the record's defaults say)."""
    return InstanceRecord(**{name: doc[name] for name in _FIELDS if name in doc})


def batches(docs: Iterable[dict], size: int = BATCH) -> Iterator[list[InstanceRecord]]:
    """Records in batches of ``size``, in the order read (the write order per study)."""
    batch: list[InstanceRecord] = []
    for doc in docs:
        batch.append(record_of(doc))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def unfinished(every: Iterable[jobs.Job]) -> list[jobs.Job]:
    """The jobs still to be sent or looked at: pending, retrying, failed."""
    return [job for job in every if job.state not in jobs.FINISHED]


def migrate(config: Config, url: str) -> Copied:
    """Copy, in one transaction; MigrateError (or DatabaseError) when nothing was."""
    pid = daemon.running_pid(config.pid_file)
    if pid is not None:
        raise MigrateError(f"echoes is running (pid {pid}): stop it first (echoes stop)")
    if config.database_url:
        raise MigrateError("database_url is already set: this node's index is in "
                           f"PostgreSQL at {database.describe(config.database_url)}, there "
                           "is no embedded index to copy")
    open_jobs = unfinished(JobStore(SpoolLayout(config.spool_dir).outgoing).all())
    database.prepare(url)
    with database.transaction(url) as connection:
        # No node may start writing while the copy runs (it waits for the commit).
        connection.execute(f"LOCK TABLE {', '.join(ARCHIVE_TABLES)} IN EXCLUSIVE MODE")
        held = {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ARCHIVE_TABLES}
        if any(held.values()):
            raise MigrateError(
                f"PostgreSQL at {database.describe(url)} is not empty ("
                + ", ".join(f"{count} {table}" for table, count in held.items())
                + "): echoes migrate copies only into an empty database")
        source = EmbeddedIndex(config.index_path)
        try:
            written = copy_index(connection, batches(source.instances()))
        except (ValueError, TypeError, KeyError) as exc:  # a shard that cannot be read
            raise MigrateError(f"the embedded index at {config.index_path} cannot be read "
                               f"({type(exc).__name__}: {exc}); run echoes reindex "
                               "first") from None
        instances, studies = connection.execute(
            "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM studies)"
        ).fetchone()
        if instances != written:  # one SOP Instance UID under two studies
            raise MigrateError(f"the embedded index holds {written} instance records "
                               f"but {instances} distinct objects; run echoes fsck "
                               "and echoes reindex first")
        copied_jobs = copy_jobs(connection, open_jobs)
    return Copied(instances, studies, copied_jobs)
