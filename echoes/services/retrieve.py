"""C-MOVE and C-GET SCP (Patient Root and Study Root) on the store port.

A retrieve's path through this module::

    C-MOVE-RQ / C-GET-RQ identifier -> RetrieveRequest (collected, bounded)
      -> qr_access.qr_allowed()             (else 0xC124)
      -> retrieve_plan.select()             (level and unique keys, else 0xA900)
      -> C-MOVE: Move Destination in [ae:*] (else 0xA801)
      -> index.query(IMAGE, unique keys)    (the study's shard, never every one)
      -> retrieve_plan.items_of()
      -> per object: delivery.store_one()   (the sender's route, prepare, payload:
                                             stored syntax when accepted, else JPEG
                                             lossless or uncompressed; streamed)
           C-MOVE: over associations to the destination opened as the sender
                   opens them (dicom_settings.associate, outbound.plan_batch)
           C-GET:  over the requester's association, for the storage classes
                   whose SCP role it negotiated (Role Selection)
         Pending responses (retrieve_plan.SubOperations decides when),
         C-CANCEL looked for before each object
      -> Final: counts, Failed SOP Instance UID List, status

One INFO line per retrieve says who asked, the operation, the level, the
sub-operation counts and the seconds; no patient data (UIDs of failed objects
go in the final response, not in the log).  Every timeout is the
configuration's ``network_timeout``: a destination that is down or silent
makes the objects failed sub-operations within it, never a hang.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from pydicom.multival import MultiValue

from echoes.config import Config, RemoteAE
from echoes.dicom import acceptor as association
from echoes.dicom import dataset, dimse, pdu, sopclasses, syntax
from echoes.dicom.requestor import AssociationFailed, Requestor
from echoes.dicom.service import Final
from echoes.index import IndexReader, open_index
from echoes.index.cache import CachingReader
from echoes.services import dicom_settings, qr_access
from echoes.services.delivery import store_one
from echoes.services.find import MAX_IDENTIFIER, IdentifierRequest
from echoes.services.outbound import DELIVERED, PaddedDataSet, plan_batch
from echoes.services.retrieve_plan import (
    COMPLETED,
    FAILED,
    IMAGE,
    RETRIEVE_CLASSES,
    WARNING,
    BadIdentifier,
    Item,
    SubOperations,
    failed_uid_list,
    items_of,
    select,
)
from echoes.storage.objects import open_object_store

log = logging.getLogger("echoes.retrieve")

#: Associations in a row to the move destination that end before one object
#: went through: the destination takes nothing, the rest fail at once.
LOST_IN_A_ROW = 2
#: The identifier keys a retrieve reads.
KEYS = {0x00080052: "QueryRetrieveLevel", 0x00100020: "PatientID",
        0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
        0x00080018: "SOPInstanceUID"}
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
#: How often the C-MOVE heartbeat looks whether a Pending response is due.
HEARTBEAT_POLL_SECONDS = 0.1

_message_ids = itertools.cycle(range(1, 65536))


class RetrieveRequest(IdentifierRequest):
    """One C-MOVE-RQ or C-GET-RQ: its identifier arrives in fragments, then it is served."""

    service: RetrieveService

    def __init__(self, service: RetrieveService, association_: association.Association,
                 context: pdu.ContextResult, command: dict[int, bytes]) -> None:
        super().__init__(service, association_, context, command)
        self.command_field = dimse.command_us(command, dimse.COMMAND_FIELD)
        self.destination = dimse.command_text(command, dimse.MOVE_DESTINATION)

    def finish(self) -> Final:
        """Serve the retrieve: Pending responses now, the final one returned."""
        return self.service.retrieve(self)


class Progress:
    """Pending responses of one retrieve, as its SubOperations says they are due.

    A C-MOVE also keeps a heartbeat (:meth:`heartbeat`): a thread that sends a
    Pending response each PENDING_EVERY_SECONDS while one sub-operation takes
    longer (a large object, a destination that takes ``network_timeout`` to
    fail), so a requester with its own DIMSE timeout (pynetdicom: 30 s) does
    not give up first.  Every use of the requester's socket (the Pending
    writes, the C-CANCEL look) is under one lock: a TLS socket takes no
    concurrent read and write.  C-GET has none: its socket carries the
    C-STORE data, which no other message may interleave (PS3.8 9.3.5).
    """

    def __init__(self, request: RetrieveRequest, counts: SubOperations) -> None:
        self.request = request
        self.counts = counts
        self.lock = threading.Lock()

    def after_one(self) -> None:
        """A sub-operation ended: send a Pending response if one is due."""
        with self.lock:
            now = time.monotonic()
            if self.counts.pending_due(now):
                self._send(now)

    def cancelled(self) -> bool:
        """Whether the requester sent a C-CANCEL (see Association.cancel_requested)."""
        with self.lock:
            return self.request.association.cancel_requested()

    def _send(self, now: float) -> None:
        request = self.request
        command = dimse.command_set({
            dimse.AFFECTED_SOP_CLASS: request.sop_class,
            dimse.COMMAND_FIELD: request.command_field | dimse.RESPONSE_BIT,
            dimse.MESSAGE_ID_RESPONDED_TO: request.message_id,
            dimse.DATA_SET_TYPE: dimse.NO_DATA_SET, dimse.STATUS: dimse.PENDING,
            **self.counts.pending(now)})
        request.association.send(pdu.p_data_command(
            request.context.context_id, command, request.association.peer_maximum_length))

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Pending responses each PENDING_EVERY_SECONDS while the body runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_POLL_SECONDS):
                with self.lock:
                    now = time.monotonic()
                    if stop.is_set() or not self.counts.heartbeat_due(now):
                        continue
                    try:
                        self._send(now)
                    except Exception:  # noqa: BLE001 - the requester is gone (broken
                        return  # pipe, aborted): the main thread finds out on its own

        thread = threading.Thread(target=beat, name="move-pending", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def result_of(outcome: str, detail: str) -> str:
    """A delivery outcome as a sub-operation result."""
    if outcome != DELIVERED:
        return FAILED
    return WARNING if detail else COMPLETED


class RetrieveService:
    """C-MOVE and C-GET, Patient Root and Study Root (see echoes.dicom.service.Service)."""

    def __init__(self, config: Config, index: IndexReader | None = None) -> None:
        self.config = config
        #: The find service's cached reader when given (store.py): a viewer finds,
        #: then moves the same study, and one catalog copy per worker is enough.
        self.index = index or CachingReader(open_index(config))
        self.accepted = {uid: frozenset(syntax.UNCOMPRESSED) for uid in RETRIEVE_CLASSES}
        #: C-GET: a requester may take the SCP role of every storage class.
        self.roles = {uid: (True, True) for uid in sopclasses.store_scp_classes()}

    def receiver(self, association_: association.Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> RetrieveRequest | None:
        """A collector for a C-MOVE-RQ or C-GET-RQ on a retrieve context."""
        field_ = dimse.command_us(command, dimse.COMMAND_FIELD)
        if (field_ not in (dimse.C_MOVE_RQ, dimse.C_GET_RQ) or not dimse.has_data_set(command)
                or context.abstract_syntax not in RETRIEVE_CLASSES):
            return None
        return RetrieveRequest(self, association_, context, command)

    def closed(self, association_: association.Association, how: str) -> None:
        """Nothing kept per association (each retrieve logs its own line)."""

    # -- one retrieve --------------------------------------------------------------

    def retrieve(self, request: RetrieveRequest) -> Final:
        """Check, select, send; the final response."""
        started = time.monotonic()
        config = self.config
        caller = request.association.calling_ae
        model, operation = RETRIEVE_CLASSES[request.context.abstract_syntax]
        what = operation + (f" to {request.destination}" if request.command_field
                            == dimse.C_MOVE_RQ else "")

        def refuse(status: int, comment: str, why: str) -> Final:
            log.warning("%s from %s refused: 0x%04X %s", what, caller, status, why)
            return Final(status, comment[:64])

        if not qr_access.qr_allowed(config, caller):
            return refuse(qr_access.NOT_ALLOWED, qr_access.refusal_comment(caller),
                          "not in qr_allowed_calling_aes")
        if request.too_long:
            return refuse(dimse.IDENTIFIER_DOES_NOT_MATCH, "Identifier too long",
                          f"identifier over {MAX_IDENTIFIER} bytes")
        try:
            keys = identifier_keys(bytes(request.identifier), request.context.transfer_syntax)
        except Exception as exc:  # an identifier pydicom cannot decode
            return refuse(dimse.CANNOT_UNDERSTAND, "Cannot decode the identifier",
                          f"cannot decode the identifier: {type(exc).__name__}")
        try:
            selection = select(keys, model)
        except BadIdentifier as exc:
            return refuse(dimse.IDENTIFIER_DOES_NOT_MATCH, str(exc), str(exc))
        remote = None
        if request.command_field == dimse.C_MOVE_RQ:
            remote = config.remote_aes.get(request.destination)
            if remote is None:
                return refuse(dimse.MOVE_DESTINATION_UNKNOWN,
                              f"Move destination {request.destination[:16]!r} unknown",
                              "move destination not configured as [ae:...]")
        try:
            items = items_of(self.index.query(IMAGE, selection.filters))
        except (OSError, ValueError) as exc:
            log.error("%s from %s at %s level: the index cannot be read: %s", what, caller,
                      selection.level, exc)
            return Final(dimse.UNABLE_TO_PROCESS, "The index cannot be read")
        counts = SubOperations(len(items), started=started)
        cancelled = False
        try:
            if not items:
                log.warning("%s from %s at %s level: nothing archived matches (%s): "
                            "0 sub-operations", what, caller, selection.level,
                            ", ".join(selection.filters))
            elif remote is not None:
                cancelled = self.move(request, remote, items, counts)
            else:
                cancelled = self.get(request, items, counts)
        finally:
            log.info("%s from %s at %s level: %d sub-operations, %d completed, %d failed, "
                     "%d warning%s in %.2f s", what, caller, selection.level, counts.total,
                     counts.completed, counts.failed, counts.warning,
                     f", cancelled with {counts.remaining} remaining" if cancelled else "",
                     time.monotonic() - started)
        status, elements = counts.final(cancelled)
        data_set = b""
        if counts.failed_uids:
            value, _named = failed_uid_list(counts.failed_uids)
            data_set = dataset.encode_tree({FAILED_SOP_INSTANCE_UID_LIST: value},
                                           {FAILED_SOP_INSTANCE_UID_LIST: "UI"},
                                           request.context.transfer_syntax, "ascii")
        comment = (f"{counts.failed} of {counts.total} sub-operations failed"
                   if counts.failed and not cancelled else "")
        return Final(status, comment, elements, data_set)

    def move(self, request: RetrieveRequest, remote: RemoteAE, items: list[Item],
             counts: SubOperations) -> bool:
        """C-STORE ``items`` to the move destination; True when cancelled."""
        progress = Progress(request, counts)
        with progress.heartbeat():
            return self._move(request, remote, items, counts, progress)

    def _move(self, request: RetrieveRequest, remote: RemoteAE, items: list[Item],
              counts: SubOperations, progress: Progress) -> bool:
        config = self.config
        originator = (request.association.calling_ae, request.message_id)
        queue = list(items)
        lost_in_a_row = 0
        objects = open_object_store(self.config)
        while queue:
            batch, contexts = plan_batch(queue)
            try:  # one try, bounded: a destination that is down fails the rest now
                assoc = dicom_settings.associate(config, remote, contexts,
                                                 timeout=config.network_timeout)
            except (AssociationFailed, ValueError, OSError) as exc:
                log.warning("%s from %s: no association to %s: %s; %d sub-operations failed",
                            "C-MOVE", request.association.calling_ae, request.destination,
                            exc, len(queue))
                counts.fail_rest(item.sop_instance_uid for item in queue)
                return False
            accepted = {(cx.abstract_syntax, cx.transfer_syntax) for cx in assoc.accepted_contexts}
            send = _over_requestor(assoc, originator)
            done = 0
            went_through = counts.completed + counts.warning
            first_failure = ""
            try:
                for item in batch:
                    if progress.cancelled():
                        return True
                    attempt = store_one(item, objects.path_of(item.path), accepted, send)
                    done += 1
                    result = result_of(attempt.outcome, attempt.detail)
                    counts.record(item.sop_instance_uid, result)
                    if result == FAILED and not first_failure:
                        first_failure = attempt.detail or assoc.lost or "no response"
                    progress.after_one()
                    if not assoc.is_established:
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
                if first_failure:
                    log.warning("C-MOVE to %s: sub-operations failed, the first: %s",
                                request.destination, first_failure)
            queue = queue[done:]
            if queue and not assoc.is_established and assoc.lost:
                # ended under an object (that one failed): the rest go over a new
                # association, unless the destination takes nothing at all
                nothing = counts.completed + counts.warning == went_through
                lost_in_a_row = lost_in_a_row + 1 if nothing else 0
                if lost_in_a_row >= LOST_IN_A_ROW:
                    counts.fail_rest(item.sop_instance_uid for item in queue)
                    return False
        return False

    def get(self, request: RetrieveRequest, items: list[Item], counts: SubOperations) -> bool:
        """C-STORE ``items`` over the requester's own association; True when cancelled.

        Only contexts of SOP classes whose SCP role the requester took in Role
        Selection carry sub-operations (PS3.4 C.4.3.3): an object of another
        class is a failed sub-operation.
        """
        own = request.association
        usable = {(cx.abstract_syntax, cx.transfer_syntax): cx.context_id
                  for cx in own.contexts.values()
                  if own.roles.get(cx.abstract_syntax, (True, False))[1]}
        accepted = set(usable)
        progress = Progress(request, counts)
        objects = open_object_store(self.config)
        first_failure = ""

        def send(sop_class: str, ts: str, sop_instance: str,
                 data_set: BinaryIO | PaddedDataSet) -> tuple[int, str] | None:
            context_id = usable.get((sop_class, ts))
            if context_id is None:
                return None
            command = dimse.store_request_command(sop_class, sop_instance, next(_message_ids))
            for group in pdu.p_data_stream(context_id, command, data_set,
                                           own.peer_maximum_length):
                own.send(group)
            response = own.read_response(dimse.C_STORE_RSP)
            comment = response.get(dimse.ERROR_COMMENT, b"").decode("ascii", "replace")
            return dimse.command_us(response, dimse.STATUS, 0xC000), comment.strip()

        try:
            for item in items:
                if own.cancel_requested():
                    return True
                attempt = store_one(item, objects.path_of(item.path), accepted, send)
                result = result_of(attempt.outcome, attempt.detail)
                counts.record(item.sop_instance_uid, result)
                if result == FAILED and not first_failure:
                    first_failure = attempt.detail or "no usable context, or no response"
                progress.after_one()
        finally:
            if first_failure:
                log.warning("C-GET from %s: sub-operations failed, the first: %s",
                            own.calling_ae, first_failure)
        return False


def _over_requestor(assoc: Requestor, originator: tuple[str, int]
                    ) -> Callable[[str, str, str, BinaryIO | PaddedDataSet],
                                  tuple[int, str] | None]:
    """delivery.SendStore over an association we opened (a C-MOVE's)."""

    def send(sop_class: str, ts: str, sop_instance: str,
             data_set: BinaryIO | PaddedDataSet) -> tuple[int, str] | None:
        context = assoc.context_for(sop_class, ts)
        if context is None:
            return None
        response = assoc.send_c_store(context, sop_instance, data_set, originator)
        return None if response is None else (response.status, response.comment)

    return send


def identifier_keys(data: bytes, transfer_syntax: str) -> dict[str, str]:
    """The keys a retrieve reads (:data:`KEYS`), as text, from the identifier's bytes."""
    implicit, little = syntax.encoding_of(transfer_syntax)
    identifier = dataset.decode_dataset(data, implicit, little)
    keys = {}
    for tag, keyword in KEYS.items():
        element = identifier.get(tag)
        if element is None or element.value is None:
            continue
        value = element.value
        keys[keyword] = ("\\".join(str(part) for part in value)
                         if isinstance(value, MultiValue | list | tuple) else str(value))
    return keys
