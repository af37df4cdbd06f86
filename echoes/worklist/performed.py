"""Modality Performed Procedure Step rules (PS3.4 F.7), as tables and pure functions.

An MPPS instance is kept as a DICOM JSON object (PS3.18 F.2: tag "GGGGEEEE"
-> {"vr", "Value"}), the form a RIS reads from ``mpps_dir``.  What an
N-CREATE must carry, which state an N-SET may move to, and which worklist
items a performed step hides are decided here on those dicts, without a
socket or a file: the service (:mod:`echoes.services.mpps`) only decodes,
asks, and writes.  Each decision is a :class:`Verdict`: the DIMSE status
(0 = accept), the words for the Error Comment, the offending tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: A DICOM JSON data set: "GGGGEEEE" -> {"vr": ..., "Value": [...]}.
JsonDataset = dict[str, Any]

# -- tags (as DICOM JSON keys) -----------------------------------------------------

STATUS = "00400252"  # Performed Procedure Step Status
SCHEDULED_STEP_ATTRIBUTES = "00400270"  # Scheduled Step Attributes Sequence
STUDY_INSTANCE_UID = "0020000D"
ACCESSION_NUMBER = "00080050"
SCHEDULED_STEP_ID = "00400009"
SCHEDULED_STEP_SEQUENCE = "00400100"  # in a worklist item

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
#: States no N-SET may leave (PS3.4 F.7.2.2.2).
FINAL_STATES = frozenset({COMPLETED, DISCONTINUED})
#: Current state -> the states an N-SET may set (PS3.4 F.7.2.2, Table F.7.2-1).
TRANSITIONS: dict[str, frozenset[str]] = {
    IN_PROGRESS: frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED}),
    COMPLETED: frozenset(),
    DISCONTINUED: frozenset(),
}

#: Type 1 attributes of an N-CREATE (PS3.4 Table F.7.2-1, "N-CREATE SCU: 1"):
#: present with a value, else 0x0120 (absent) or 0x0121 (empty).  Performed
#: Procedure Step Status is checked on its own (0x0120 absent, 0x0106 not IN
#: PROGRESS).
CREATE_REQUIRED: tuple[str, ...] = (
    "00400253",  # Performed Procedure Step ID
    "00400241",  # Performed Station AE Title
    "00400244",  # Performed Procedure Step Start Date
    "00400245",  # Performed Procedure Step Start Time
    "00080060",  # Modality
)
#: Type 1 inside each Scheduled Step Attributes Sequence item.
CREATE_REQUIRED_IN_STEP: tuple[str, ...] = (STUDY_INSTANCE_UID,)
#: Attributes an N-SET may not change (PS3.4 Table F.7.2-1: "Not allowed"
#: for N-SET): the patient and scheduling identity of the step.  The same
#: value sent again is accepted (it changes nothing).
SET_NOT_ALLOWED: frozenset[str] = frozenset({
    SCHEDULED_STEP_ATTRIBUTES,
    "00100010", "00100020", "00100030", "00100040",  # patient name, ID, birth date, sex
    "00081120",  # Referenced Patient Sequence
    "00400253", "00400241", "00400244", "00400245",  # step ID, station, start
    "00080060",  # Modality
})

SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
#: N-SET of an attribute the SCU may not set (PS3.7 C.4.4: 0x0105 "No such attribute"
#: is for unknown ones; the standard answers a not-allowed one with 0x0106 "Invalid
#: attribute value" in practice -- dcm4chee does the same).
NOT_ALLOWED = INVALID_ATTRIBUTE_VALUE


@dataclass(frozen=True)
class Verdict:
    """The answer to one request: status (0 accepted), Error Comment, offending tags."""

    status: int
    comment: str = ""
    offending: tuple[int, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == SUCCESS


ACCEPTED = Verdict(SUCCESS)


def _values(data: Mapping[str, Any], tag: str) -> list[Any] | None:
    """The Value list of ``tag`` (None when the attribute is absent, [] when empty)."""
    element = data.get(tag)
    if element is None:
        return None
    return list(element.get("Value") or [])


def text(data: Mapping[str, Any], tag: str) -> str:
    """The first value of ``tag`` as text ("" when absent or empty)."""
    values = _values(data, tag)
    if not values or values[0] is None:
        return ""
    value = values[0]
    if isinstance(value, dict):  # a person name
        return str(value.get("Alphabetic", ""))
    return str(value).strip()


def status_of(data: Mapping[str, Any]) -> str:
    """The Performed Procedure Step Status ("" when there is none)."""
    return text(data, STATUS).upper()


def _tag(key: str) -> int:
    return int(key, 16)


def check_create(data: Mapping[str, Any]) -> Verdict:
    """Whether an N-CREATE's attribute list may create an instance (PS3.4 F.7.2.1)."""
    status = _values(data, STATUS)
    if status is None:
        return Verdict(MISSING_ATTRIBUTE, "Performed Procedure Step Status missing",
                       (_tag(STATUS),))
    if status_of(data) != IN_PROGRESS:
        return Verdict(INVALID_ATTRIBUTE_VALUE,
                       f"N-CREATE must be IN PROGRESS, not {status_of(data)!r}",
                       (_tag(STATUS),))
    for tag in CREATE_REQUIRED:
        values = _values(data, tag)
        if values is None:
            return Verdict(MISSING_ATTRIBUTE, f"({tag[:4]},{tag[4:]}) missing", (_tag(tag),))
        if not text(data, tag):
            return Verdict(MISSING_ATTRIBUTE_VALUE, f"({tag[:4]},{tag[4:]}) empty",
                           (_tag(tag),))
    steps = _values(data, SCHEDULED_STEP_ATTRIBUTES)
    if not steps:
        return Verdict(MISSING_ATTRIBUTE, "Scheduled Step Attributes Sequence missing",
                       (_tag(SCHEDULED_STEP_ATTRIBUTES),))
    for step in steps:
        for tag in CREATE_REQUIRED_IN_STEP:
            if not text(step or {}, tag):
                return Verdict(MISSING_ATTRIBUTE_VALUE,
                               f"Scheduled Step Attributes Sequence: ({tag[:4]},{tag[4:]}) "
                               "missing or empty", (_tag(SCHEDULED_STEP_ATTRIBUTES),))
    return ACCEPTED


def check_set(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> Verdict:
    """Whether an N-SET's modification list may change ``current`` (None: unknown UID)."""
    if current is None:
        return Verdict(NO_SUCH_OBJECT_INSTANCE, "no such MPPS instance")
    state = status_of(current)
    if state in FINAL_STATES:
        return Verdict(PROCESSING_FAILURE,
                       f"performed procedure step already {state}: no more changes")
    # Sent again unchanged (modalities that send the whole data set) is no change.
    forbidden = sorted(tag for tag in set(changes) & SET_NOT_ALLOWED
                       if changes[tag] != current.get(tag))
    if forbidden:
        return Verdict(NOT_ALLOWED, "N-SET may not change "
                       + ", ".join(f"({t[:4]},{t[4:]})" for t in forbidden),
                       tuple(_tag(t) for t in forbidden))
    if STATUS in changes:
        wanted = status_of(changes)
        if wanted not in TRANSITIONS.get(state, frozenset()):
            return Verdict(INVALID_ATTRIBUTE_VALUE,
                           f"cannot go from {state or 'no status'} to {wanted or 'empty'}",
                           (_tag(STATUS),))
    return ACCEPTED


def merged(current: Mapping[str, Any], changes: Mapping[str, Any]) -> JsonDataset:
    """The instance after an N-SET: each attribute of the modification list
    replaces the one it names, whole (a sequence too: PS3.4 F.7.2.2.1)."""
    result = dict(current)
    result.update(changes)
    return dict(sorted(result.items()))


# -- the worklist items a performed step hides -------------------------------------

#: One scheduled step as an MPPS references it and a worklist item offers it:
#: (Scheduled Procedure Step ID, Study Instance UID, Accession Number).
StepKey = tuple[str, str, str]


def referenced_steps(mpps: Mapping[str, Any]) -> list[StepKey]:
    """The scheduled steps an MPPS names; an unscheduled one (no step ID) names none."""
    keys = []
    for step in _values(mpps, SCHEDULED_STEP_ATTRIBUTES) or []:
        step = step or {}
        step_id = text(step, SCHEDULED_STEP_ID)
        if step_id:
            keys.append((step_id, text(step, STUDY_INSTANCE_UID), text(step, ACCESSION_NUMBER)))
    return keys


#: What the worklist checks an item against: ("study", step ID, Study Instance
#: UID) and ("accession", step ID, Accession Number) of every performed step,
#: non-empty values only, so a lookup is two set probes per item step.
Performed = frozenset[tuple[str, str, str]]


def hidden_steps(instances: Iterable[Mapping[str, Any]]) -> Performed:
    """The steps that COMPLETED or DISCONTINUED instances have performed."""
    keys: set[tuple[str, str, str]] = set()
    for mpps in instances:
        if status_of(mpps) not in FINAL_STATES:
            continue
        for step_id, study, accession in referenced_steps(mpps):
            if study:
                keys.add(("study", step_id, study))
            if accession:
                keys.add(("accession", step_id, accession))
    return frozenset(keys)


def _tree_values(tree: Mapping[int, Any], tag: int) -> str:
    value = tree.get(tag)
    return value.strip() if isinstance(value, str) else ""


def item_steps(tree: Mapping[int, Any]) -> Iterator[StepKey]:
    """The step keys of a worklist item (a tree: tag -> text or list of trees)."""
    study = _tree_values(tree, int(STUDY_INSTANCE_UID, 16))
    accession = _tree_values(tree, int(ACCESSION_NUMBER, 16))
    steps = tree.get(int(SCHEDULED_STEP_SEQUENCE, 16))
    for step in steps if isinstance(steps, list) else []:
        step_id = _tree_values(step, int(SCHEDULED_STEP_ID, 16))
        if step_id:
            yield (step_id, study, accession)


def is_performed(tree: Mapping[int, Any], hidden: Performed) -> bool:
    """Whether a worklist item's step was performed: same step ID, and the same
    Study Instance UID or the same Accession Number (both non-empty)."""
    if not hidden:
        return False
    return any(("study", step_id, study) in hidden or ("accession", step_id, accession) in hidden
               for step_id, study, accession in item_steps(tree))


#: State precedence when several MPPS name one step (a final one wins).
_RANK = {IN_PROGRESS: 1, DISCONTINUED: 2, COMPLETED: 3}


def step_states(instances: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], str]:
    """For the Browser: ("study"|"accession", step ID, value) -> the MPPS state
    of the steps the instances name (the most advanced when several do)."""
    states: dict[tuple[str, str, str], str] = {}
    for mpps in instances:
        state = status_of(mpps)
        if state not in _RANK:
            continue
        for step_id, study, accession in referenced_steps(mpps):
            for key in (("study", step_id, study), ("accession", step_id, accession)):
                if key[2] and _RANK[state] > _RANK.get(states.get(key, ""), 0):
                    states[key] = state
    return states


def state_of_step(step_id: str, study: str, accession: str,
                  states: Mapping[tuple[str, str, str], str]) -> str:
    """The MPPS state of one worklist step ("" when no MPPS names it)."""
    if not step_id:
        return ""
    found = [states.get(("study", step_id, study), "") if study else "",
             states.get(("accession", step_id, accession), "") if accession else ""]
    return max(found, key=lambda state: _RANK.get(state, 0))
