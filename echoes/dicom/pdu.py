"""DICOM Upper Layer PDUs (PS3.8 section 9), as pure functions, for both sides.

echoes runs its own small upper layer (:mod:`echoes.dicom.acceptor`,
:mod:`echoes.dicom.requestor`) instead of pynetdicom's, because pynetdicom's
two polling threads per association (1 ms sleeps in the DUL and in the
association reactor) cost 2-4 ms per object, more than receiving and storing
the object itself (issue 7 profile).  This module holds the parts that need
no socket: parse and build the A-ASSOCIATE PDUs (presentation contexts, user
information: maximum length, identity, role selection), negotiate against a
table, frame DIMSE messages as P-DATA-TF PDVs (the one place the PDV control
bits are defined), and the release and abort PDUs.  Everything here raises
:class:`PDUError` on malformed input and never trusts a length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from echoes.dicom.syntax import IMPLICIT_VR_LITTLE_ENDIAN

#: PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

#: Item types inside A-ASSOCIATE PDUs.
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM = 0x30
TRANSFER_SYNTAX_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_ITEM = 0x53
ROLE_SELECTION_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_ITEM = 0x55
EXTENDED_NEGOTIATION_ITEM = 0x56
COMMON_EXTENDED_NEGOTIATION_ITEM = 0x57
USER_IDENTITY_RQ_ITEM = 0x58
USER_IDENTITY_AC_ITEM = 0x59

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

#: Presentation context results (PS3.8 9.3.3.2).
ACCEPTANCE = 0
USER_REJECTION = 1
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

#: A-ASSOCIATE-RJ (result, source, reason) triples, by why (PS3.8 9.3.4).
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

#: A-ABORT (source, reason): service provider, unexpected PDU / unrecognized PDU.
ABORT_UNEXPECTED_PDU = (0x02, 0x02)
ABORT_UNRECOGNIZED_PDU = (0x02, 0x01)
ABORT_INVALID_PARAMETER = (0x02, 0x06)

#: PDV message control header bits.
COMMAND_BIT = 0x01
LAST_BIT = 0x02


class PDUError(ValueError):
    """A PDU that does not follow PS3.8; the association is aborted."""


@dataclass
class PresentationContextRequest:
    """One proposed presentation context: id, abstract syntax, transfer syntaxes."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    """What an acceptor needs from an A-ASSOCIATE-RQ."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[PresentationContextRequest] = field(default_factory=list)
    maximum_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    #: SCP/SCU Role Selection (PS3.7 D.3.3.4): SOP class -> (SCU role, SCP role)
    #: the requestor proposes for itself.
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    #: SOP Class Extended Negotiation (PS3.7 D.3.3.5): SOP class -> its
    #: service-class application information, answered only where a service
    #: supports it.  Common extended negotiation (0x57), user identity (0x58)
    #: and the asynchronous operations window (0x53) are read past: not
    #: answering them is the acceptor's way to decline (PS3.7 D.3.3).
    extended: dict[str, bytes] = field(default_factory=dict)
    #: The 16-byte called/calling fields as sent, echoed in the A-ASSOCIATE-AC.
    raw_called: bytes = b""
    raw_calling: bytes = b""


@dataclass(frozen=True)
class ContextResult:
    """The acceptor's answer for one presentation context."""

    context_id: int
    result: int
    abstract_syntax: str
    transfer_syntax: str


def _uid(data: bytes) -> str:
    return data.rstrip(b"\x00 ").decode("ascii", "replace")


def _ae(data: bytes) -> str:
    return data.decode("ascii", "replace").strip()


def _items(data: memoryview | bytes, what: str) -> Iterator[tuple[int, memoryview]]:
    """Split a run of (type, reserved, 2-byte length, value) items."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise PDUError(f"{what}: truncated item header")
        kind = view[offset]
        (length,) = struct.unpack_from(">H", view, offset + 2)
        end = offset + 4 + length
        if end > len(view):
            raise PDUError(f"{what}: item 0x{kind:02X} runs past its PDU")
        yield kind, view[offset + 4:end]
        offset = end


def parse_associate_rq(body: memoryview | bytes) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (the bytes after the 6-byte header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", view, 0)
    raw_called, raw_calling = bytes(view[4:20]), bytes(view[20:36])
    request = AssociateRequest(version, _ae(raw_called), _ae(raw_calling), "",
                               raw_called=raw_called, raw_calling=raw_calling)
    for kind, value in _items(view[68:], "A-ASSOCIATE-RQ"):
        if kind == APPLICATION_CONTEXT_ITEM:
            request.application_context = _uid(bytes(value))
        elif kind == PRESENTATION_CONTEXT_RQ_ITEM:
            request.contexts.append(_parse_context(value))
        elif kind == USER_INFORMATION_ITEM:
            _parse_user_information(value, request)
    return request


def _parse_context(value: memoryview) -> PresentationContextRequest:
    if len(value) < 4:
        raise PDUError("presentation context item too short")
    context = PresentationContextRequest(value[0], "", [])
    for kind, sub in _items(value[4:], "presentation context"):
        if kind == ABSTRACT_SYNTAX_ITEM:
            context.abstract_syntax = _uid(bytes(sub))
        elif kind == TRANSFER_SYNTAX_ITEM:
            context.transfer_syntaxes.append(_uid(bytes(sub)))
    return context


def _parse_user_information(value: memoryview, request: AssociateRequest) -> None:
    for kind, sub in _items(value, "user information"):
        if kind == MAXIMUM_LENGTH_ITEM and len(sub) == 4:
            (request.maximum_length,) = struct.unpack(">I", sub)
        elif kind == IMPLEMENTATION_CLASS_UID_ITEM:
            request.implementation_class_uid = _uid(bytes(sub))
        elif kind == IMPLEMENTATION_VERSION_NAME_ITEM:
            request.implementation_version_name = bytes(sub).decode("ascii", "replace").strip()
        elif kind == ROLE_SELECTION_ITEM:
            sop_class, rest = _sop_class_prefixed(sub, "SCP/SCU role selection")
            if len(rest) != 2:
                raise PDUError("SCP/SCU role selection: not one SCU and one SCP byte")
            request.roles[sop_class] = (bool(rest[0]), bool(rest[1]))
        elif kind == EXTENDED_NEGOTIATION_ITEM:
            sop_class, rest = _sop_class_prefixed(sub, "SOP class extended negotiation")
            request.extended[sop_class] = bytes(rest)


def _sop_class_prefixed(value: memoryview, what: str) -> tuple[str, memoryview]:
    """A (2-byte length, SOP class UID, rest) sub-item value: (UID, rest)."""
    if len(value) < 2:
        raise PDUError(f"{what}: item too short")
    (length,) = struct.unpack_from(">H", value, 0)
    if 2 + length > len(value):
        raise PDUError(f"{what}: UID runs past its item")
    return _uid(bytes(value[2:2 + length])), value[2 + length:]


def negotiate(contexts: list[PresentationContextRequest],
              accepted: Mapping[str, frozenset[str]]) -> list[ContextResult]:
    """Answer each proposed context from the ``accepted`` table (abstract syntax ->
    transfer syntaxes): the first proposed syntax we accept wins, as the
    requestor ordered them (PS3.8 leaves the choice to the acceptor; the
    proposer's order is what pynetdicom and most archives honour).
    """
    results = []
    for context in contexts:
        syntaxes = accepted.get(context.abstract_syntax)
        if syntaxes is None:
            results.append(ContextResult(context.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED,
                                         context.abstract_syntax, ""))
            continue
        chosen = next((ts for ts in context.transfer_syntaxes if ts in syntaxes), None)
        if chosen is None:
            results.append(ContextResult(context.context_id, TRANSFER_SYNTAXES_NOT_SUPPORTED,
                                         context.abstract_syntax, ""))
        else:
            results.append(ContextResult(context.context_id, ACCEPTANCE,
                                         context.abstract_syntax, chosen))
    return results


#: Roles we take as acceptor unless a service says otherwise: the requestor
#: may be SCU, not SCP (C-GET's storage classes say otherwise: there the
#: requestor takes the SCP role and we send it C-STOREs).
REQUESTOR_SCU_ONLY = (True, False)


def negotiate_roles(results: list[ContextResult], proposed: Mapping[str, tuple[bool, bool]],
                    supported: Mapping[str, tuple[bool, bool]] | None = None
                    ) -> tuple[list[ContextResult], dict[str, tuple[bool, bool]]]:
    """Answer SCP/SCU Role Selection (PS3.7 D.3.3.4) for the accepted contexts.

    ``proposed``: SOP class -> (SCU, SCP) roles the requestor asks for itself;
    ``supported``: SOP class -> the roles we let a requestor take
    (default :data:`REQUESTOR_SCU_ONLY`).  A role is granted when it is both
    proposed and supported; a context that leaves the requestor no role is
    rejected (user rejection), as pynetdicom and dcmtk do.  Returns the
    results and the role items to answer with: one per proposed SOP class
    with an accepted context (none for a SOP class not proposed, PS3.7
    D.3.3.4: the default roles apply there).
    """
    if not proposed:
        return results, {}
    supported = supported or {}
    answered: dict[str, tuple[bool, bool]] = {}
    out = []
    for result in results:
        asked = proposed.get(result.abstract_syntax)
        if result.result != ACCEPTANCE or asked is None:
            out.append(result)
            continue
        allowed = supported.get(result.abstract_syntax, REQUESTOR_SCU_ONLY)
        granted = (asked[0] and allowed[0], asked[1] and allowed[1])
        if granted == (False, False):
            out.append(ContextResult(result.context_id, USER_REJECTION,
                                     result.abstract_syntax, ""))
            continue
        answered[result.abstract_syntax] = granted
        out.append(result)
    return out, answered


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _even_uid(uid: str) -> bytes:
    """UIDs in items are not padded (PS3.8 9.3.2.2); kept as given."""
    return uid.encode("ascii")


def _role_items(roles: Mapping[str, tuple[bool, bool]] | None) -> bytes:
    """SCP/SCU Role Selection sub-items (PS3.7 D.3.3.4), one per SOP class."""
    items = []
    for sop_class, (scu, scp) in (roles or {}).items():
        uid = _even_uid(sop_class)
        items.append(_item(ROLE_SELECTION_ITEM, struct.pack(">H", len(uid)) + uid
                           + bytes((int(scu), int(scp)))))
    return b"".join(items)


def _user_information(maximum_length: int, implementation_class_uid: str,
                      implementation_version_name: str,
                      roles: Mapping[str, tuple[bool, bool]] | None = None) -> bytes:
    """The User Information item both sides send: maximum length, our identity,
    and role selection when there is any, in item type order.
    """
    return _item(USER_INFORMATION_ITEM,
                 _item(MAXIMUM_LENGTH_ITEM, struct.pack(">I", maximum_length))
                 + _item(IMPLEMENTATION_CLASS_UID_ITEM, _even_uid(implementation_class_uid))
                 + _role_items(roles)
                 + _item(IMPLEMENTATION_VERSION_NAME_ITEM,
                         implementation_version_name.encode("ascii")[:16]))


def associate_ac(request: AssociateRequest, results: list[ContextResult], maximum_length: int,
                 implementation_class_uid: str, implementation_version_name: str,
                 roles: Mapping[str, tuple[bool, bool]] | None = None) -> bytes:
    """The A-ASSOCIATE-AC for ``request`` with the negotiated ``results`` and
    role selection answers (:func:`negotiate_roles`)."""
    parts = [
        struct.pack(">HH", 1, 0), request.raw_called.ljust(16)[:16],
        request.raw_calling.ljust(16)[:16], bytes(32),
        _item(APPLICATION_CONTEXT_ITEM, _even_uid(APPLICATION_CONTEXT_NAME)),
    ]
    for result in results:
        # A rejected context still carries one transfer syntax sub-item,
        # whose value is not significant (PS3.8 9.3.3.2).
        syntax = _item(TRANSFER_SYNTAX_ITEM, _even_uid(result.transfer_syntax or
                                                       IMPLICIT_VR_LITTLE_ENDIAN))
        parts.append(_item(PRESENTATION_CONTEXT_AC_ITEM,
                           bytes((result.context_id, 0, result.result, 0)) + syntax))
    parts.append(_user_information(maximum_length, implementation_class_uid,
                                   implementation_version_name, roles))
    return _pdu(ASSOCIATE_AC, b"".join(parts))


def associate_rj(reason: tuple[int, int, int]) -> bytes:
    """An A-ASSOCIATE-RJ with (result, source, reason)."""
    return _pdu(ASSOCIATE_RJ, bytes((0, *reason)))


def release_rp() -> bytes:
    """The A-RELEASE-RP."""
    return _pdu(RELEASE_RP, bytes(4))


def abort(reason: tuple[int, int] = ABORT_UNEXPECTED_PDU) -> bytes:
    """An A-ABORT with (source, reason)."""
    return _pdu(ABORT, bytes((0, 0, *reason)))


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The PDVs of a P-DATA-TF body: (context id, control header, fragment)."""
    offset = 0
    size = len(body)
    while offset < size:
        if offset + 6 > size:
            raise PDUError("P-DATA-TF: truncated PDV header")
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 2 or offset + 4 + length > size:
            raise PDUError(f"P-DATA-TF: PDV length {length} does not fit its PDU")
        yield body[offset + 4], body[offset + 5], body[offset + 6:offset + 4 + length]
        offset += 4 + length


#: A PDV item's header: 4-byte item length, presentation context id, control header.
PDV_HEADER = 6
#: What we send at most per PDU when the peer sets no limit (0) or a larger one:
#: bounds what one PDU (and one read of a file being streamed) holds in memory.
LARGEST_SENT_PDU = 1 << 20
#: dcmtk's smallest PDU (ASC_MINIMUMPDUSIZE), sent to a peer whose offer cannot hold a PDV.
SMALLEST_USABLE_PDU = 4096


def send_limit(peer_maximum: int) -> int:
    """The largest P-DATA-TF variable field to send to a peer whose Maximum
    Length Received was ``peer_maximum``.

    0 is "no limit" (PS3.8 D.1): our own cap.  1 to 6 cannot hold even one
    PDV (its 6 header bytes and a byte of data), so no PDU could honour it:
    such a peer gets what dcmtk sends it (ASC_acknowledgeAssociation falls back
    to its 4096-byte minimum), since that is what it interoperates with in
    the field.  Anything from 7 up is honoured, up to our own cap.
    """
    if peer_maximum <= 0 or peer_maximum > LARGEST_SENT_PDU:
        return LARGEST_SENT_PDU
    if peer_maximum <= PDV_HEADER:
        return SMALLEST_USABLE_PDU
    return peer_maximum


def p_data_command(context_id: int, command: bytes, peer_maximum: int = 0) -> bytes:
    """A whole command set (a response, a C-ECHO-RQ) as P-DATA-TF PDUs within the
    peer's maximum: one PDU with one PDV unless the peer asked for less.
    """
    fragment = send_limit(peer_maximum) - PDV_HEADER
    if len(command) <= fragment:
        pdv = struct.pack(">IBB", len(command) + 2, context_id, COMMAND_BIT | LAST_BIT) + command
        return _pdu(P_DATA_TF, pdv)
    pdus = []
    for start in range(0, len(command), fragment):
        chunk = command[start:start + fragment]
        control = COMMAND_BIT | (LAST_BIT if start + fragment >= len(command) else 0)
        pdus.append(_pdu(P_DATA_TF, struct.pack(">IBB", len(chunk) + 2, context_id, control)
                         + chunk))
    return b"".join(pdus)


def p_data_pdus(context_id: int, command: bytes, data_set: bytes, max_pdu: int) -> bytes:
    """One DIMSE message as P-DATA-TF PDUs within ``max_pdu``.

    ``max_pdu`` is the peer's Maximum Length Received, as offered (0: no
    limit; :func:`send_limit` says what is sent for it).  PDVs
    are packed into as few PDUs as fit (PS3.8 9.3.5 allows several PDVs per
    PDU), so a small response is one PDU: command PDV then data set PDV.
    """
    limit = send_limit(max_pdu)
    fragment = limit - PDV_HEADER
    pdvs: list[bytes] = []
    for stream, kind in ((command, COMMAND_BIT), (data_set, 0)):
        for start in range(0, len(stream), fragment):
            chunk = stream[start:start + fragment]
            control = kind | (LAST_BIT if start + fragment >= len(stream) else 0)
            pdvs.append(struct.pack(">IBB", len(chunk) + 2, context_id, control) + chunk)
    pdus: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for pdv in pdvs:
        if current and size + len(pdv) > limit:
            pdus.append(struct.pack(">BxI", P_DATA_TF, size) + b"".join(current))
            current, size = [], 0
        current.append(pdv)
        size += len(pdv)
    if current:
        pdus.append(struct.pack(">BxI", P_DATA_TF, size) + b"".join(current))
    return b"".join(pdus)


def p_data_stream(context_id: int, command: bytes, data_set: BinaryIO, max_pdu: int,
                  group_bytes: int = 1 << 18) -> Iterator[bytes]:
    """A DIMSE message whose data set is read from a file, as groups of P-DATA-TF PDUs.

    The data set is never held whole: it is read about ``group_bytes`` at a
    time (one read for many PDUs: a 16 KiB peer PDU would otherwise mean a
    read per 16 KiB) and each group is yielded as one buffer for one large
    write, the data copied once into it (the sender's share of forwarding,
    issue 7).
    """
    yield p_data_pdus(context_id, command, b"", max_pdu)
    fragment = send_limit(max_pdu) - PDV_HEADER
    per_read = max(1, group_bytes // fragment) * fragment
    block = data_set.read(per_read)
    while block:
        following = data_set.read(per_read)
        view = memoryview(block)
        parts: list[bytes | memoryview] = []
        for start in range(0, len(block), fragment):
            chunk = view[start:start + fragment]
            control = LAST_BIT if not following and start + fragment >= len(block) else 0
            parts.append(struct.pack(">BxIIBB", P_DATA_TF, len(chunk) + 6, len(chunk) + 2,
                                     context_id, control))
            parts.append(chunk)
        yield b"".join(parts)
        block = following


# -- the requestor side (the sender's outbound associations) -------------------


def associate_rq(calling_ae: str, called_ae: str,
                 contexts: list[PresentationContextRequest], maximum_length: int,
                 implementation_class_uid: str, implementation_version_name: str,
                 roles: Mapping[str, tuple[bool, bool]] | None = None) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` and, for the SOP classes of
    ``roles``, the (SCU, SCP) roles we propose to take."""
    parts = [
        struct.pack(">HH", 1, 0),
        called_ae.encode("ascii")[:16].ljust(16), calling_ae.encode("ascii")[:16].ljust(16),
        bytes(32), _item(APPLICATION_CONTEXT_ITEM, _even_uid(APPLICATION_CONTEXT_NAME)),
    ]
    for context in contexts:
        subitems = _item(ABSTRACT_SYNTAX_ITEM, _even_uid(context.abstract_syntax)) + b"".join(
            _item(TRANSFER_SYNTAX_ITEM, _even_uid(ts)) for ts in context.transfer_syntaxes)
        parts.append(_item(PRESENTATION_CONTEXT_RQ_ITEM,
                           bytes((context.context_id, 0, 0, 0)) + subitems))
    parts.append(_user_information(maximum_length, implementation_class_uid,
                                   implementation_version_name, roles))
    return _pdu(ASSOCIATE_RQ, b"".join(parts))


@dataclass
class AssociateAccept:
    """What a requestor needs from an A-ASSOCIATE-AC."""

    #: context id -> (result, transfer syntax)
    results: dict[int, tuple[int, str]] = field(default_factory=dict)
    maximum_length: int = 0
    #: SOP class -> (SCU, SCP) roles the acceptor granted us (PS3.7 D.3.3.4).
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)


def parse_associate_ac(body: memoryview | bytes) -> AssociateAccept:
    """Decode the variable part of an A-ASSOCIATE-AC."""
    view = memoryview(body)
    if len(view) < 68:
        raise PDUError("A-ASSOCIATE-AC shorter than its fixed fields")
    accept = AssociateAccept()
    for kind, value in _items(view[68:], "A-ASSOCIATE-AC"):
        if kind == PRESENTATION_CONTEXT_AC_ITEM:
            if len(value) < 4:
                raise PDUError("presentation context item too short")
            syntax = ""
            for sub_kind, sub in _items(value[4:], "presentation context"):
                if sub_kind == TRANSFER_SYNTAX_ITEM:
                    syntax = _uid(bytes(sub))
            accept.results[value[0]] = (value[2], syntax)
        elif kind == USER_INFORMATION_ITEM:
            for sub_kind, sub in _items(value, "user information"):
                if sub_kind == MAXIMUM_LENGTH_ITEM and len(sub) == 4:
                    (accept.maximum_length,) = struct.unpack(">I", sub)
                elif sub_kind == ROLE_SELECTION_ITEM:
                    sop_class, rest = _sop_class_prefixed(sub, "SCP/SCU role selection")
                    if len(rest) != 2:
                        raise PDUError("SCP/SCU role selection: not one SCU and one SCP byte")
                    accept.roles[sop_class] = (bool(rest[0]), bool(rest[1]))
    return accept


def release_rq() -> bytes:
    """The A-RELEASE-RQ."""
    return _pdu(RELEASE_RQ, bytes(4))
