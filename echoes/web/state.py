"""What the Browser process keeps between requests, in one object per app.

The configuration is read per request through a :class:`~echoes.config.Reloader`
(so ``echoes passwd`` and AE edits take effect without a restart); the
catalog, study shards, job files and worklist folder are each read again
only when they changed.  Every piece is safe to use from waitress's threads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from flask import current_app

from echoes.config import Config, Reloader
from echoes.index import open_index
from echoes.index.cache import CachingReader
from echoes.queue import jobs, open_job_store
from echoes.services.stow import StowStore
from echoes.storage.objects import open_object_store
from echoes.web.catalog import StudyCatalog, StudyReader
from echoes.worklist import files as worklist

#: The job list is scanned again at least this often, even if the folder looks unchanged.
JOBS_RESCAN_SECONDS = 2.0
#: Thumbnails kept in memory (a 128-pixel PNG is a few KB).
THUMBNAIL_CACHE = 512


class ThumbnailCache:
    """PNG bytes by (file path, mtime, size): an object replaced in place is drawn again."""

    def __init__(self, limit: int = THUMBNAIL_CACHE) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: tuple, png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            while len(self._items) > self.limit:
                self._items.popitem(last=False)


class WebState:
    """The app's long-lived readers, all built from the configuration at start."""

    def __init__(self, config: Config, reload_interval: float = 1.0) -> None:
        self.reloader = Reloader(config, interval=reload_interval)
        self._reload_lock = threading.Lock()
        self.index = open_index(config)
        #: DICOMweb's reader (QIDO-RS, WADO-RS): the catalog kept and indexed by
        #: PatientID, dates, names ... as Q/R's is (a search names its candidate
        #: studies instead of matching every one: issue 19's QIDO row), the last
        #: few studies kept whole.  Read at the first DICOMweb call, not before.
        self.query_index = CachingReader(self.index)
        self.catalog = StudyCatalog(self.index)
        self.studies = StudyReader(self.index)
        self.thumbnails = ThumbnailCache()
        self._jobs = open_job_store(config)
        self.objects = open_object_store(config)
        self._jobs_lock = threading.Lock()
        self._jobs_list: list[jobs.Job] = []
        self._jobs_version: tuple[int, int] | None = None
        self._jobs_scanned = -JOBS_RESCAN_SECONDS
        self._worklist: worklist.WorklistDirectory | None = None
        self._worklist_lock = threading.Lock()
        self._worklist_loaded = 0.0
        #: mpps_dir's files: name -> ((mtime_ns, size), parsed), re-read when changed.
        self._mpps: dict[str, tuple[tuple[int, int], dict]] = {}
        self._mpps_lock = threading.Lock()
        self._stow: StowStore | None = None
        self._stow_lock = threading.Lock()

    @property
    def stow(self) -> StowStore:
        """STOW-RS's way into the spool, made at the first upload (a Browser that is
        never sent anything creates no receive folder)."""
        with self._stow_lock:
            if self._stow is None:
                self._stow = StowStore(self.config)
            self._stow.config = self.config  # min_free_mb as it is now
            return self._stow

    def close(self) -> None:
        """At the process's exit: STOW-RS's receive folder is removed."""
        with self._stow_lock:
            if self._stow is not None:
                self._stow.close()
                self._stow = None

    @property
    def config(self) -> Config:
        """The configuration now (the file is re-read when it changed)."""
        with self._reload_lock:
            return self.reloader.current()

    def config_changed(self) -> None:
        """We just wrote the file: read it at the next request, whatever the interval."""
        self.reloader.request()

    @property
    def job_store(self) -> jobs.JobStore:
        return self._jobs

    def move_jobs(self, old: str, new: str) -> int:
        """The open jobs of AE ``old`` now wait for ``new`` (a rename); how many."""
        return self._jobs.rename_destination(old, new)

    def retry_failed(self, destination: str, now: float) -> list[jobs.Job]:
        """Every failed job (of ``destination`` if given) pending again, attempts
        from zero; the jobs as written.

        The rule of ``echoes retry --failed``: failed jobs only.  They are read
        from the files now, not from the last scan, so a job cancelled or
        retried a moment ago is not revived.
        """
        chosen = [job for job in self._jobs.open_jobs() if job.state == jobs.FAILED
                  and (not destination or job.destination == destination)]
        fresh = [jobs.retried(job, now) for job in chosen]
        self._jobs.write_many(fresh)
        return fresh

    def all_jobs(self) -> list[jobs.Job]:
        """Every job now (files re-read only when changed; one scan at a time).

        While the store's :meth:`~echoes.queue.jobs.JobStore.version` stands
        still (and for at most ``JOBS_RESCAN_SECONDS``, as it can miss two
        writes in one clock tick) the last scan is reused, so pages polling
        every second do not stat a big backlog file by file each time.
        """
        with self._jobs_lock:
            version = self._jobs.version()
            now = time.monotonic()
            if version is None or version != self._jobs_version \
                    or now - self._jobs_scanned >= JOBS_RESCAN_SECONDS:
                self._jobs_list = self._jobs.all()
                self._jobs_version, self._jobs_scanned = version, now
            return self._jobs_list

    def mpps_instances(self) -> list[dict]:
        """The MPPS instances in ``mpps_dir`` (a file is parsed again only when it
        changed: one stat per file per worklist page)."""
        folder = Path(self.config.mpps_dir)
        with self._mpps_lock:
            seen: dict[str, tuple[tuple[int, int], dict]] = {}
            try:
                entries = [e for e in os.scandir(folder)
                           if e.name.endswith(".json") and not e.name.startswith(".")]
            except FileNotFoundError:
                entries = []
            for entry in entries:
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                signature = (stat.st_mtime_ns, stat.st_size)
                known = self._mpps.get(entry.name)
                if known is not None and known[0] == signature:
                    seen[entry.name] = known
                    continue
                try:
                    seen[entry.name] = (signature, json.loads(Path(entry.path).read_bytes()))
                except (OSError, ValueError):
                    continue
            self._mpps = seen
            return [parsed for _signature, parsed in seen.values()]

    def worklist(self) -> worklist.WorklistDirectory:
        """The worklist folder, loaded on first use, then polled for changes.

        The same rhythm as the MWL process's watcher without its threads:
        ``poll`` per request (cheap: one stat of the folder) and a full
        rescan each ``RESCAN_SECONDS``.
        """
        with self._worklist_lock:
            now = time.monotonic()
            if self._worklist is None or now - self._worklist_loaded >= worklist.RESCAN_SECONDS:
                if self._worklist is None:
                    self._worklist = worklist.WorklistDirectory(
                        Path(self.config.worklist_dir), quiet=True)
                self._worklist.load()  # also catches files rewritten in place
                self._worklist_loaded = now
            else:
                self._worklist.poll()  # a file renamed in or out moves the folder's mtime
            return self._worklist


def state() -> WebState:
    """The running app's :class:`WebState`."""
    return current_app.extensions["echoes"]
