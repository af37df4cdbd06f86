"""The archive tree: where an object lives, and how it gets there durably.

``archive_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
UIDs were validated by the store SCP and again by the ingester
(:func:`relative_path` refuses anything that is not a UID), so no received
value can name a path outside the archive.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from echoes.dicom.part10 import uid_problem
from echoes.storage.durable import fsync_dir, fsync_file


def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
    """The object's path below ``archive_dir``; ValueError for a non-UID."""
    for name, value in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                        ("SOPInstanceUID", sop_uid)):
        problem = uid_problem(value)
        if problem:
            raise ValueError(f"{name} {problem}")
    return PurePosixPath(study_uid, series_uid, f"{sop_uid}.dcm")


def move_into_archive(source: Path, target: Path) -> set[Path]:
    """Move a spooled file to ``target``, replacing an earlier copy.

    Returns the folders whose entries changed, for the caller to fsync once
    per batch.  Falls back to copy, fsync and rename when the archive is on
    another file system than the spool.
    """
    dirty = {source.parent, target.parent}
    missing = target.parent
    while not missing.exists():
        dirty.add(missing.parent)
        missing = missing.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return dirty
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: different file systems
            raise
    partial = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, partial)
    fsync_file(partial)
    os.replace(partial, target)
    fsync_dir(target.parent)
    os.unlink(source)
    return dirty
