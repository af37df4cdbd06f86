"""The outbound queue: jobs (one archived object to one destination) and their store.

:func:`open_job_store` is the one place a job store is built from the
configuration; every process (ingester, sender, Browser, CLI, health check)
gets it there.  Today's backend is the job files in ``spool/outgoing``
(:class:`echoes.queue.jobs.JobStore`) by default, the ``jobs`` table of
PostgreSQL (:class:`echoes.queue.postgres.PostgresJobStore`, the same
methods) when ``database_url`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from echoes.queue.jobs import Job, JobStore
from echoes.storage.spool import SpoolLayout

if TYPE_CHECKING:
    from echoes.config import Config


def open_job_store(config: Config) -> JobStore:
    """The job store of this installation: the files under ``spool_dir/outgoing``, or
    PostgreSQL's jobs table (claimed by this node as ``node_name``)."""
    if config.database_url:
        from echoes.queue.postgres import PostgresJobStore

        return PostgresJobStore(config.database_url, config.node_name)  # type: ignore[return-value]
    return JobStore(SpoolLayout(config.spool_dir).outgoing)


def copy_into_postgres(connection: Any, jobs: Iterable[Job]) -> int:
    """Insert jobs into PostgreSQL's jobs table on ``connection``, in the caller's
    transaction (``echoes migrate``); return how many."""
    from echoes.queue.postgres import UPSERT, row_of

    rows = [row_of(job) for job in jobs]
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(UPSERT, rows)
        connection.execute("SELECT nextval('jobs_version')")
    return len(rows)
