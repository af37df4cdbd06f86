"""The index against the archive tree: ``echoes fsck`` finds, ``echoes reindex`` mends.

fsck only reads, so it is safe while the server runs; an object caught
between its index write and its move into the archive (a fraction of a
second) would look like a "record without file", so every finding is looked
at again after ``RECHECK_SECONDS`` and only lasting ones are reported.

reindex writes the index, and the ingester is its only writer: while the
server runs, ``echoes reindex`` leaves a request in the spool, the ingester
carries it out between two batches and leaves the result beside it; when the
server is stopped the command does the work itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from echoes.config import Config
from echoes.index import IndexWriter, open_index
from echoes.index.record import InstanceRecord, read_record
from echoes.storage import durable, spool
from echoes.storage.objects import ObjectStore, open_object_store

RECHECK_SECONDS = 2.0
REQUEST = "reindex.request"
RESULT = "reindex.result"
BATCH = 500


@dataclass(frozen=True)
class Finding:
    """One disagreement between the index and the tree."""

    kind: str  # "file without record", "record without file", "size mismatch", ...
    path: str  # relative to archive_dir
    detail: str = ""


def _header_problem(store: ObjectStore, relative: str, record: dict | None) -> str:
    """Why the file's own UIDs disagree with its place or its record ("" if fine)."""
    try:
        found = read_record(store.path_of(relative))
    except Exception as exc:  # unreadable: say what
        return f"unreadable: {type(exc).__name__}: {exc}"
    if found.path != relative:
        return f"holds SOP Instance {found.SOPInstanceUID}, which belongs at {found.path}"
    if record is not None and record["SOPInstanceUID"] != found.SOPInstanceUID:
        return f"record says {record['SOPInstanceUID']}, file holds {found.SOPInstanceUID}"
    return ""


def _findings(config: Config, read_headers: bool) -> list[Finding]:
    records = {doc["path"]: doc for doc in open_index(config).instances()}
    store = open_object_store(config)
    files = dict(store.iterate())
    findings = [Finding("record without file", path, record["SOPInstanceUID"])
                for path, record in records.items() if path not in files]
    for path, size in files.items():
        record = records.get(path)
        if record is None:
            findings.append(Finding("file without record", path))
        elif record.get("size") != size:
            findings.append(Finding("size mismatch", path,
                                    f"index {record.get('size')} bytes, file {size} bytes"))
        if read_headers:
            problem = _header_problem(store, path, record)
            if problem:
                findings.append(Finding("UID mismatch", path, problem))
    return findings


def fsck(config: Config, read_headers: bool = True) -> list[Finding]:
    """Lasting disagreements between index and archive (read-only)."""
    first = _findings(config, read_headers)
    if not first:
        return []
    time.sleep(RECHECK_SECONDS)
    again = set(_findings(config, read_headers))
    return [finding for finding in first if finding in again]


def rebuild(config: Config, archive_index: IndexWriter) -> dict[str, int]:
    """Make the index describe the tree: index every file, drop records without one.

    Files are indexed where they are (a file at the wrong place for its UIDs
    is reported by fsck, not moved).  Runs inside the ingester, or in the
    command when the server is stopped.
    """
    store = open_object_store(config)
    counts = {"files": 0, "indexed": 0, "unreadable": 0, "records removed": 0}
    batch: list[InstanceRecord] = []
    present: set[str] = set()
    for relative, size in store.iterate():
        counts["files"] += 1
        try:
            record = read_record(store.path_of(relative))
        except Exception:
            counts["unreadable"] += 1
            continue
        record = replace(record, path=relative, size=size)
        present.add(record.SOPInstanceUID)
        batch.append(record)
        if len(batch) >= BATCH:
            archive_index.apply(batch)
            counts["indexed"] += len(batch)
            batch = []
    if batch:
        archive_index.apply(batch)
        counts["indexed"] += len(batch)
    stale = [doc["SOPInstanceUID"] for doc in archive_index.instances()
             if doc["SOPInstanceUID"] not in present
             or not store.exists(doc["path"])]
    counts["records removed"] = archive_index.remove(stale)
    return counts


def request_path(config: Config) -> Path:
    """Where ``echoes reindex`` asks the running ingester."""
    return spool.SpoolLayout(config.spool_dir).root / REQUEST


def result_path(config: Config) -> Path:
    """Where the ingester leaves the outcome."""
    return spool.SpoolLayout(config.spool_dir).root / RESULT


def serve_request(config: Config, archive_index: IndexWriter) -> dict | None:
    """In the ingester: carry out a pending reindex request, if there is one."""
    request = request_path(config)
    if not request.exists():
        return None
    started = time.monotonic()
    try:
        counts: dict = rebuild(config, archive_index)
    except Exception as exc:  # report it, never crash-loop the ingester on a request
        counts = {"error": f"{type(exc).__name__}: {exc}"}
    outcome = {**counts, "seconds": round(time.monotonic() - started, 2)}
    durable.atomic_write_bytes(result_path(config), json.dumps(outcome).encode())
    request.unlink(missing_ok=True)
    return outcome


def describe(finding: Finding) -> str:
    """One line for the admin."""
    return f"{finding.kind}: {finding.path}" + (f" ({finding.detail})" if finding.detail else "")


def as_dict(finding: Finding) -> dict:
    """For --json."""
    return asdict(finding)

