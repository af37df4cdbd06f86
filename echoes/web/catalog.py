"""Read models of the Browser: studies, queue, worklist day, as plain data.

Why a module of its own.  The Browser must answer a study search in well
under 300 ms on a big archive, and every rule of it (wildcards, date ranges,
sort order, paging, what counts as "in progress") must be testable without a
web server.  So the search, sort and paging, the queue summaries and the
worklist grouping are pure functions over dicts and ``Job`` objects; the two
small classes at the end (:class:`StudyCatalog`, :class:`StudyReader`) only
decide *when* to ask the index reader (:class:`~echoes.index.IndexReader`)
again, by its version tokens.

The catalog (every study summary) is held in memory with a search key per
study precomputed and each sort order computed once.  It is read whole once;
after a change (of the reader's ``version()``) only the changed summaries
are applied when the reader can tell them (``study_changes``: the embedded
index reads them from the catalog's journal), else it is read whole again.
A search is then one pass over the studies in the wanted order.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from echoes.config import RemoteAE
from echoes.index import IndexReader
from echoes.index.base import PAGE_ORDERS, compile_filters
from echoes.index.cache import CatalogIndex, indexed_keys
from echoes.queue import jobs
from echoes.worklist.match import Query

#: Sort keys of GET /api/studies, and the order each takes when none is given.
#: ``received`` is when the study's newest object arrived (its ``updated``).
SORT_KEYS = ("received", "date", "patient_name", "patient_id", "accession", "modality",
             "instances")
DEFAULT_ORDER = {"received": "desc", "date": "desc", "instances": "desc"}
#: What an admin opens the list for: what arrived last, whatever its study date
#: (a study of last year sent today must not be buried under today's ones).
DEFAULT_SORT = "received"
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
#: Query parameters of GET /api/studies (anything else is a typo: refused).
STUDY_PARAMETERS = frozenset({"patient_name", "patient_id", "accession", "date_from",
                              "date_to", "modality", "sort", "order", "page", "per_page"})
#: Longest text accepted in a search field (a DICOM LO is 64 characters).
MAX_FIELD = 128


class QueryError(ValueError):
    """A search parameter that cannot be used, worded for the caller (HTTP 400)."""


# -- study search: parsing -----------------------------------------------------------


def parse_date(text: str, name: str) -> str:
    """``YYYYMMDD`` (or ``YYYY-MM-DD``, what a date input sends) as ``YYYYMMDD``."""
    compact = text.strip().replace("-", "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()) \
        else text.strip()
    if not re.fullmatch(r"\d{8}", compact):
        raise QueryError(f"{name}: not a date (YYYYMMDD): {text!r}")
    try:
        datetime.strptime(compact, "%Y%m%d")
    except ValueError:
        raise QueryError(f"{name}: no such day: {text!r}") from None
    return compact


def _parse_int(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise QueryError(f"{name}: not a whole number: {text!r}") from None
    if not low <= value <= high:
        raise QueryError(f"{name}: must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class StudyQuery:
    """One search of the study list: filters, order and page."""

    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    sort: str = DEFAULT_SORT
    order: str = DEFAULT_ORDER[DEFAULT_SORT]
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    def filtered(self) -> bool:
        """Whether any filter is set (else every study is in the result)."""
        return any((self.patient_name, self.patient_id, self.accession, self.date_from,
                    self.date_to, self.modality))

    def as_params(self, **changes: Any) -> dict[str, str]:
        """Non-default parameters (with ``changes``), for links to other pages or orders."""
        values = {**self.__dict__, **changes}
        defaults = StudyQuery()
        return {key: str(value) for key, value in values.items()
                if value != getattr(defaults, key) or key in changes}


def parse_study_query(args: Mapping[str, str]) -> StudyQuery:
    """A :class:`StudyQuery` from request parameters; QueryError says what is wrong."""
    unknown = sorted(set(args) - STUDY_PARAMETERS)
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r} (known: "
                         f"{', '.join(sorted(STUDY_PARAMETERS))})")
    text = {key: (args.get(key) or "").strip() for key in STUDY_PARAMETERS}
    for key in ("patient_name", "patient_id", "accession", "modality"):
        if len(text[key]) > MAX_FIELD:
            raise QueryError(f"{key}: longer than {MAX_FIELD} characters")
    sort = text["sort"] or DEFAULT_SORT
    if sort not in SORT_KEYS:
        raise QueryError(f"sort: must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    order = text["order"].lower() or DEFAULT_ORDER.get(sort, "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order: must be asc or desc, got {text['order']!r}")
    date_from = parse_date(text["date_from"], "date_from") if text["date_from"] else ""
    date_to = parse_date(text["date_to"], "date_to") if text["date_to"] else ""
    if date_from and date_to and date_from > date_to:
        raise QueryError(f"date_from {date_from} is after date_to {date_to}")
    return StudyQuery(
        patient_name=text["patient_name"], patient_id=text["patient_id"],
        accession=text["accession"], date_from=date_from, date_to=date_to,
        modality=text["modality"].upper(), sort=sort, order=order,
        page=_parse_int(text["page"], "page", 1, 10**6) if text["page"] else 1,
        per_page=(_parse_int(text["per_page"], "per_page", 1, MAX_PER_PAGE)
                  if text["per_page"] else DEFAULT_PER_PAGE))


def wildcard_matcher(pattern: str, fold: bool) -> Callable[[str], bool]:
    """A test of a whole value against ``pattern`` with ``*`` and ``?`` (DICOM style).

    ``fold`` compares case-insensitively (``casefold``: ``müller`` finds
    ``MÜLLER``); the caller folds the values it passes in the same way.
    """
    if fold:
        pattern = pattern.casefold()
    if "*" not in pattern and "?" not in pattern:
        return pattern.__eq__
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex + r"\Z", re.DOTALL).match  # type: ignore[return-value]


# -- study search: the snapshot --------------------------------------------------------


def _number(text: str) -> tuple[int, str]:
    """Sort key of a DICOM IS value: numbers in numeric order, others after."""
    try:
        return (int(text), "")
    except (TypeError, ValueError):
        return (2**62, text or "")


def _arrival_key(text: str) -> str:
    """An arrival time as UTC ISO 8601 text with milliseconds, which sorts by instant.

    The ingester writes exactly that form (``2026-11-29T10:00:00.123+00:00``),
    taken as it is: parsing 100,000 of them would add a tenth of a second to
    every catalog load.  Any other form is converted; none (an entry without
    it) sorts first.
    """
    if len(text) == 29 and text.endswith("+00:00"):
        return text
    when = _epoch(text)
    return "" if when is None else datetime.fromtimestamp(when, UTC).isoformat(
        timespec="milliseconds")


def _sort_key(sort: str) -> Callable[[dict], tuple]:
    uid = "StudyInstanceUID"
    return {
        "received": lambda s: (_arrival_key(s.get("updated", "")), s[uid]),
        "date": lambda s: (s.get("StudyDate", ""), s.get("StudyTime", ""), s[uid]),
        "patient_name": lambda s: (s.get("PatientName", "").casefold(), s[uid]),
        "patient_id": lambda s: (s.get("PatientID", ""), s[uid]),
        "accession": lambda s: (s.get("AccessionNumber", ""), s[uid]),
        "modality": lambda s: ("\\".join(s.get("ModalitiesInStudy", [])), s[uid]),
        "instances": lambda s: (s.get("NumberOfInstances", 0), s[uid]),
    }[sort]


@dataclass(frozen=True)
class SearchResult:
    """One page of a study search and the number of matches in all."""

    total: int
    page: int
    per_page: int
    studies: list[dict]

    @property
    def pages(self) -> int:
        """Pages in all (at least 1, for "page 1 of 1" on an empty result)."""
        return max(1, -(-self.total // self.per_page))


class CatalogSnapshot:
    """Every study summary of one version of the catalog, ready to search.

    A snapshot is never changed (requests search it from several threads):
    :meth:`updated` makes the next one from a few changed summaries.
    """

    def __init__(self, studies: Iterable[dict]) -> None:
        self.studies: list[dict] = list(studies)
        self.by_uid = {s["StudyInstanceUID"]: s for s in self.studies}
        self._positions = {uid: n for n, uid in enumerate(self.by_uid)} \
            if len(self.by_uid) == len(self.studies) else None
        self.instances = sum(s.get("NumberOfInstances", 0) for s in self.studies)
        # Search keys, computed once per catalog version: casefolded name, and
        # the modalities as a set, so one search is one cheap pass.
        self._names = [s.get("PatientName", "").casefold() for s in self.studies]
        self._modalities = [frozenset(m.upper() for m in s.get("ModalitiesInStudy", []))
                            for s in self.studies]
        self._orders: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        #: The summaries by PatientID, dates, name starts... (built at the first
        #: search that can use it, then carried over by :meth:`updated`).
        self._index: CatalogIndex | None = None

    def __len__(self) -> int:
        return len(self.studies)

    def order(self, sort: str) -> list[int]:
        """Positions of the studies in ascending ``sort`` order (cached)."""
        positions = self._orders.get(sort)
        if positions is None:
            with self._lock:
                positions = self._orders.get(sort)
                if positions is None:
                    key = _sort_key(sort)
                    positions = sorted(range(len(self.studies)),
                                       key=lambda n: key(self.studies[n]))
                    self._orders[sort] = positions
        return positions

    def candidates(self, study_query: Query) -> list[dict] | None:
        """The summaries that include every match of ``study_query`` (a DICOM study
        query: :func:`narrowing_query`), found by index (None: none narrows it)."""
        if not indexed_keys(study_query):
            return None
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = CatalogIndex(self.studies)
        return self._index.candidates(study_query)

    def updated(self, changes: Mapping[str, dict]) -> CatalogSnapshot:
        """The snapshot with ``changes`` (summaries by StudyInstanceUID, new or
        changed) applied: O(changes x log studies) and a copy of some lists,
        instead of every study sorted again.  Sort orders already computed are
        carried over, each changed study taken out and put back in its place.
        """
        if not changes:  # the writer's intent line of a batch: nothing to show yet
            return self
        if self._positions is None or len(changes) * 8 > len(self.studies) + 64:
            return CatalogSnapshot({**self.by_uid, **changes}.values())
        new = object.__new__(CatalogSnapshot)
        studies, names = list(self.studies), list(self._names)
        modalities = list(self._modalities)
        positions = dict(self._positions)
        by_uid = dict(self.by_uid)
        instances = self.instances
        changed: list[int] = []  # existing positions whose summary changes
        added: list[int] = []
        for uid, summary in changes.items():
            n = positions.get(uid)
            if n is None:
                n = positions[uid] = len(studies)
                studies.append(summary)
                names.append("")
                modalities.append(frozenset())
                added.append(n)
            else:
                instances -= studies[n].get("NumberOfInstances", 0)
                studies[n] = summary
                changed.append(n)
            instances += summary.get("NumberOfInstances", 0)
            names[n] = summary.get("PatientName", "").casefold()
            modalities[n] = frozenset(m.upper() for m in summary.get("ModalitiesInStudy", []))
            by_uid[uid] = summary
        orders: dict[str, list[int]] = {}
        old = self.studies
        for sort, order in list(self._orders.items()):
            key = _sort_key(sort)
            moved = list(order)
            for n in changed:
                at = bisect.bisect_left(moved, key(old[n]), key=lambda p: key(old[p]))
                del moved[at]  # keys are unique: each ends with the study's UID
            for n in changed + added:
                bisect.insort(moved, n, key=lambda p: key(studies[p]))
            orders[sort] = moved
        new.studies, new.by_uid, new._positions = studies, by_uid, positions
        new.instances, new._names, new._modalities = instances, names, modalities
        new._orders, new._lock = orders, threading.Lock()
        index = self._index
        new._index = None if index is None else index.updated(studies, self.by_uid, changes)
        return new

    def _predicate(self, query: StudyQuery) -> Callable[[int], bool]:
        tests: list[Callable[[int], bool]] = []
        studies = self.studies
        if query.patient_name:
            pattern = query.patient_name
            if "*" not in pattern and "?" not in pattern:
                pattern += "*"  # a name typed plainly finds the names it begins
            name_matches = wildcard_matcher(pattern, fold=True)
            names = self._names
            tests.append(lambda n: bool(name_matches(names[n])))
        for value, key in ((query.patient_id, "PatientID"),
                           (query.accession, "AccessionNumber")):
            if value:
                matches = wildcard_matcher(value, fold=False)
                tests.append(lambda n, m=matches, k=key: bool(m(studies[n].get(k, ""))))
        if query.date_from or query.date_to:
            low, high = query.date_from or "00000000", query.date_to or "99999999"
            tests.append(lambda n: low <= (studies[n].get("StudyDate") or "-") <= high)
        if query.modality:
            modalities, wanted = self._modalities, query.modality
            tests.append(lambda n: wanted in modalities[n])
        return lambda n: all(test(n) for test in tests)

    def search(self, query: StudyQuery) -> SearchResult:
        """The page ``query`` asks for, and how many studies match in all."""
        positions: Sequence[int] = self.order(query.sort)
        if query.order == "desc":
            positions = positions[::-1]
        start = (query.page - 1) * query.per_page
        end = start + query.per_page
        if not query.filtered():
            page = positions[start:end]
            return SearchResult(len(positions), query.page, query.per_page,
                                [self.studies[n] for n in page])
        matches = self._predicate(query)
        found: list[dict] = []
        total = 0
        for n in positions:
            if matches(n):
                if start <= total < end:
                    found.append(self.studies[n])
                total += 1
        return SearchResult(total, query.page, query.per_page, found)


# -- one study ----------------------------------------------------------------------------


def series_list(study: dict) -> list[dict]:
    """The series of a ``read_study`` result, by series number, with counts."""
    series = sorted(study["series"],
                    key=lambda s: (_number(s.get("SeriesNumber", "")), s["SeriesInstanceUID"]))
    return [{
        "SeriesInstanceUID": s["SeriesInstanceUID"],
        "SeriesNumber": s.get("SeriesNumber", ""),
        "SeriesDescription": s.get("SeriesDescription", ""),
        "Modality": s.get("Modality", ""),
        "NumberOfSeriesRelatedInstances": s.get("NumberOfSeriesRelatedInstances", 0),
    } for s in series]


def middle_instance(instances: Iterable[dict], series_uid: str) -> dict | None:
    """The instance in the middle of a series by InstanceNumber (the thumbnail's)."""
    members = sorted((i for i in instances if i["SeriesInstanceUID"] == series_uid),
                     key=lambda i: (_number(i.get("InstanceNumber", "")), i["SOPInstanceUID"]))
    return members[len(members) // 2] if members else None


# -- outbound queue -----------------------------------------------------------------------


def iso(epoch: float) -> str | None:
    """Local ISO 8601 time of ``epoch`` with its offset (None for 0: never)."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def job_view(job: jobs.Job, study: Mapping[str, Any] | None = None) -> dict:
    """What the Browser shows of one job (both ISO 8601 and epoch times).

    ``study`` is the job's study summary from the catalog, for the patient
    and accession a person recognises (a job file holds only UIDs); empty
    when the study is no longer in the index.  ``delivered`` is set for a
    done job: its last change is its delivery.
    """
    delivered = job.updated if job.state == jobs.DONE else None
    study = study or {}
    return {
        "id": job.id, "destination": job.destination, "state": job.state,
        "origin": job.origin, "attempts": job.attempts, "last_error": job.last_error,
        "next_attempt": iso(job.next_attempt) if job.state in jobs.ACTIVE else None,
        "next_attempt_epoch": job.next_attempt if job.state in jobs.ACTIVE else None,
        "delivered": iso(delivered) if delivered else None,
        "delivered_epoch": delivered,
        "created": iso(job.created), "updated": iso(job.updated),
        "study_instance_uid": job.study_instance_uid,
        "sop_instance_uid": job.sop_instance_uid,
        "patient_name": study.get("PatientName", ""),
        "patient_id": study.get("PatientID", ""),
        "accession": study.get("AccessionNumber", ""),
    }


def _counts(group: Iterable[jobs.Job], states: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(states, 0)
    for job in group:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts


#: Reads the summaries of some studies: StudyInstanceUIDs -> summaries by UID
#: (:meth:`StudyCatalog.summaries`).
StudyLookup = Callable[[Iterable[str]], Mapping[str, Mapping[str, Any]]]

#: Job states listed by default: those that still need something.
OPEN_STATES = (jobs.FAILED, jobs.RETRYING, jobs.PENDING, jobs.HELD)
MAX_LISTED_JOBS = 1000


def queue_summary(all_jobs: Iterable[jobs.Job], remote_aes: Mapping[str, RemoteAE],
                  destination: str = "", state: str = "",
                  limit: int = MAX_LISTED_JOBS,
                  studies: Mapping[str, Mapping[str, Any]] | StudyLookup | None = None,
                  ) -> dict:
    """Per destination counts by state, and the open (or ``state``) jobs, worst first.

    Every configured AE has a row, even with no jobs; a destination no longer
    configured still has one while jobs for it exist.  ``limit`` bounds the
    listed jobs (a backlog can hold hundreds of thousands); ``listed_total``
    says how many matched.  Done and cancelled jobs are listed last finished
    first: the limit keeps the recent ones, which are the ones asked about.
    ``studies`` (study summaries by StudyInstanceUID, or a function that reads
    them for the UIDs it is given: only the listed jobs' studies are asked for)
    names each job's study.
    """
    states = jobs.STATES
    groups: dict[str, list[jobs.Job]] = {title: [] for title in remote_aes}
    for job in all_jobs:
        groups.setdefault(job.destination, []).append(job)
    rows = []
    for title in sorted(groups):
        remote = remote_aes.get(title)
        rows.append({
            "destination": title, "configured": remote is not None,
            "host": remote.host if remote else None, "port": remote.port if remote else None,
            "forward": remote.forward if remote else False,
            "counts": _counts(groups[title], states),
        })
    wanted_states = (state,) if state else OPEN_STATES
    rank = {name: n for n, name in enumerate(OPEN_STATES)}
    listed = [job for title, group in groups.items() if not destination or title == destination
              for job in group if job.state in wanted_states]
    listed.sort(key=lambda job: (job.destination, rank.get(job.state, 9),
                                 -job.updated if job.state in jobs.FINISHED else 0.0,
                                 job.next_attempt, job.created, job.id))
    listed_total = len(listed)
    listed = listed[:limit]
    if callable(studies):
        studies = studies({job.study_instance_uid for job in listed})
    studies = studies or {}
    return {"destinations": [row for row in rows
                             if not destination or row["destination"] == destination],
            "jobs": [job_view(job, studies.get(job.study_instance_uid)) for job in listed],
            "listed_total": listed_total}


def study_progress(all_jobs: Iterable[jobs.Job], study_uid: str) -> dict:
    """Per destination counts of one study's jobs; ``finished`` once none is pending.

    What the study page polls after a push: a destination is finished when
    every job is done, failed or cancelled.
    """
    states = jobs.STATES
    groups: dict[str, list[jobs.Job]] = {}
    for job in all_jobs:
        if job.study_instance_uid == study_uid:
            groups.setdefault(job.destination, []).append(job)
    rows = []
    for title in sorted(groups):
        group = groups[title]
        counts = _counts(group, states)
        errors = sorted((job for job in group if job.last_error and job.state != jobs.DONE),
                        key=lambda job: job.updated)
        rows.append({"destination": title, "counts": counts, "total": len(group),
                     "finished": not any(job.state in jobs.ACTIVE or job.state == jobs.HELD
                                         for job in group),
                     "last_error": errors[-1].last_error if errors else ""})
    return {"study": study_uid, "destinations": rows,
            "finished": all(row["finished"] for row in rows)}


# -- worklist of one day ------------------------------------------------------------------

PATIENT_NAME, PATIENT_ID, ACCESSION = 0x00100010, 0x00100020, 0x00080050
REQUESTED_PROCEDURE_DESCRIPTION = 0x00321060
STEP_SEQUENCE = 0x00400100
STATION, START_DATE, START_TIME = 0x00400001, 0x00400002, 0x00400003
MODALITY, STEP_DESCRIPTION, STEP_ID, PERFORMING = 0x00080060, 0x00400007, 0x00400009, 0x00400006
STUDY_UID = 0x0020000D
NO_STATION = "(no station)"


def _text(tree: Mapping[int, Any], tag: int) -> str:
    value = tree.get(tag, "")
    return value if isinstance(value, str) else ""


def worklist_day(items: Iterable[Any], day: str) -> list[dict]:
    """Scheduled steps starting on ``day`` (YYYYMMDD), grouped by station, by time.

    ``items`` are :class:`echoes.worklist.files.WorklistItem` (``name``, ``tree``);
    one file may hold several steps, each listed on its own.
    """
    stations: dict[str, list[dict]] = {}
    for item in items:
        tree = item.tree
        steps = tree.get(STEP_SEQUENCE)
        for step in steps if isinstance(steps, list) else []:
            if _text(step, START_DATE) != day:
                continue
            station = _text(step, STATION) or NO_STATION
            stations.setdefault(station, []).append({
                "file": item.name,
                "start_time": _text(step, START_TIME),
                "modality": _text(step, MODALITY),
                "patient_name": _text(tree, PATIENT_NAME),
                "patient_id": _text(tree, PATIENT_ID),
                "accession": _text(tree, ACCESSION),
                "procedure": (_text(step, STEP_DESCRIPTION)
                              or _text(tree, REQUESTED_PROCEDURE_DESCRIPTION)),
                "step_id": _text(step, STEP_ID),
                "performing_physician": _text(step, PERFORMING),
                "study_uid": _text(tree, STUDY_UID),
            })
    return [{"station": station,
             "steps": sorted(steps, key=lambda s: (s["start_time"], s["file"]))}
            for station, steps in sorted(stations.items(),
                                         key=lambda kv: (kv[0] == NO_STATION, kv[0]))]


def today() -> str:
    """Today's date, local time, as YYYYMMDD (the worklist's own form)."""
    return date.today().strftime("%Y%m%d")


# -- received lately ----------------------------------------------------------------------


def _epoch(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def updated_since(studies: Iterable[dict], cutoff: float) -> list[str]:
    """UIDs of the studies whose newest object arrived at ``cutoff`` or later."""
    return [s["StudyInstanceUID"] for s in studies
            if (when := _epoch(s.get("updated", ""))) is not None and when >= cutoff]


def received_since(instances: Iterable[dict], cutoff: float) -> int:
    """How many of ``instances`` arrived at ``cutoff`` or later."""
    return sum(1 for i in instances
               if (when := _epoch(i.get("received", ""))) is not None and when >= cutoff)


# -- reading the index again when it changed (the only I/O here) -------------------------------


#: An index lookup narrows a search over the held catalog when its candidates
#: are fewer than one study in this many (else one pass over all is as cheap).
NARROW_SHARE = 4

#: Studies read a page at a time while looking for the last hour's arrivals.
RECENT_PAGE = 200

#: Characters that case-fold to more than one (``ß`` -> ``ss``, ``İ`` -> ``i̇``)
#: are folded so by the Browser; DICOM's name index keeps them one for one.
#: Their ASCII folds whole (``ss``, ``fi``...), and the ASCII starts of any
#: fold (``s``, ``i``...): where a name pattern may meet one, the index cannot
#: vouch for it.  Tables, not computed at import (a pass over every code point:
#: half a second); tests/unit/test_catalog_narrowing.py computes them again.
ASCII_EXPANSIONS = ("ff", "ffi", "ffl", "fi", "fl", "ss", "st")
EXPANSION_STARTS = frozenset({"a", "f", "ff", "h", "i", "j", "s", "t", "w", "y"})


def name_lookup_prefix(pattern: str) -> str:
    """The longest start of a Browser name pattern (ASCII, casefolded, no
    wildcards) whose index lookup is sure to find every name the pattern's
    search matches ("" when none): cut before an ASCII expansion (``gross`` ->
    ``gro``), then shortened while it could end inside one (``smith`` ->
    ``sm``: ``h`` begins ``ẖ``'s fold)."""
    for expansion in ASCII_EXPANSIONS:
        at = pattern.find(expansion)
        if at >= 0:
            pattern = pattern[:at]
    while pattern and any(pattern.endswith(start) for start in EXPANSION_STARTS):
        pattern = pattern[:-1]
    return pattern


def narrowing_query(query: StudyQuery) -> Query | None:
    """A DICOM study query whose index lookups (``study_candidates``) find every
    study ``query``'s filters match, or None when none of its filters can be
    looked up that way.

    Only what is sure to give a superset: PatientID and AccessionNumber
    without wildcards (their keys are the stored values, trimmed), the date
    range, and the start of a name pattern that is plain ASCII without
    ``^``, ``=``, spaces or wildcards but for its end
    (:func:`name_lookup_prefix`; DICOM folds a name one character at a time
    and drops tail carets, the Browser case-folds it whole).  The modality
    is left to the search: DICOM matches it as stored, the Browser in
    capitals.
    """
    keys: dict[str, str] = {}
    for value, keyword in ((query.patient_id, "PatientID"), (query.accession, "AccessionNumber")):
        if value and not any(c in value for c in "*?\\"):
            keys[keyword] = value
    if query.date_from or query.date_to:
        keys["StudyDate"] = f"{query.date_from}-{query.date_to}"
    name = query.patient_name.rstrip("*").casefold()
    if name.isascii() and not any(c in name for c in "*?^= \\"):
        prefix = name_lookup_prefix(name)
        if prefix:
            keys["PatientName"] = prefix + "*"
    return compile_filters(keys) if keys else None


#: The version of a catalog never read (no reader's token equals it).
_UNREAD = object()

#: A catalog that took longer than this to read is read again in the background:
#: requests meanwhile get the previous version (a second or two old) at once.
SYNC_LOAD_SECONDS = 0.15


class StudyCatalog:
    """The catalog in memory, read again when the index's version token changed;
    or, over a database, the few studies each request needs, asked of it.

    A change is applied before the request that noticed it when the reader
    tells what changed (an update costs milliseconds), or when the catalog
    was quick to load whole.  A catalog that took long to load whole
    (100,000 studies take ~1.5 s to read and index) from a reader that
    cannot tell is loaded again by a background thread while requests go on
    with the previous version, so a search never waits for it, even while images keep arriving;
    only the very first request of the process does (see :meth:`warm_up`).

    Over a database (a reader that cannot tell its changes but finds studies
    through its own indexes: ``study_page``, ``study_candidates``,
    ``study_summaries``, the PostgreSQL index) the catalog is not held at all
    for what those answer: a page of the list, a search by name, ID,
    accession or dates, the summaries of a study or of the listed jobs, the
    totals, what arrived in the last hour.  Why: at 200,000 studies a whole
    read takes seconds and hundreds of MB, and it would be taken again after
    every change (issue 18).  Only searches no index narrows (a modality
    alone, a sort by name) still read it whole.
    """

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self._signature: Hashable = _UNREAD
        self._snapshot = CatalogSnapshot([])
        self._loaded = False
        self._load_seconds = 0.0
        self._refreshing = False
        self._lock = threading.Lock()
        # A reader that tells what changed (echoes.index.embedded.EmbeddedIndex.
        # study_changes): the snapshot is updated, not read again whole.
        self._changes = getattr(reader, "study_changes", None)
        self._position: Hashable | None = None
        #: Snapshots made from the whole catalog, and from a reader's changes
        #: (what tests and benches look at: a change must not cost a full load).
        self.full_loads = 0
        self.updates = 0
        #: Searches answered by the database's own indexes, and by the
        #: snapshot's index (tests look).
        self.database_reads = 0
        self.indexed_searches = 0
        self._database = self._changes is None and all(
            hasattr(reader, name) for name in ("study_page", "study_candidates",
                                               "study_summaries"))

    def summaries(self, study_uids: Iterable[str]) -> dict[str, dict]:
        """The summaries of these studies that are archived, by StudyInstanceUID."""
        wanted = set(study_uids)
        if self._database:
            self.database_reads += 1
            return self.reader.study_summaries(wanted) if wanted else {}  # type: ignore[attr-defined]
        by_uid = self.current().by_uid
        return {uid: by_uid[uid] for uid in wanted if uid in by_uid}

    def totals(self) -> tuple[int, int]:
        """(studies, instances) in the whole archive."""
        if self._database:
            self.database_reads += 1
            page = self.reader.study_page(DEFAULT_SORT, True, 0, 0)
            return page.total, page.instances
        snapshot = self.current()
        return len(snapshot), snapshot.instances

    def updated_since(self, cutoff: float) -> list[str]:
        """UIDs of the studies whose newest object arrived at ``cutoff`` or later."""
        if not self._database:
            return updated_since(self.current().studies, cutoff)
        self.database_reads += 1
        found: list[str] = []
        offset = 0
        while True:  # newest arrival first, a page at a time, until one is older
            page = self.reader.study_page(DEFAULT_SORT, True, RECENT_PAGE, offset).studies
            recent = updated_since(page, cutoff)
            found += recent
            if len(recent) < len(page) or len(page) < RECENT_PAGE:
                return found
            offset += RECENT_PAGE

    def current(self) -> CatalogSnapshot:
        """The catalog as of the last whole write (one version token when unchanged)."""
        now = self.reader.version()
        if now == self._signature:
            return self._snapshot
        updatable = self._changes is not None and self._position is not None
        if self._loaded and self._load_seconds > SYNC_LOAD_SECONDS and not updatable:
            with self._lock:
                if not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._load, name="catalog-refresh",
                                     daemon=True).start()
            return self._snapshot
        self._load()
        return self._snapshot

    def search(self, query: StudyQuery) -> SearchResult:
        """The page of the study list ``query`` asks for.

        An unfiltered list in arrival or date order (what the Browser opens
        with) is read as one page through the index seam (``study_page``: SQL
        LIMIT/OFFSET on an index in PostgreSQL) when the reader cannot tell its
        changes: the whole catalog is then not read again on every change.  A
        reader that tells them (the embedded index) keeps the snapshot up to
        date for milliseconds, and it answers every search.
        """
        paging = getattr(self.reader, "study_page", None)
        if (self._changes is None and paging is not None and not query.filtered()
                and query.sort in PAGE_ORDERS):
            page = paging(query.sort, query.order == "desc", query.per_page,
                          (query.page - 1) * query.per_page)
            return SearchResult(page.total, query.page, query.per_page, page.studies)
        narrowed = narrowing_query(query)
        if self._database:
            candidates = (None if narrowed is None else
                          self.reader.study_candidates(narrowed))  # type: ignore[attr-defined]
            if candidates is not None:
                # A superset of the matches, found by the database's indexes;
                # the same search as over the whole catalog decides and orders.
                self.database_reads += 1
                return CatalogSnapshot(candidates).search(query)
            return self.current().search(query)
        snapshot = self.current()
        candidates = None if narrowed is None else snapshot.candidates(narrowed)
        if candidates is not None and len(candidates) * NARROW_SHARE < len(snapshot):
            # A few of many: searched as a snapshot of their own (one pass over
            # 200,000 studies cost 0.2 s; an index lookup and a small sort, ms).
            self.indexed_searches += 1
            return CatalogSnapshot(candidates).search(query)
        return snapshot.search(query)

    def _updated(self) -> CatalogSnapshot | None:
        """The snapshot with the reader's changes since the last load applied
        (None: the reader cannot tell them, read whole)."""
        if self._changes is None or self._position is None:
            return None
        position, changes = self._changes(self._position)
        if changes is None:
            return None
        self._position = position
        return self._snapshot.updated(changes)

    def warm_up(self) -> None:
        """Read the catalog now, in the background (at process start); not over a
        database, which answers the usual requests without it."""
        if self._database:
            return
        threading.Thread(target=self.current, name="catalog-warm-up", daemon=True).start()

    def _load(self) -> None:
        with self._lock:
            try:
                now = self.reader.version()  # taken before reading: a later write shows
                if now == self._signature:
                    return
                started = time.perf_counter()
                snapshot = self._updated() if self._loaded else None
                if snapshot is None:
                    if self._changes is not None:
                        self._position, _ = self._changes(None)  # before reading whole
                    snapshot = CatalogSnapshot(self.reader.studies())
                    snapshot.order(DEFAULT_SORT)  # before anybody waits for it
                    self.full_loads += 1
                    self._load_seconds = time.perf_counter() - started
                else:
                    self.updates += 1
                self._snapshot, self._signature = snapshot, now
                self._loaded = True
            finally:
                self._refreshing = False


class StudyReader:
    """The reader's ``study`` with the last few studies kept while their version stands.

    The study page asks for one thumbnail per series, and each needs the
    study's instances: a big study is read once, not once per series.
    """

    def __init__(self, reader: IndexReader, keep: int = 8) -> None:
        self.reader = reader
        self.keep = keep
        self._cache: OrderedDict[str, tuple[tuple, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, study_uid: str) -> dict | None:
        """The study (summary, series, instances) or None when it is not archived."""
        now = self.reader.version(study_uid)
        with self._lock:
            cached = self._cache.get(study_uid)
            if cached is not None and cached[0] == now:
                self._cache.move_to_end(study_uid)
                return cached[1]
        study = self.reader.study(study_uid)
        if study is None or not study["instances"]:
            return None
        with self._lock:
            self._cache[study_uid] = (now, study)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return study
