"""The archive tree: the first backend of the object store (:mod:`echoes.storage.objects`).

``archive_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``:
an object's key is its path below ``archive_dir``.  Objects come in by
rename from the spool (copy, fsync and rename when the archive is on another
file system), and a batch fsyncs each folder it changed once.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from echoes.storage.durable import fsync_dir, fsync_dirs, fsync_file

#: The object files' suffix (what :meth:`ArchiveTree.iterate` lists).
SUFFIX = ".dcm"


def _renamed(source: Path, target: Path) -> bool:
    """``os.replace``; False when the two are on different file systems (EXDEV)."""
    try:
        os.replace(source, target)
        return True
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        return False


def _make_folders(folder: Path) -> set[Path]:
    """Create ``folder`` and its missing parents; the folders whose entries changed."""
    changed = set()
    missing = folder
    while not missing.exists():
        changed.add(missing.parent)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    return changed


def move_into_archive(source: Path, target: Path) -> set[Path]:
    """Move a spooled file to ``target``, replacing an earlier copy.

    Returns the folders whose entries changed, for the caller to fsync once
    per batch.  The rename comes first: the study's folder is there for
    every object after its first, so no stat or mkdir per object.  Falls
    back to copy, fsync and rename when the archive is on another file
    system than the spool.
    """
    dirty = {source.parent, target.parent}
    try:
        if _renamed(source, target):
            return dirty
    except FileNotFoundError:
        if not source.exists():
            raise
        dirty |= _make_folders(target.parent)  # the study's (or series') first object
        if _renamed(source, target):
            return dirty
    partial = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, partial)
    fsync_file(partial)
    os.replace(partial, target)
    fsync_dir(target.parent)
    os.unlink(source)
    return dirty


class ArchiveTree:
    """Objects as files under ``root`` (see :class:`~echoes.storage.objects.ObjectStore`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(self) -> None:
        """Make the root folder (the ingester, at start)."""
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """The object's file; ValueError for a key that would leave the tree."""
        if key.startswith("/") or "\\" in key or ".." in key.split("/"):
            raise ValueError(f"not an object key: {key!r}")
        return self.root / key

    def put(self, source: Path, key: str) -> None:
        self.put_batch([(source, key)])

    def put_batch(self, items: Iterable[tuple[Path, str]], delete: Iterable[str] = ()) -> None:
        dirty: set[Path] = set()
        for source, key in items:
            dirty |= move_into_archive(source, self.path_of(key))
        for key in delete:
            old = self.path_of(key)
            old.unlink(missing_ok=True)
            dirty.add(old.parent)
        fsync_dirs(dirty)

    def open(self, key: str) -> BinaryIO:
        return open(self.path_of(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path_of(key).exists()

    def delete(self, key: str) -> None:
        self.put_batch((), delete=[key])

    def iterate(self) -> Iterator[tuple[str, int]]:
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.endswith(SUFFIX) or name.startswith("."):
                    continue
                full = Path(folder) / name
                try:
                    size = full.stat().st_size
                except FileNotFoundError:
                    continue
                yield str(full.relative_to(self.root)), size
