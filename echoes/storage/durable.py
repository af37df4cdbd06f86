"""Durable file writes: the one fsync and atomic-replace helpers everything uses.

Why a module of its own.  The spool, the archive tree, the index journal,
the job files, the configuration editor and the reindex request all need the
same two guarantees -- a rename or unlink that survives a power cut (fsync of
the folder) and a file that a reader sees old or new, whole (write a
temporary name, fsync, rename) -- and they used to import them from the
spool.  Nothing here knows about DICOM or about any layout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(folders: Iterable[Path]) -> None:
    """fsync each folder that still exists (once per batch, however many entries moved)."""
    for folder in folders:
        if folder.exists():
            fsync_dir(folder)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk, whichever descriptor wrote it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | list[bytes], durable: bool = True,
                       sync_folder: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or chunks written in turn) so a
    reader sees the old or the new file, whole.

    ``durable``: the data is fsynced before the rename, and the folder after
    it unless ``sync_folder`` is False (a caller writing many files fsyncs
    the folder once).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        if isinstance(data, bytes):
            handle.write(data)
        else:
            handle.writelines(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable and sync_folder:
        fsync_dir(path.parent)
