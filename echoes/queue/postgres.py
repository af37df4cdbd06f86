"""The job store on PostgreSQL: every node's outbound jobs in one table (``database_url``).

The same methods as :class:`echoes.queue.jobs.JobStore` (built by
:func:`echoes.queue.open_job_store`); the state of a job still changes only
through the pure functions of :mod:`echoes.queue.jobs` -- this module reads
and writes rows.

Why a claim.  Several nodes' senders look at one queue: a sender takes the
due jobs of a destination with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
marks them claimed by its node for :data:`CLAIM_SECONDS`; another node's
sender skips them until the claim runs out (its node died) or the job's new
state is written (which clears the claim).  Before each object goes out the
sender asks for the job again (:meth:`PostgresJobStore.current`), which
renews the claim -- or answers None when another node holds it, so one job
is never sent by two senders at once.  Every write is committed before it
returns (durable with PostgreSQL's default ``synchronous_commit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any

from echoes import database
from echoes.queue import jobs
from echoes.queue.jobs import Job

#: How long a sender's claim on a job holds without being renewed.
CLAIM_SECONDS = 120.0

COLUMNS = tuple(field.name for field in fields(Job))
SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
UPSERT = (f"INSERT INTO jobs ({', '.join(COLUMNS)}, claimed_by, claimed_until) "
          f"VALUES ({', '.join(['%s'] * len(COLUMNS))}, '', 0) ON CONFLICT (id) DO UPDATE SET "
          + ", ".join(f"{column} = EXCLUDED.{column}" for column in
                      [*COLUMNS[1:], "claimed_by", "claimed_until"]))
#: Due jobs of one destination not claimed by another node, oldest first, taken.
CLAIM = (
    f"UPDATE jobs SET claimed_by = %(node)s, claimed_until = %(until)s "
    f"WHERE id IN (SELECT id FROM jobs WHERE destination = %(destination)s "
    f"AND state IN ('{jobs.PENDING}', '{jobs.RETRYING}') AND next_attempt <= %(now)s "
    f"AND (claimed_by = %(node)s OR claimed_until < %(now)s) "
    f"ORDER BY created, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    f"RETURNING {', '.join(COLUMNS)}")
#: The sender's new state of a job, unless it was queued anew or cancelled meanwhile;
#: gives the state it replaced (the claim is released).
RECORD = (
    "WITH old AS (SELECT id, state FROM jobs WHERE id = %(id)s FOR UPDATE) "
    "UPDATE jobs SET " + ", ".join(f"{column} = %({column})s" for column in COLUMNS[1:])
    + ", claimed_by = '', claimed_until = 0 FROM old WHERE jobs.id = old.id "
    f"AND jobs.created = %(created)s AND old.state <> '{jobs.CANCELLED}' RETURNING old.state")
#: One job, its claim renewed, unless another node holds it.
RENEW = (f"UPDATE jobs SET claimed_by = %(node)s, claimed_until = %(until)s "
         f"WHERE id = %(id)s AND (claimed_by IN (%(node)s, '') OR claimed_until < %(now)s) "
         f"RETURNING {', '.join(COLUMNS)}")


def job_of(row: Sequence) -> Job:
    return Job(*row)


def row_of(job: Job) -> tuple:
    return tuple(getattr(job, column) for column in COLUMNS)


class PostgresJobStore:
    """The jobs table, as :class:`echoes.queue.jobs.JobStore` is the job files.

    ``node`` names this node's claims (``node_name``).  Thread-safe: each call
    takes a connection of the pool.
    """

    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node
        self.db = database.shared(url)

    def __str__(self) -> str:
        return f"the jobs table of PostgreSQL at {database.describe(self.url)}"

    @contextmanager
    def _connection(self, write: bool = False, atomic: bool = False) -> Iterator[Any]:
        """A connection (each statement committed on its own, or all together with
        ``atomic``); after a write the version token is counted up, once it is
        committed.  Connection errors: DatabaseError (an OSError)."""
        with self.db.connection() as connection:
            if atomic:
                with connection.transaction():
                    yield connection
            else:
                yield connection
            if write:
                connection.execute("SELECT nextval('jobs_version')")

    def _select(self, where: str = "", params: Iterable[Any] = ()) -> list[Job]:
        with self._connection() as connection:
            rows = connection.execute(f"{SELECT} {where}", tuple(params)).fetchall()
        return [job_of(row) for row in rows]

    def create(self) -> None:
        """Nothing to make: the table is the schema's (echoes start)."""

    def close(self) -> None:
        self.db.close()

    def version(self) -> int:
        """A token that changes after every committed write."""
        with self._connection() as connection:
            row = connection.execute("SELECT last_value, is_called FROM jobs_version").fetchone()
        return row[0] if row[1] else 0

    def write(self, job: Job, durable: bool = True) -> None:
        """Insert or replace the job (committed; the claim on it is cleared)."""
        self.write_many([job])

    def deliver(self, done: Job) -> None:
        """Record a job the sender delivered (``done``: :func:`jobs.delivered`)."""
        self.write(done)

    def record(self, job: Job, basis: Job | None = None) -> str | None:
        """Write the sender's new state of ``job`` unless, meanwhile, the job was
        removed, queued anew (another ``created``) or cancelled; return the state it
        replaced, None when it was not written (see JobStore.record).  One
        statement: the check and the write cannot be split by another writer."""
        with self._connection(write=True) as connection:
            row = connection.execute(RECORD, {column: getattr(job, column)
                                              for column in COLUMNS}).fetchone()
        return row[0] if row is not None else None

    def write_many(self, many: Iterable[Job]) -> int:
        """Write several jobs in one transaction; return how many."""
        rows = [row_of(job) for job in many]
        if rows:
            with self._connection(write=True, atomic=len(rows) > 1) as connection:
                if len(rows) == 1:
                    connection.execute(UPSERT, rows[0])
                else:
                    with connection.cursor() as cursor:
                        cursor.executemany(UPSERT, rows)
        return len(rows)

    def queue(self, destination: str, records: Iterable[dict], origin: str, now: float) -> int:
        """Queue index instance records for ``destination`` (see JobStore.queue)."""
        return self.write_many(jobs.new_job(destination, record, origin, now)
                               for record in records)

    def _change(self, where: str, params: Sequence[Any], change) -> list[Job]:
        """Rows chosen by ``where``, locked, replaced by ``change(jobs)`` (a list of the
        jobs to write, and the ids to delete), in one transaction."""
        with self._connection(write=True, atomic=True) as connection:
            chosen = [job_of(row) for row in connection.execute(
                f"{SELECT} {where} ORDER BY id FOR UPDATE", tuple(params)).fetchall()]
            written, deleted = change(chosen)
            with connection.cursor() as cursor:
                if written:
                    cursor.executemany(UPSERT, [row_of(job) for job in written])
                if deleted:
                    cursor.execute("DELETE FROM jobs WHERE id = ANY(%s)", (list(deleted),))
        return written

    def cancel_destination(self, destination: str, now: float) -> int:
        """Cancel every job of ``destination`` not done or cancelled yet; how many."""
        return len(self._change(
            "WHERE destination = %s AND state NOT IN (%s, %s)",
            (destination, jobs.DONE, jobs.CANCELLED),
            lambda chosen: ([jobs.cancelled(job, now) for job in chosen], [])))

    def rename_destination(self, old: str, new: str) -> int:
        """Move the open jobs of AE ``old`` to AE ``new`` (in one transaction)."""
        return len(self._change(
            "WHERE destination = %s AND state <> %s", (old, jobs.DONE),
            lambda chosen: ([replace(job, id=jobs.job_id(new, job.sop_instance_uid),
                                     destination=new) for job in chosen],
                            [job.id for job in chosen])))

    def read(self, identifier: str) -> Job | None:
        found = self._select("WHERE id = %s", (identifier,))
        return found[0] if found else None

    def current(self, job: Job) -> Job | None:
        """The job as the table says now, its claim renewed for this node; None when it
        is gone or another node's sender holds it (then it is not ours to send)."""
        import time

        now = time.time()
        with self._connection() as connection:
            row = connection.execute(RENEW, {"node": self.node, "until": now + CLAIM_SECONDS,
                                             "id": job.id, "now": now}).fetchone()
        return job_of(row) if row is not None else None

    def due_destinations(self, now: float) -> set[str]:
        """The destinations with jobs due now (claimed or not: claim() decides)."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT DISTINCT destination FROM jobs WHERE state IN (%s, %s) "
                "AND next_attempt <= %s", (jobs.PENDING, jobs.RETRYING, now)).fetchall()
        return {row[0] for row in rows}

    def claim(self, destination: str, now: float, limit: int) -> list[Job]:
        """Due jobs of ``destination``, oldest first, claimed by this node (at most
        ``limit``); jobs another node's sender holds are left to it."""
        with self._connection() as connection:
            rows = connection.execute(CLAIM, {
                "node": self.node, "until": now + CLAIM_SECONDS, "destination": destination,
                "now": now, "limit": limit}).fetchall()
        return sorted((job_of(row) for row in rows), key=lambda job: (job.created, job.id))

    def cancel(self, identifier: str, now: float) -> Job | None:
        """Cancel one job by id (see :func:`jobs.cancelled`); None if there is none."""
        written = self._change("WHERE id = %s", (identifier,),
                               lambda chosen: ([jobs.cancelled(job, now) for job in chosen], []))
        return written[0] if written else None

    def remove(self, identifier: str) -> None:
        with self._connection(write=True) as connection:
            connection.execute("DELETE FROM jobs WHERE id = %s", (identifier,))

    def open_jobs(self) -> list[Job]:
        return self._select("WHERE state <> %s", (jobs.DONE,))

    def held_jobs(self) -> list[Job]:
        """The jobs waiting for their study to be stable (every node's)."""
        return self._select("WHERE state = %s", (jobs.HELD,))

    def done_jobs(self) -> list[Job]:
        return self._select("WHERE state = %s", (jobs.DONE,))

    def all(self) -> list[Job]:
        return self._select()
