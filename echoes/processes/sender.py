"""Sender process: runs the outbound jobs of ``spool/outgoing`` (forward and push).

A job's path through this module (the functions not prefixed are in
:mod:`echoes.services.outbound`, the pure part: this module keeps the
scheduler, the associations and the job bookkeeping)::

    Sender.dispatch()            (APScheduler, every DISPATCH_SECONDS)
      -> due jobs, grouped by destination; one worker thread per destination
    Sender.send_batch(AE)
      -> plan_batch()            (stored syntax, JPEG lossless .70/.57 where
                                  so encoded, the three uncompressed syntaxes)
      -> Sender.associate()      (tenacity: a few quick tries with backoff)
      -> for each job: delivery.store_one(): choose_route() -> prepare()
         -> payload() -> C-STORE -> outcome_of(status)
      -> jobs.delivered / attempt_failed / refused, written back at once

All due jobs of one destination go over one association (up to
``BATCH_MAX`` objects, ``MAX_CONTEXTS`` presentation contexts).  A failure
that may pass (peer down, out of resources, association lost) makes the job
``retrying`` until ``max_attempts``; a refusal that retrying cannot fix (the
peer rejects the SOP class or every syntax, or answers 0xA9xx/0xCxxx) fails
it at once, with the reason in ``echoes queue``.  Warnings count as
delivered and are logged.

When the association ends under an object (the peer aborts, the connection
breaks, no response within dimse_timeout), only that object is blamed: its
attempt counts and it is *isolated* (sent on an association of its own from
then on), and the jobs not sent yet go on at once over a new association
without an attempt counted.  One object a peer cannot take (issue 14: dcmtk
aborts on an odd-length PDV) used to fail every job behind it, and their
retries went in the same batch behind it again until all had failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from echoes.config import Config, Reloader, RemoteAE
from echoes.dicom.requestor import AssociationFailed, Requestor
from echoes.processes.worker import Worker
from echoes.queue import jobs, open_job_store
from echoes.services import dicom_settings, outbound
from echoes.services.delivery import ENCODE, MISSING, ROUTE, SENT, store_one
from echoes.services.outbound import (
    DELIVERED,
    PERMANENT,
    SKIPPED,
    TRANSIENT,
    PaddedDataSet,
    fits,
    plan_batch,
    studies_sent,
)
from echoes.storage import spool
from echoes.storage.objects import open_object_store

log = logging.getLogger("echoes.sender")

#: How often due jobs are looked for.
DISPATCH_SECONDS = 0.5
#: A job whose archived file is missing is looked at again this long after
#: (the ingester writes a batch's jobs just before it moves the batch's files,
#: so the file is usually there a few milliseconds later), and failed after
#: MISSING_FILE_GRACE.  The wait is kept in memory, not in the job file: a
#: durable write per early job cost an fsync and held the object back a
#: whole second (issue 7, receive-to-arrival latency).
MISSING_FILE_RECHECK = 0.1
MISSING_FILE_GRACE = 300.0
#: An association with nothing more to send is kept this long for new jobs.
LINGER_SECONDS = 1.0
LINGER_POLL_SECONDS = 0.05
#: Quick association retries within one run, before the job waits retry_interval.
CONNECT_ATTEMPTS = 3
#: Associations in a row that end before anything was delivered: the peer
#: aborts whatever it is sent (not one object), so the jobs left wait
#: retry_interval with an attempt counted instead of one association each.
LOST_IN_A_ROW = 3

#: Seconds between looks at a job store that cannot be reached (its database
#: is down): doubled per failed look up to STORE_RETRY_MAX.
STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0
#: Due jobs of one destination taken per look (a batch is at most outbound.BATCH_MAX).
CLAIM_LIMIT = 2 * outbound.BATCH_MAX

#: Log level of a job's state change (others: WARNING).
LOG_LEVELS = {jobs.DONE: logging.DEBUG, jobs.PENDING: logging.INFO}


#: The peer could not be reached, or rejected or aborted the association.
NotAssociated = AssociationFailed


@dataclass(frozen=True)
class Run:
    """How one association went (see Sender.send_batch)."""

    #: Objects delivered.
    sent: int = 0
    #: Why the association ended under an object ("" when it did not): that
    #: object's attempt is counted and it is isolated.
    lost: str = ""
    #: Jobs not attempted because the association ended: sent at once over
    #: a new one, no attempt counted.
    unsent: tuple[jobs.Job, ...] = ()
    #: False when no association could be opened (the jobs were recorded as
    #: failed attempts and wait retry_interval).
    associated: bool = True


class Sender:
    """Sends due jobs, one thread per destination, state written after each object."""

    #: Called at each dispatch: the sender process's heartbeat (see
    #: echoes.processes.worker.Heartbeat); nothing elsewhere.
    beat: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, config: Config) -> None:
        self.reloader = Reloader(config)
        self.layout = spool.SpoolLayout(config.spool_dir)
        self.layout.create()
        self.store = open_job_store(config)
        self.store.create()  # deliveries are renames into done/
        self.objects = open_object_store(config)
        self._store_lock = threading.Lock()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self._pruned = 0.0
        #: job id -> time before which its missing file is not looked for again
        self._file_awaited: dict[str, float] = {}
        self._awaited_lock = threading.Lock()
        #: ids of jobs whose object was on the wire when an association ended:
        #: each goes on an association of its own (see plan_batch).  Kept in
        #: memory: after a restart such an object can end one shared
        #: association again, and is then isolated again; the jobs behind it
        #: lose no attempt either way.
        self._isolated: set[str] = set()
        self._isolated_lock = threading.Lock()
        #: While the job store cannot be reached: since when, next look, backoff.
        self._store_down_since: float | None = None
        self._store_retry_at = 0.0
        self._store_backoff = STORE_RETRY_FIRST

    # -- dispatch ----------------------------------------------------------------

    def open_jobs(self) -> list[jobs.Job]:
        """Every job not delivered (the store's cache is not thread-safe: one
        reader at a time).
        """
        with self._store_lock:
            return self.store.open_jobs()

    def all_jobs(self) -> list[jobs.Job]:
        """Every job, delivered ones included (for pruning, once a minute)."""
        with self._store_lock:
            return self.store.all()

    def dispatch(self) -> None:
        """Start a send thread for each destination with due jobs and none running."""
        self.beat()
        if self.stopping.is_set():
            return
        config = self.reloader.current()
        now = time.time()
        if now < self._store_retry_at:
            return
        try:
            with self._store_lock:
                due = self.store.due_destinations(now)
            self._prune(config, now)
        except OSError as exc:  # the job store cannot be read (its database is down)
            self._store_failed(exc)
            return
        if self._store_down_since is not None:
            log.info("job store reachable again after %.0f s",
                     time.time() - self._store_down_since)
            self._store_down_since, self._store_backoff = None, STORE_RETRY_FIRST
        for title in sorted(due):
            if title not in config.remote_aes:
                continue  # kept waiting; echoes check reports it
            with self._busy_lock:
                if title in self._busy:
                    continue
                self._busy.add(title)
            thread = threading.Thread(target=self._send_thread, args=(title,),
                                      name=f"send-{title}", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _store_failed(self, exc: OSError) -> None:
        """The job store failed: one log line per outage, next look after a backoff."""
        now = time.time()
        if self._store_down_since is None:
            self._store_down_since = now
            log.error("job store unavailable: %s; retrying with backoff up to %.0f s",
                      exc, STORE_RETRY_MAX)
        self._store_retry_at = now + self._store_backoff
        self._store_backoff = min(self._store_backoff * 2, STORE_RETRY_MAX)

    def _send_thread(self, title: str) -> None:
        try:
            self.send_batch(title)
        except OSError as exc:  # the job store failed under the batch: dispatch backs off
            self._store_failed(exc)
        except Exception:  # a bug must not stop the destination for good
            log.exception("sending to %s failed", title)
        finally:
            with self._busy_lock:
                self._busy.discard(title)

    def _prune(self, config: Config, now: float) -> None:
        if now - self._pruned < 60:
            return
        self._pruned = now
        with self._awaited_lock:  # waits of jobs cancelled or removed meanwhile
            self._file_awaited = {key: until for key, until in self._file_awaited.items()
                                  if until > now}
        if self.isolated():  # forget isolated jobs delivered, failed or cancelled since
            active = {job.id for job in self.open_jobs() if job.state in jobs.ACTIVE}
            with self._isolated_lock:
                self._isolated &= active
        horizon = now - config.keep_done_hours * 3600
        for job in self.all_jobs():
            if job.state in jobs.FINISHED and job.updated <= horizon:
                with self._store_lock:
                    self.store.remove(job.id)

    # -- one association ---------------------------------------------------------

    def ready_jobs(self, config: Config, title: str) -> list[jobs.Job]:
        """Due jobs of ``title`` whose file is archived, oldest first, claimed by this
        sender (``store.claim``: with PostgreSQL, other nodes' senders skip them).

        A job whose file is not there yet (the ingester writes jobs just
        before it moves the files) is looked at again MISSING_FILE_RECHECK
        later, and failed if the file is still missing after
        MISSING_FILE_GRACE.
        """
        now = time.time()
        with self._store_lock:  # taken for this sender (other nodes' senders skip them)
            due = self.store.claim(title, now, CLAIM_LIMIT)
        ready = []
        for job in due:
            if not self._file_expected(job, now):
                continue
            if self.objects.exists(job.path):
                ready.append(job)
            elif now - job.created > MISSING_FILE_GRACE:
                self._record(jobs.refused(job, f"archived file missing: {job.path}", now))
            else:
                self._await_file(job, now)
        return ready

    def _await_file(self, job: jobs.Job, now: float) -> None:
        """Look for ``job``'s file again MISSING_FILE_RECHECK from ``now``."""
        with self._awaited_lock:
            self._file_awaited[job.id] = now + MISSING_FILE_RECHECK

    def _file_expected(self, job: jobs.Job, now: float) -> bool:
        """False while ``job`` waits for its file (see _await_file)."""
        with self._awaited_lock:
            until = self._file_awaited.get(job.id)
            if until is None:
                return True
            if until > now:
                return False
            del self._file_awaited[job.id]
            return True

    def isolated(self) -> frozenset[str]:
        """Ids of the jobs that go on an association of their own (see plan_batch)."""
        with self._isolated_lock:
            return frozenset(self._isolated)

    def send_batch(self, title: str) -> int:
        """Send the due jobs of one destination; return how many were delivered.

        They go over one association (see :meth:`send_over_one`) unless it
        ends under an object: then that object is isolated and the jobs not
        sent yet go over a new association at once, attempts not counted.
        Isolated jobs go each over an association of their own.  After
        LOST_IN_A_ROW associations that ended before anything was delivered,
        the peer is taken to abort anything: the jobs left count an attempt
        and wait retry_interval, as when the peer cannot be reached.
        """
        config = self.reloader.current()
        remote = config.remote_aes[title]
        ready = self.ready_jobs(config, title)
        sent = lost_in_a_row = 0
        while ready and not self.stopping.is_set():
            isolated = self.isolated()
            batch, contexts = plan_batch(ready, isolated)
            run = self.send_over_one(config, title, remote, batch, contexts,
                                     alone=batch[0].id in isolated)
            sent += run.sent
            if not run.associated:
                break
            planned = {job.id for job in batch}
            if batch[0].id in isolated:  # then the others that were due with it
                ready = [job for job in ready if job.id not in planned]
            else:  # the jobs cut off by an abort, then the isolated ones left out
                ready = list(run.unsent) + [job for job in ready
                                            if job.id in isolated and job.id not in planned]
            lost_in_a_row = lost_in_a_row + 1 if run.lost and not run.sent else 0
            if lost_in_a_row >= LOST_IN_A_ROW and run.unsent:
                error = f"{run.lost} ({lost_in_a_row} associations in a row)"
                log.warning("%s: %s; %d jobs wait %d s", title, error, len(run.unsent),
                            config.retry_interval)
                now = time.time()
                for job in run.unsent:
                    self._record(jobs.attempt_failed(job, error, now, config.retry_interval,
                                                     config.max_attempts))
                break
        return sent

    def send_over_one(self, config: Config, title: str, remote: RemoteAE,
                      batch: list[jobs.Job], contexts: list[tuple[str, list[str]]],
                      alone: bool = False) -> Run:
        """Send ``batch`` over one association, and what else comes due meanwhile.

        The association stays open while jobs keep arriving that its
        presentation contexts can carry (a study streaming in from a
        modality goes out over one association), and is released after
        LINGER_SECONDS without new work; one for an isolated job (``alone``)
        carries nothing else.
        """
        started = time.monotonic()
        try:
            assoc = self.associate(config, remote, contexts)
        except NotAssociated as exc:
            error = str(exc)
            log.warning("%s: %s; %d jobs wait %d s", title, error, len(batch),
                        config.retry_interval)
            now = time.time()
            for job in batch:
                self._record(jobs.attempt_failed(job, error, now, config.retry_interval,
                                                 config.max_attempts))
            return Run(associated=False)
        proposed = {(cls, tuple(syntaxes)) for cls, syntaxes in contexts}
        accepted = {(cx.abstract_syntax, cx.transfer_syntax) for cx in assoc.accepted_contexts}
        sent = failed = 0
        by_study: Counter[str] = Counter()  # objects delivered, for the association's line
        lost = ""
        unsent: tuple[jobs.Job, ...] = ()
        idle_since = time.monotonic()
        lingered = False
        try:
            while batch and not self.stopping.is_set():
                if lingered and assoc.peer_left():  # ended while idle: no object to blame
                    lost, unsent = "", tuple(batch)
                    log.info("%s: %s; %d jobs go over a new association", title,
                             assoc.lost, len(batch))
                    break
                position = 0
                while (position < len(batch) and assoc.is_established
                       and not self.stopping.is_set()):
                    outcome = self.send_one(assoc, config, batch[position], accepted)
                    if outcome == DELIVERED:
                        by_study[batch[position].study_instance_uid] += 1
                    position += 1
                    sent += outcome == DELIVERED
                    failed += outcome not in (DELIVERED, SKIPPED)
                if not assoc.is_established and not self.stopping.is_set():
                    # ended under the object just sent: it alone is blamed
                    blamed = batch[position - 1]
                    with self._isolated_lock:
                        self._isolated.add(blamed.id)
                    lost, unsent = assoc.lost or "association lost", tuple(batch[position:])
                    log.warning("%s: %s while %s was on the wire%s", title, lost,
                                blamed.sop_instance_uid, "" if alone else
                                f": it goes alone from now on, {len(unsent)} jobs not sent "
                                "yet go over a new association")
                    break
                if alone:  # the peer took it, or answered it: harmless from now on
                    with self._isolated_lock:
                        self._isolated.discard(batch[0].id)
                    break
                idle_since = time.monotonic()
                lingered = True
                batch = []
                while (not batch and not self.stopping.is_set()
                       and time.monotonic() - idle_since < LINGER_SECONDS):
                    time.sleep(LINGER_POLL_SECONDS)
                    isolated = self.isolated()
                    batch = [job for job in self.ready_jobs(config, title)
                             if fits(job, proposed) and job.id not in isolated][:outbound.BATCH_MAX]
        finally:
            if assoc.is_established:
                assoc.release()
        log.info("%s: %d sent, %d not, over one association in %.2f s%s", title, sent, failed,
                 time.monotonic() - started, studies_sent(by_study))
        return Run(sent, lost, unsent)

    def associate(self, config: Config, remote: RemoteAE,
                  contexts: list[tuple[str, list[str]]]) -> Requestor:
        """An association to ``remote`` with ``contexts``; NotAssociated after a few tries."""
        retrying = Retrying(
            stop=stop_after_attempt(CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.25, max=2),
            retry=retry_if_exception_type(NotAssociated),
            reraise=True,
        )
        return retrying(dicom_settings.associate, config, remote, contexts)

    def send_one(self, assoc: Requestor, config: Config, job: jobs.Job,
                 accepted: set[tuple[str, str]]) -> str:
        """C-STORE one job's object; record and return the outcome.

        The job may have been cancelled since the batch was planned (up to
        BATCH_MAX objects ago): one stat of its file tells whether it changed,
        and a job no longer waiting is SKIPPED, never sent.
        """
        with self._store_lock:
            current = self.store.current(job)
        if current is not job:
            if current is None or current.state not in jobs.ACTIVE:
                return SKIPPED
            job = current  # queued anew meanwhile: send it as it is now
        def send(sop_class: str, syntax: str, sop_instance: str,
                 data_set: BinaryIO | PaddedDataSet) -> tuple[int, str] | None:
            context = assoc.context_for(sop_class, syntax)
            response = (assoc.send_c_store(context, sop_instance, data_set)
                        if context is not None else None)
            return None if response is None else (response.status, response.comment)

        attempt = store_one(job, self.objects.path_of(job.path), accepted, send)
        now = time.time()
        if attempt.stage == MISSING:  # moved away since ready_jobs saw it: look again soon
            self._await_file(job, now)
            return SKIPPED
        if attempt.stage != SENT:  # no usable context, cannot decode, decompress or encode
            self._record(jobs.refused(job, attempt.detail, now))
            if attempt.stage != ENCODE:
                log.error("%s: %s%s: %s", job.destination, job.sop_instance_uid,
                          " refused" if attempt.stage == ROUTE else "", attempt.detail)
            return PERMANENT
        if attempt.status is None:
            error = assoc.lost or "no response (timeout or association lost)"
            self._record(jobs.attempt_failed(job, error, now, config.retry_interval,
                                             config.max_attempts))
            return TRANSIENT
        outcome, detail = attempt.outcome, attempt.detail
        if outcome == DELIVERED:
            self._record(jobs.delivered(job, now, detail), basis=job)
            if detail:
                log.warning("%s: %s stored with %s", job.destination, job.sop_instance_uid,
                            detail)
        elif outcome == PERMANENT:
            self._record(jobs.refused(job, detail, now))
            log.error("%s: %s refused: %s", job.destination, job.sop_instance_uid, detail)
        else:
            self._record(jobs.attempt_failed(job, detail, now, config.retry_interval,
                                             config.max_attempts))
        return outcome

    def _record(self, job: jobs.Job, basis: jobs.Job | None = None) -> None:
        """Write a job's new state, unless it was removed, queued anew or cancelled
        meanwhile (``store.record``; ``basis``: the job as the sender read it)."""
        with self._store_lock:
            previous = self.store.record(job, basis)
        if previous is None:
            return  # not ours to write any more
        if previous != job.state:  # a change, not each retry
            # done: DEBUG, the association's line names the studies and counts
            # (a line per object was a quarter of the sender's CPU, issue 7)
            level = LOG_LEVELS.get(job.state, logging.WARNING)
            log.log(level, "job %s %s to %s: %s%s", job.id, job.sop_instance_uid,
                    job.destination, job.state,
                    f" (attempt {job.attempts}): {job.last_error}" if job.last_error else "")

    def stop(self, timeout: float) -> None:
        """Finish the objects in flight, then return (bounded)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class SenderWorker(Worker):
    """The sender process: dispatch on an APScheduler schedule until SIGTERM.

    Each dispatch beats the heartbeat, so a scheduler that stopped running
    it (a dispatch stuck on a lock: APScheduler skips the runs behind it)
    falls silent and the process is restarted.
    """

    role = "sender"

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.sender = sender = Sender(self.config)
        sender.beat = self.heartbeat.beat
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(sender.dispatch, "interval", seconds=DISPATCH_SECONDS,
                               id="dispatch", next_run_time=datetime.now().astimezone())
        self.scheduler.start()
        log.info("sender watching %s", sender.store)

    def reload(self, _fresh: Config) -> None:
        self.sender.reloader.request()  # destinations and timeouts, at the next dispatch

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.sender.stop(self.config.dimse_timeout)


def run(config: Config, listen_fd: int = -1) -> int:
    """The sender process until SIGTERM (``listen_fd``: none, the sender has no port)."""
    return SenderWorker(config, listen_fd).main()
