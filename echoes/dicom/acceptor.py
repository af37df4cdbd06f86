"""One accepted association on the store port: a blocking, single-thread upper layer.

Why not pynetdicom here: its association runs two threads that poll each
other with 1 ms sleeps, which cost more per object than receiving and
storing it (issue 7: 4.7 ms of store-worker CPU per 512 KiB object, most of
it in ``run_reactor``).  Here one thread reads whole PDUs with blocking
reads, streams data set fragments straight into the service's receiver as
they arrive, and writes each response the moment the service decides it.

What this layer does itself: A-ASSOCIATE negotiation against the service's
table (:func:`echoes.dicom.pdu.negotiate`), the association limit and the calling /
called AE title rules (A-ASSOCIATE-RJ with the PS3.8 reason), the release and
abort handshakes, the ARTIM timer (``acse_timeout``) and the idle timer
(``network_timeout``, a read timeout), and the PDU size cap.  Which PDU is
acceptable when is the PS3.8 state machine's decision
(:mod:`echoes.dicom.statemachine`): an unexpected one is answered with the
A-ABORT its table says.  Every request goes to the port's services
(:class:`echoes.dicom.service.Service`).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from echoes.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, dimse, pdu
from echoes.dicom import statemachine as sm
from echoes.dicom.service import Final, Receiver, Service
from echoes.dicom.transport import PDUReader, PeerGone, PeerTimedOut


class UnexpectedPDU(pdu.PDUError):
    """A PDU the state machine does not expect here (action AA-8): A-ABORT."""

    def __init__(self, kind: int, state: str) -> None:
        super().__init__(f"unexpected PDU type 0x{kind:02X} in {state}")
        self.reason = sm.abort_reason(kind)

log = logging.getLogger("echoes.association")



@dataclass(frozen=True)
class Settings:
    """Per-port rules, plain values (built from the configuration outside this package)."""

    ae_title: str
    acse_timeout: float
    network_timeout: float
    maximum_length: int
    max_associations: int
    allowed_calling_aes: frozenset[str] = frozenset()
    require_called_ae: bool = False
    #: The port's name in log lines ("store", "mwl").
    role: str = "store"
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME


@dataclass(eq=False)
class Association:
    """One association's state, readable by the service, and its two ways to
    talk while a request is being answered (:meth:`send`, :meth:`cancel_requested`).

    Hashable by identity, so a service can keep its own per-association
    state (tallies for its log line) in a dict keyed by the association.
    """

    address: str
    port: int
    sock: socket.socket | None = None
    reader: PDUReader | None = None
    calling_ae: str = ""
    called_ae: str = ""
    peer_maximum_length: int = 0
    contexts: dict[int, pdu.ContextResult] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    #: SOP class -> (SCU, SCP) roles granted to the requestor by Role Selection
    #: (only the classes it proposed roles for; the others: SCU only).
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    #: Responses the peer sent mid-operation, not taken yet (see read_response).
    responses: list[dict[int, bytes]] = field(default_factory=list)
    machine: sm.Machine = field(default_factory=lambda: sm.Machine(requestor=False))
    #: Held while a thread writes to the socket and moves the state machine: a
    #: request we invoke from another thread (Storage Commitment's N-EVENT-REPORT
    #: on the requestor's association, PS3.4 J.3.3) must not cut into a response.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Requests and responses may still be written (False once the association ended).
    open: bool = True
    #: Requests we invoked (send_request) by Message ID -> the status the peer
    #: answered (None while unanswered).
    invoked: dict[int, int | None] = field(default_factory=dict)

    def send(self, data: bytes) -> None:
        """Write P-DATA PDUs (e.g. Pending responses) before the final response."""
        assert self.sock is not None
        with self.lock:
            self.machine.on(sm.P_DATA_REQUEST)
            self.sock.sendall(data)

    def send_request(self, context_id: int, command: bytes, data_set: bytes,
                     message_id: int) -> bool:
        """Invoke a request of ours on this association (from any thread); False
        when it can no longer carry one (ended, releasing, aborted, broken).

        The peer's response comes to the reading thread, which notes its status
        in :attr:`invoked` under ``message_id``: only a response says the peer
        took the request (pynetdicom drops an N-EVENT-REPORT that crosses its
        A-RELEASE-RQ).
        """
        with self.lock:
            if not self.open or self.sock is None or not self.machine.allows(
                    sm.P_DATA_REQUEST):
                return False
            try:
                self.invoked[message_id] = None
                self.machine.on(sm.P_DATA_REQUEST)
                self.sock.sendall(pdu.p_data_pdus(context_id, command, data_set,
                                                  self.peer_maximum_length))
            except OSError:
                return False
            return True

    def cancel_requested(self) -> bool:
        """Whether the peer sent a C-CANCEL since the request (never blocks).

        Reads at most what is already waiting: a C-CANCEL-RQ is remembered;
        an A-ABORT or a broken connection raises PeerGone; anything else
        during an operation is a protocol error (PDUError).
        """
        sock, reader = self.sock, self.reader
        if self.cancelled or sock is None or reader is None:
            return self.cancelled
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
        if not (pending and pending()) and not select.select([sock], [], [], 0)[0]:
            return False
        self._read_during_operation(())
        return self.cancelled

    def read_response(self, expected: int) -> dict[int, bytes]:
        """The next response of command field ``expected`` the peer sends while
        we answer a request (C-GET: the C-STORE-RSP to each sub-operation),
        blocking up to the association's read timeout (``network_timeout``:
        PeerTimedOut then).  A C-CANCEL-RQ arriving first is remembered
        (:meth:`cancel_requested`); a response without a data set is all a
        peer may send besides.
        """
        while True:
            if self.responses:
                return self.responses.pop(0)
            self._read_during_operation((expected,))

    def _read_during_operation(self, expected: tuple[int, ...]) -> None:
        """Read one PDU mid-operation: C-CANCEL-RQs and ``expected`` responses (one
        command fragment each; kept in :attr:`responses`), nothing else."""
        assert self.reader is not None
        kind, body = self.reader.read()
        action = self.machine.on_pdu(kind)
        if action == "AA-3":
            raise PeerGone("aborted by the peer during an operation")
        if action == "AA-8":
            raise UnexpectedPDU(kind, sm.STA6)
        if action != "DT-2":  # a release request while we answer: not waited for
            raise pdu.PDUError(f"PDU type 0x{kind:02X} during an operation")
        for _context, control, fragment in pdu.iter_pdvs(body):
            if control != pdu.COMMAND_BIT | pdu.LAST_BIT:
                raise pdu.PDUError("only one-fragment commands may arrive mid-operation")
            try:
                command = dimse.parse_command(bytes(fragment))
            except ValueError as exc:
                raise pdu.PDUError(f"command set: {exc}") from None
            field_ = dimse.command_us(command, dimse.COMMAND_FIELD)
            if field_ == dimse.C_CANCEL_RQ:
                self.cancelled = True
            elif field_ in expected and not dimse.has_data_set(command):
                self.responses.append(command)
            else:
                raise pdu.PDUError(f"message 0x{field_:04X} during an operation")


class Limiter:
    """Counts this process's open associations against ``max_associations``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0

    def enter(self, limit: int) -> bool:
        """Take a slot; False when all are taken."""
        with self.lock:
            if self.active >= limit:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        """Give a slot back."""
        with self.lock:
            self.active -= 1


def serve(sock: socket.socket, address: tuple, service: Service, settings: Settings,
          limiter: Limiter) -> None:
    """Run one association on an accepted connection until it ends; never raises."""
    reader = PDUReader(sock)
    association = Association(address[0], address[1], sock, reader)
    machine = association.machine
    machine.on(sm.CONNECTION_INDICATION)  # AE-5: the socket timeout is ARTIM
    how = "dropped"
    counted = False
    try:
        sock.settimeout(settings.acse_timeout)
        try:
            kind, body = reader.read()
        except PeerGone as exc:  # AA-2 (ARTIM) or AA-5 (closed): nothing to send
            machine.on(sm.ARTIM_EXPIRED if isinstance(exc, PeerTimedOut)
                       else sm.CONNECTION_CLOSED)
            raise
        action = machine.on_pdu(kind)
        if action == "AA-1":  # anything but an A-ASSOCIATE-RQ first
            sock.sendall(pdu.abort(pdu.ABORT_UNEXPECTED_PDU))
            return
        if action != "AE-6":  # AA-2: an A-ABORT first, nothing to answer
            return
        request = pdu.parse_associate_rq(body)
        association.calling_ae, association.called_ae = request.calling_ae, request.called_ae
        reason, why = _rejection(request, settings)
        if reason is None:
            counted = limiter.enter(settings.max_associations)
            if not counted:
                reason = pdu.REJECT_LOCAL_LIMIT
                why = f"more than max_associations ({settings.max_associations}) at once"
        if reason is not None:
            log.warning("rejected association from %s (%s:%s) on the %s port: %s",
                        request.calling_ae, association.address, association.port,
                        settings.role, why)
            machine.on(sm.ASSOCIATE_REJECT)  # AE-8
            sock.sendall(pdu.associate_rj(reason))
            how = "rejected"
            return
        results, roles = pdu.negotiate_roles(
            pdu.negotiate(request.contexts, service.accepted), request.roles,
            getattr(service, "roles", None))
        association.roles = roles
        association.contexts = {r.context_id: r for r in results if r.result == pdu.ACCEPTANCE}
        association.peer_maximum_length = request.maximum_length
        if 0 < request.maximum_length <= pdu.PDV_HEADER:
            log.warning("%s (%s:%s) offered a maximum PDU length of %d, too small for any "
                        "PDV: sending it PDUs of up to %d bytes, as dcmtk does",
                        request.calling_ae, association.address, association.port,
                        request.maximum_length, pdu.send_limit(request.maximum_length))
        machine.on(sm.ASSOCIATE_ACCEPT)  # AE-7
        sock.sendall(pdu.associate_ac(request, results, settings.maximum_length,
                                      settings.implementation_class_uid,
                                      settings.implementation_version_name, roles))
        sock.settimeout(settings.network_timeout)
        how = _run(sock, reader, association, service)
    except UnexpectedPDU as exc:  # AA-8: the machine is in Sta13 already
        log.warning("aborting association from %s (%s:%s): %s", association.calling_ae,
                    association.address, association.port, exc)
        _send_quietly(sock, pdu.abort(exc.reason))
        how = "aborted"
    except pdu.PDUError as exc:
        log.warning("aborting association from %s (%s:%s): %s", association.calling_ae,
                    association.address, association.port, exc)
        _abort(sock, machine, pdu.ABORT_INVALID_PARAMETER)
        how = "aborted"
    except PeerGone as exc:
        log.debug("peer %s:%s gone: %s", association.address, association.port, exc)
        if counted:
            _abort(sock, machine, pdu.ABORT_UNEXPECTED_PDU)
    except OSError as exc:
        log.debug("peer %s:%s: %s", association.address, association.port, exc)
    except Exception:
        log.exception("association from %s (%s:%s) failed", association.calling_ae,
                      association.address, association.port)
        _abort(sock, machine, pdu.ABORT_UNEXPECTED_PDU)
        how = "aborted"
    finally:
        with association.lock:
            association.open = False
        if counted:
            limiter.leave()
            try:
                service.closed(association, how)
            except Exception:
                log.exception("closing association state failed")
        if how == "released":
            _await_close(sock, settings.acse_timeout)


def _rejection(request: pdu.AssociateRequest, settings: Settings
               ) -> tuple[tuple[int, int, int] | None, str]:
    """Why this request is rejected (reason triple, words), or (None, "")."""
    if request.protocol_version & 0x0001 == 0:
        return pdu.REJECT_PROTOCOL_VERSION, f"protocol version {request.protocol_version}"
    if request.application_context != pdu.APPLICATION_CONTEXT_NAME:
        return (pdu.REJECT_APPLICATION_CONTEXT,
                f"application context {request.application_context!r}")
    if settings.allowed_calling_aes and request.calling_ae not in settings.allowed_calling_aes:
        return pdu.REJECT_CALLING_AE, f"calling AE {request.calling_ae!r} not in the allowed list"
    if settings.require_called_ae and request.called_ae != settings.ae_title:
        return (pdu.REJECT_CALLED_AE,
                f"called AE {request.called_ae!r} is not {settings.ae_title!r}")
    return None, ""


@dataclass
class _Message:
    """A DIMSE message being assembled."""

    context: pdu.ContextResult
    command_bytes: bytearray = field(default_factory=bytearray)
    command: dict[int, bytes] | None = None
    receiver: Receiver | None = None
    expects_data: bool = False


def _run(sock: socket.socket, reader: PDUReader, association: Association,
         service: Service) -> str:
    """The established association: P-DATA until release or abort."""
    message: _Message | None = None
    machine = association.machine
    try:
        while True:
            kind, body = reader.read()
            with association.lock:  # a request we invoke may be moving the machine
                action = machine.on_pdu(kind)
            if action == "DT-2":
                for context_id, control, fragment in pdu.iter_pdvs(body):
                    message = _on_pdv(sock, association, service, message,
                                      context_id, control, fragment)
            elif action == "AR-2":
                if message is not None:
                    raise pdu.PDUError("A-RELEASE-RQ in the middle of a message")
                with association.lock:
                    machine.on(sm.RELEASE_RESPONSE)  # AR-4
                    association.open = False
                    sock.sendall(pdu.release_rp())
                return "released"
            elif action == "AA-3":
                return "aborted"
            else:  # AA-8: an A-ASSOCIATE, A-RELEASE-RP or unknown PDU now
                raise UnexpectedPDU(kind, sm.STA6)
    finally:
        if message is not None and message.receiver is not None:
            message.receiver.discard()


def _on_pdv(sock: socket.socket, association: Association, service: Service,
            message: _Message | None, context_id: int, control: int,
            fragment: memoryview) -> _Message | None:
    """Feed one PDV; returns the message still being assembled (or None)."""
    context = association.contexts.get(context_id)
    if context is None:
        raise pdu.PDUError(f"PDV on presentation context {context_id}, not accepted")
    if message is None:
        if not control & pdu.COMMAND_BIT:
            raise pdu.PDUError("data set fragment without a command")
        message = _Message(context)
        association.cancelled = False
        association.responses.clear()
    elif message.context.context_id != context_id:
        raise pdu.PDUError("PDV on another presentation context mid-message")
    if control & pdu.COMMAND_BIT:
        if message.command is not None:
            raise pdu.PDUError("command fragment after the command ended")
        message.command_bytes += fragment
        if not control & pdu.LAST_BIT:
            return message
        try:
            message.command = dimse.parse_command(bytes(message.command_bytes))
        except ValueError as exc:
            raise pdu.PDUError(f"command set: {exc}") from None
        message.expects_data = dimse.has_data_set(message.command)
        if dimse.is_request(message.command):
            message.receiver = service.receiver(association, context, message.command)
        if message.expects_data:
            return message
        _respond(sock, association, message, message.receiver)
        return None
    if message.command is None or not message.expects_data:
        raise pdu.PDUError("data set fragment where none was announced")
    if message.receiver is not None:
        message.receiver.write(fragment)
    if not control & pdu.LAST_BIT:
        return message
    _respond(sock, association, message, message.receiver)
    return None


def _respond(sock: socket.socket, association: Association, message: _Message,
             receiver: Receiver | None) -> None:
    """Send the response to a complete request (none to a C-CANCEL or a response)."""
    command = message.command or {}
    field_ = dimse.command_us(command, dimse.COMMAND_FIELD)
    if field_ >= 0 and field_ & dimse.RESPONSE_BIT:  # to a request we invoked, if any
        responded = dimse.command_us(command, dimse.MESSAGE_ID_RESPONDED_TO)
        with association.lock:
            if responded in association.invoked:
                association.invoked[responded] = dimse.command_us(command, dimse.STATUS, 0xC000)
        return
    if field_ < 0 or field_ == dimse.C_CANCEL_RQ:
        return
    message_id = dimse.command_us(command, dimse.MESSAGE_ID, 0)
    # Affected or Requested (N-SET names its object as Requested): the response
    # names it as Affected either way.
    sop_class = dimse.request_sop_class(command)
    sop_instance = dimse.request_sop_instance(command) or None
    result: tuple[int, str] | Final = (
        receiver.finish() if receiver is not None else
        (dimse.UNRECOGNIZED_OPERATION, f"operation 0x{field_:04X} not served on this port"))
    if isinstance(result, Final):
        response = dimse.command_set({
            dimse.AFFECTED_SOP_CLASS: sop_class, dimse.COMMAND_FIELD: field_ | dimse.RESPONSE_BIT,
            dimse.MESSAGE_ID_RESPONDED_TO: message_id, dimse.STATUS: result.status,
            dimse.DATA_SET_TYPE: dimse.DATA_SET_PRESENT if result.data_set else dimse.NO_DATA_SET,
            dimse.ERROR_COMMENT: result.comment,
            dimse.AFFECTED_SOP_INSTANCE: result.sop_instance or sop_instance,
            dimse.OFFENDING_ELEMENT: result.offending or None, **result.elements})
        data = pdu.p_data_pdus(message.context.context_id, response, result.data_set,
                               association.peer_maximum_length)
    else:
        status, comment = result
        response = dimse.response_command(field_ | dimse.RESPONSE_BIT, sop_class, message_id,
                                          status, sop_instance, comment)
        data = pdu.p_data_command(message.context.context_id, response,
                                  association.peer_maximum_length)
    with association.lock:
        association.machine.on(sm.P_DATA_REQUEST)  # DT-1
        sock.sendall(data)


def _await_close(sock: socket.socket, artim: float) -> None:
    """Sta13 after our A-RELEASE-RP: the requestor closes the connection (PS3.8
    AR-3); wait for that, up to the ARTIM timer, before closing ours."""
    try:
        sock.settimeout(artim)
        while sock.recv(4096):
            pass  # AA-6: a PDU now is ignored
    except OSError:
        pass


def _abort(sock: socket.socket, machine: sm.Machine, reason: tuple[int, int]) -> None:
    """Our A-ABORT (Evt15, AA-1) where the state still has an association to abort."""
    if machine.allows(sm.ABORT_REQUEST):
        machine.on(sm.ABORT_REQUEST)
        _send_quietly(sock, pdu.abort(reason))


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
