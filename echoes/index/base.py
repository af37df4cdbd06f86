"""The index seam: what a reader and the one writer of the index can do.

Why.  The Browser, the CLI, ``echoes fsck`` and the coming Query/Retrieve and
DICOMweb services read the index; only the ingester (and ``echoes reindex``
when the server is stopped) writes it.  They depend on these two protocols,
not on a file format: today's backend is the TinyDB catalog and study shards
(:mod:`echoes.index.embedded`), built by :func:`echoes.index.open_index`, and
another (PostgreSQL) must fit the same methods.

Documents are plain dicts keyed by DICOM keyword (and ``path``, ``size``,
``received``, ``calling_ae`` for instances): an instance document is an
:class:`~echoes.index.record.InstanceRecord` as a dict, a study summary and a
series document are described in :mod:`echoes.index.tally`.  Readers get the
state after some whole batch, never half of one.  Returned documents belong
to the caller only where a method says so; treat the others as read-only.

:func:`query` is matching written once for every backend, on top of the
reader methods, with the worklist's matching engine
(:mod:`echoes.worklist.match`: single value, ``*``/``?`` wildcards, UID
lists, date ranges, case-insensitive person names).  A backend that can do
better (an SQL ``WHERE``) overrides :meth:`IndexReader.query`.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from echoes.index.instance import InstanceRecord
from echoes.index.tally import PATIENT_STUDY_FIELDS, SERIES_FIELDS
from echoes.worklist.match import Query, QueryKey, compile_query

STUDY, SERIES, IMAGE = "STUDY", "SERIES", "IMAGE"
#: Query/Retrieve levels (PS3.4 C.6), top down.
LEVELS = (STUDY, SERIES, IMAGE)

#: The keys each level's documents can be matched on.
STUDY_KEYS = frozenset(PATIENT_STUDY_FIELDS) | {"ModalitiesInStudy"}
SERIES_KEYS = frozenset(SERIES_FIELDS)
IMAGE_KEYS = frozenset(name for name in InstanceRecord.__dataclass_fields__ if name[0].isupper())
LEVEL_KEYS = {STUDY: STUDY_KEYS, SERIES: SERIES_KEYS, IMAGE: IMAGE_KEYS}


@functools.cache
def _keywords() -> dict[int, str]:
    """Tag -> keyword of every matchable key (the engine asks for values by tag).

    Built at the first query, not at import: pydicom's dictionary is only
    needed to match, and importing it would cost every reader of the index
    (``echoes studies``) 0.37 s.
    """
    from pydicom.datadict import tag_for_keyword

    return {tag_for_keyword(keyword): keyword for keyword in STUDY_KEYS | IMAGE_KEYS}


#: (0020,000D), the key a study query may name studies by.
STUDY_INSTANCE_UID = 0x0020000D
#: (0008,0018), the key an IMAGE query may name instances by (see instance_studies).
SOP_INSTANCE_UID = 0x00080018


class IndexReader(Protocol):
    """Reading the index (any process, any thread)."""

    def version(self, study_uid: str | None = None) -> Hashable:
        """A token that changes whenever the catalog (or the study ``study_uid``)
        changes: a cache keeps what it read while the token stays the same."""

    def studies(self) -> list[dict]:
        """Every study summary, in no promised order (read-only documents:
        at 100,000 studies a copy of each would cost a tenth of a second)."""

    def study(self, study_uid: str) -> dict | None:
        """``{"study": summary, "series": [...], "instances": [...]}`` of one study
        (the caller's own copy), None when it is not in the index."""

    def series(self, study_uid: str) -> list[dict]:
        """The series documents of one study ([] when unknown)."""

    def instances(self, study_uid: str | None = None) -> Iterator[dict]:
        """The instance documents of one study, or of every study (study by study)."""

    def query(self, level: str, filters: Mapping[str, str]) -> list[dict]:
        """The documents of ``level`` (STUDY, SERIES, IMAGE) that match every filter
        (see :func:`query`)."""

    def study_page(self, order: str = "date", descending: bool = True,
                   limit: int | None = None, offset: int = 0) -> StudyPage:
        """One page of study summaries in ``order`` (see :data:`PAGE_ORDERS`), and
        the counts of the whole catalog (read-only documents)."""

    # Optional: ``study_candidates(query) -> list[dict] | None``, study summaries
    # that include every one the compiled study-level query matches (an index of
    # the catalog), None to have :func:`query` scan them all; and
    # ``study_summaries(uids) -> dict``, the summaries of some studies by UID (a
    # database's: the Browser then never reads its whole catalog); and
    # ``instance_studies(sop_uids) -> dict``, the study of each instance the
    # index holds by SOP Instance UID (a lookup, where :func:`query` would
    # otherwise read every study for an IMAGE query naming no study).


class IndexWriter(IndexReader, Protocol):
    """The one writer (the ingester, or ``echoes reindex`` with the server stopped)."""

    def apply(self, records: list[InstanceRecord]) -> list[dict]:
        """Write a batch durably (later records of one SOP Instance UID win); return
        the earlier documents whose file is no longer used (re-sent elsewhere)."""

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Forget instances; return how many were known."""

    def close(self) -> None:
        """Release every open file."""


#: Orders :meth:`IndexReader.study_page` can read a page in (ties broken by
#: StudyInstanceUID): ``date`` by StudyDate and StudyTime (``echoes studies``),
#: ``received`` by when the study's newest object arrived (``updated``: the
#: Browser's default).  Both are compared as Python compares text ("C"
#: collation in PostgreSQL), so every backend pages the same way.
PAGE_ORDERS = ("date", "received")


@dataclass(frozen=True)
class StudyPage:
    """One page of study summaries, and the studies and instances of the whole catalog."""

    total: int
    instances: int
    studies: list[dict]


def page_key(order: str) -> Callable[[dict], tuple]:
    """The sort key of ``order`` (one of :data:`PAGE_ORDERS`) for study summaries."""
    uid = "StudyInstanceUID"
    if order == "date":
        return lambda s: (s.get("StudyDate", ""), s.get("StudyTime", ""), s[uid])
    if order == "received":
        return lambda s: (s.get("updated", ""), s[uid])
    raise ValueError(f"order must be one of {', '.join(PAGE_ORDERS)}, got {order!r}")


def check_page(order: str, limit: int | None, offset: int) -> None:
    """Refuse what no backend can page by (ValueError, worded for the caller)."""
    page_key(order)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")


def study_page(studies: list[dict], order: str = "date", descending: bool = True,
               limit: int | None = None, offset: int = 0) -> StudyPage:
    """The page of ``studies`` (every summary of the catalog) a reader without an
    ordered store gives: a partial sort (``heapq``) of the first ``offset +
    limit``, not a sort of the whole catalog (the cost of ``echoes studies
    --limit 50`` at 200,000 studies is then the catalog's reading)."""
    check_page(order, limit, offset)
    key = page_key(order)
    if limit is None:
        ordered = sorted(studies, key=key, reverse=descending)[offset:]
    else:
        pick = heapq.nlargest if descending else heapq.nsmallest
        ordered = pick(offset + limit, studies, key=key)[offset:]
    return StudyPage(len(studies), sum(s.get("NumberOfInstances", 0) for s in studies),
                     ordered)


def newest_first(studies: Iterable[dict]) -> list[dict]:
    """Study summaries by study date and time, newest first (``echoes studies``)."""
    return sorted(studies, key=lambda s: (s.get("StudyDate", ""), s.get("StudyTime", ""),
                                          s["StudyInstanceUID"]), reverse=True)


# -- matching ----------------------------------------------------------------------------


class _Tree:
    """A document seen as the matching engine's tree (``get(tag)``), without copying it."""

    __slots__ = ("doc",)

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc

    def get(self, tag: int, default: Any = None) -> Any:
        value = self.doc.get(_keywords().get(tag, ""), default)
        return "\\".join(value) if isinstance(value, list) else value


def compile_filters(filters: Mapping[str, str]) -> Query:
    """The matching engine's query for keyword filters (all known to a level)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    keys: dict[int, QueryKey] = {}
    for keyword, value in filters.items():
        if not isinstance(value, str):
            raise ValueError(f"{keyword}: the value must be text, got {type(value).__name__}")
        tag = tag_for_keyword(keyword)
        keys[tag] = QueryKey(dictionary_VR(tag), value)
    return compile_query(keys)


def _studies_of_instances(reader: IndexReader, own_query: Query) -> tuple | None:
    """("values", the studies holding the SOP Instance UIDs ``own_query`` lists),
    when the reader can look instances up (``instance_studies``); else None
    (the studies are scanned).

    Who asks this way: Storage Commitment (a request lists instances, no
    study), which read every study of the archive on each look before.
    """
    lookup = getattr(reader, "instance_studies", None)
    constraint = own_query.constraint((SOP_INSTANCE_UID,))
    if lookup is None or constraint is None or constraint[0] != "values":
        return None
    found = lookup(constraint[1])
    return None if found is None else ("values", frozenset(found.values()))


def query(reader: IndexReader, level: str, filters: Mapping[str, str]) -> list[dict]:
    """The documents of ``level`` whose keys match ``filters`` (keyword -> DICOM
    matching value: ``""`` universal, ``DOE*``, ``1.2.3\\1.2.4``, ``20260101-20260131``).

    STUDY gives study summaries, SERIES series documents with their
    StudyInstanceUID, IMAGE instance documents (all copies).  Keys of a level
    above the one asked for (PatientID at IMAGE level) select the studies
    first, as a relational query does; a key no document of that level or
    above holds is a ValueError (worded for the caller).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    above = {key: value for key, value in filters.items() if key in STUDY_KEYS}
    own = {key: value for key, value in filters.items() if key not in STUDY_KEYS}
    unknown = sorted(set(own) - LEVEL_KEYS[level])
    if unknown:
        raise ValueError(f"{unknown[0]} cannot be matched at {level} level")
    study_query, own_query = compile_filters(above), compile_filters(own)
    wanted = study_query.constraint((STUDY_INSTANCE_UID,))
    if wanted is None and level == IMAGE:
        wanted = _studies_of_instances(reader, own_query)
    details: dict[str, dict] = {}  # studies read whole already (a UID was asked for)
    if wanted is not None and wanted[0] == "values":
        for uid in sorted(wanted[1]):
            detail = reader.study(uid)
            if detail is not None and detail["study"] is not None:
                details[uid] = detail
        candidates: Iterable[dict] = [detail["study"] for detail in details.values()]
    else:
        # A reader with an index of the catalog names a superset of the matches
        # (echoes.index.cache.CachingReader); the engine below still decides.
        narrow = getattr(reader, "study_candidates", None)
        narrowed = narrow(study_query) if narrow is not None else None
        candidates = reader.studies() if narrowed is None else narrowed
    studies = [summary for summary in candidates if study_query.matches(_Tree(summary))]
    if level == STUDY:
        return [dict(summary) for summary in studies]
    found: list[dict] = []
    for summary in studies:
        uid = summary["StudyInstanceUID"]
        detail = details.get(uid)
        if level == SERIES:
            series = detail["series"] if detail else reader.series(uid)
            documents: Iterable[dict] = ({**doc, "StudyInstanceUID": uid} for doc in series)
        else:
            documents = detail["instances"] if detail else reader.instances(uid)
        found.extend(dict(doc) for doc in documents if own_query.matches(_Tree(doc)))
    return found
