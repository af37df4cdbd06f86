"""The object store: where archived objects live, behind one small interface.

Why a seam.  The ingester, the sender, ``echoes fsck``/``reindex`` and the
Browser's thumbnails used to join ``archive_dir`` with a record's path by
hand, so the archive could only ever be that tree.  They now name an object
by its *key* (what the index keeps as a record's ``path``:
``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, see
:func:`object_key`) and go through an :class:`ObjectStore`, built in one
place, :func:`open_object_store`.  Today's backend is the archive tree
(:class:`echoes.storage.archive.ArchiveTree`), unchanged on disk.  The spool
stays local: objects enter the store from a synced spool file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from echoes.dicom.part10 import uid_problem

if TYPE_CHECKING:
    from echoes.config import Config


def object_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The key of an object (its path below ``archive_dir``); ValueError for a non-UID.

    UIDs were validated by the store SCP and are again here, so no received
    value can name a place outside the store.
    """
    for name, value in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                        ("SOPInstanceUID", sop_uid)):
        problem = uid_problem(value)
        if problem:
            raise ValueError(f"{name} {problem}")
    return str(PurePosixPath(study_uid, series_uid, f"{sop_uid}.dcm"))


class ObjectStore(Protocol):
    """Archived objects by key.  Every method is safe to call from several threads."""

    def create(self) -> None:
        """Make what the store needs before its first object (the ingester, at start)."""

    def put(self, source: Path, key: str) -> None:
        """Move ``source`` (a complete, fsynced spool file) in as ``key``, durably,
        replacing an earlier object of that key."""

    def put_batch(self, items: Iterable[tuple[Path, str]], delete: Iterable[str] = ()) -> None:
        """:meth:`put` each (source, key), then delete the keys in ``delete``;
        durable as a whole when it returns, for one sync per folder, not per object."""

    def open(self, key: str) -> BinaryIO:
        """The object's bytes for reading (FileNotFoundError when there is none)."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def delete(self, key: str) -> None:
        """Remove the object (nothing when there is none), durably."""

    def iterate(self) -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every stored object, in no promised order."""

    def path_of(self, key: str) -> Path:
        """A local file path of the object, for code that must hand one to pydicom."""


def open_object_store(config: Config) -> ObjectStore:
    """The object store of this installation: the archive tree under ``archive_dir``."""
    from echoes.storage.archive import ArchiveTree

    return ArchiveTree(config.archive_dir)
