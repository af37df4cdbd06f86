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

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from echoes.config import Config
from echoes.dicom.dimse import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from echoes.dicom.part10 import MalformedDataset, read_meta
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
        """Write one part into a receive file and vet it; not yet published."""
        received = ReceiveFile(self.spares)
        try:
            for chunk in chunks:
                received.write(chunk)
        except BaseException:
            received.discard()  # the body broke off: nothing of this part is kept
            raise
        outcome = Outcome("", "")
        try:
            outcome.sop_class, outcome.sop_instance, syntax = self._meta(received)
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

    def _meta(self, received: ReceiveFile) -> tuple[str, str, str]:
        """The File Meta's SOP Class, SOP Instance and transfer syntax UIDs."""
        try:
            with open(received.fd, "rb", closefd=False) as handle:
                meta, _ = read_meta(handle, os.fstat(received.fd).st_size)
        except (MalformedDataset, OSError, ValueError) as exc:
            raise StoreRefused(CANNOT_UNDERSTAND,
                               f"Cannot understand: not a Part 10 file ({exc})") from None
        return (_text(meta.get(MEDIA_STORAGE_CLASS)), _text(meta.get(MEDIA_STORAGE_INSTANCE)),
                _text(meta.get(TRANSFER_SYNTAX)))

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

    def discard(self, outcomes: list[Outcome]) -> None:
        """The body was not valid: the vetted parts are deleted, never published."""
        for outcome in outcomes:
            if outcome.path is not None:
                outcome.path.unlink(missing_ok=True)
                outcome.path = None
