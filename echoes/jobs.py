"""Outbound jobs: one archived object to one destination, kept as a file in the spool.

A job's whole state lives in ``spool/outgoing/<job id>.json``, written
atomically (temporary name, fsync, rename), so a job survives kill -9 of any
process and reboots, and a crash can never leave half a job.  The job id is
derived from destination and SOP Instance UID: queueing the same object for
the same destination again (received again, pushed again) rewrites the same
file, so the queue never holds it twice.

State machine (pure functions, tested without files)::

    pending --delivered--> done
    pending/retrying --attempt failed--> retrying (next attempt after
                                         retry_interval) | failed (max_attempts)
    pending/retrying --refused--> failed   (retrying cannot help)
    failed --retry--> pending              (by hand: echoes retry)

Writers: the ingester (new forward jobs), ``echoes push`` and ``echoes retry``
(new or reset jobs), the sender (state after each attempt).  ``JobStore``
caches parsed files by (mtime, size), so the sender's once-a-second look at
the queue reads only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from echoes import spool

log = logging.getLogger("echoes.jobs")

PENDING, RETRYING, FAILED, DONE = "pending", "retrying", "failed", "done"
STATES = (PENDING, RETRYING, FAILED, DONE)
ACTIVE = frozenset({PENDING, RETRYING})


def job_id(destination: str, sop_instance_uid: str) -> str:
    """Stable id of "this object to that AE": the same pair gives the same job."""
    digest = hashlib.sha1(f"{destination}\0{sop_instance_uid}".encode()).hexdigest()
    return digest[:20]


@dataclass(frozen=True)
class Job:
    """One object to one destination, and how far it got."""

    id: str
    destination: str
    sop_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str  # relative to archive_dir
    origin: str  # "forward" or "push"
    state: str = PENDING
    attempts: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    created: float = 0.0
    updated: float = 0.0

    def is_due(self, now: float) -> bool:
        """Waiting to be sent and its time has come."""
        return self.state in ACTIVE and self.next_attempt <= now


def new_job(destination: str, record: dict, origin: str, now: float) -> Job:
    """A pending job for an archived object (``record``: its index record)."""
    return Job(
        id=job_id(destination, record["SOPInstanceUID"]),
        destination=destination,
        sop_instance_uid=record["SOPInstanceUID"],
        study_instance_uid=record["StudyInstanceUID"],
        sop_class_uid=record["SOPClassUID"],
        transfer_syntax=record.get("TransferSyntaxUID", ""),
        path=record["path"],
        origin=origin,
        next_attempt=now,
        created=now,
        updated=now,
    )


def delivered(job: Job, now: float, note: str = "") -> Job:
    """The peer answered Success or Warning (``note`` says which warning)."""
    return replace(job, state=DONE, attempts=job.attempts + 1, last_error=note,
                   next_attempt=0.0, updated=now)


def attempt_failed(job: Job, error: str, now: float, retry_interval: float,
                   max_attempts: int) -> Job:
    """A failure that may pass (peer down, out of resources): retry later or give up."""
    attempts = job.attempts + 1
    if attempts >= max_attempts:
        return replace(job, state=FAILED, attempts=attempts, last_error=error,
                       next_attempt=0.0, updated=now)
    return replace(job, state=RETRYING, attempts=attempts, last_error=error,
                   next_attempt=now + retry_interval, updated=now)


def refused(job: Job, reason: str, now: float) -> Job:
    """A refusal that retrying cannot fix: failed at once, with the reason."""
    return replace(job, state=FAILED, attempts=job.attempts + 1, last_error=reason,
                   next_attempt=0.0, updated=now)


def retried(job: Job, now: float) -> Job:
    """Sent back to the queue by hand: a fresh start."""
    return replace(job, state=PENDING, attempts=0, last_error="", next_attempt=now,
                   updated=now)


def deferred(job: Job, until: float) -> Job:
    """Not attempted (e.g. the file is not archived yet): look again later."""
    return replace(job, next_attempt=until)


# -- on disk ---------------------------------------------------------------------


def encode(job: Job) -> bytes:
    """The job file's bytes."""
    return json.dumps(asdict(job), sort_keys=True).encode()


def decode(data: bytes) -> Job:
    """A job from its file's bytes (ValueError when it is not one)."""
    try:
        values = json.loads(data)
        job = Job(**values)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a job file: {exc}") from None
    if job.state not in STATES:
        raise ValueError(f"unknown state {job.state!r}")
    return job


class JobStore:
    """The jobs in ``spool/outgoing``: atomic writes, cached reads."""

    SUFFIX = ".json"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, tuple[tuple[int, int], Job]] = {}

    def path_for(self, identifier: str) -> Path:
        """Where the job ``identifier`` lives."""
        return self.folder / f"{identifier}{self.SUFFIX}"

    def write(self, job: Job, durable: bool = True) -> None:
        """Replace the job's file atomically (fsynced unless ``durable`` is False)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        spool.atomic_write_bytes(self.path_for(job.id), encode(job), durable=durable)

    def write_many(self, jobs: Iterable[Job]) -> int:
        """Write several jobs durably with one folder fsync; return how many."""
        count = 0
        for job in jobs:
            self.write(job, durable=False)
            spool.fsync_file(self.path_for(job.id))
            count += 1
        if count:
            spool.fsync_dir(self.folder)
        return count

    def read(self, identifier: str) -> Job | None:
        """One job, or None when there is no such job (or its file is broken)."""
        try:
            return decode(self.path_for(identifier).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.error("job file %s unreadable: %s", identifier, exc)
            return None

    def remove(self, identifier: str) -> None:
        """Forget a job (pruning done jobs)."""
        self.path_for(identifier).unlink(missing_ok=True)
        self._cache.pop(identifier, None)

    def all(self) -> list[Job]:
        """Every job now, re-reading only files that changed since last call."""
        seen: dict[str, tuple[tuple[int, int], Job]] = {}
        for identifier, signature in self._scan():
            cached = self._cache.get(identifier)
            if cached is not None and cached[0] == signature:
                seen[identifier] = cached
                continue
            job = self.read(identifier)
            if job is not None:
                seen[identifier] = (signature, job)
        self._cache = seen
        return [job for _signature, job in seen.values()]

    def _scan(self) -> Iterator[tuple[str, tuple[int, int]]]:
        try:
            entries = os.scandir(self.folder)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if not entry.name.endswith(self.SUFFIX) or entry.name.startswith("."):
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                yield entry.name[: -len(self.SUFFIX)], (stat.st_mtime_ns, stat.st_size)
