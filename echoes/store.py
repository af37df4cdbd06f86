"""Store SCP worker: receives C-STORE into the spool and acknowledges only what is durable.

Several of these processes run at once (``store_workers``); the supervisor
binds the store port once and hands the listening socket to each, so the
kernel spreads associations over them and a worker that dies loses nothing
queued on the port.

An object's path through this module::

    P-DATA fragments -> spool/tmp/<pid>/*.part   (pynetdicom chunked receive,
                                                  written by SpoolReceiveFile)
    EVT_C_STORE      -> check_object()           (free space, structure, UIDs)
                     -> spool.commit_incoming()  (fsync, rename, fsync dir)
                     -> Success 0x0000           (only now)

pynetdicom writes a chunked data set with ``tempfile.NamedTemporaryFile`` in
the system temp folder, unsynced, and lets write errors abort the
association.  :func:`install_receive_hooks` swaps that one name in
``pynetdicom.dimse_messages`` (and ``create_file_meta`` beside it, to record
the calling AE) for our own: receive files go to this worker's spool folder,
on the spool's file system, and a full disk becomes status 0xA700 instead of
an abort.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pynetdicom.dimse_messages
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.dsutils import create_file_meta

from echoes import __version__, listener, logs, sopclasses, spool
from echoes.config import Config
from echoes.validation import MalformedDataset, check_part10, uid_problem

log = logging.getLogger("echoes.store")

#: Our implementation identity in the File Meta of every object we write.
IMPLEMENTATION_CLASS_UID = "2.25.166084470183616447221916451738052981187"
IMPLEMENTATION_VERSION_NAME = f"ECHOES_{__version__}"[:16]

#: Largest PDU we announce for receiving.  Bigger PDUs mean fewer reads per
#: object; 256 KiB bounds what one PDU can make a worker hold in memory.
RECEIVE_MAX_PDU = 262144

#: Storage statuses (PS3.4 B.2.3), by what went wrong.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: The UIDs an object must carry, checked in this order.
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


class StoreRefused(Exception):
    """An object is not stored; carries the DIMSE status and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SpoolReceiveFile(io.FileIO):
    """The file pynetdicom streams one received data set into.

    Quacks like the NamedTemporaryFile pynetdicom expects (``name``,
    ``write``, ``file.flush``).  A failed write (ENOSPC, EIO) is remembered
    and later writes are dropped, so the association survives and the
    handler answers 0xA700.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls .file.flush()

    def write(self, data) -> int:  # type: ignore[override]
        if self.error is None:
            try:
                view = memoryview(data)
                while view:
                    written = super().write(view)
                    view = view[written:]
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        """Unbuffered already; durability comes from fsync at commit."""


@dataclass
class ReceiveRegistry:
    """Receive files of this worker, to find them again and to clean up."""

    folder: Path
    files: dict[str, tuple[SpoolReceiveFile, threading.Thread]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def open(self) -> SpoolReceiveFile:
        """Create the next receive file (called on the association's DUL thread)."""
        with self.lock:
            self.counter += 1
            path = self.folder / f"{self.counter:08d}.part"
        handle = SpoolReceiveFile(path)
        with self.lock:
            # Keyed by str: pynetdicom hands the path back as event.dataset_path.
            self.files[str(path)] = (handle, threading.current_thread())
        return handle

    def claim(self, path: Path) -> SpoolReceiveFile | None:
        """Take a completed receive file out of the registry."""
        with self.lock:
            entry = self.files.pop(str(path), None)
        return entry[0] if entry else None

    def sweep(self) -> int:
        """Delete files whose association thread ended without a C-STORE handler run."""
        with self.lock:
            dead = [name for name, (_h, thread) in self.files.items() if not thread.is_alive()]
            entries = [self.files.pop(name) for name in dead]
        for handle, _thread in entries:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
        return len(entries)


_registry: ReceiveRegistry | None = None


def _calling_ae_of_current_thread() -> str | None:
    assoc = getattr(threading.current_thread(), "assoc", None)
    try:
        return assoc.requestor.ae_title if assoc is not None else None
    except AttributeError:
        return None


def _receive_file_factory(*_args, **_kwargs) -> SpoolReceiveFile:
    assert _registry is not None, "install_receive_hooks() was not called"
    return _registry.open()


def _file_meta_factory(sop_class_uid, sop_instance_uid, transfer_syntax):
    meta = create_file_meta(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax=transfer_syntax,
    )
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    calling_ae = _calling_ae_of_current_thread()
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    return meta


def install_receive_hooks(registry: ReceiveRegistry) -> None:
    """Route pynetdicom's chunked receive into ``registry`` (see module docstring)."""
    global _registry
    _registry = registry
    pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True
    pynetdicom.dimse_messages.NamedTemporaryFile = _receive_file_factory
    pynetdicom.dimse_messages.create_file_meta = _file_meta_factory


def check_object(path: Path, request_class: str, request_instance: str) -> Dataset:
    """Decide whether a received file may be stored; raise StoreRefused if not."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            check_part10(handle, size)
        header = dcmread(path, stop_before_pixels=True, specific_tags=list(REQUIRED_UIDS))
    except MalformedDataset as exc:
        raise StoreRefused(CANNOT_UNDERSTAND, f"Cannot understand: {exc}") from None
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise StoreRefused(CANNOT_UNDERSTAND, f"Cannot understand: {exc}") from None
    for keyword in REQUIRED_UIDS:
        problem = uid_problem(header.get(keyword))
        if problem:
            raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {problem}")
    if header.SOPClassUID != request_class:
        raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the request")
    if header.SOPInstanceUID != request_instance:
        raise StoreRefused(DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the request")
    return header


@dataclass
class AssociationStats:
    """What one association did, for its closing log line."""

    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    refused: int = 0
    bytes: int = 0


class StoreService:
    """The C-STORE handler and its state for one worker process."""

    def __init__(self, config: Config, layout: spool.SpoolLayout, registry: ReceiveRegistry):
        self.config = config
        self.layout = layout
        self.registry = registry
        self.stats: dict[int, AssociationStats] = {}

    def handle_store(self, event: evt.Event) -> Dataset | int:
        """EVT_C_STORE: commit the spooled file durably, then say Success."""
        path = Path(event.dataset_path)
        receive_file = self.registry.claim(path)
        stats = self.stats.setdefault(id(event.assoc), AssociationStats())
        request = event.request
        try:
            if receive_file is not None:
                receive_file.close()
                if receive_file.error is not None:
                    raise StoreRefused(
                        OUT_OF_RESOURCES, f"Out of resources: {receive_file.error.strerror}"
                    )
            free = spool.free_megabytes(self.layout.root)
            if free < self.config.min_free_mb:
                raise StoreRefused(
                    OUT_OF_RESOURCES,
                    f"Out of resources: {free:.0f} MB free, floor {self.config.min_free_mb} MB",
                )
            check_object(path, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID)
            size = path.stat().st_size
            try:
                spool.commit_incoming(path, self.layout)
            except OSError as exc:
                raise StoreRefused(
                    OUT_OF_RESOURCES, f"Out of resources: {exc.strerror}"
                ) from None
        except StoreRefused as refusal:
            path.unlink(missing_ok=True)
            stats.refused += 1
            log.warning(
                "refused %s from %s: 0x%04X %s",
                request.AffectedSOPInstanceUID,
                event.assoc.requestor.ae_title,
                refusal.status,
                refusal.reason,
            )
            status = Dataset()
            status.Status = refusal.status
            status.ErrorComment = refusal.reason[:64]
            return status
        stats.stored += 1
        stats.bytes += size
        return SUCCESS

    def handle_closed(self, event: evt.Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: one log line per association."""
        stats = self.stats.pop(id(event.assoc), AssociationStats())
        requestor = event.assoc.requestor
        result = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info(
            "association from %s (%s:%s) to %s %s: %d stored, %d refused, %d bytes, %.2f s",
            requestor.ae_title,
            requestor.address,
            requestor.port,
            event.assoc.acceptor.ae_title,
            result,
            stats.stored,
            stats.refused,
            stats.bytes,
            time.monotonic() - stats.started,
        )
        if result == "aborted":
            self.registry.sweep()


def build_ae(config: Config) -> AE:
    """The store AE: Verification plus every storage class and syntax we accept."""
    sopclasses.register_retired_storage_classes()
    ae = listener.acceptor_ae(config, "store")
    ae.maximum_pdu_size = RECEIVE_MAX_PDU
    ae.add_supported_context(sopclasses.VERIFICATION, sopclasses.UNCOMPRESSED)
    for sop_class in sopclasses.store_scp_classes():
        ae.add_supported_context(sop_class, sopclasses.STORE_TRANSFER_SYNTAXES)
    return ae


def run(config: Config, listen_fd: int) -> int:
    """Serve associations on ``listen_fd`` until SIGTERM; return the exit code."""
    layout = spool.SpoolLayout(config.spool_dir)
    layout.create()
    spool.remove_dead_worker_tmp(layout)
    folder = layout.worker_tmp(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    registry = ReceiveRegistry(folder)
    install_receive_hooks(registry)
    service = StoreService(config, layout, registry)

    ae = build_ae(config)
    handlers = [
        (evt.EVT_C_STORE, service.handle_store),
        (evt.EVT_RELEASED, service.handle_closed),
        (evt.EVT_ABORTED, service.handle_closed),
    ]
    listener.serve(ae, handlers, listen_fd, config.dimse_timeout,
                   tick=registry.sweep, tick_seconds=30.0,
                   on_hangup=lambda: logs.reload(config, "store") and None,
                   config=config, role="store")
    registry.sweep()
    return 0
