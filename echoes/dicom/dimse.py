"""DIMSE command sets and statuses (PS3.7 section 9, 10 and Annex E), as tables.

A command set is a few group 0000 elements, always Implicit VR Little
Endian (PS3.7 6.3.1).  :data:`ELEMENTS` says each element's VR,
:data:`MESSAGES` which elements each request and response carries, and
:func:`command_set` / :func:`parse_command` turn a mapping of element ->
value into bytes and back.  Building a message is filling a dict; nothing
here knows sockets or PDUs (:mod:`echoes.dicom.pdu` frames the result).

pynetdicom builds each command set through a pydicom Dataset: about a
millisecond per message, which cost more than the message itself (issue 7).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

# -- statuses (PS3.7 Annex C; PS3.4 B.2.3, C.4.1.1.4, K.4.1.1.4) ------------------

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
#: Storage: data set does not match SOP class; Find: identifier does not match.
DOES_NOT_MATCH_SOP_CLASS = 0xA900
IDENTIFIER_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
#: C-MOVE / C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4): sub-operations could not all
#: be done, none could, the Move Destination is unknown.
SUBOPERATIONS_WARNING = 0xB000
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
#: The N-services' failures (PS3.7 C.4, as MPPS uses them: PS3.4 F.7.2).
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION_TYPE = 0x0123
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121

# -- command set elements (group 0000), PS3.7 E.1 and E.2 ------------------------

GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS = 0x0002
REQUESTED_SOP_CLASS = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
DATA_SET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
ERROR_ID = 0x0903
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_INSTANCE = 0x1001
EVENT_TYPE_ID = 0x1002
ATTRIBUTE_IDENTIFIERS = 0x1005
ACTION_TYPE_ID = 0x1008
REMAINING_SUBOPERATIONS = 0x1020
COMPLETED_SUBOPERATIONS = 0x1021
FAILED_SUBOPERATIONS = 0x1022
WARNING_SUBOPERATIONS = 0x1023
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

#: element -> (keyword, VR)
ELEMENTS: dict[int, tuple[str, str]] = {
    GROUP_LENGTH: ("CommandGroupLength", "UL"),
    AFFECTED_SOP_CLASS: ("AffectedSOPClassUID", "UI"),
    REQUESTED_SOP_CLASS: ("RequestedSOPClassUID", "UI"),
    COMMAND_FIELD: ("CommandField", "US"),
    MESSAGE_ID: ("MessageID", "US"),
    MESSAGE_ID_RESPONDED_TO: ("MessageIDBeingRespondedTo", "US"),
    MOVE_DESTINATION: ("MoveDestination", "AE"),
    PRIORITY: ("Priority", "US"),
    DATA_SET_TYPE: ("CommandDataSetType", "US"),
    STATUS: ("Status", "US"),
    OFFENDING_ELEMENT: ("OffendingElement", "AT"),
    ERROR_COMMENT: ("ErrorComment", "LO"),
    ERROR_ID: ("ErrorID", "US"),
    AFFECTED_SOP_INSTANCE: ("AffectedSOPInstanceUID", "UI"),
    REQUESTED_SOP_INSTANCE: ("RequestedSOPInstanceUID", "UI"),
    EVENT_TYPE_ID: ("EventTypeID", "US"),
    ATTRIBUTE_IDENTIFIERS: ("AttributeIdentifierList", "AT"),
    ACTION_TYPE_ID: ("ActionTypeID", "US"),
    REMAINING_SUBOPERATIONS: ("NumberOfRemainingSuboperations", "US"),
    COMPLETED_SUBOPERATIONS: ("NumberOfCompletedSuboperations", "US"),
    FAILED_SUBOPERATIONS: ("NumberOfFailedSuboperations", "US"),
    WARNING_SUBOPERATIONS: ("NumberOfWarningSuboperations", "US"),
    MOVE_ORIGINATOR_AE: ("MoveOriginatorApplicationEntityTitle", "AE"),
    MOVE_ORIGINATOR_MESSAGE_ID: ("MoveOriginatorMessageID", "US"),
}

# -- command fields (PS3.7 E.1, E.2) ---------------------------------------------

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF
#: The bit of the command field that marks a response.
RESPONSE_BIT = 0x8000

#: Command Data Set Type (PS3.7 E.1): any value but 0x0101 means a data set follows.
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001
MEDIUM_PRIORITY = 0x0000

_C_RSP = (AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID_RESPONDED_TO, DATA_SET_TYPE, STATUS,
          ERROR_COMMENT, OFFENDING_ELEMENT, ERROR_ID)
_N_RSP = (AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID_RESPONDED_TO, DATA_SET_TYPE, STATUS,
          AFFECTED_SOP_INSTANCE, ERROR_COMMENT, OFFENDING_ELEMENT, ERROR_ID)
_SUBOPERATIONS = (REMAINING_SUBOPERATIONS, COMPLETED_SUBOPERATIONS, FAILED_SUBOPERATIONS,
                  WARNING_SUBOPERATIONS)

#: command field -> (name, the elements the message may carry), PS3.7 9.3 and 10.3.
MESSAGES: dict[int, tuple[str, frozenset[int]]] = {
    C_STORE_RQ: ("C-STORE-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, PRIORITY, DATA_SET_TYPE,
        AFFECTED_SOP_INSTANCE, MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_MESSAGE_ID))),
    C_STORE_RSP: ("C-STORE-RSP", frozenset((*_C_RSP, AFFECTED_SOP_INSTANCE))),
    C_FIND_RQ: ("C-FIND-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, PRIORITY, DATA_SET_TYPE))),
    C_FIND_RSP: ("C-FIND-RSP", frozenset(_C_RSP)),
    C_GET_RQ: ("C-GET-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, PRIORITY, DATA_SET_TYPE))),
    C_GET_RSP: ("C-GET-RSP", frozenset((*_C_RSP, *_SUBOPERATIONS))),
    C_MOVE_RQ: ("C-MOVE-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, PRIORITY, DATA_SET_TYPE,
        MOVE_DESTINATION))),
    C_MOVE_RSP: ("C-MOVE-RSP", frozenset((*_C_RSP, *_SUBOPERATIONS))),
    C_ECHO_RQ: ("C-ECHO-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE))),
    C_ECHO_RSP: ("C-ECHO-RSP", frozenset(_C_RSP)),
    C_CANCEL_RQ: ("C-CANCEL-RQ", frozenset((
        COMMAND_FIELD, MESSAGE_ID_RESPONDED_TO, DATA_SET_TYPE))),
    N_EVENT_REPORT_RQ: ("N-EVENT-REPORT-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE, AFFECTED_SOP_INSTANCE,
        EVENT_TYPE_ID))),
    N_EVENT_REPORT_RSP: ("N-EVENT-REPORT-RSP", frozenset((*_N_RSP, EVENT_TYPE_ID))),
    N_GET_RQ: ("N-GET-RQ", frozenset((
        REQUESTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE, REQUESTED_SOP_INSTANCE,
        ATTRIBUTE_IDENTIFIERS))),
    N_GET_RSP: ("N-GET-RSP", frozenset(_N_RSP)),
    N_SET_RQ: ("N-SET-RQ", frozenset((
        REQUESTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE,
        REQUESTED_SOP_INSTANCE))),
    N_SET_RSP: ("N-SET-RSP", frozenset(_N_RSP)),
    N_ACTION_RQ: ("N-ACTION-RQ", frozenset((
        REQUESTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE, REQUESTED_SOP_INSTANCE,
        ACTION_TYPE_ID))),
    N_ACTION_RSP: ("N-ACTION-RSP", frozenset((*_N_RSP, ACTION_TYPE_ID))),
    N_CREATE_RQ: ("N-CREATE-RQ", frozenset((
        AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE, AFFECTED_SOP_INSTANCE))),
    N_CREATE_RSP: ("N-CREATE-RSP", frozenset(_N_RSP)),
    N_DELETE_RQ: ("N-DELETE-RQ", frozenset((
        REQUESTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE,
        REQUESTED_SOP_INSTANCE))),
    N_DELETE_RSP: ("N-DELETE-RSP", frozenset(_N_RSP)),
}

#: Text padding by VR (UI with NUL, the rest with a space); LO values are cut at 64.
_PADDING = {"UI": b"\x00", "AE": b" ", "LO": b" "}
_MAX_TEXT = {"AE": 16, "LO": 64}
_VR = {element: vr for element, (_keyword, vr) in ELEMENTS.items()}
#: A whole US element (tag, length 2, value) and a header alone: one pack each.
_US_ELEMENT = struct.Struct("<HHIH")
_HEADER = struct.Struct("<HHI")
_GROUP_LENGTH = struct.Struct("<HHII")


def _value(vr: str, value: str | int | tuple[int, ...] | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if vr == "UL":
        return struct.pack("<I", value)
    if vr == "AT":
        tags = (value,) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
        return b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in tags)
    data = str(value).encode("ascii", "replace")[:_MAX_TEXT.get(vr, 64)]
    return data + _PADDING[vr] if len(data) % 2 else data


def command_set(values: Mapping[int, str | int | tuple[int, ...] | bytes | None]) -> bytes:
    """A command set's bytes: the elements of ``values`` (element -> value; None
    and "" left out) in ascending order, after their group length.

    On every object's path (each C-STORE-RQ and -RSP): US values, most of a
    command set, are packed whole in one call.
    """
    parts = []
    for element in sorted(values):
        value = values[element]
        if value is None or value == "":
            continue
        vr = _VR[element]
        if vr == "US":
            parts.append(_US_ELEMENT.pack(0x0000, element, 2, value))
            continue
        data = _value(vr, value)  # type: ignore[arg-type]
        parts.append(_HEADER.pack(0x0000, element, len(data)))
        parts.append(data)
    body = b"".join(parts)
    return _GROUP_LENGTH.pack(0x0000, GROUP_LENGTH, 4, len(body)) + body


def message(command_field: int, **values: str | int | tuple[int, ...] | None) -> bytes:
    """The command set of one message of :data:`MESSAGES` by keyword arguments named
    as :data:`ELEMENTS`' keywords (``message(C_ECHO_RQ, AffectedSOPClassUID=..., ...)``);
    ValueError for an element the message does not carry.
    """
    name, allowed = MESSAGES[command_field]
    by_keyword = {keyword: element for element, (keyword, _vr) in ELEMENTS.items()}
    elements: dict[int, object] = {COMMAND_FIELD: command_field}
    for keyword, value in values.items():
        element = by_keyword.get(keyword)
        if element is None or element not in allowed:
            raise ValueError(f"{name} has no {keyword}")
        elements[element] = value
    elements.setdefault(DATA_SET_TYPE, NO_DATA_SET)
    return command_set(elements)  # type: ignore[arg-type]


def store_request_command(sop_class: str, sop_instance: str, message_id: int,
                          originator: tuple[str, int] | None = None) -> bytes:
    """The command set of a C-STORE-RQ with a data set; ``originator`` (AE title,
    message ID) for a C-MOVE's sub-operation (PS3.7 9.3.1.1)."""
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_STORE_RQ,
                        MESSAGE_ID: message_id, PRIORITY: MEDIUM_PRIORITY,
                        DATA_SET_TYPE: DATA_SET_PRESENT, AFFECTED_SOP_INSTANCE: sop_instance,
                        MOVE_ORIGINATOR_AE: originator[0] if originator else None,
                        MOVE_ORIGINATOR_MESSAGE_ID: originator[1] if originator else None})


def echo_request_command(sop_class: str, message_id: int) -> bytes:
    """The command set of a C-ECHO-RQ (no data set), for the Browser's verify button."""
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_ECHO_RQ,
                        MESSAGE_ID: message_id, DATA_SET_TYPE: NO_DATA_SET})


def find_response_command(sop_class: str, message_id: int, status: int,
                          has_identifier: bool) -> bytes:
    """The command set of a C-FIND-RSP."""
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: C_FIND_RSP,
                        MESSAGE_ID_RESPONDED_TO: message_id,
                        DATA_SET_TYPE: DATA_SET_PRESENT if has_identifier else NO_DATA_SET,
                        STATUS: status})


def n_create_request_command(sop_class: str, message_id: int, sop_instance: str = "") -> bytes:
    """The command set of an N-CREATE-RQ with its attribute list; without
    ``sop_instance`` the SCP chooses the Affected SOP Instance UID (PS3.7 10.1.5)."""
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_CREATE_RQ,
                        MESSAGE_ID: message_id, DATA_SET_TYPE: DATA_SET_PRESENT,
                        AFFECTED_SOP_INSTANCE: sop_instance})


def n_set_request_command(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """The command set of an N-SET-RQ with its modification list (PS3.7 10.1.3)."""
    return command_set({REQUESTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_SET_RQ,
                        MESSAGE_ID: message_id, DATA_SET_TYPE: DATA_SET_PRESENT,
                        REQUESTED_SOP_INSTANCE: sop_instance})


def n_event_report_request_command(sop_class: str, sop_instance: str, message_id: int,
                                   event_type: int) -> bytes:
    """The command set of an N-EVENT-REPORT-RQ with its event information
    (PS3.7 10.1.1; Storage Commitment's result, PS3.4 J.3.3)."""
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: N_EVENT_REPORT_RQ,
                        MESSAGE_ID: message_id, DATA_SET_TYPE: DATA_SET_PRESENT,
                        AFFECTED_SOP_INSTANCE: sop_instance, EVENT_TYPE_ID: event_type})


def request_sop_class(elements: dict[int, bytes]) -> str:
    """The SOP class a request is about: Affected (C-*, N-CREATE, N-EVENT-REPORT)
    or Requested (N-SET, N-GET, N-ACTION, N-DELETE) SOP Class UID."""
    return (command_uid(elements, AFFECTED_SOP_CLASS)
            or command_uid(elements, REQUESTED_SOP_CLASS))


def request_sop_instance(elements: dict[int, bytes]) -> str:
    """The SOP instance a request is about, Affected or Requested ("" when none:
    an N-CREATE leaving the UID to the SCP)."""
    return (command_uid(elements, AFFECTED_SOP_INSTANCE)
            or command_uid(elements, REQUESTED_SOP_INSTANCE))


def response_command(command_field: int, sop_class: str, message_id: int, status: int,
                     sop_instance: str | None = None, error_comment: str = "",
                     offending: tuple[int, ...] = ()) -> bytes:
    """The command set of a response without a data set (C-STORE-RSP,
    C-ECHO-RSP, N-CREATE-RSP, N-SET-RSP ...), with an Error Comment for a
    failure status.  An N-service's response names its SOP class and instance
    as *Affected* whichever the request named (PS3.7 10.3.3, 10.3.5), and the
    tags a refusal is about as Offending Element (0x0106, 0x0120 ...).
    """
    return command_set({AFFECTED_SOP_CLASS: sop_class, COMMAND_FIELD: command_field,
                        MESSAGE_ID_RESPONDED_TO: message_id, DATA_SET_TYPE: NO_DATA_SET,
                        STATUS: status, ERROR_COMMENT: error_comment,
                        AFFECTED_SOP_INSTANCE: sop_instance or "",
                        OFFENDING_ELEMENT: offending or None})


def has_data_set(elements: dict[int, bytes]) -> bool:
    """Whether a parsed command set announces a data set."""
    return command_us(elements, DATA_SET_TYPE) != NO_DATA_SET


def is_request(elements: dict[int, bytes]) -> bool:
    """Whether a parsed command set is a request that gets a response (not a
    response, not a C-CANCEL, not without a command field)."""
    field = command_us(elements, COMMAND_FIELD)
    return field >= 0 and not field & RESPONSE_BIT and field != C_CANCEL_RQ


def parse_command(data: bytes) -> dict[int, bytes]:
    """The elements of a command set (Implicit VR Little Endian, group 0000),
    by element number, values raw.  Raises ValueError when it is malformed.
    """
    view = memoryview(data)
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(view):
        if offset + 8 > len(view):
            raise ValueError("truncated command element")
        group, element, length = struct.unpack_from("<HHI", view, offset)
        end = offset + 8 + length
        if group != 0x0000 or end > len(view):
            raise ValueError(f"bad command element ({group:04X},{element:04X})")
        elements[element] = bytes(view[offset + 8:end])
        offset = end
    return elements


def command_us(elements: dict[int, bytes], element: int, default: int = -1) -> int:
    """A US value of a parsed command set (``default`` when absent or malformed)."""
    value = elements.get(element)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else default


def command_uid(elements: dict[int, bytes], element: int) -> str:
    """A UI value of a parsed command set, without padding ("" when absent)."""
    return elements.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")


def command_text(elements: dict[int, bytes], element: int) -> str:
    """A text value (AE, LO) of a parsed command set, without padding."""
    return elements.get(element, b"").decode("ascii", "replace").strip()
