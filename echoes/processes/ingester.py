"""Ingester: moves spooled objects into the archive tree and indexes them.

It is the only writer of the index.  The incoming folder is the truth: watchdog
only wakes the loop, which then lists ``spool/incoming`` itself, so a missed
or coalesced event costs nothing and whatever a crash left there is ingested
at start-up like any new arrival.

One batch, in the order that makes every crash point safe::

    read headers -> index.apply() (fsynced) -> forward jobs (fsynced)
                 -> move files into archive_dir -> fsync the folders

A crash before the move leaves the file in the spool and the index and the
jobs already pointing at its archive path; the next run ingests it again,
which is idempotent (same path, same document id, same job id).  The sender
waits for a job's file to appear in the archive before sending it.  A file
that cannot be parsed goes to ``spool/rejected/`` with a log line and the loop
goes on.

Cost per object (it shares two cores with the store workers): watchdog asks
the kernel for arrivals only (:class:`_ArrivalsEmitter`), an idle ingester
that is woken gathers the objects right behind the first for
:data:`GATHER_SECONDS`, and during a stream batches start at most that
often, so that the fsyncs of a batch are shared, and
``index.apply`` writes in proportion to the batch, not to the study.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileCreatedEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyConstants, Mask

from echoes.config import Config, Reloader, RemoteAE
from echoes.index import open_index
from echoes.index.record import InstanceRecord, read_record
from echoes.ops import integrity
from echoes.ops.retention import Retention
from echoes.processes.worker import Worker
from echoes.queue import jobs, open_job_store, routing
from echoes.storage import durable, spool
from echoes.storage.objects import open_object_store

log = logging.getLogger("echoes.ingester")

#: Objects per batch at most: bounds the time between index writes.
BATCH_MAX = 500

#: Sweep the spool at least this often even without a watchdog event.
SWEEP_SECONDS = 5.0

#: After an arrival wakes the idle ingester, wait this long for the objects
#: right behind it, so that one batch (one index fsync, one fsync per folder)
#: carries several: ingesting 1,000 CT cost 1.3 ms of CPU per object in
#: batches of one, 0.75 ms in batches of five (offline, same files).
GATHER_SECONDS = 0.05


def routed_jobs(records: list[InstanceRecord], remotes: Iterable[RemoteAE],
                now: float) -> list[jobs.Job]:
    """The forward jobs of a batch: per object, one per destination its routing rules
    pick (:func:`echoes.queue.routing.destinations`), held for a destination that
    forwards whole studies.  Pure: the ingester writes what it returns.
    """
    forwarding = [ae for ae in remotes if ae.forward]
    plain = not any(ae.forward_modalities or ae.forward_calling_aes
                    or ae.forward_when != "instance" for ae in forwarding)
    made: list[jobs.Job] = []
    for record in records:
        # The fields a job takes, not dataclasses.asdict (a deep copy of every
        # field: 12 % of the ingester's Python CPU while forwarding, issue 7).
        fields = {name: getattr(record, name) for name in jobs.RECORD_FIELDS}
        chosen = forwarding if plain else routing.destinations(
            forwarding, record.Modality, record.calling_ae)
        for remote in chosen:
            job = jobs.new_job(remote.title, fields, "forward", now)
            made.append(routing.hold(job) if remote.forward_when == "study" else job)
    return made


class Ingester:
    """Turns spooled files into archived, indexed objects, a batch at a time."""

    #: Called per object and per batch: the ingester process's heartbeat
    #: (see echoes.processes.worker.Heartbeat); nothing elsewhere.
    beat: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = spool.SpoolLayout(config.spool_dir)
        self.layout.create()
        self.objects = open_object_store(config)
        self.objects.create()
        self.index = open_index(config, writer=True)
        self.reloader = Reloader(config)
        self.jobs = open_job_store(config)
        #: When held jobs (forward_when = study) may next be due: now, so that
        #: those left by an earlier run are looked at once at start.
        self.next_release = 0.0
        #: Deletions (echoes delete, the Browser, retention limits), carried out
        #: here because the ingester is the one index writer.
        self.retention = Retention(config, self.index, self.objects, self.jobs)
        self._between = time.monotonic()

    def reject(self, path: Path, reason: str) -> None:
        """Park an unreadable spooled file where an admin can look at it."""
        target = self.layout.rejected / path.name
        try:
            os.replace(path, target)
            durable.fsync_dir(self.layout.rejected)
        except FileNotFoundError:
            return
        log.error("rejected %s: %s (kept as %s)", path.name, reason, target)

    def ingest_batch(self, paths: list[Path]) -> int:
        """Archive and index ``paths`` (oldest first); return how many were archived."""
        latest: dict[str, tuple[InstanceRecord, Path]] = {}
        superseded: list[Path] = []
        for path in paths:
            self.beat()
            try:
                record = read_record(path)
            except FileNotFoundError:
                continue
            except Exception as exc:  # any parse failure: park it, go on
                self.reject(path, f"{type(exc).__name__}: {exc}")
                continue
            earlier = latest.get(record.SOPInstanceUID)
            if earlier is not None:
                superseded.append(earlier[1])
            latest[record.SOPInstanceUID] = (record, path)
        if not latest:
            return 0

        records = [record for record, _path in latest.values()]
        replaced = self.index.apply(records)
        self.queue_forwarding(records)

        for path in superseded:  # made durable with the moves out of the same folder
            path.unlink(missing_ok=True)
        self.objects.put_batch(((source, record.path) for record, source in latest.values()),
                               delete=[old["path"] for old in replaced])
        log.debug("ingested %d objects", len(records))
        return len(records)

    def queue_forwarding(self, records: list[InstanceRecord]) -> int:
        """Write one durable job per object for every AE its routing rules send it to
        (:func:`routed_jobs`); held ones wait for their study to be stable."""
        remotes = self.reloader.current().remote_aes
        if not any(ae.forward for ae in remotes.values()):
            return 0
        now = time.time()
        written = routed_jobs(records, remotes.values(), now)
        if not written:
            return 0
        held = [job for job in written if job.state == jobs.HELD]
        if held:
            soonest = now + min(remotes[job.destination].stable_study_seconds for job in held)
            self.next_release = min(self.next_release, soonest)
        return self.jobs.write_many(written)

    def release_stable(self) -> int:
        """Release the held jobs of studies now stable (``forward_when = study``), all
        of a study at once so that they go over one association; how many.

        Looked at when the soonest study may be stable (and once at start: the
        held jobs in the job store are the state that survives a restart).
        """
        now = time.time()
        if now < self.next_release:
            return 0
        released, next_look = routing.release_stable(
            self.jobs.held_jobs(), self.reloader.current().remote_aes, now)
        self.next_release = next_look if next_look is not None else float("inf")
        if released:
            self.jobs.write_many(released)
            log.info("released %d held jobs of %d stable studies", len(released),
                     len({(job.destination, job.study_instance_uid) for job in released}))
        return len(released)

    def between_batches(self) -> None:
        """What must not wait for a long stream to end (a modality sending for
        minutes keeps :meth:`drain` busy): held studies now stable, deletions asked
        for or due by the retention limits.  At most once a second: a time check
        per batch otherwise.
        """
        now = time.monotonic()
        if now - self._between < 1.0:
            return
        self._between = now
        self.release_stable()
        self.retention.serve(self.reloader.current(), ingested=True)

    def idle_seconds(self) -> float:
        """How long the loop may wait for an arrival before there is work anyway."""
        return max(0.05, min(SWEEP_SECONDS, self.next_release - time.time()))

    def drain(self, stop: threading.Event | None = None) -> int:
        """Ingest everything now in the spool; return the count.

        While a stream goes on (``stop`` given), a batch that was not full
        starts the next one no sooner than GATHER_SECONDS after it began:
        otherwise an ingester that keeps up takes the objects one or two at
        a time, and its journal commits (0.7 per object, strace) queue up
        with the store workers' fsyncs, which the senders wait for.
        """
        total = 0
        while stop is None or not stop.is_set():
            self.beat()
            started = time.monotonic()
            pending = spool.pending_incoming(self.layout)[:BATCH_MAX]
            if not pending:
                break
            total += self.ingest_batch(pending)
            self.between_batches()
            if stop is not None and len(pending) < BATCH_MAX:
                stop.wait(max(0.0, GATHER_SECONDS - (time.monotonic() - started)))
        return total


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event) -> None:
        self.wake.set()


class _ArrivalsEmitter(InotifyEmitter):
    """Asks the kernel for arrivals in the folder only (moved in, created).

    Why: the ingester's own work on ``incoming/`` (reading each header:
    open, access, close; moving each file out: IN_MOVED_FROM, which watchdog
    holds back 0.5 s to pair; fsyncing the folder) came back as events:
    watchdog's threads used 0.5-0.7 s of CPU per 1,000 objects streamed in,
    0.2-0.3 s with this mask.  watchdog's
    ``event_filter`` alone cannot drop IN_MOVED_FROM (a creation filter asks
    for IN_MOVE), so the mask is set here; the filter on ``schedule`` then
    drops the folder-modified events that come with each arrival.
    """

    def get_event_mask_from_filter(self) -> Mask:
        return Mask(InotifyConstants.IN_MOVED_TO | InotifyConstants.IN_CREATE
                    | InotifyConstants.IN_DELETE_SELF)


def watch_arrivals(folder: Path, wake: threading.Event) -> BaseObserver:
    """A started observer that sets ``wake`` when a file arrives in ``folder``."""
    observer = BaseObserver(_ArrivalsEmitter)
    observer.schedule(_Wake(wake), str(folder), recursive=False,
                      event_filter=[FileCreatedEvent])
    observer.start()
    return observer


class IngesterWorker(Worker):
    """The ingester process: drain, then wait for more, until SIGTERM; then drain again.

    The loop beats the heartbeat (per object read, per batch, and while it
    waits), so an ingester stuck in it falls silent and is restarted.
    """

    role = "ingester"

    def start(self) -> None:
        config = self.config
        self.ingester = ingester = Ingester(config)
        ingester.beat = self.heartbeat.beat
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.observer = watch_arrivals(ingester.layout.incoming, self.wake)
        log.info("ingester watching %s", ingester.layout.incoming)
        self.loop = self.spawn(self.ingest, "ingest")

    def ingest(self) -> None:
        """The loop: runs on its own thread until stop()."""
        config, ingester = self.config, self.ingester
        stop, wake, heartbeat = self.stopping, self.wake, self.heartbeat
        paused_since: float | None = None  # one ERROR line per outage, not one per retry
        ingested = 0
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    # First: a deletion cut short by a crash is finished before
                    # anything of its study is ingested again.
                    with heartbeat.covering():
                        ingester.retention.serve(ingester.reloader.current(), ingested > 0)
                    ingested = ingester.drain(stop)
                    ingester.release_stable()
                    with heartbeat.covering():  # a reindex is one long call
                        outcome = integrity.serve_request(config, ingester.index)
                    if outcome is not None:
                        log.info("reindex done: %s", outcome)
                    if paused_since is not None:
                        log.info("ingest resumed after %.0f s",
                                 time.monotonic() - paused_since)
                        paused_since = None
                except OSError as exc:  # a full disk, a lost mount, the database down
                    if paused_since is None:
                        paused_since = time.monotonic()
                        log.error("ingest paused: %s; retrying every %.0f s", exc,
                                  SWEEP_SECONDS)
                    else:
                        log.debug("ingest still paused: %s", exc)
                    heartbeat.wait(stop, SWEEP_SECONDS)
                if heartbeat.wait(wake, ingester.idle_seconds()):
                    stop.wait(GATHER_SECONDS)
            # Whatever was acknowledged before the stop is archived before exit
            # (or stays in the spool for the next start, if that cannot be done now).
            try:
                ingester.drain()
            except OSError as exc:
                log.error("stopping with objects left in the spool: %s", exc)
        finally:
            self.observer.stop()
            self.observer.join(5)
            ingester.index.close()

    def reload(self, _fresh: Config) -> None:
        self.ingester.reloader.request()  # the forwarding destinations, at the next batch

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.loop.join()


def run(config: Config, listen_fd: int = -1) -> int:
    """The ingester process until SIGTERM (``listen_fd``: none, the ingester has no port)."""
    return IngesterWorker(config, listen_fd).main()
