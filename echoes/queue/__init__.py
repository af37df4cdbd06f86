"""The outbound queue: jobs (one archived object to one destination) and their store.

:func:`open_job_store` is the one place a job store is built from the
configuration; every process (ingester, sender, Browser, CLI, health check)
gets it there.  Today's backend is the job files in ``spool/outgoing``
(:class:`echoes.queue.jobs.JobStore`); another (a database table) plugs in
here with the same methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from echoes.queue.jobs import JobStore
from echoes.storage.spool import SpoolLayout

if TYPE_CHECKING:
    from echoes.config import Config


def open_job_store(config: Config) -> JobStore:
    """The job store of this installation (the files under ``spool_dir/outgoing``)."""
    return JobStore(SpoolLayout(config.spool_dir).outgoing)
