"""C-MOVE and C-GET without a socket: which objects an identifier names, and the counts.

The service (:mod:`echoes.services.retrieve`) keeps the associations; what
it decides is here, as pure functions and one small state object, tested
without a peer::

    select()        identifier keys (keyword -> text) and the SOP class's
                    root -> the level and the index filters (the unique keys
                    only, as PS3.4 C.4.2.2.1 says a retrieve is made), or
                    BadIdentifier with the reason
    items_of()      index instance documents -> what to send, in order
    SubOperations   completed / failed / warning / remaining, when a Pending
                    response is due, and the final status

Statuses (PS3.4 C.4.2.1.5, C.4.3.1.4): all sent 0x0000; some failed or
warned 0xB000 with the Failed SOP Instance UID List; none could be sent
0xA702 (dcmqrscp answers so too, checked with a destination down: "Refused:
out of resources, unable to perform sub-operations"); cancelled 0xFE00 with
the remaining count.

An identifier that names nothing archived is 0x0000 with zero sub-operations,
as dcmqrscp answers it (dcmtk 3.6.7, checked with movescu); Orthanc 1.10.1
answers 0xC000 ("Failed: unable to process", its handler throws on an unknown
resource).  Why dcmqrscp's: PS3.4 C.4.2.3.1 makes the final status a summary
of the sub-operations, and with none nothing failed; 0xA701/0xA702 name
resources, not absent data; a viewer asking for priors that are not here
should not report the archive as broken.  The requester sees 0 completed,
and the log has a WARNING line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from echoes.dicom import dimse

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

#: SOP class -> (information model, operation).
RETRIEVE_CLASSES: dict[str, tuple[str, str]] = {
    PATIENT_ROOT_MOVE: (PATIENT, "C-MOVE"),
    PATIENT_ROOT_GET: (PATIENT, "C-GET"),
    STUDY_ROOT_MOVE: (STUDY, "C-MOVE"),
    STUDY_ROOT_GET: (STUDY, "C-GET"),
}

#: Information model -> its levels, top down, and each level's unique key.
HIERARCHY: dict[str, tuple[tuple[str, str], ...]] = {
    PATIENT: ((PATIENT, "PatientID"), (STUDY, "StudyInstanceUID"),
              (SERIES, "SeriesInstanceUID"), (IMAGE, "SOPInstanceUID")),
    STUDY: ((STUDY, "StudyInstanceUID"), (SERIES, "SeriesInstanceUID"),
            (IMAGE, "SOPInstanceUID")),
}

#: Keys that must be given at a level besides its own: the study's UID below
#: STUDY level, so the index reads that study's instances and never every
#: study's (PS3.4 C.4.2.2.1 requires every unique key above; the others, when
#: absent, are not needed to find the objects, and a viewer that leaves the
#: PatientID out of a Patient Root STUDY retrieve still gets its study).
REQUIRED_ABOVE = {SERIES: ("StudyInstanceUID",), IMAGE: ("StudyInstanceUID",)}

#: Pending responses: at least after this many sub-operations or seconds (SPEC).
PENDING_EVERY_OBJECTS = 50
PENDING_EVERY_SECONDS = 1.0


class BadIdentifier(ValueError):
    """An identifier a retrieve cannot be made from (status 0xA900): the reason."""


@dataclass(frozen=True)
class Selection:
    """What one identifier asks for."""

    level: str
    #: keyword -> matching value for the index's IMAGE-level query (UID lists
    #: as ``a\\b``); only unique keys.
    filters: dict[str, str]


def _single_values(keyword: str, text: str, level_key: bool) -> str:
    values = [part.strip() for part in text.split("\\")]
    if not any(values):
        raise BadIdentifier(f"{keyword} is empty")
    if any(not value or "*" in value or "?" in value for value in values):
        raise BadIdentifier(f"{keyword} may not be empty or hold wildcards in a retrieve")
    if len(values) > 1 and (keyword == "PatientID" or not level_key):
        raise BadIdentifier(f"{keyword} must be a single value here")
    return "\\".join(values)


def select(keys: Mapping[str, str], model: str) -> Selection:
    """The level and index filters of a C-MOVE/C-GET identifier (keyword -> text).

    The Query/Retrieve Level must be one of the model's (PATIENT only in
    Patient Root); the level's unique key must be there (a list of UIDs at
    STUDY, SERIES and IMAGE level, PS3.4 C.4.2.2.1.3), without wildcards;
    the study's UID below STUDY level; other unique keys above, when given,
    narrow the selection.  Keys below the level are ignored.
    """
    level = keys.get("QueryRetrieveLevel", "").strip().upper()
    chain = HIERARCHY[model]
    levels = [name for name, _key in chain]
    if level not in levels:
        shown = level or "missing"
        raise BadIdentifier(f"QueryRetrieveLevel {shown!r} is not one of {', '.join(levels)}")
    filters: dict[str, str] = {}
    for name, keyword in chain[:levels.index(level) + 1]:
        text = keys.get(keyword, "")
        own = name == level
        if not text.strip():
            if own or keyword in REQUIRED_ABOVE.get(level, ()):
                raise BadIdentifier(f"{keyword} is required at {level} level")
            continue
        filters[keyword] = _single_values(keyword, text, own)
    return Selection(level, filters)


@dataclass(frozen=True)
class Item:
    """One object to send (an :class:`echoes.services.outbound.Outbound`)."""

    id: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    #: Its key in the object store.
    path: str


def _number(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        return 0


def items_of(documents: Iterable[Mapping]) -> list[Item]:
    """What to send for index instance documents: by study, series and instance
    number (receivers and viewers show them as they arrive), each once."""
    ordered = sorted(documents, key=lambda doc: (
        doc.get("StudyInstanceUID", ""), doc.get("SeriesInstanceUID", ""),
        _number(doc.get("InstanceNumber", "")), doc.get("SOPInstanceUID", "")))
    items: dict[str, Item] = {}
    for doc in ordered:
        uid = doc["SOPInstanceUID"]
        items.setdefault(uid, Item(uid, doc.get("SOPClassUID", ""), uid,
                                   doc.get("TransferSyntaxUID", ""), doc.get("path", "")))
    return list(items.values())


COMPLETED, WARNING, FAILED = "completed", "warning", "failed"


@dataclass
class SubOperations:
    """The counts of one C-MOVE or C-GET, and when to tell the requester.

    ``started`` and every ``now`` are the caller's clock (time.monotonic()),
    so the cadence is tested without waiting.
    """

    total: int
    started: float = 0.0
    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)
    #: Sub-operations done and the time at the last Pending response.
    told_done: int = 0
    told_at: float = 0.0

    def __post_init__(self) -> None:
        self.told_at = self.started

    @property
    def done(self) -> int:
        return self.completed + self.warning + self.failed

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def record(self, sop_instance_uid: str, result: str) -> None:
        """One sub-operation ended: COMPLETED, WARNING or FAILED."""
        if result == COMPLETED:
            self.completed += 1
        elif result == WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def fail_rest(self, sop_instance_uids: Iterable[str]) -> None:
        """Sub-operations that cannot be attempted (no association): failed."""
        for uid in sop_instance_uids:
            self.record(uid, FAILED)

    def pending_due(self, now: float) -> bool:
        """Whether a Pending response is due now: after the first sub-operation
        (a requester sees the move started), then every PENDING_EVERY_OBJECTS
        or PENDING_EVERY_SECONDS, never after the last (the final one follows)."""
        if self.remaining <= 0 or self.done == self.told_done:
            return False
        return (self.told_done == 0
                or self.done - self.told_done >= PENDING_EVERY_OBJECTS
                or now - self.told_at >= PENDING_EVERY_SECONDS)

    def heartbeat_due(self, now: float) -> bool:
        """Whether a Pending response is due with or without progress: one
        sub-operation (or the association to the destination) has taken
        PENDING_EVERY_SECONDS since the last response."""
        return self.remaining > 0 and now - self.told_at >= PENDING_EVERY_SECONDS

    def pending(self, now: float) -> dict[int, int]:
        """The counts of a Pending response (and note it was sent)."""
        self.told_done, self.told_at = self.done, now
        return self.counts(with_remaining=True)

    def counts(self, with_remaining: bool) -> dict[int, int]:
        """Command elements: the counts (remaining only where PS3.4 C.4.2.1.6 has it:
        Pending and Cancel responses)."""
        elements = {dimse.COMPLETED_SUBOPERATIONS: self.completed,
                    dimse.FAILED_SUBOPERATIONS: self.failed,
                    dimse.WARNING_SUBOPERATIONS: self.warning}
        if with_remaining:
            elements[dimse.REMAINING_SUBOPERATIONS] = self.remaining
        return elements

    def final_status(self, cancelled: bool) -> int:
        """The final response's status (see the module's docstring)."""
        if cancelled:
            return dimse.CANCEL
        if self.failed == 0 and self.warning == 0:
            return dimse.SUCCESS
        if self.completed + self.warning == 0:
            return dimse.UNABLE_TO_PERFORM_SUBOPERATIONS
        return dimse.SUBOPERATIONS_WARNING

    def final(self, cancelled: bool) -> tuple[int, dict[int, int]]:
        """(status, command elements) of the final response."""
        return self.final_status(cancelled), self.counts(with_remaining=cancelled)


#: An Explicit VR value length is 16 bits: the Failed SOP Instance UID List is
#: cut to what fits (the counts still say how many failed).
MAX_UID_LIST_BYTES = 0xFFFE


def failed_uid_list(uids: list[str]) -> tuple[str, int]:
    """The Failed SOP Instance UID List value (``a\\b``) and how many it names."""
    size = 0
    kept = []
    for uid in uids:
        size += len(uid) + (1 if kept else 0)
        if size > MAX_UID_LIST_BYTES - 1:
            break
        kept.append(uid)
    return "\\".join(kept), len(kept)
