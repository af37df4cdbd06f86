"""QIDO-RS query parameters -> the index seam's level, filters and answer fields.

Why pure: the parameters of PS3.18 8.3.4 (attribute matching by keyword or
tag, ``includefield``, ``limit``, ``offset``, ``fuzzymatching``) have many
small rules, and each one is a microsecond test here.  Matching itself is
not done here: the filters go to :meth:`echoes.index.IndexReader.query`,
built on the one matching engine of C-FIND (:mod:`echoes.worklist.match`),
so QIDO and C-FIND answer alike.

Values arrive percent-decoded (the WSGI layer does it).  A UID list is
accepted as ``1.2,1.3`` (PS3.18 8.3.4.1), as a repeated parameter or with
DICOM's backslash; any other attribute given twice is refused.  A parameter
that is neither a reserved word nor a DICOM attribute is a 400 that names
it (:class:`BadQuery`), as is an attribute the index cannot match at the
level asked.  ``fuzzymatching=true`` is allowed and ignored with a Warning
(PS3.18 8.3.4.2: only literal matching is done).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from echoes.index.base import IMAGE, LEVEL_KEYS, SERIES, STUDY, STUDY_KEYS

#: URL resource -> the index seam's level.
RESOURCE_LEVELS = {"studies": STUDY, "series": SERIES, "instances": IMAGE}

FUZZY_WARNING = ("299 echoes: The fuzzymatching parameter is not supported. "
                 "Only literal matching has been performed.")

#: What each level returns without ``includefield`` (PS3.18 Tables 10.6.3-3 to -5,
#: the attributes the index keeps), besides the keys that were matched.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
            "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
            "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    SERIES: ("StudyInstanceUID", "Modality", "SeriesDescription", "SeriesInstanceUID",
             "SeriesNumber", "SeriesDate", "BodyPartExamined",
             "NumberOfSeriesRelatedInstances"),
    IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
            "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}

#: Attributes an answer of each level can hold: the index's documents, with
#: the counts named as in PS3.18 (see :func:`answer_document`).
LEVEL_FIELDS: dict[str, frozenset[str]] = {
    STUDY: frozenset(STUDY_KEYS | {"NumberOfStudyRelatedSeries",
                                   "NumberOfStudyRelatedInstances"}),
    SERIES: frozenset(LEVEL_KEYS[SERIES] | STUDY_KEYS | {"NumberOfSeriesRelatedInstances"}),
    IMAGE: frozenset(LEVEL_KEYS[IMAGE] - {"TransferSyntaxUID"}),
}

RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}\Z")


class BadQuery(ValueError):
    """A query the server refuses (400): the message names the parameter."""


@dataclass(frozen=True)
class Search:
    """One QIDO-RS search, ready for the index seam."""

    level: str
    #: keyword -> DICOM matching value (``""`` universal, ``DOE*``, ``1.2\\1.3``, ``A-B``)
    filters: dict[str, str]
    #: keywords the answer holds (None: every one the index keeps, ``includefield=all``)
    fields: frozenset[str] | None
    limit: int | None = None
    offset: int = 0
    warnings: tuple[str, ...] = field(default=())


def keyword_of(attribute: str) -> str | None:
    """The keyword of an attribute named by keyword or by 8 hex digits (None: not DICOM)."""
    if _TAG.match(attribute):
        return keyword_for_tag(int(attribute, 16)) or None
    return attribute if tag_for_keyword(attribute) is not None else None


def _vr(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else ""


def _count(name: str, text: str) -> int:
    if not text.isdigit():
        raise BadQuery(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


def parse(level: str, params: Iterable[tuple[str, str]],
          path_uids: Mapping[str, str] | None = None) -> Search:
    """The :class:`Search` for the query parameters ``params`` (name, value pairs in
    order, repeated names kept) at ``level``; ``path_uids`` are the UIDs of the URL
    (``/studies/{StudyInstanceUID}/series``), which the query cannot widen.
    """
    values: dict[str, list[str]] = {}
    includes: list[str] = []
    limit: int | None = None
    offset = 0
    warnings: list[str] = []
    matchable = LEVEL_KEYS[level] | STUDY_KEYS
    for name, value in params:
        if name == "includefield":
            includes.extend(part.strip() for part in value.split(",") if part.strip())
        elif name == "limit":
            limit = _count(name, value) or None  # 0: no limit, as Orthanc reads it
        elif name == "offset":
            offset = _count(name, value)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadQuery(f"fuzzymatching must be true or false, got {value!r}")
            if value == "true" and FUZZY_WARNING not in warnings:
                warnings.append(FUZZY_WARNING)
        elif "." in name and all(_TAG.match(part) or keyword_of(part)
                                 for part in name.split(".")):
            raise BadQuery(f"sequence matching is not supported: {name}")
        else:
            keyword = keyword_of(name)
            if keyword is None:
                raise BadQuery(f"unknown query parameter: {name}")
            if keyword not in matchable:
                raise BadQuery(f"{name} cannot be matched at {level} level "
                               f"(the index does not keep it)")
            values.setdefault(keyword, []).append(value)
    filters: dict[str, str] = {}
    for keyword, given in values.items():
        if _vr(keyword) == "UI":
            uids = [uid.strip() for text in given for uid in re.split(r"[,\\]", text)]
            filters[keyword] = "\\".join(uid for uid in uids if uid)
        elif len(given) > 1:
            raise BadQuery(f"{keyword} is given {len(given)} times (only UIDs take a list)")
        else:
            filters[keyword] = given[0]
    for keyword, uid in (path_uids or {}).items():
        filters[keyword] = uid
    return Search(level, filters, _fields(level, includes, filters), limit, offset,
                  tuple(warnings))


def _fields(level: str, includes: list[str], filters: Mapping[str, str]) -> frozenset[str] | None:
    chosen = set(DEFAULT_FIELDS[level]) | set(filters)
    for name in includes:
        if name == "all":
            return None
        keyword = keyword_of(name)
        if keyword is None:
            raise BadQuery(f"unknown includefield: {name}")
        chosen.add(keyword)  # one the index does not keep is simply absent
    return frozenset(chosen)


#: Study attributes a series answer can carry (its study's, joined by :func:`with_study`).
STUDY_ONLY = frozenset(STUDY_KEYS - {"StudyInstanceUID"})


def needs_study(search: Search) -> bool:
    """Whether series answers must carry study attributes (asked for, or matched on):
    series documents hold only their own, so the study summaries are joined."""
    return search.level == SERIES and (search.fields is None
                                       or bool(search.fields & STUDY_ONLY))


def with_study(documents: list[dict], studies: Iterable[Mapping[str, object]]) -> list[dict]:
    """Series documents with their study's attributes beside their own."""
    by_uid = {study["StudyInstanceUID"]: study for study in studies}
    joined = []
    for doc in documents:
        study = by_uid.get(doc["StudyInstanceUID"], {})
        joined.append({**{k: v for k, v in study.items() if k in STUDY_ONLY}, **doc})
    return joined


def answer_document(level: str, doc: Mapping[str, object]) -> dict[str, object]:
    """An index document with the attribute names of a QIDO answer (counts renamed)."""
    out = dict(doc)
    if level == STUDY:
        out["NumberOfStudyRelatedSeries"] = doc.get("NumberOfSeries", "")
        out["NumberOfStudyRelatedInstances"] = doc.get("NumberOfInstances", "")
    return {key: value for key, value in out.items() if key in LEVEL_FIELDS[level]}


def _number(text: object) -> tuple[int, str]:
    value = str(text or "")
    return (int(value), "") if value.lstrip("-").isdigit() else (0, value)


#: A stable order for each level, so that ``offset`` pages do not overlap.
ORDER = {
    STUDY: lambda d: (d.get("StudyDate", ""), d.get("StudyTime", ""), d["StudyInstanceUID"]),
    SERIES: lambda d: (d["StudyInstanceUID"], _number(d.get("SeriesNumber")),
                       d["SeriesInstanceUID"]),
    IMAGE: lambda d: (d["StudyInstanceUID"], d["SeriesInstanceUID"],
                      _number(d.get("InstanceNumber")), d["SOPInstanceUID"]),
}


#: ``study_page``'s order (and direction) that is :data:`ORDER`'s for studies: by
#: StudyDate, StudyTime, StudyInstanceUID, as text, ascending.
STUDY_PAGE_ORDER = ("date", False)


def whole_list(search: Search) -> bool:
    """Whether the search asks for every study (no filter with a value): its page
    can then be read as a page of the index (``study_page``)."""
    return search.level == STUDY and not any(search.filters.values())


def page(search: Search, documents: list[dict], paged: bool = False) -> list[dict]:
    """The answer's documents: in a stable order, ``offset`` skipped, at most ``limit``
    (``paged``: ``documents`` is that page already), each with only the fields
    asked for."""
    if paged:
        chosen = documents
    else:
        ordered = sorted(documents, key=ORDER[search.level])
        end = None if search.limit is None else search.offset + search.limit
        chosen = ordered[search.offset:end]
    answers = [answer_document(search.level, doc) for doc in chosen]
    if search.fields is None:
        return answers
    return [{k: v for k, v in doc.items() if k in search.fields} for doc in answers]
