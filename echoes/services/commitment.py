"""Storage Commitment Push Model SCP (PS3.4 Annex J) on the store port.

A modality that sent its images asks, with an N-ACTION listing them,
whether echoes takes responsibility for them, so it may delete its copies.
The N-ACTION is answered at once; the answer to the question is an
N-EVENT-REPORT sent later, when every listed instance is archived and
indexed (or known to have failed: :mod:`echoes.services.commitment_rules`
decides).  It goes on the requestor's association while that is open, else
on a new association to the requester's ``[ae:TITLE]``, calling as
``ae_title`` and proposing SCP/SCU Role Selection with echoes as SCP
(PS3.4 J.3.3), retried ``retry_interval`` apart up to ``max_attempts`` like
an outbound job.

Every request is a file, ``commitment_dir/<Transaction UID>.json``, written
before the N-ACTION is answered and removed once the report is delivered:
a restart loses nothing.  Several store workers serve the port; each runs a
:class:`Committer` thread, and a request is handled by whoever holds its
lock (``flock`` on ``commitment_dir/locks/<Transaction UID>.lock``): the
worker that took the N-ACTION holds it while that association lasts, and
a worker that died releases it with its last breath.  Reports that cannot
be delivered (unknown requester, refused, attempts used up) move to
``commitment_dir/failed/`` with an ERROR line naming the transaction.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from echoes.config import Config
from echoes.dicom import dataset, dimse, requestor, sopclasses, syntax
from echoes.dicom.acceptor import Association
from echoes.dicom.service import Final, FunctionService, Request
from echoes.index.base import IndexReader
from echoes.services import dicom_settings
from echoes.services.commitment_rules import Item, Pending, decide, exhausted, retry_at
from echoes.services.commitment_rules import spool_settled as settled
from echoes.storage import durable, spool
from echoes.storage.objects import ObjectStore

log = logging.getLogger("echoes.commitment")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2.1).
REQUEST_COMMITMENT = 1
#: How often the thread looks at what it waits for (a report's latency after the ingester).
POLL_SECONDS = 0.25
#: How often it looks for requests nobody holds (another worker died, a restart).
SCAN_SECONDS = 2.0
#: What a report on a new association is proposed with.
REPORT_SYNTAXES = [syntax.EXPLICIT_VR_LITTLE_ENDIAN, syntax.IMPLICIT_VR_LITTLE_ENDIAN]


def _valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


class CommitmentFiles:
    """``commitment_dir``: pending requests, their locks, the undeliverable ones."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.locks = folder / "locks"
        self.failed = folder / "failed"

    def create(self) -> None:
        for path in (self.folder, self.locks, self.failed):
            path.mkdir(parents=True, exist_ok=True)

    def path(self, transaction: str) -> Path:
        return self.folder / f"{transaction}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def lock(self, transaction: str) -> int | None:
        """An open, exclusively locked descriptor, or None when another holds it."""
        fd = os.open(self.locks / f"{transaction}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        os.close(fd)

    def read(self, transaction: str) -> Pending | None:
        try:
            return Pending.from_bytes(self.path(transaction).read_bytes())
        except FileNotFoundError:
            return None

    def write(self, pending: Pending) -> None:
        durable.atomic_write_bytes(self.path(pending.transaction_uid), pending.to_bytes())

    def done(self, transaction: str) -> None:
        """Delivered: the request first, then its lock (a late locker finds no request)."""
        self.path(transaction).unlink(missing_ok=True)
        durable.fsync_dir(self.folder)
        (self.locks / f"{transaction}.lock").unlink(missing_ok=True)

    def give_up(self, pending: Pending) -> None:
        durable.atomic_write_bytes(self.failed / f"{pending.transaction_uid}.json",
                                   pending.to_bytes())
        self.done(pending.transaction_uid)


@dataclass
class _Live:
    """A request whose requestor's association may still carry the report."""

    association: Association
    context_id: int
    transfer_syntax: str
    lock_fd: int
    #: The Message ID of the report sent on the association (0: not sent yet).
    message_id: int = 0


def report_data_set(pending: Pending, retrieve_ae: str) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = pending.transaction_uid
    ds.RetrieveAETitle = retrieve_ae

    def item(sop_class: str, uid: str) -> Dataset:
        one = Dataset()
        one.ReferencedSOPClassUID = sop_class
        one.ReferencedSOPInstanceUID = uid
        return one

    if pending.committed:
        ds.ReferencedSOPSequence = Sequence([item(*i) for i in pending.committed])
    if pending.failed:
        failed = []
        for sop_class, uid in pending.failed:
            one = item(sop_class, uid)
            one.FailureReason = 0x0112
            failed.append(one)
        ds.FailedSOPSequence = Sequence(failed)
    return ds


def encode_report(pending: Pending, retrieve_ae: str, transfer_syntax: str) -> bytes:
    implicit, little = syntax.encoding_of(transfer_syntax)
    return dataset.encode_dataset(report_data_set(pending, retrieve_ae), implicit, little)


_message_ids = itertools.cycle(range(1, 65536))


def report_command(pending: Pending, message_id: int) -> bytes:
    return dimse.n_event_report_request_command(
        sopclasses.STORAGE_COMMITMENT_PUSH, sopclasses.STORAGE_COMMITMENT_PUSH_INSTANCE,
        message_id, pending.event_type)


class Committer:
    """This worker's thread deciding and delivering commitment reports."""

    def __init__(self, config: Config, reader: IndexReader, objects: ObjectStore) -> None:
        self.config = config
        self.reader = reader
        self.objects = objects
        self.files = CommitmentFiles(config.commitment_dir)
        self.files.create()
        self.layout = spool.SpoolLayout(config.spool_dir)
        self.live: dict[str, _Live] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        #: Per undecided request: what the index said so far, and the (index
        #: version, oldest spooled name) it was last asked under.
        self._found: dict[str, dict[str, tuple[str, bool]]] = {}
        self._looked: dict[str, tuple[object, str | None]] = {}

    # -- the N-ACTION's side (association threads) -----------------------------------

    def accept(self, pending: Pending, association: Association, context_id: int,
               transfer_syntax: str) -> str:
        """Keep a new request (durably) and hold it for this association; "" or
        why it cannot be taken."""
        fd = self.files.lock(pending.transaction_uid)
        if fd is None or self.files.path(pending.transaction_uid).exists():
            if fd is not None:
                self.files.unlock(fd)
            return "a commitment request with this Transaction UID is pending already"
        try:
            self.files.write(pending)
        except OSError as exc:
            self.files.unlock(fd)
            return f"cannot keep the request: {exc.strerror}"
        with self.lock:
            self.live[pending.transaction_uid] = _Live(association, context_id,
                                                       transfer_syntax, fd)
        self.wake.set()
        return ""

    # -- the thread ------------------------------------------------------------------

    def run(self) -> None:
        """Until stop(): decide and deliver live requests, adopt orphaned ones."""
        last_scan = 0.0
        while not self.stopping.is_set():
            self.wake.wait(POLL_SECONDS)
            self.wake.clear()
            try:
                with self.lock:
                    live = list(self.live.items())
                for transaction, entry in live:
                    self._live_step(transaction, entry)
                if time.monotonic() - last_scan >= SCAN_SECONDS:
                    last_scan = time.monotonic()
                    self._scan()
            except Exception:  # one bad request must not end the thread
                log.exception("storage commitment thread")
                time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        with self.lock:
            for entry in self.live.values():
                self.files.unlock(entry.lock_fd)
            self.live.clear()

    def _decided(self, pending: Pending) -> bool:
        """Decide ``pending`` if the index and the spool allow; write it when decided.

        A request names instances, no study: the index finds their studies by
        SOP Instance UID (``instance_studies``: the embedded index's locations
        log, PostgreSQL's primary key) and reads only those.  It is asked
        again only when it or the spool changed since the last look, and only
        for what was not committed yet.
        """
        if pending.decided:
            return True
        transaction = pending.transaction_uid
        oldest = spool.pending_incoming(self.layout)[:1]
        oldest_name = oldest[0].name if oldest else None
        token = (self.reader.version(), oldest_name)
        found = self._found.setdefault(transaction, {})
        if self._looked.get(transaction) != token:
            self._looked[transaction] = token
            wanted = [uid for _cls, uid in pending.items
                      if _valid_uid(uid) and not found.get(uid, ("", False))[1]]
            if wanted:
                for doc in self.reader.query("IMAGE", {"SOPInstanceUID": "\\".join(wanted)}):
                    found[doc["SOPInstanceUID"]] = (
                        doc.get("SOPClassUID", ""), bool(doc.get("path"))
                        and self.objects.exists(doc["path"]))
        outcome = decide(pending.items, found, settled(pending.received_ns, oldest_name))
        if outcome is None:
            return False
        self._looked.pop(transaction, None)
        self._found.pop(transaction, None)
        pending.committed, pending.failed = outcome
        self.files.write(pending)
        log.info("storage commitment %s from %s: %d committed, %d failed",
                 pending.transaction_uid, pending.requester, len(pending.committed),
                 len(pending.failed))
        return True

    def _live_step(self, transaction: str, entry: _Live) -> None:
        pending = self.files.read(transaction)
        if pending is None:
            self._forget(transaction)
            return
        association = entry.association
        if entry.message_id:  # sent: the peer's N-EVENT-REPORT-RSP says it took it
            with association.lock:
                status = association.invoked.get(entry.message_id)
            if status is None and association.open:
                return
            if status is None:  # ended unanswered: the report goes on a new association
                log.info("storage commitment %s: %s's association ended before it answered "
                         "the report: sending it on a new association", transaction,
                         pending.requester)
            elif status == dimse.SUCCESS:
                log.info("storage commitment %s reported to %s on its association (event %d)",
                         transaction, pending.requester, pending.event_type)
                self.files.done(transaction)
            else:  # e.g. a requestor without a handler for reports: try its own SCP
                pending.last_error = f"{pending.requester} answered 0x{status:04X}"
                log.warning("storage commitment %s: %s on its association: sending the "
                            "report on a new association", transaction, pending.last_error)
                self.files.write(pending)
            self._forget(transaction)
            self.wake.set()
            return
        if not association.open:
            # The association ended first: the report goes on a new one (_scan).
            self._forget(transaction)
            self.wake.set()
            return
        if not self._decided(pending):
            return
        data = encode_report(pending, self.config.ae_title, entry.transfer_syntax)
        message_id = next(_message_ids)
        if association.send_request(entry.context_id, report_command(pending, message_id),
                                    data, message_id):
            entry.message_id = message_id
        else:
            self._forget(transaction)
            self.wake.set()

    def _forget(self, transaction: str) -> None:
        with self.lock:
            entry = self.live.pop(transaction, None)
        if entry is not None:
            self.files.unlock(entry.lock_fd)

    def _scan(self) -> None:
        with self.lock:
            mine = set(self.live)
        for transaction in self.files.names():
            if transaction in mine or self.stopping.is_set():
                continue
            fd = self.files.lock(transaction)
            if fd is None:
                continue
            try:
                pending = self.files.read(transaction)
                if pending is not None and self._decided(pending) \
                        and pending.next_attempt <= time.time():
                    self._deliver(pending)
            finally:
                self.files.unlock(fd)

    def _deliver(self, pending: Pending) -> None:
        """One try on a new association to the requester's [ae:TITLE]."""
        config = self.config
        remote = config.remote_aes.get(pending.requester)
        transaction = pending.transaction_uid
        if remote is None:
            log.error("storage commitment %s undeliverable: the requester %s is not a "
                      "configured [ae:%s] and its association is closed (kept in %s)",
                      transaction, pending.requester, pending.requester, self.files.failed)
            pending.last_error = "requester AE not configured"
            self.files.give_up(pending)
            return
        pending.attempts += 1
        error = ""
        try:
            assoc = dicom_settings.associate(
                config, remote, [(sopclasses.STORAGE_COMMITMENT_PUSH, REPORT_SYNTAXES)],
                roles={sopclasses.STORAGE_COMMITMENT_PUSH: (False, True)})
        except (requestor.AssociationFailed, ValueError, OSError) as exc:
            error = str(exc)
        else:
            context = next((cx for cx in assoc.accepted_contexts
                            if cx.abstract_syntax == sopclasses.STORAGE_COMMITMENT_PUSH), None)
            if context is None:
                error = f"{remote.title} did not accept Storage Commitment"
                assoc.release()
            else:
                try:
                    result = assoc.send_request(
                        context, report_command(pending, next(_message_ids)),
                        encode_report(pending, config.ae_title, context.transfer_syntax),
                        dimse.N_EVENT_REPORT_RSP)
                except requestor.NoResponse as exc:
                    error = str(exc)
                else:
                    assoc.release()
                    if result.status == dimse.SUCCESS:
                        log.info("storage commitment %s reported to %s on a new association "
                                 "(event %d, attempt %d)", transaction, remote.title,
                                 pending.event_type, pending.attempts)
                        self.files.done(transaction)
                        return
                    pending.last_error = (f"{remote.title} answered 0x{result.status:04X} "
                                          f"{result.comment}").strip()
                    log.error("storage commitment %s undeliverable: %s", transaction,
                              pending.last_error)
                    self.files.give_up(pending)
                    return
        pending.last_error = error
        pending.history.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {error}")
        if exhausted(pending.attempts, config.max_attempts):
            log.error("storage commitment %s undeliverable after %d attempts: %s",
                      transaction, pending.attempts, error)
            self.files.give_up(pending)
            return
        pending.next_attempt = retry_at(pending.attempts, time.time(), config.retry_interval)
        log.warning("storage commitment %s: report to %s failed (attempt %d of %d), again "
                    "in %d s: %s", transaction, remote.title, pending.attempts,
                    config.max_attempts, config.retry_interval, error)
        self.files.write(pending)


def _items(ds: Dataset) -> list[Item] | None:
    items = []
    for entry in ds.get("ReferencedSOPSequence") or []:
        sop_class = str(entry.get("ReferencedSOPClassUID", "") or "")
        uid = str(entry.get("ReferencedSOPInstanceUID", "") or "")
        if not sop_class or not uid:
            return None
        items.append((sop_class, uid))
    return items


class CommitmentService(FunctionService):
    """N-ACTION of the Storage Commitment Push Model SOP class."""

    def __init__(self, committer: Committer) -> None:
        super().__init__({sopclasses.STORAGE_COMMITMENT_PUSH: frozenset(syntax.UNCOMPRESSED)},
                         {dimse.N_ACTION_RQ: self.n_action})
        self.committer = committer

    def n_action(self, request: Request) -> Final:
        """Answer at once; the result follows as an N-EVENT-REPORT (Committer)."""
        command = request.command
        caller = request.association.calling_ae
        if dimse.request_sop_class(command) != sopclasses.STORAGE_COMMITMENT_PUSH:
            return Final(dimse.NO_SUCH_SOP_CLASS, "not Storage Commitment Push Model")
        if dimse.command_us(command, dimse.ACTION_TYPE_ID) != REQUEST_COMMITMENT:
            return Final(dimse.NO_SUCH_ACTION_TYPE, "only Action Type 1 is served",
                         elements={dimse.ACTION_TYPE_ID:
                                   max(dimse.command_us(command, dimse.ACTION_TYPE_ID), 0)})
        instance = dimse.request_sop_instance(command)
        if instance != sopclasses.STORAGE_COMMITMENT_PUSH_INSTANCE:
            return Final(dimse.NO_SUCH_OBJECT_INSTANCE,
                         "not the well-known Storage Commitment instance")
        answer = {dimse.ACTION_TYPE_ID: REQUEST_COMMITMENT}
        if request.truncated:
            return Final(dimse.PROCESSING_FAILURE, "request too large", elements=answer)
        try:
            implicit, little = syntax.encoding_of(request.context.transfer_syntax)
            ds = dataset.decode_dataset(request.data_set, implicit, little)
            transaction = str(ds.get("TransactionUID", "") or "")
            items = _items(ds)
        except Exception as exc:  # noqa: BLE001 -- whatever pydicom raises on bad bytes
            log.warning("storage commitment request from %s unreadable: %s", caller, exc)
            return Final(dimse.PROCESSING_FAILURE, "data set unreadable", elements=answer)
        if not transaction:
            return Final(dimse.MISSING_ATTRIBUTE, "Transaction UID missing",
                         offending=(0x00081195,), elements=answer)
        if not _valid_uid(transaction):
            return Final(dimse.INVALID_ATTRIBUTE_VALUE, "Transaction UID is not a UID",
                         offending=(0x00081195,), elements=answer)
        if not items:
            return Final(dimse.MISSING_ATTRIBUTE,
                         "Referenced SOP Sequence missing, empty or with an incomplete item",
                         offending=(0x00081199,), elements=answer)
        pending = Pending(transaction, caller, time.time_ns(), items)
        refused = self.committer.accept(pending, request.association,
                                        request.context.context_id,
                                        request.context.transfer_syntax)
        if refused:
            log.warning("storage commitment %s from %s refused: %s", transaction, caller,
                        refused)
            return Final(dimse.PROCESSING_FAILURE, refused, elements=answer)
        log.info("storage commitment %s requested by %s for %d instances", transaction,
                 caller, len(items))
        return Final(dimse.SUCCESS, elements=answer)
