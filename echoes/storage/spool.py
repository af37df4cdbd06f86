"""The on-disk spool between the store SCP workers and the ingester.

Layout under ``spool_dir``::

    tmp/<pid>/     objects being received by store worker <pid> (never read)
    incoming/      complete, fsynced objects waiting for the ingester
    rejected/      spooled files the ingester could not parse
    outgoing/      outbound jobs (the sender's queue)

A file enters ``incoming/`` only by an atomic rename after fsync of the file,
followed by fsync of the directory: whatever the ingester sees there is whole
and survives a crash.  Names sort by arrival (``<time_ns>-<pid>-<seq>.dcm``)
so that when one SOP Instance UID arrives twice, the later copy wins.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".dcm"


@dataclass(frozen=True)
class SpoolLayout:
    """The spool's folders, derived from ``spool_dir``."""

    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def outgoing(self) -> Path:
        return self.root / "outgoing"

    def create(self) -> None:
        """Make every folder; safe to call from several processes at once."""
        for folder in (self.tmp, self.incoming, self.rejected, self.outgoing):
            folder.mkdir(parents=True, exist_ok=True)

    def worker_tmp(self, pid: int) -> Path:
        """The private receive folder of one store worker."""
        return self.tmp / str(pid)


_sequence = itertools.count()


def incoming_name() -> str:
    """A unique name that sorts by arrival time across workers."""
    return f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}{SUFFIX}"


def publish_incoming(written: int, path: Path, layout: SpoolLayout, incoming_fd: int) -> Path:
    """Move a complete receive file into ``incoming/`` and make it durable:
    its data and the rename, before the caller acknowledges the object.

    ``written`` is the open descriptor the file was written through;
    ``incoming_fd`` the incoming folder, kept open by the caller (the store
    worker's per-object path: no open() per object).

    Why rename first, then fsync.  On ext4 every fsync that has metadata to
    write waits for one journal commit, and the new file's size and its
    rename are both metadata: fsync-then-rename-then-fsync-the-folder waited
    for two commits per object, rename-then-fsync for one (the folder's
    fsync then finds its entry committed already).  What a crash between the
    rename and the fsync can leave in ``incoming/`` was never acknowledged:
    after a kill -9 the data is in the page cache and the file whole; after
    a power cut it may be short, and the ingester parks it in
    ``spool/rejected/`` with a log line (the sender was never told it was
    stored, so it sends it again).  If the fsync fails (EIO), the caller
    answers a failure, and the file, though not known to be on disk, may
    still be ingested: the sender's retry then replaces it.
    """
    target = layout.incoming / incoming_name()
    os.replace(path, target)
    os.fsync(written)
    os.fsync(incoming_fd)
    return target


def pending_incoming(layout: SpoolLayout) -> list[Path]:
    """Files waiting for the ingester, oldest first."""
    try:
        names = [
            entry.name
            for entry in os.scandir(layout.incoming)
            if entry.name.endswith(SUFFIX) and not entry.name.startswith(".")
        ]
    except FileNotFoundError:
        return []
    return [layout.incoming / name for name in sorted(names)]


def free_megabytes(path: Path) -> float:
    """Free space available to this (unprivileged-equivalent) process, in MiB."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize / (1024 * 1024)


def remove_dead_worker_tmp(layout: SpoolLayout) -> list[Path]:
    """Delete receive folders of store workers that no longer run.

    A worker killed mid-transfer leaves a partial file behind; it was never
    acknowledged, so it is removed, never ingested.
    """
    removed = []
    try:
        entries = list(os.scandir(layout.tmp))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
