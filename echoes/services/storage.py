"""Store SCP worker: receives C-STORE into the spool and acknowledges only what is durable.

Several of these processes run at once (``store_workers``); the supervisor
binds the store port once and hands the listening socket to each, so the
kernel spreads associations over them and a worker that dies loses nothing
queued on the port.

An object's path through this module::

    C-STORE-RQ command      -> SpoolReceiver: spool/tmp/<pid>/<n>.part opened,
                               File Meta written (our implementation UID,
                               the calling AE as Source AE Title)
    P-DATA data fragments   -> appended to that file as they arrive
    last fragment           -> check_object()           (free space, structure, UIDs)
                            -> spool.publish_incoming() (rename, fsync file and dir)
                            -> Success 0x0000           (only now)

The upper layer is our own (:mod:`echoes.dicom.acceptor`, :mod:`echoes.dicom.pdu`),
not pynetdicom's: see acceptor.py for the measured reason.  A write
error (full disk, EIO) is remembered and answered 0xA700 when the object
ends; the association goes on.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from echoes.config import Config
from echoes.dicom import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    dimse,
    part10,
    pdu,
    sopclasses,
)
from echoes.dicom import acceptor as association

# Statuses (PS3.4 B.2.3, C.4.1.1.4, K.4.1.1.4), kept importable from here.
from echoes.dicom.dimse import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from echoes.dicom.part10 import MalformedDataset, check_part10, uid_problem
from echoes.dicom.syntax import DEFLATED
from echoes.storage import durable, spool

log = logging.getLogger("echoes.store")

#: Largest PDU we announce for receiving.  Bigger PDUs mean fewer reads per
#: object; 256 KiB bounds what one PDU can make a worker hold in memory.
RECEIVE_MAX_PDU = 262144


#: Objects up to this size are walked from memory, bigger ones from the file.
WALK_IN_MEMORY = 4 << 20



class StoreRefused(Exception):
    """An object is not stored; carries the DIMSE status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: The UIDs an object must carry, by tag (read during the structural walk),
#: checked in this order.
REQUIRED_UID_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
                     0x0020000E: "SeriesInstanceUID", 0x0020000D: "StudyInstanceUID"}
REQUIRED_UIDS = tuple(REQUIRED_UID_TAGS.values())


def object_uids(path: Path, fd: int | None = None) -> dict[str, str | None]:
    """Walk the whole file (check_part10) and return its four UIDs by keyword.

    The walk keeps the UIDs' raw values as it passes them, so no second
    parse is needed; a deflated data set is inflated by pydicom instead.
    With ``fd`` (the receive descriptor, open for reading too) a small file
    is read back without opening it again.
    """
    size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
    found = dict.fromkeys(REQUIRED_UID_TAGS, b"")
    if size <= WALK_IN_MEMORY:
        # One read instead of a seek per element (62 lseeks for a tiny object).
        if fd is not None:
            data = os.pread(fd, size, 0)
        else:
            data = path.read_bytes()
        syntax = check_part10(io.BytesIO(data), len(data), found)
    else:
        with open(path, "rb") as handle:
            syntax = check_part10(handle, size, found)
    if syntax in DEFLATED:  # the walk cannot read inside; pydicom inflates
        header = dcmread(path, stop_before_pixels=True, specific_tags=list(REQUIRED_UIDS))
        return {keyword: header.get(keyword) for keyword in REQUIRED_UIDS}
    return {keyword: found[tag].rstrip(b"\x00 ").decode("ascii", "replace")
            for tag, keyword in REQUIRED_UID_TAGS.items()}


def check_object(path: Path, request_class: str, request_instance: str,
                 fd: int | None = None) -> dict[str, str | None]:
    """Decide whether a received file may be stored; raise StoreRefused if not."""
    try:
        uids = object_uids(path, fd)
    except MalformedDataset as exc:
        raise StoreRefused(CANNOT_UNDERSTAND, f"Cannot understand: {exc}") from None
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise StoreRefused(CANNOT_UNDERSTAND, f"Cannot understand: {exc}") from None
    for keyword in REQUIRED_UIDS:
        problem = uid_problem(uids[keyword])
        if problem:
            raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {problem}")
    if uids["SOPClassUID"] != request_class:
        raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the request")
    if uids["SOPInstanceUID"] != request_instance:
        raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the request")
    return uids


class SpareFiles:
    """Empty receive files, created ahead of need by a background thread.

    Creating a file waits for a journal handle, and while this worker or the
    ingester has an fsync in flight that wait was 18% of the store thread's
    wall time per tiny object (py-spy --idle, 2,000 16x16 objects).  A
    spare taken here costs nothing on the association's thread; the next
    one is made meanwhile.  Spares are deleted at exit; those of a killed
    worker go with its spool/tmp/<pid> folder.
    """

    def __init__(self, folder: Path, count: int = 4) -> None:
        self.folder = folder
        self.count = count
        self.ready: queue.SimpleQueue[tuple[Path, int]] = queue.SimpleQueue()
        self.numbers = itertools.count(1)
        self.wanted = threading.Event()
        self.stopped = False
        self.wanted.set()
        threading.Thread(target=self._fill, name="spare-files", daemon=True).start()

    def create(self) -> tuple[Path, int]:
        """A new empty receive file: (path, descriptor open for writing and reading back)."""
        path = self.folder / f"{next(self.numbers):09d}.part"
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def take(self) -> tuple[Path, int]:
        """A spare if one is ready, else a file made now."""
        self.wanted.set()
        try:
            return self.ready.get_nowait()
        except queue.Empty:
            return self.create()

    def _fill(self) -> None:
        while not self.stopped:
            self.wanted.wait()
            self.wanted.clear()
            while not self.stopped and self.ready.qsize() < self.count:
                try:
                    self.ready.put(self.create())
                except OSError:
                    break  # full or read-only: take() will say so on the object

    def close(self) -> None:
        """Delete the spares."""
        self.stopped = True
        self.wanted.set()
        while True:
            try:
                path, fd = self.ready.get_nowait()
            except queue.Empty:
                return
            os.close(fd)
            path.unlink(missing_ok=True)


@dataclass
class Tally:
    """One association's objects, for its closing log line."""

    stored: int = 0
    refused: int = 0
    bytes: int = 0


class ReceiveFile:
    """One object's receive file in a spool/tmp folder, written as its bytes arrive.

    Shared by the store port (:class:`SpoolReceiver`, C-STORE) and STOW-RS
    (:mod:`echoes.services.stow`), so both write, check and publish an
    object the same way.  The first failed write (ENOSPC, EIO) is remembered
    and later writes are dropped, so the caller can go on reading its input
    and answer Out of Resources when the object ends.
    """

    def __init__(self, spares: SpareFiles) -> None:
        self.error: OSError | None = None
        #: Bytes written, and how many of them were handed to the disk already.
        self.written = self.handed = 0
        self.path, self.fd = spares.take()

    def write(self, fragment: memoryview | bytes) -> None:
        """Append a fragment (short writes retried)."""
        if self.error is not None:
            return
        fragment = memoryview(fragment)
        try:
            while fragment:
                done = os.write(self.fd, fragment)
                fragment = fragment[done:]
                self.written += done
        except OSError as exc:
            self.error = exc
            return
        if self.written - self.handed >= durable.WRITEBACK_CHUNK:
            # The disk writes while the rest arrives: the final fdatasync waits less.
            durable.start_writeback(self.fd, self.handed, self.written - self.handed)
            self.handed = self.written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """The object never ended (association or upload cut): never acknowledged."""
        self.close()
        self.path.unlink(missing_ok=True)


class SpoolReceiver(ReceiveFile):
    """One C-STORE data set being received into this worker's spool folder.

    Fragments are written as they arrive, after a File Meta of our own;
    nothing is read back until the last one, then :meth:`finish` answers.
    """

    def __init__(self, service: StoreService, association_: association.Association,
                 sop_class: str, sop_instance: str, syntax: str) -> None:
        super().__init__(service.spares)
        self.service = service
        self.association = association_
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.write(memoryview(part10.part10_header(
            sop_class, sop_instance, syntax, IMPLEMENTATION_CLASS_UID,
            IMPLEMENTATION_VERSION_NAME, association_.calling_ae)))

    def finish(self) -> tuple[int, str]:
        """The whole data set is here: check, commit, answer."""
        try:
            return self.service.commit(self)
        finally:
            self.close()


def vet(received: ReceiveFile, sop_class: str, sop_instance: str,
        layout: spool.SpoolLayout, min_free_mb: int, study: str | None = None
        ) -> tuple[dict[str, str | None], int]:
    """Decide whether a complete receive file may be stored: its UIDs and size, or
    :class:`StoreRefused` (the file is then deleted).

    A remembered write error or less free space than ``min_free_mb`` is Out
    of Resources, then :func:`check_object`; with ``study`` (a STOW-RS to
    one study's URL) an object of another study is refused too.
    """
    try:
        if received.error is not None:
            raise StoreRefused(
                OUT_OF_RESOURCES, f"Out of resources: {received.error.strerror}")
        free = spool.free_megabytes(layout.root)
        if free < min_free_mb:
            raise StoreRefused(
                OUT_OF_RESOURCES, f"Out of resources: {free:.0f} MB free, floor {min_free_mb} MB",
            )
        uids = check_object(received.path, sop_class, sop_instance, received.fd)
        if study is not None and uids["StudyInstanceUID"] != study:
            raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS,
                               f"StudyInstanceUID {uids['StudyInstanceUID']} is not the "
                               f"study of the URL")
        return uids, os.fstat(received.fd).st_size
    except StoreRefused:
        received.path.unlink(missing_ok=True)
        raise


def publish(fd: int, path: Path, layout: spool.SpoolLayout, incoming_fd: int) -> None:
    """Move a vetted file into ``incoming/`` durably (:func:`spool.publish_incoming`:
    rename, fsync file and folder); a failure is Out of Resources, the file deleted."""
    try:
        # Renamed into incoming, then the receive descriptor and the
        # incoming folder (kept open) fsynced: one journal commit,
        # no open() per object (see spool.publish_incoming).
        spool.publish_incoming(fd, path, layout, incoming_fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StoreRefused(OUT_OF_RESOURCES, f"Out of resources: {exc.strerror}") from None


class StoreService:
    """The store port's service (see association.Service) for one worker process."""

    def __init__(self, config: Config, layout: spool.SpoolLayout, folder: Path) -> None:
        self.config = config
        self.layout = layout
        self.folder = folder
        self.spares = SpareFiles(folder)
        self.incoming_fd = os.open(layout.incoming, os.O_RDONLY | os.O_DIRECTORY)
        self.accepted = accepted_contexts()
        #: Per open association (each on its own thread: one key each).
        self.tallies: dict[association.Association, Tally] = {}

    def receiver(self, association_: association.Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> SpoolReceiver | None:
        """A spool file for a C-STORE-RQ's data set (None for anything else)."""
        if (dimse.command_us(command, dimse.COMMAND_FIELD) != dimse.C_STORE_RQ
                or not dimse.has_data_set(command)):
            return None
        return SpoolReceiver(self, association_,
                             dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS),
                             dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE),
                             context.transfer_syntax)

    def commit(self, receiver: SpoolReceiver) -> tuple[int, str]:
        """Commit the spooled file durably, then say Success; else the refusal."""
        stats = self.tallies.setdefault(receiver.association, Tally())
        try:
            _, size = vet(receiver, receiver.sop_class, receiver.sop_instance,
                          self.layout, self.config.min_free_mb)
            publish(receiver.fd, receiver.path, self.layout, self.incoming_fd)
        except StoreRefused as refusal:
            stats.refused += 1
            log.warning("refused %s from %s: 0x%04X %s", receiver.sop_instance,
                        receiver.association.calling_ae, refusal.status, refusal.reason)
            return refusal.status, refusal.reason[:64]
        stats.stored += 1
        stats.bytes += size
        return SUCCESS, ""

    def closed(self, association_: association.Association, how: str) -> None:
        """One log line per association."""
        tally = self.tallies.pop(association_, None) or Tally()
        log.info(
            "association from %s (%s:%s) to %s %s: %d stored, %d refused, %d bytes, %.2f s",
            association_.calling_ae, association_.address, association_.port,
            association_.called_ae, how, tally.stored, tally.refused,
            tally.bytes, time.monotonic() - association_.started,
        )


def accepted_contexts() -> dict[str, frozenset[str]]:
    """The Storage service's table: every storage class and syntax we accept
    (the port adds Verification, :mod:`echoes.services.verification`)."""
    table = {sop_class: frozenset(sopclasses.STORE_TRANSFER_SYNTAXES)
             for sop_class in sopclasses.store_scp_classes()}
    return table
