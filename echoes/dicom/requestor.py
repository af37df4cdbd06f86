"""Outbound associations for the sender: a blocking, single-thread requestor.

Same reason as :mod:`echoes.dicom.acceptor`: pynetdicom's requestor polls its
socket and its DIMSE queue with 1 ms sleeps in two threads; forwarding 1,000
CT objects spent more of the sender's CPU in those loops than in sending
(py-spy, issue 7).  Here the sending thread writes the C-STORE-RQ and then
blocks in ``recv`` for the response, bounded by ``dimse_timeout``.

What it does: connect (optionally TLS), A-ASSOCIATE-RQ/AC/RJ, C-STORE with
the data set streamed from a file or given as bytes, C-ECHO, A-RELEASE,
A-ABORT.  Any protocol surprise aborts the association (the caller retries
the job); why an association ended under a request (the peer's A-ABORT
source and reason, a timeout) is kept in :attr:`Requestor.lost` for the
job's error.  :func:`associate` is the one way echoes opens an association to a
:class:`Destination` (the sender's jobs, the Browser's verify button through
:func:`verify`), so both speak with the same AE titles, PDU size and TLS;
:mod:`echoes.services.dicom_settings` makes the Destination of a configured
``[ae:*]``.
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import BinaryIO

from echoes.dicom import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    dimse,
    pdu,
    syntax,
    tls,
)
from echoes.dicom import statemachine as sm
from echoes.dicom.sopclasses import VERIFICATION
from echoes.dicom.transport import PDUReader, PeerGone, PeerTimedOut, client_tls, connect

#: Associations echoes starts offer this maximum PDU (SPEC, statement 3.4.1).
SEND_MAX_PDU = 49152
#: What a C-ECHO is proposed with: the default syntax every peer must take, and one more.
VERIFICATION_SYNTAXES = [syntax.IMPLICIT_VR_LITTLE_ENDIAN, syntax.EXPLICIT_VR_LITTLE_ENDIAN]


@dataclass(frozen=True)
class Destination:
    """Where and how to open an association, as plain values."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    #: Bounds the connect and the negotiation.
    acse_timeout: float
    #: Bounds each response.
    dimse_timeout: float
    #: Whether the destination speaks TLS; ``tls_files`` are ours (None: not configured).
    tls: bool = False
    tls_files: tls.TLSFiles | None = None
    maximum_length: int = SEND_MAX_PDU


class AssociationFailed(ConnectionError):
    """No association: the connection was refused, or the peer rejected or aborted."""


class NoResponse(ConnectionError):
    """A request got no response (timeout, abort, lost connection); the association is gone."""


class PeerAborted(PeerGone):
    """The peer sent an A-ABORT; the message says its source and reason in words."""


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context the peer accepted."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class StoreResult:
    """A C-STORE-RSP: its status and Error Comment."""

    status: int
    comment: str = ""


_message_ids = itertools.cycle(range(1, 65536))


class Requestor:
    """One association we started."""

    def __init__(self, sock: socket.socket, accepted: list[AcceptedContext],
                 peer_maximum_length: int, dimse_timeout: float,
                 machine: sm.Machine | None = None) -> None:
        self.sock = sock
        self.reader = PDUReader(sock)
        self.accepted_contexts = accepted
        self.peer_maximum_length = peer_maximum_length
        self.dimse_timeout = dimse_timeout
        #: The PS3.8 state machine of this association (Sta6 once negotiated).
        self.machine = machine or sm.Machine(requestor=True, state=sm.STA6)
        #: The socket is closed: nothing more to send or read.
        self.closed = False
        #: SCP/SCU roles the acceptor granted, by SOP class (only those proposed).
        self.roles: dict[str, tuple[bool, bool]] = {}
        #: Why the association ended other than by our release, in words for a
        #: job's error ("peer aborted the association (source: ...)", "no
        #: response within 30 s (timed out)"); empty while it lasts.
        self.lost = ""

    @property
    def is_established(self) -> bool:
        """Whether the association is up and ready for requests (Sta6)."""
        return not self.closed and self.machine.state == sm.STA6

    @classmethod
    def connect(cls, host: str, port: int, calling_ae: str, called_ae: str,
                contexts: list[tuple[str, list[str]]], maximum_length: int,
                acse_timeout: float, dimse_timeout: float,
                ssl_context: ssl.SSLContext | None = None,
                roles: dict[str, tuple[bool, bool]] | None = None) -> Requestor:
        """Connect and negotiate; raise AssociationFailed with the reason in words.

        ``roles`` proposes SCP/SCU Role Selection (SOP class -> (SCU, SCP) for
        us); what the peer granted is in :attr:`roles` afterwards.
        """
        machine = sm.Machine(requestor=True)
        machine.on(sm.ASSOCIATE_REQUEST)  # AE-1
        try:
            sock = connect(host, port, acse_timeout)
        except OSError as exc:
            reason = ("timed out" if isinstance(exc, TimeoutError)
                      else exc.strerror or type(exc).__name__)
            raise AssociationFailed(f"cannot connect to {host}:{port}: {reason}") from None
        try:
            sock = client_tls(sock, ssl_context)
            proposed = [pdu.PresentationContextRequest(2 * n + 1, abstract, list(syntaxes))
                        for n, (abstract, syntaxes) in enumerate(contexts)]
            machine.on(sm.CONNECTED)  # AE-2
            sock.sendall(pdu.associate_rq(calling_ae, called_ae, proposed, maximum_length,
                                          IMPLEMENTATION_CLASS_UID,
                                          IMPLEMENTATION_VERSION_NAME, roles))
            kind, body = PDUReader(sock).read()
            action = machine.on_pdu(kind)
            if action == "AE-4":
                raise AssociationFailed(f"association rejected by {called_ae}"
                                        f" ({_reject_words(bytes(body))})")
            if action == "AA-8":  # not an answer to our request: A-ABORT it
                _send_quietly(sock, pdu.abort(sm.abort_reason(kind)))
            if action != "AE-3":
                raise AssociationFailed(f"association aborted by {called_ae}")
            accept = pdu.parse_associate_ac(body)
        except (OSError, PeerGone, pdu.PDUError) as exc:
            sock.close()
            if isinstance(exc, AssociationFailed):
                raise
            if isinstance(exc, TimeoutError | PeerTimedOut):
                raise AssociationFailed(f"no answer from {called_ae} at {host}:{port} within "
                                        f"{acse_timeout:g} s (timed out)") from None
            raise AssociationFailed(f"association aborted by {called_ae} ({exc})") from None
        by_id = {context.context_id: context for context in proposed}
        accepted = [AcceptedContext(cid, by_id[cid].abstract_syntax, syntax)
                    for cid, (result, syntax) in accept.results.items()
                    if result == pdu.ACCEPTANCE and cid in by_id]
        requestor = cls(sock, accepted, accept.maximum_length, dimse_timeout, machine)
        requestor.roles = accept.roles
        return requestor

    def context_for(self, sop_class: str, syntax: str) -> AcceptedContext | None:
        """The accepted context for (class, syntax), if any."""
        return next((cx for cx in self.accepted_contexts
                     if cx.abstract_syntax == sop_class and cx.transfer_syntax == syntax), None)

    def send_c_store(self, context: AcceptedContext, sop_instance: str,
                     data_set: BinaryIO, originator: tuple[str, int] | None = None,
                     ) -> StoreResult | None:
        """C-STORE the data set read from ``data_set`` (streamed); None when no
        response came (timeout, abort, broken connection: the association is
        then closed).  ``originator``: the C-MOVE's (AE title, message ID).
        """
        if not self.is_established:
            return None
        command = dimse.store_request_command(context.abstract_syntax, sop_instance,
                                              next(_message_ids), originator)
        try:
            self.machine.on(sm.P_DATA_REQUEST)  # DT-1 (for the whole message)
            for group in pdu.p_data_stream(context.context_id, command, data_set,
                                           self.peer_maximum_length):
                self.sock.sendall(group)
            return self._response(dimse.C_STORE_RSP)
        except PeerAborted as exc:
            self._gone(str(exc))
        except (TimeoutError, PeerTimedOut):
            self.abort(f"no response within {self.dimse_timeout:g} s (timed out)")
        except (OSError, PeerGone, pdu.PDUError, ValueError) as exc:
            # A peer that aborts while the data set is still streaming (dcmtk on
            # an odd PDV length) makes our send fail: its A-ABORT may be waiting.
            said = self._abort_waiting() if isinstance(exc, ConnectionError) else ""
            if said:
                self._gone(said)
            else:
                self.abort(f"association lost ({str(exc) or type(exc).__name__})")
        return None

    def peer_left(self) -> bool:
        """Whether the association is over (on an idle one: whether the peer ended it).

        Between requests the peer has nothing to say: anything readable is an
        A-ABORT, an A-RELEASE-RQ or the connection closing (peers that drop
        idle associations).  Looked at before an association that lingered
        is used again, so the object sent next is not blamed for it.  One
        poll, no wait.
        """
        if not self.is_established:
            return True
        pending = getattr(self.sock, "pending", None)  # TLS: a record already read
        if not (pending and pending()) and not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            self.sock.settimeout(1.0)
            kind, body = self.reader.read()
        except (TimeoutError, PeerTimedOut):  # a part of a PDU, or a TLS record of no data
            self.abort("no whole PDU from the peer while idle (timed out)")
            return True
        except (OSError, PeerGone, pdu.PDUError) as exc:
            self._gone(f"association closed by the peer while idle ({exc})")
            return True
        action = self.machine.on_pdu(kind)
        if action == "AA-3":
            self._gone(_abort_words(bytes(body)))
        elif action == "AR-2":  # we have nothing in flight: release at once (AR-4)
            self.machine.on(sm.RELEASE_RESPONSE)
            _send_quietly(self.sock, pdu.release_rp())
            self._gone("association released by the peer while idle")
        elif action == "AA-8":
            _send_quietly(self.sock, pdu.abort(sm.abort_reason(kind)))
            self._gone(f"unexpected PDU type 0x{kind:02X} from the peer while idle")
        else:  # DT-2: P-DATA nobody asked for
            self.abort(f"unexpected PDU type 0x{kind:02X} from the peer while idle")
        return True

    def _abort_waiting(self) -> str:
        """The words of an A-ABORT the peer sent before it closed, if one is there."""
        try:
            self.sock.settimeout(1.0)
            kind, body = self.reader.read()
        except (OSError, PeerGone, pdu.PDUError):
            return ""
        if kind != pdu.ABORT:
            return ""
        self.machine.on_pdu(kind)  # AA-3
        return _abort_words(bytes(body))

    def _gone(self, why: str) -> None:
        """The peer ended the association (no A-ABORT of ours needed): close."""
        if self.closed:
            return
        self.lost = self.lost or why
        if self.machine.allows(sm.CONNECTION_CLOSED):
            self.machine.on(sm.CONNECTION_CLOSED)  # AA-4 / AR-5
        self.closed = True
        self.sock.close()

    def send_c_echo(self) -> int:
        """C-ECHO over the accepted Verification context; the response's status.

        Raises ValueError when the peer did not accept Verification, and
        NoResponse (the association then aborted) when no response came
        within dimse_timeout.
        """
        context = next((cx for cx in self.accepted_contexts
                        if cx.abstract_syntax == VERIFICATION), None)
        if context is None:
            raise ValueError("Verification was not accepted")
        command = dimse.echo_request_command(VERIFICATION, next(_message_ids))
        if not self.is_established:
            raise NoResponse("no C-ECHO response (the association is closed)")
        try:
            self.machine.on(sm.P_DATA_REQUEST)  # DT-1
            self.sock.sendall(pdu.p_data_command(context.context_id, command,
                                                 self.peer_maximum_length))
            return self._response(dimse.C_ECHO_RSP).status
        except (TimeoutError, PeerTimedOut):
            self.abort()
            raise NoResponse(f"no C-ECHO response within {self.dimse_timeout:g} s "
                             "(timed out)") from None
        except (OSError, PeerGone, pdu.PDUError, ValueError) as exc:
            self.abort()
            raise NoResponse(f"no C-ECHO response ({str(exc) or type(exc).__name__})") from None

    def send_request(self, context: AcceptedContext, command: bytes, data_set: bytes,
                     expected: int) -> StoreResult:
        """Send one request with its data set (bytes in the context's syntax) and
        return its response's status (an N-EVENT-REPORT: Storage Commitment's
        result on the association we open, PS3.4 J.3.3).  NoResponse (the
        association then aborted) when none came within dimse_timeout.
        """
        if not self.is_established:
            raise NoResponse("the association is closed")
        try:
            self.machine.on(sm.P_DATA_REQUEST)  # DT-1
            self.sock.sendall(pdu.p_data_pdus(context.context_id, command, data_set,
                                              self.peer_maximum_length))
            return self._response(expected)
        except (TimeoutError, PeerTimedOut):
            self.abort()
            raise NoResponse(f"no response within {self.dimse_timeout:g} s (timed out)") from None
        except (OSError, PeerGone, pdu.PDUError, ValueError) as exc:
            self.abort()
            raise NoResponse(f"no response ({str(exc) or type(exc).__name__})") from None

    def _response(self, expected: int) -> StoreResult:
        """The response to our request: command field ``expected`` (C-STORE-RSP, C-ECHO-RSP)."""
        self.sock.settimeout(self.dimse_timeout)
        command = bytearray()
        while True:
            kind, body = self.reader.read()
            action = self.machine.on_pdu(kind)
            if action == "AA-3":
                raise PeerAborted(_abort_words(bytes(body)))
            if action == "AA-8":
                _send_quietly(self.sock, pdu.abort(sm.abort_reason(kind)))
            if action != "DT-2":  # AA-8, or AR-2: a release while a response is due
                raise PeerGone(f"PDU type 0x{kind:02X} instead of a response")
            for _cid, control, fragment in pdu.iter_pdvs(body):
                if not control & pdu.COMMAND_BIT:
                    continue  # a data set with a C-STORE-RSP: not ours to read
                command += fragment
                if control & pdu.LAST_BIT:
                    elements = dimse.parse_command(bytes(command))
                    field_ = dimse.command_us(elements, dimse.COMMAND_FIELD)
                    if field_ != expected:
                        raise pdu.PDUError(f"response 0x{field_:04X} instead of 0x{expected:04X}")
                    comment = elements.get(dimse.ERROR_COMMENT, b"")
                    return StoreResult(dimse.command_us(elements, dimse.STATUS, 0xC000),
                                       comment.decode("ascii", "replace").strip())

    def release(self) -> None:
        """A-RELEASE (bounded wait for the reply), then close."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.machine.allows(sm.RELEASE_REQUEST):
                return  # no established association to release: just close
            self.machine.on(sm.RELEASE_REQUEST)  # AR-1
            self.sock.settimeout(min(self.dimse_timeout, 10.0))
            self.sock.sendall(pdu.release_rq())
            while True:
                kind, _body = self.reader.read()
                action = self.machine.on_pdu(kind)
                if action == "AR-8":  # release collision: answer, then await our RP
                    self.machine.on(sm.RELEASE_RESPONSE)  # AR-9
                    self.sock.sendall(pdu.release_rp())
                elif action == "AA-8":
                    _send_quietly(self.sock, pdu.abort(sm.abort_reason(kind)))
                    break
                elif action != "AR-6":  # AR-3 (released) or AA-3 (aborted)
                    break
        except (OSError, PeerGone, pdu.PDUError):
            pass
        finally:
            self.sock.close()

    def abort(self, why: str = "") -> None:
        """A-ABORT and close (the peer drops whatever was in flight); ``why`` is
        kept in :attr:`lost`.
        """
        if self.closed:
            return
        self.lost = self.lost or why
        self.closed = True
        try:
            if self.machine.allows(sm.ABORT_REQUEST):
                self.machine.on(sm.ABORT_REQUEST)  # AA-1
                _send_quietly(self.sock, pdu.abort((0x00, 0x00)))
        finally:
            self.sock.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the state machine says to, whether or not the peer still listens."""
    try:
        sock.sendall(data)
    except OSError:
        pass


_REJECT_REASONS = {
    (1, 1): {2: "application context not supported", 3: "calling AE title not recognized",
             7: "called AE title not recognized"},
    (1, 2): {2: "protocol version not supported"},
    (1, 3): {1: "temporary congestion", 2: "local limit exceeded"},
}


#: A-ABORT sources and (service-provider) reasons, PS3.8 9.3.8.
_ABORT_SOURCES = {0: "service-user", 1: "reserved", 2: "service-provider"}
_ABORT_REASONS = {0: "not specified", 1: "unrecognized PDU", 2: "unexpected PDU",
                  4: "unrecognized PDU parameter", 5: "unexpected PDU parameter",
                  6: "invalid PDU parameter value"}


def _abort_words(body: bytes) -> str:
    """An A-ABORT's body in words for a job's error and the log.

    The reason is the service provider's (a service-user's abort carries
    none, PS3.8 9.3.8), e.g. "peer aborted the association (source:
    service-provider, reason: unexpected PDU)".
    """
    if len(body) < 4:
        return "peer aborted the association"
    source, reason = body[2], body[3]
    words = f"source: {_ABORT_SOURCES.get(source, f'0x{source:02X}')}"
    if source == 2 or reason:
        words += f", reason: {_ABORT_REASONS.get(reason, f'0x{reason:02X}')}"
    return f"peer aborted the association ({words})"


def _reject_words(body: bytes) -> str:
    if len(body) < 4:
        return "no reason given"
    _reserved, result, source, reason = struct.unpack("BBBB", body[:4])
    words = _REJECT_REASONS.get((1, source), {}).get(reason, "no reason given")
    return f"{'transient' if result == 2 else 'permanent'}: {words}"


def associate(destination: Destination, contexts: list[tuple[str, list[str]]],
              roles: dict[str, tuple[bool, bool]] | None = None) -> Requestor:
    """One try at an association to ``destination`` (TLS when it says so),
    offering its maximum PDU; AssociationFailed with the reason in words.
    ``roles``: SCP/SCU Role Selection to propose (SOP class -> (SCU, SCP) for us).

    Raises ValueError or OSError when TLS is asked for but not usable.
    """
    ssl_context = tls.client_context(destination.tls_files) if destination.tls else None
    return Requestor.connect(destination.host, destination.port, destination.calling_ae,
                             destination.called_ae, contexts, destination.maximum_length,
                             destination.acse_timeout, destination.dimse_timeout, ssl_context,
                             roles)


def verify(destination: Destination) -> tuple[bool, str, float]:
    """C-ECHO ``destination`` as the sender would reach it: (ok, one line for a person, ms).

    For the Browser's verify button: the answer says whether forwarding to
    this AE can work (address, port, AE titles, TLS) and if not, why, in the
    words of the failure: "C-ECHO ok in 12 ms", "cannot connect to
    10.0.0.5:104: Connection refused", "association rejected by PACS
    (permanent: called AE title not recognized)"... Never raises for network
    or TLS trouble.  The milliseconds run from the connect to the C-ECHO
    response (the release is not counted).
    """
    started = time.monotonic()

    def elapsed() -> float:
        return (time.monotonic() - started) * 1000

    try:
        assoc = associate(destination, [(VERIFICATION, VERIFICATION_SYNTAXES)])
    except AssociationFailed as exc:
        return False, str(exc), elapsed()
    except (ValueError, OSError) as exc:  # TLS asked for, but not configured or unreadable
        return False, f"TLS not usable: {exc}", elapsed()
    try:
        status = assoc.send_c_echo()
    except ValueError:
        assoc.release()
        return False, (f"{destination.called_ae} accepted the association but not "
                       "Verification"), elapsed()
    except NoResponse as exc:
        return False, str(exc), elapsed()
    ms = elapsed()
    assoc.release()
    if status == dimse.SUCCESS:
        return True, f"C-ECHO ok in {ms:.0f} ms", ms
    return False, f"C-ECHO answered with status 0x{status:04X}", ms
