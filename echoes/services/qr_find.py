"""Query/Retrieve C-FIND as pure functions: identifier -> query -> answers.

A C-FIND identifier of the Patient Root or Study Root information model
(PS3.4 C.6.1, C.6.2) becomes a :class:`FindQuery`: its level, the keyword
filters the index seam matches on (:meth:`echoes.index.IndexReader.query`,
built on :mod:`echoes.worklist.match`, the one matching engine) and the keys
to answer.  Every way an identifier can break the hierarchical model is a
:class:`FindError` carrying the status PS3.4 C.4.1.1.4 names.  Each matching
index document then becomes one response tree holding exactly the keys asked
for, plus QueryRetrieveLevel, the level's unique key, the unique keys above
it, RetrieveAETitle, InstanceAvailability and, when a value needs it,
SpecificCharacterSet.  No sockets, no files: :mod:`echoes.services.query`
does the talking.

Statuses: a query that breaks the hierarchy (no or an unknown
QueryRetrieveLevel, PATIENT level in Study Root, a unique key above the level
missing or not a single value) is 0xA900 "Identifier does not match SOP
Class"; an identifier that cannot be decoded, or names a Specific Character
Set no one knows, is 0xC000 ("Unable to process" range).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.charset import python_encoding
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from echoes.dicom import dataset
from echoes.dicom.dimse import CANNOT_UNDERSTAND, IDENTIFIER_DOES_NOT_MATCH
from echoes.services.find import value_text

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

#: The MOVE and GET classes of the same two models (C-MOVE/C-GET identifiers
#: follow the same levels and unique keys: :func:`parse_identifier` reads them too).
PATIENT_ROOT_MOVE, PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE, STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
_PATIENT_ROOT_LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
_STUDY_ROOT_LEVELS = (STUDY, SERIES, IMAGE)
#: Each information model's levels, top down (PS3.4 C.6.1.1, C.6.2.1), by SOP class.
MODEL_LEVELS = {
    **dict.fromkeys((PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET),
                    _PATIENT_ROOT_LEVELS),
    **dict.fromkeys((STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET), _STUDY_ROOT_LEVELS),
}
MODEL_NAMES = {
    **dict.fromkeys((PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET), "Patient Root"),
    **dict.fromkeys((STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET), "Study Root"),
}
UNIQUE_KEYS = {PATIENT: "PatientID", STUDY: "StudyInstanceUID",
               SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}

_PATIENT = {name: (name, True) for name in
            ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")}
#: Per level, the keys answered: keyword -> (index document field, matched on).
#: Counts are return keys (PS3.4 C.6.1.1.2: no matching on them).  Patient keys
#: are answered at STUDY level in both models (Study Root has them there;
#: Patient Root viewers ask them there too).
LEVEL_KEYS: dict[str, dict[str, tuple[str, bool]]] = {
    PATIENT: {**_PATIENT,
              "NumberOfPatientRelatedStudies": ("NumberOfPatientRelatedStudies", False),
              "NumberOfPatientRelatedSeries": ("NumberOfPatientRelatedSeries", False),
              "NumberOfPatientRelatedInstances": ("NumberOfPatientRelatedInstances", False)},
    STUDY: {**_PATIENT,
            **{name: (name, True) for name in (
                "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy")},
            "NumberOfStudyRelatedSeries": ("NumberOfSeries", False),
            "NumberOfStudyRelatedInstances": ("NumberOfInstances", False)},
    SERIES: {**{name: (name, True) for name in (
                "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                "SeriesDate", "BodyPartExamined")},
             "NumberOfSeriesRelatedInstances": ("NumberOfSeriesRelatedInstances", False)},
    IMAGE: {name: (name, True) for name in (
        "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns",
        "NumberOfFrames")},
}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
#: Keys that say how to read or route the message, never matched or answered as data.
_MESSAGE_KEYS = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle",
                           "InstanceAvailability"})
LATIN1, UTF8 = "ISO_IR 100", "ISO_IR 192"


class FindError(Exception):
    """A C-FIND answered with a failure status (no Pending responses)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # ErrorComment is LO


@dataclass
class FindQuery:
    """What one C-FIND asks, in the index seam's terms."""

    model: str
    level: str
    #: keyword -> DICOM matching value, for ``IndexReader.query``
    filters: dict[str, str]
    #: (tag, document field) of each key answered from a document, tag order
    answer: list[tuple[int, str]]
    #: tag -> value answered as given (the unique keys above the level)
    fixed: dict[int, str] = field(default_factory=dict)
    #: the query asked for Specific Character Set
    charset_asked: bool = False
    #: the query came in UTF-8 (answer non-ASCII text in UTF-8 then)
    utf8: bool = False
    #: how many keys the identifier held (for the log)
    key_count: int = 0

    @property
    def counts_asked(self) -> bool:
        """Whether a PATIENT query asks for counts (they need every study of the patient)."""
        return any(name.startswith("NumberOfPatientRelated") for _tag, name in self.answer)

    def matching_keys(self) -> list[str]:
        """Keywords matched on with a value (for the log: names, never values)."""
        return sorted(name for name, value in self.filters.items() if value.strip("*"))


# -- identifier -> query ------------------------------------------------------------


def check_charset(identifier: Dataset) -> list[str]:
    """The identifier's Specific Character Set terms; FindError for an unknown one."""
    element = identifier.get(SPECIFIC_CHARACTER_SET)
    if element is None:
        return []
    raw = element.value
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("ascii", "replace")
    terms = [str(term).strip() for term in (raw if isinstance(raw, MultiValue | list)
                                             else str(raw or "").split("\\"))]
    for term in terms:
        if term not in python_encoding:
            raise FindError(CANNOT_UNDERSTAND, f"unknown Specific Character Set {term[:24]!r}")
    return terms


def parse_identifier(model: str, identifier: Dataset) -> FindQuery:
    """The query of a decoded identifier of ``model`` (a FIND SOP class UID)."""
    terms = check_charset(identifier)
    try:
        values = _values(identifier)
    except Exception as exc:  # a value pydicom cannot convert (bad length, bytes)
        raise FindError(CANNOT_UNDERSTAND, undecodable(exc)) from None
    levels = MODEL_LEVELS[model]
    level = values.get("QueryRetrieveLevel", "").strip().upper()
    if not level:
        raise FindError(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel missing")
    if level not in levels:
        raise FindError(IDENTIFIER_DOES_NOT_MATCH,
                        f"QueryRetrieveLevel {level[:16]!r} not in {MODEL_NAMES[model]}")
    query = FindQuery(model, level, {}, [], charset_asked="SpecificCharacterSet" in values,
                      utf8=UTF8 in terms, key_count=len(values))
    for upper in levels[:levels.index(level)]:
        unique = UNIQUE_KEYS[upper]
        value = values.get(unique, "").strip()
        if not value or any(mark in value for mark in "*?\\"):
            raise FindError(IDENTIFIER_DOES_NOT_MATCH,
                            f"{unique} must be one value at {level} level")
        query.filters[unique] = value
        query.fixed[tag_for_keyword(unique)] = value
    known = LEVEL_KEYS[level]
    answered = {UNIQUE_KEYS[level]} | {name for name in values if name in known}
    for name in sorted(answered, key=tag_for_keyword):
        document_field, matched = known[name]
        value = values.get(name, "")
        if matched and value.strip():
            query.filters[document_field] = value
        query.answer.append((tag_for_keyword(name), document_field))
    return query


def undecodable(exc: Exception) -> str:
    """The ErrorComment (and log words) for an identifier that cannot be read:
    the exception's kind and the tag it names, never its text, which may quote
    the identifier's bytes (patient data must not reach the log at INFO)."""
    tag = re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", str(exc))
    return (f"undecodable identifier ({type(exc).__name__}"
            f"{' at ' + tag.group(0) if tag else ''})")


def _values(identifier: Dataset) -> dict[str, str]:
    """Keyword -> text of the identifier's top-level elements (sequences, private
    and unknown tags left out: nothing is matched or answered on them)."""
    values = {}
    for element in identifier:
        if element.tag.group == 0x0002 or element.tag.element == 0 or element.VR == "SQ":
            continue
        name = keyword_for_tag(element.tag)
        if name:
            values[name] = value_text(element.value)
    return values


# -- documents -> answers ------------------------------------------------------------


def patients(matched: Iterable[Mapping], every_study: Iterable[Mapping] | None) -> list[dict]:
    """PATIENT-level documents from the study summaries that matched the patient keys.

    A patient is a PatientID; its names, birth date and sex come from its most
    recently updated matching study.  With ``every_study`` (the catalog), the
    counts cover all of the patient's studies, not only the matching ones.
    """
    found: dict[str, dict] = {}
    for study in matched:
        patient_id = study.get("PatientID", "")
        kept = found.get(patient_id)
        if kept is None or study.get("updated", "") > kept["updated"]:
            found[patient_id] = {**{name: study.get(name, "") for name in _PATIENT},
                                 "updated": study.get("updated", "")}
    if every_study is not None:
        counts = {patient_id: [0, 0, 0] for patient_id in found}
        for study in every_study:
            tally = counts.get(study.get("PatientID", ""))
            if tally is not None:
                tally[0] += 1
                tally[1] += int(study.get("NumberOfSeries", 0))
                tally[2] += int(study.get("NumberOfInstances", 0))
        for patient_id, (studies, series, instances) in counts.items():
            found[patient_id].update(NumberOfPatientRelatedStudies=studies,
                                     NumberOfPatientRelatedSeries=series,
                                     NumberOfPatientRelatedInstances=instances)
    return list(found.values())


def response_tree(query: FindQuery, document: Mapping, ae_title: str) -> dict[int, str]:
    """The identifier of one match: exactly what is answered, as text."""
    tree = {QUERY_RETRIEVE_LEVEL: query.level, RETRIEVE_AE_TITLE: ae_title,
            INSTANCE_AVAILABILITY: "ONLINE", **query.fixed}
    for tag, document_field in query.answer:
        value = document.get(document_field)
        if value is None:
            tree[tag] = ""
        elif isinstance(value, list):
            tree[tag] = "\\".join(str(part) for part in value)
        else:
            tree[tag] = str(value)
    return tree


def encode_response(query: FindQuery, tree: dict[int, str], syntax: str) -> bytes:
    """The identifier's bytes, in the character set its text needs.

    ASCII needs none (SpecificCharacterSet answered empty if asked); other
    text goes as ISO_IR 100 when Latin-1 holds it and the query did not come
    in UTF-8, else as ISO_IR 192: an ISO_IR 100 viewer reads its own names
    back, and nothing is ever lost to an encoding that cannot hold it.
    """
    texts = [value for value in tree.values() if not value.isascii()]
    if not texts:
        if query.charset_asked:
            tree[SPECIFIC_CHARACTER_SET] = ""
        return dataset.encode_tree(tree, {}, syntax, "ascii")
    term, codec = UTF8, "utf-8"
    if not query.utf8:
        try:
            for text in texts:
                text.encode("latin-1")
            term, codec = LATIN1, "latin-1"
        except UnicodeEncodeError:
            pass
    tree[SPECIFIC_CHARACTER_SET] = term
    return dataset.encode_tree(tree, {}, syntax, codec)
