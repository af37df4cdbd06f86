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
    held --study stable--> pending          (forward_when = study: echoes.queue.routing)
    pending/retrying/failed/held --cancel--> cancelled   (by hand: echoes cancel,
                                         the Browser; never sent, not an alarm)
    retrying/failed/cancelled --retry--> pending   (by hand: echoes retry, the
                                         Browser; done and pending jobs are left as
                                         they are: nothing to send again)

Delivered jobs move to ``spool/outgoing/done/<job id>.json`` (the sender
renames the open file there, see :meth:`JobStore.deliver`): the sender
looks at the open jobs (:meth:`JobStore.open_jobs`) twice a second and at
the folder of a new job every 50 ms while an association lingers, and with
a day's delivered jobs beside them each look cost O(jobs of the day)
(10,000 done files: 45 ms a scan).  A job in both folders (delivered, then
queued again) is the open one.

Writers: the ingester (new forward jobs), ``echoes push``, the Browser's push,
``echoes retry`` and ``echoes cancel`` (new, reset or cancelled jobs), the
sender (state after each attempt; it keeps a cancel made while it was sending,
see ``Sender._record``).  ``JobStore`` caches parsed files by (mtime, size,
inode), so the sender's twice-a-second look at the queue reads only what
changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from echoes.storage.durable import atomic_write_batch, atomic_write_bytes, fsync_dir

log = logging.getLogger("echoes.jobs")

PENDING, RETRYING, FAILED, DONE = "pending", "retrying", "failed", "done"
CANCELLED = "cancelled"
#: Waiting for its study to be stable (``forward_when = study``): never due;
#: released to pending by the ingester (echoes.queue.routing.release_stable).
HELD = "held"
#: Every state, in the order ``echoes queue`` lists them.
STATES = (PENDING, RETRYING, FAILED, CANCELLED, DONE, HELD)
#: Waiting to be sent.
ACTIVE = frozenset({PENDING, RETRYING})
#: Where a job ends up (done and cancelled ones are pruned after keep_done_hours).
FINISHED = frozenset({DONE, CANCELLED})
#: What can be sent again by hand (echoes retry, the Browser's retry): a done
#: job was delivered (pushing the study again sends it anew), a pending one
#: is waiting to be sent already.
RETRIABLE = frozenset({RETRYING, FAILED, CANCELLED})


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


#: The index record fields a job is made from (what new_job reads).
RECORD_FIELDS = ("SOPInstanceUID", "StudyInstanceUID", "SOPClassUID", "TransferSyntaxUID", "path")


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
    """Sent back to the queue by hand (a retrying, failed or cancelled job): a fresh
    start, due now.

    A job not in RETRIABLE is returned as it is: a done job must not go out
    again behind the back of whoever asked (issue 14: ``echoes retry`` re-sent
    delivered jobs), and a pending one is waiting already.
    """
    if job.state not in RETRIABLE:
        return job
    return replace(job, state=PENDING, attempts=0, last_error="", next_attempt=now,
                   updated=now)


def cancelled(job: Job, now: float) -> Job:
    """Withdrawn by hand before it was delivered: never sent, not counted as failed.

    A done job stays done (it was delivered; there is nothing to take back)
    and a cancelled one unchanged, so cancelling twice changes nothing.
    Attempts and the last error are kept: they say how far it got.
    """
    if job.state in FINISHED:
        return job
    return replace(job, state=CANCELLED, next_attempt=0.0, updated=now)


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


#: What tells a job file changed: (mtime, size, inode).  Every write renames a
#: new file into place, so the inode changes even when two writes fall in one
#: tick of the file system's clock and happen to have the same size.
Signature = tuple[int, int, int]


def _signature(info: os.stat_result) -> Signature:
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _put(path: Path, data: bytes, durable: bool, sync_folder: bool = True) -> None:
    """atomic_write_bytes, creating the folder the first time it is missing
    (not a mkdir per job on the sender's path).
    """
    try:
        atomic_write_bytes(path, data, durable=durable, sync_folder=sync_folder)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, durable=durable, sync_folder=sync_folder)


class JobStore:
    """The jobs in ``spool/outgoing`` (open) and ``outgoing/done`` (delivered):
    atomic writes, cached reads.

    The first backend of the job store (built by
    :func:`echoes.queue.open_job_store`).  Safe to share between threads:
    the read cache is its only shared state and a lock guards it; files are
    written whole by rename, so writes need no lock (several processes
    write them too).
    """

    SUFFIX = ".json"
    DONE_FOLDER = "done"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.done_folder = self.folder / self.DONE_FOLDER
        #: folder -> job id -> (signature of the file it was read from, the job)
        self._caches: dict[Path, dict[str, tuple[Signature, Job]]] = {
            self.folder: {}, self.done_folder: {}}
        self._lock = threading.RLock()

    def create(self) -> None:
        """Make both folders (the sender at start: deliveries are renames into ``done/``)."""
        self.done_folder.mkdir(parents=True, exist_ok=True)

    def version(self) -> tuple[int, int] | None:
        """A token that changes when an open job is written, queued or removed
        (every write renames a file into the folder); None when there is none.

        A cache may skip a rescan while it stays the same -- for a short while
        only: two writes within one tick of the file system's clock can leave
        it unchanged.
        """
        try:
            info = os.stat(self.folder)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns)

    @property
    def _cache(self) -> dict[str, tuple[Signature, Job]]:
        return self._caches[self.folder]

    def path_for(self, identifier: str) -> Path:
        """Where the open job ``identifier`` lives."""
        return self.folder / f"{identifier}{self.SUFFIX}"

    def done_path_for(self, identifier: str) -> Path:
        """Where the job ``identifier`` lives once delivered."""
        return self.done_folder / f"{identifier}{self.SUFFIX}"

    def __str__(self) -> str:
        return str(self.folder)

    def close(self) -> None:
        """Nothing held open (the database backend closes its pool)."""

    def due_destinations(self, now: float) -> set[str]:
        """The destinations with jobs due now (what the sender dispatches)."""
        return {job.destination for job in self.open_jobs() if job.is_due(now)}

    def claim(self, destination: str, now: float, limit: int) -> list[Job]:
        """Due jobs of ``destination``, oldest first, at most ``limit``: what the sender
        sends next.  The files are one node's: no other sender takes them, so
        nothing is marked (the database backend marks its claims).
        """
        due = sorted((job for job in self.open_jobs()
                      if job.destination == destination and job.is_due(now)),
                     key=lambda job: (job.created, job.id))
        return due[:limit]

    def write(self, job: Job, durable: bool = True) -> None:
        """Replace the job's file atomically (fsynced unless ``durable`` is False).

        A delivered job is written into ``done/`` and its open file removed.
        """
        if job.state == DONE:
            _put(self.done_path_for(job.id), encode(job), durable)
            self.path_for(job.id).unlink(missing_ok=True)
            if durable:
                fsync_dir(self.folder)
            return
        _put(self.path_for(job.id), encode(job), durable)

    def deliver(self, done: Job) -> None:
        """Record a job the sender delivered (``done``: :func:`delivered` of the
        job as its file holds it).

        Without a warning note this is one rename of the open job file into
        ``done/``: the folder says "delivered", and :meth:`_load` reads such
        a file as the job delivered at the file's ctime (a rename sets it).
        Creating a new file per delivered object cost the sender a third of
        its system time on this kind of machine (issue 7).  A note, an open
        file already gone, or no ``done/`` yet (the sender makes it at start)
        means the job is written in full, not durably (a lost ``done`` means
        one more send, which the destination absorbs).
        """
        if not done.last_error:
            try:
                os.replace(self.path_for(done.id), self.done_path_for(done.id))
                with self._lock:
                    self._cache.pop(done.id, None)
                return
            except FileNotFoundError:
                pass
        self.write(done, durable=False)

    def record(self, job: Job, basis: Job | None = None) -> str | None:
        """Write the sender's new state of ``job``, unless the job was removed, queued
        anew or cancelled while it worked; return the state it replaced (None: not
        written, not ours to write).

        The file is looked at again anyway (to see a re-queue), so a cancel
        made while the object was on its way costs nothing extra to keep:
        with ``basis`` (the job as the sender read it) one stat tells an
        unchanged file, else the file is read.  Every state is written
        atomically; all but ``done`` also durably.  A ``done`` lost to a power
        cut means the object is sent once more, which the destination absorbs
        (same SOP Instance UID): not worth an fsync per object.
        """
        current = self.current(basis) if basis is not None else self.read(job.id)
        if current is None or current.created != job.created or current.state == CANCELLED:
            # Gone (its AE renamed, the jobs moved), re-queued (received or
            # pushed again) or cancelled while the sender worked.
            return None
        if job.state == DONE:
            self.deliver(job)
        else:
            self.write(job)
        return current.state

    def write_many(self, jobs: Iterable[Job]) -> int:
        """Write several jobs durably, fsynced together, with one fsync of the
        open jobs' folder (:func:`atomic_write_batch`); return how many.
        """
        batch: list[tuple[Path, bytes]] = []
        count = 0
        for job in jobs:
            if job.state == DONE:  # not what the writers of many jobs write
                self.write(job)
            else:
                batch.append((self.path_for(job.id), encode(job)))
            count += 1
        atomic_write_batch(batch)
        return count

    def queue(self, destination: str, records: Iterable[dict], origin: str, now: float) -> int:
        """Queue index instance records for ``destination`` (``origin``: "push" or
        "forward"); return how many.

        One durable write per object and one folder fsync for all, so a push
        of a whole study costs one fsync of the folder.  An object already
        queued for that destination is queued anew (same job id), whatever
        its state, so pushing again also revives a failed or cancelled job.
        """
        return self.write_many(new_job(destination, record, origin, now) for record in records)

    def cancel_destination(self, destination: str, now: float) -> int:
        """Cancel every job of ``destination`` not done or cancelled yet; how many
        (for an AE taken out of service: ``echoes cancel --destination``).
        """
        withdrawn = [cancelled(job, now) for job in self.open_jobs()
                     if job.destination == destination and job.state not in FINISHED]
        return self.write_many(withdrawn)

    def rename_destination(self, old: str, new: str) -> int:
        """Move the open jobs of AE ``old`` to AE ``new`` (the AE was renamed); how many.

        Each job keeps its state, attempts and history under its new id
        (written durably first, then the old file removed, so a crash in
        between leaves the job twice, never lost: the old one then waits for
        an AE that is no longer configured, which ``echoes check`` reports).
        Delivered jobs stay under the old title: they are history.
        """
        moving = [job for job in self.open_jobs() if job.destination == old]
        self.write_many(replace(job, id=job_id(new, job.sop_instance_uid), destination=new)
                        for job in moving)
        for job in moving:
            self.path_for(job.id).unlink(missing_ok=True)
            with self._lock:
                self._cache.pop(job.id, None)
        if moving:
            fsync_dir(self.folder)
        return len(moving)

    def read(self, identifier: str) -> Job | None:
        """One job (open before delivered), or None when there is no such job
        (or its file is broken).
        """
        for folder in (self.folder, self.done_folder):
            try:
                return self._load(folder, identifier)
            except FileNotFoundError:
                continue
        return None

    def _load(self, folder: Path, identifier: str) -> Job | None:
        """The job in ``folder`` (FileNotFoundError if none; None, logged, if broken).

        A file in ``done/`` that still holds the job as it was before it was
        sent (moved there by :meth:`deliver`) is that job delivered when it
        was moved.
        """
        path = folder / f"{identifier}{self.SUFFIX}"
        try:
            job = decode(path.read_bytes())
        except ValueError as exc:
            log.error("job file %s unreadable: %s", path, exc)
            return None
        if folder == self.done_folder and job.state != DONE:
            job = delivered(job, os.stat(path).st_ctime)
        return job

    def current(self, job: Job) -> Job | None:
        """``job`` as its file says now: ``job`` itself, for the price of one stat,
        while the file is the one :meth:`open_jobs` last read it from, else read
        again (None: gone).  For a long-running reader (the sender) to notice a
        cancel.
        """
        try:
            info = os.stat(self.path_for(job.id))
        except FileNotFoundError:
            return self.read(job.id)
        with self._lock:
            cached = self._cache.get(job.id)
        if cached is not None and cached[1] is job and cached[0] == _signature(info):
            return job
        return self.read(job.id)

    def cancel(self, identifier: str, now: float) -> Job | None:
        """Cancel one job by id (see :func:`cancelled`); the job as written, None if
        there is no such job.
        """
        job = self.read(identifier)
        if job is None:
            return None
        withdrawn = cancelled(job, now)
        if withdrawn is not job:
            self.write(withdrawn)
        return withdrawn

    def remove(self, identifier: str) -> None:
        """Forget a job (pruning finished jobs)."""
        for path in (self.path_for(identifier), self.done_path_for(identifier)):
            path.unlink(missing_ok=True)
        with self._lock:
            for cache in self._caches.values():
                cache.pop(identifier, None)

    def open_jobs(self) -> list[Job]:
        """The jobs not delivered (pending, retrying, failed, cancelled) now: what
        the sender looks at, without reading the day's delivered ones.
        """
        return [job for _signature, job in self._refresh(self.folder).values()]

    def held_jobs(self) -> list[Job]:
        """The jobs waiting for their study to be stable (the ingester's to release)."""
        return [job for job in self.open_jobs() if job.state == HELD]

    def done_jobs(self) -> list[Job]:
        """The delivered jobs still kept (pruned after ``keep_done_hours``)."""
        return [job for _signature, job in self._refresh(self.done_folder).values()]

    def all(self) -> list[Job]:
        """Every job now, re-reading only files that changed since last call."""
        jobs = {job.id: job for job in self.done_jobs()}
        jobs.update((job.id, job) for job in self.open_jobs())
        return list(jobs.values())

    def _refresh(self, folder: Path) -> dict[str, tuple[Signature, Job]]:
        with self._lock:  # one scan at a time: each replaces the folder's cache
            return self._rescan(folder)

    def _rescan(self, folder: Path) -> dict[str, tuple[Signature, Job]]:
        cache = self._caches[folder]
        seen: dict[str, tuple[Signature, Job]] = {}
        for identifier, signature in self._scan(folder):
            cached = cache.get(identifier)
            if cached is not None and cached[0] == signature:
                seen[identifier] = cached
                continue
            try:
                job = self._load(folder, identifier)
            except FileNotFoundError:
                continue
            if job is not None:
                seen[identifier] = (signature, job)
        self._caches[folder] = seen
        return seen

    def _scan(self, folder: Path) -> Iterator[tuple[str, Signature]]:
        try:
            entries = os.scandir(folder)
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
                yield entry.name[: -len(self.SUFFIX)], _signature(stat)
