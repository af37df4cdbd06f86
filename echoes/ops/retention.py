"""Retention: deleting whole studies, by hand (``echoes delete``, the Browser) or by the
limits ``retention_days`` and ``max_archive_gb``.

Why through the ingester.  It is the one writer of the index, so every
deletion is carried out there, between two batches: ``echoes delete`` and the
Browser leave a request file in ``spool/delete/`` (the running ingester picks
it up within a sweep and leaves the outcome beside it); with the server
stopped, the command does the deletion itself, as ``echoes reindex`` does.

Why an intent.  A deletion touches the index and the archive, which cannot
change together.  So it first writes, durably, ``spool/deleting/<study>.json``
listing every object (SOP Instance UID and archive key), then removes the
records from the index, then the files (and their emptied folders), logs the
deletion (``spool/deletions.jsonl``, which ``echoes check`` counts), and only
then removes the intent.  A crash anywhere in between (kill -9, power cut)
leaves the intent, and the next start of the ingester finishes it before it
ingests anything: ``echoes fsck`` finds index and archive in agreement.

Which studies (:func:`plan`, pure): those whose newest object arrived more
than ``retention_days`` ago, then, while the archive holds more than
``max_archive_gb`` (10^9 bytes of archived files, as the index counts them),
the ones that arrived longest ago.  Never a study with an outbound job
(forward or push) that is not done: pending, retrying, failed or held
(a cancelled job is not waiting for anything and does not hold a study).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from echoes.config import Config
from echoes.dicom.part10 import uid_problem
from echoes.index import IndexWriter
from echoes.queue import jobs
from echoes.storage import durable, spool
from echoes.storage.objects import ObjectStore

log = logging.getLogger("echoes.retention")

#: How often the running ingester compares the archive with the limits (the
#: contract: over a limit, deleted within a minute); after a batch it looks
#: again sooner, so that a filling archive is caught while it fills.
CHECK_SECONDS = 30.0
CHECK_AFTER_INGEST_SECONDS = 10.0
#: Job states that keep a study (everything but done and cancelled).
KEEPING_STATES = frozenset(jobs.STATES) - {jobs.DONE, jobs.CANCELLED}
#: Tests only: seconds to wait between removing the index records and the files
#: of a deletion, so that a kill -9 can land in the middle of one.
PAUSE_ENV = "ECHOES_TEST_DELETE_PAUSE"

BY_HAND, RETENTION_DAYS, MAX_ARCHIVE = "by hand", "retention_days", "max_archive_gb"


class DeleteRefused(Exception):
    """A study that cannot be deleted (unknown, or with jobs not done); one line."""


@dataclass(frozen=True)
class Deletion:
    """One study to delete, and why."""

    study_uid: str
    reason: str


def arrival_text(epoch: float) -> str:
    """An epoch time as the index writes arrival times (``received``, a summary's
    ``updated``): ISO 8601 in UTC with milliseconds, which sort as text (the
    PostgreSQL index orders them with COLLATE "C" too)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def plan(studies: Iterable[dict], keep: set[str], now: float, retention_days: float,
         max_archive_gb: float) -> list[Deletion]:
    """The studies to delete now (study summaries with ``size`` and ``updated``, the
    arrival time of their newest object), oldest-arrived first.

    ``keep``: studies with unfinished outbound jobs; never chosen, but their
    bytes still count towards ``max_archive_gb``.  Cheap when nothing is due
    (the running ingester asks every few seconds): no sort then.
    """
    studies = list(studies)
    total = sum(int(s.get("size", 0)) for s in studies)
    limit = max_archive_gb * 1e9
    horizon = arrival_text(now - retention_days * 86400) if retention_days > 0 else ""
    over = max_archive_gb > 0 and total > limit
    if not over and not (horizon and any(s.get("updated", "") < horizon for s in studies)):
        return []
    chosen: list[Deletion] = []
    for summary in sorted(studies, key=lambda s: (s.get("updated", ""), s["StudyInstanceUID"])):
        uid = summary["StudyInstanceUID"]
        if uid in keep:
            continue
        if horizon and summary.get("updated", "") < horizon:
            reason = RETENTION_DAYS
        elif max_archive_gb > 0 and total > limit:
            reason = MAX_ARCHIVE
        else:
            continue
        chosen.append(Deletion(uid, reason))
        total -= int(summary.get("size", 0))
    return chosen


def keeping(open_jobs: Iterable[jobs.Job]) -> dict[str, int]:
    """Study UID -> how many of its outbound jobs are not done (those keep it)."""
    counts: dict[str, int] = {}
    for job in open_jobs:
        if job.state in KEEPING_STATES:
            counts[job.study_instance_uid] = counts.get(job.study_instance_uid, 0) + 1
    return counts


# -- files in the spool ------------------------------------------------------------------


def names_ending(folder: Path, suffix: str) -> list[str]:
    """The names in ``folder`` that end in ``suffix``, sorted ([]: no folder yet)."""
    try:
        return sorted(name for name in os.listdir(folder) if name.endswith(suffix))
    except FileNotFoundError:
        return []


def requests_folder(config: Config) -> Path:
    return spool.SpoolLayout(config.spool_dir).root / "delete"


def intents_folder(config: Config) -> Path:
    return spool.SpoolLayout(config.spool_dir).root / "deleting"


def log_path(config: Config) -> Path:
    """One JSON line per deletion done: when, which study, why, how much."""
    return spool.SpoolLayout(config.spool_dir).root / "deletions.jsonl"


def request_delete(config: Config, study_uid: str) -> Path:
    """Ask the running ingester to delete ``study_uid``; the path its result will have."""
    problem = uid_problem(study_uid)
    if problem:
        raise DeleteRefused(f"StudyInstanceUID {problem}")
    folder = requests_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    result = folder / f"{study_uid}.result"
    result.unlink(missing_ok=True)
    durable.atomic_write_bytes(folder / f"{study_uid}.request", b"delete\n")
    return result


def deletions(config: Config, since: float = 0.0) -> list[dict]:
    """The logged deletions done at or after ``since`` (epoch seconds)."""
    try:
        lines = log_path(config).read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if entry.get("time", 0) >= since:
            found.append(entry)
    return found


class Retention:
    """Deletions as the one index writer carries them out (the ingester, or a
    command with the server stopped)."""

    def __init__(self, config: Config, index: IndexWriter, objects: ObjectStore,
                 job_store) -> None:
        self.config = config
        self.index = index
        self.objects = objects
        self.jobs = job_store
        self.checked = 0.0

    def serve(self, config: Config, ingested: bool = False) -> int:
        """Finish intents, carry out requests, apply the limits when due; how many
        studies were deleted."""
        self.config = config
        done = self.finish_intents()
        done += self.serve_requests()
        now = time.time()
        wait = CHECK_AFTER_INGEST_SECONDS if ingested else CHECK_SECONDS
        if (config.retention_days or config.max_archive_gb) and now - self.checked >= wait:
            self.checked = now
            done += self.apply_limits(now)
        return done

    def apply_limits(self, now: float) -> int:
        keep = keeping(self.jobs.open_jobs())
        chosen = plan(self.index.studies(), set(keep), now, self.config.retention_days,
                      self.config.max_archive_gb)
        for deletion in chosen:
            self.delete(deletion.study_uid, deletion.reason)
        return len(chosen)

    def serve_requests(self) -> int:
        folder = requests_folder(self.config)
        done = 0
        for name in names_ending(folder, ".request"):
            study_uid = name[: -len(".request")]
            try:
                outcome = self.delete(study_uid, BY_HAND)
                done += 1
            except DeleteRefused as exc:
                outcome = {"error": str(exc)}
            durable.atomic_write_bytes(folder / f"{study_uid}.result",
                                       json.dumps(outcome).encode())
            (folder / name).unlink(missing_ok=True)
        return done

    def delete(self, study_uid: str, reason: str) -> dict:
        """Delete one study, files and index (DeleteRefused: unknown, or jobs not done)."""
        detail = self.index.study(study_uid)
        if detail is None or not detail.get("instances"):
            raise DeleteRefused(f"no archived study {study_uid}")
        waiting = keeping(job for job in self.jobs.open_jobs()
                          if job.study_instance_uid == study_uid).get(study_uid, 0)
        if waiting:
            raise DeleteRefused(f"study {study_uid} has {waiting} outbound jobs not done "
                                "(see echoes queue); it is kept until they are")
        instances = [[doc["SOPInstanceUID"], doc["path"]] for doc in detail["instances"]]
        intent = {"study": study_uid, "reason": reason, "time": time.time(),
                  "instances": instances,
                  "bytes": sum(int(doc.get("size", 0)) for doc in detail["instances"]),
                  "patient": (detail.get("study") or {}).get("PatientID", "")}
        folder = intents_folder(self.config)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{study_uid}.json"
        durable.atomic_write_bytes(path, json.dumps(intent).encode())
        return self.finish(path, intent)

    def finish_intents(self) -> int:
        """Carry out the deletions a crash cut short (each intent is idempotent)."""
        folder = intents_folder(self.config)
        names = names_ending(folder, ".json")
        for name in names:
            path = folder / name
            try:
                intent = json.loads(path.read_bytes())
            except (OSError, json.JSONDecodeError) as exc:  # written atomically: not ours
                log.error("deletion intent %s unreadable, left alone: %s", path, exc)
                continue
            log.info("finishing the deletion of study %s cut short earlier", intent["study"])
            self.finish(path, intent)
        return len(names)

    def finish(self, path: Path, intent: dict) -> dict:
        """Index records, then files and emptied folders, then the log line, then the intent."""
        instances = intent["instances"]
        self.index.remove(sop for sop, _key in instances)
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        if pause:
            time.sleep(pause)
        keys = [key for _sop, key in instances]
        self.objects.put_batch((), delete=keys)
        self._remove_empty_folders(keys)
        outcome = {"study": intent["study"], "reason": intent["reason"],
                   "instances": len(instances), "bytes": intent.get("bytes", 0),
                   "time": time.time()}
        with open(log_path(self.config), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(outcome) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        request = requests_folder(self.config) / f"{intent['study']}.request"
        if request.exists():  # asked by hand, and cut short: the asker gets the outcome
            durable.atomic_write_bytes(request.with_suffix(".result"),
                                       json.dumps(outcome).encode())
            request.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        durable.fsync_dir(path.parent)
        log.info("deleted study %s (%s): %d objects, %d bytes, patient %s", intent["study"],
                 intent["reason"], len(instances), intent.get("bytes", 0),
                 intent.get("patient", "") or "-")
        return outcome

    def _remove_empty_folders(self, keys: list[str]) -> None:
        """The series and study folders the deleted files leave empty (archive tree)."""
        path_of = getattr(self.objects, "path_of", None)
        if path_of is None:
            return
        folders = {path_of(key).parent for key in keys}
        parents = {folder.parent for folder in folders}
        changed = set()
        for folder in sorted(folders | parents, key=lambda p: -len(p.parts)):
            try:
                folder.rmdir()
                changed.add(folder.parent)
            except OSError:  # not empty (an object arrived again), or gone
                continue
        durable.fsync_dirs(folder for folder in changed if folder.exists())
