"""STOW-RS's store: objects arriving over HTTP go into the spool exactly as C-STORE's do.

Why here and not in the web layer: an object stored over HTTP must be
indexed, forwarded and retrievable exactly like one received over DICOM,
so it takes the store port's own path (:mod:`echoes.services.storage`):
a receive file in ``spool/tmp/<pid>/`` written as the bytes arrive
(:class:`~echoes.services.storage.ReceiveFile`), the same checks
(:func:`~echoes.services.storage.vet`: free space, structure, UIDs), and
the same durable publish into ``spool/incoming/``
(:func:`~echoes.services.storage.publish`), after which the ingester takes
it as it takes any other.  A STOW-RS part is a whole Part 10 file, so the
role of the C-STORE request's SOP Class and Instance UIDs (which the data
set must repeat) is played by its File Meta's Media Storage UIDs; the SOP
Class and transfer syntax must be ones the store port accepts.

Publishing waits for the end of the body: a body that turns out not to be
valid multipart stores nothing, so every vetted part stays in the receive
folder (its descriptor closed: a STOW of 10,000 objects must not hold
10,000 of them) until the close delimiter, then each is published and
fsynced before the answer is sent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from echoes.config import Config
from echoes.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from echoes.dicom.dimse import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from echoes.dicom.part10 import MalformedDataset, part10_header, read_meta
from echoes.services.storage import (
    ReceiveFile,
    SpareFiles,
    StoreRefused,
    accepted_contexts,
    publish,
    vet,
)
from echoes.storage import spool

log = logging.getLogger("echoes.stow")

#: PS3.18 10.5.3 / PS3.4 B.2.3 failure reasons beyond the C-STORE statuses.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
MEDIA_STORAGE_CLASS, MEDIA_STORAGE_INSTANCE, TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010
#: Where the File Meta starts (after the 128-byte preamble and "DICM"), and the most
#: of it we read: a meta is a few hundred bytes.
META_START, MAX_META_BYTES = 132, 64 * 1024
#: Source Application Entity Title (0002,0016) of an object stored over STOW-RS: what
#: the index records as its calling AE, as it records a C-STORE's.
STOW_SOURCE_AE = "STOW-RS"


@dataclass
class Outcome:
    """One part's result: stored (``status`` 0) or the FailureReason and why."""

    sop_class: str
    sop_instance: str
    status: int = SUCCESS
    reason: str = ""
    size: int = 0
    path: Path | None = None
    study: str = ""
    series: str = ""


def _text(value: bytes | None) -> str:
    return (value or b"").rstrip(b"\x00 ").decode("ascii", "replace")


def read_part_meta(chunks: Iterator[bytes]) -> tuple[bytes, tuple[str, str, str]]:
    """Read a part's preamble and File Meta from ``chunks``: (the bytes read past the
    meta, (Media Storage SOP Class, Media Storage SOP Instance, Transfer Syntax UIDs)).

    The meta's end comes from its group length (0002,0000), which PS3.10 requires;
    a part without it, or that is not Part 10 at all, is Cannot Understand.
    """
    head = b""

    def until(size: int) -> bool:
        nonlocal head
        while len(head) < size:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            head += chunk
        return True

    if not until(META_START + 12) or head[128:132] != b"DICM" \
            or head[META_START:META_START + 6] != b"\x02\x00\x00\x00UL":
        raise StoreRefused(CANNOT_UNDERSTAND, "Cannot understand: not a Part 10 file "
                                              "(no DICM prefix or no File Meta group length)")
    end = META_START + 12 + int.from_bytes(head[META_START + 8:META_START + 12], "little")
    if end > MAX_META_BYTES or not until(end):
        raise StoreRefused(CANNOT_UNDERSTAND, "Cannot understand: the File Meta is cut short")
    try:
        meta, _ = read_meta(io.BytesIO(head[:end]), end)
    except (MalformedDataset, ValueError) as exc:
        raise StoreRefused(CANNOT_UNDERSTAND, f"Cannot understand: File Meta: {exc}") from None
    return head[end:], (_text(meta.get(MEDIA_STORAGE_CLASS)),
                        _text(meta.get(MEDIA_STORAGE_INSTANCE)),
                        _text(meta.get(TRANSFER_SYNTAX)))


class StowStore:
    """The web process's receive folder and its way into ``spool/incoming``.

    One per web process (``spool/tmp/<pid>``: a store worker starting later
    removes it once this process is gone, as it does a dead worker's).
    Safe for waitress's threads: each part has its own receive file.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = spool.SpoolLayout(config.spool_dir)
        self.layout.create()
        self.folder = self.layout.worker_tmp(os.getpid())
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spares = SpareFiles(self.folder, count=2)
        self.incoming_fd = os.open(self.layout.incoming, os.O_RDONLY | os.O_DIRECTORY)
        self.accepted = accepted_contexts()

    def receive(self, chunks: Iterable[bytes], study: str | None) -> Outcome:
        """Write one part into a receive file and vet it; not yet published.

        The part's File Meta is read, then replaced by ours (our implementation
        UID, ``STOW_SOURCE_AE`` as Source AE Title), as a C-STORE data set gets
        ours: every archived file says who wrote it and how it came in.
        """
        chunks = iter(chunks)
        outcome = Outcome("", "")
        try:
            rest, (outcome.sop_class, outcome.sop_instance, syntax) = read_part_meta(chunks)
        except StoreRefused as refusal:
            outcome.status, outcome.reason = refusal.status, refusal.reason
            return outcome  # split() drains what is left of the part
        received = ReceiveFile(self.spares)
        try:
            received.write(part10_header(outcome.sop_class, outcome.sop_instance, syntax,
                                         IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
                                         STOW_SOURCE_AE))
            received.write(rest)
            for chunk in chunks:
                received.write(chunk)
        except BaseException:
            received.discard()  # the body broke off: nothing of this part is kept
            raise
        try:
            if outcome.sop_class not in self.accepted:
                raise StoreRefused(SOP_CLASS_NOT_SUPPORTED,
                                   f"SOP Class {outcome.sop_class} is not stored here")
            if syntax not in self.accepted[outcome.sop_class]:
                raise StoreRefused(TRANSFER_SYNTAX_NOT_SUPPORTED,
                                   f"transfer syntax {syntax} is not accepted")
            uids, outcome.size = vet(received, outcome.sop_class, outcome.sop_instance,
                                     self.layout, self.config.min_free_mb, study)
            outcome.study = uids["StudyInstanceUID"] or ""
            outcome.series = uids["SeriesInstanceUID"] or ""
            outcome.path = received.path
        except StoreRefused as refusal:
            received.path.unlink(missing_ok=True)
            outcome.status, outcome.reason = refusal.status, refusal.reason
        finally:
            received.close()
        return outcome

    def publish(self, outcomes: list[Outcome]) -> None:
        """Publish every vetted part durably (fsync) before the answer is sent."""
        for outcome in outcomes:
            if outcome.path is None:
                continue
            try:
                fd = os.open(outcome.path, os.O_RDONLY)
            except OSError as exc:
                outcome.status = OUT_OF_RESOURCES
                outcome.reason = f"Out of resources: {exc.strerror}"
                outcome.path = None
                continue
            try:
                publish(fd, outcome.path, self.layout, self.incoming_fd)
            except StoreRefused as refusal:
                outcome.status, outcome.reason = refusal.status, refusal.reason
            finally:
                os.close(fd)
                outcome.path = None

    def close(self) -> None:
        """At the web process's exit: its spare receive files and folder go (an upload
        still running was never answered, so its file goes too)."""
        self.spares.close()
        for leftover in self.folder.glob("*.part"):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()
        os.close(self.incoming_fd)

    def discard(self, outcomes: list[Outcome]) -> None:
        """The body was not valid: the vetted parts are deleted, never published."""
        for outcome in outcomes:
            if outcome.path is not None:
                outcome.path.unlink(missing_ok=True)
                outcome.path = None
