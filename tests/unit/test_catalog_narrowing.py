"""The Browser's study search over a database: index lookups narrow, the search decides.

Over PostgreSQL the Browser does not hold the catalog (issue 18): a filtered
search asks the database's indexes for candidate studies
(:func:`echoes.web.catalog.narrowing_query`) and runs the same search over
them.  That is only right if the candidates always include every match the
search over the whole catalog finds, whatever the names hold (``ß``, ``İ``,
ligatures, carets, spaces): checked here against the index of the catalog
that folds names as DICOM does (:class:`echoes.index.cache.CachingReader`,
the same keys as PostgreSQL's ``study_keys``), and :class:`StudyCatalog`
over a reader shaped like a database, without reading it whole.
"""

from __future__ import annotations

import random

from echoes.index.base import StudyPage, study_page
from echoes.index.cache import CachingReader
from echoes.web import catalog
from echoes.web.catalog import CatalogSnapshot, StudyCatalog, StudyQuery

NAMES = ["STRAßE^ANNA", "STRASSE^BEN", "İNCE^CAN", "INCE^DEM", "ǰONES", "JONES^J",
         "ﬁSCHER", "FISCHER^F", "GROSS^G", "SMITH^H", "SMIT", "MÜLLER^M", "MULLER",
         "DOE^", "DOE^JOHN", "DOE", " DOE", "O'NEIL", "ẖAMID", "HAMID", "garcía", "GARCIA",
         "TANAKA=田中", "NOVAK^^^", ""]
PATTERNS = ["STRASSE", "STRAß", "stra", "I", "INCE", "i̇", "J", "JONES", "FI", "FISCH", "GRO",
            "GROSS", "SMITH", "SMIT", "MÜ", "MUL", "DOE", "DOE^", "DOE*", "O'", "HAM", "H",
            "GARC", "garcía", "TANAKA", "NOVAK", "N*K", "D?E", "S", ""]


class Catalog:
    """A reader with every study in memory (what the whole-catalog search reads)."""

    def __init__(self, studies: list[dict]) -> None:
        self.documents = studies

    def version(self, study_uid: str | None = None) -> int:
        return 1

    def studies(self) -> list[dict]:
        return self.documents


class Database(Catalog):
    """A reader shaped like PostgreSQL's: it pages, looks up and names studies itself,
    and counts what would be whole-catalog reads."""

    def __init__(self, studies: list[dict]) -> None:
        super().__init__(studies)
        self.lookups = CachingReader(Catalog(studies))
        self.whole_reads = 0

    def studies(self) -> list[dict]:
        self.whole_reads += 1
        return self.documents

    def study_page(self, order: str = "date", descending: bool = True,
                   limit: int | None = None, offset: int = 0) -> StudyPage:
        return study_page(self.documents, order, descending, limit, offset)

    def study_candidates(self, study_query):
        return self.lookups.study_candidates(study_query)

    def study_summaries(self, uids) -> dict[str, dict]:
        wanted = set(uids)
        return {s["StudyInstanceUID"]: s for s in self.documents if s["StudyInstanceUID"] in wanted}


def summaries(count: int = 400, seed: int = 7) -> list[dict]:
    pick = random.Random(seed)
    return [{"StudyInstanceUID": f"1.2.{n}", "PatientName": pick.choice(NAMES),
             "PatientID": pick.choice(["P1", "P2", "P1 ", "p1", "P*"]),
             "AccessionNumber": pick.choice(["A1", "A2", ""]),
             "StudyDate": pick.choice(["20260101", "20260215", "20261231", ""]),
             "ModalitiesInStudy": [pick.choice(["CT", "MR", "ct"])],
             "NumberOfInstances": n % 7 + 1, "updated": f"2026-12-04T10:00:{n % 60:02d}.000+00:00"}
            for n in range(count)]


def every_match(studies: list[dict], query: StudyQuery) -> set[str]:
    whole = CatalogSnapshot(studies).search(StudyQuery(**{**query.__dict__, "per_page": 10**6}))
    return {s["StudyInstanceUID"] for s in whole.studies}


def test_the_fold_tables_are_this_pythons_unicode() -> None:
    expansions = {chr(n).casefold() for n in range(0x80, 0x110000) if len(chr(n).casefold()) > 1}
    assert set(catalog.ASCII_EXPANSIONS) == {e for e in expansions if e.isascii()}
    assert catalog.EXPANSION_STARTS == {e[:k] for e in expansions for k in range(1, len(e))
                                        if e[:k].isascii()}


def test_name_lookup_prefix_stops_where_a_fold_may_expand() -> None:
    assert catalog.name_lookup_prefix("muller") == "muller"
    assert catalog.name_lookup_prefix("gross") == "gro"  # ß folds to ss
    assert catalog.name_lookup_prefix("smith") == "sm"  # h, t, i: how ẖ, ẗ, İ fold begin
    assert catalog.name_lookup_prefix("strasse") == ""  # ﬆ folds to st


def test_index_candidates_hold_every_match_of_the_search() -> None:
    studies = summaries()
    lookups = CachingReader(Catalog(studies))
    narrowed_any = 0
    for pattern in PATTERNS:
        for extra in ({}, {"patient_id": "P1"}, {"accession": "A1"},
                      {"date_from": "20260201"}, {"date_to": "20260215"}):
            query = StudyQuery(patient_name=pattern, **extra)
            narrowing = catalog.narrowing_query(query)
            if narrowing is None:
                continue
            candidates = lookups.study_candidates(narrowing)
            assert candidates is not None
            narrowed_any += 1
            found = {s["StudyInstanceUID"] for s in candidates}
            missing = every_match(studies, query) - found
            assert not missing, (pattern, extra, missing)
    assert narrowed_any > 60  # most of them were looked up, not scanned


def test_wildcards_and_modality_alone_are_not_looked_up() -> None:
    assert catalog.narrowing_query(StudyQuery(modality="CT")) is None
    assert catalog.narrowing_query(StudyQuery(patient_id="P*")) is None
    assert catalog.narrowing_query(StudyQuery(patient_name="D?E")) is None
    assert catalog.narrowing_query(StudyQuery(patient_name="DOE^J")) is None
    assert catalog.narrowing_query(StudyQuery()) is None


def test_over_a_database_the_catalog_is_never_read_whole() -> None:
    studies = summaries()
    database = Database(studies)
    over_database = StudyCatalog(database)
    in_memory = StudyCatalog(Catalog(studies))
    over_database.warm_up()  # nothing to warm: it does not hold the catalog
    for query in (StudyQuery(), StudyQuery(patient_name="MUL"), StudyQuery(patient_id="P1"),
                  StudyQuery(patient_name="DOE", date_from="20260101", date_to="20260215",
                             sort="patient_name", order="asc", per_page=3, page=2),
                  StudyQuery(patient_name="GRO", modality="CT", sort="date")):
        got, want = over_database.search(query), in_memory.search(query)
        assert (got.total, got.studies) == (want.total, want.studies), query
    uids = ["1.2.5", "1.2.9", "9.9.9"]
    assert over_database.summaries(uids) == in_memory.summaries(uids)
    assert over_database.totals() == in_memory.totals() == (len(studies), sum(
        s["NumberOfInstances"] for s in studies))
    assert sorted(over_database.updated_since(0)) == sorted(in_memory.updated_since(0))
    assert database.whole_reads == 0 and over_database.full_loads == 0
    assert over_database.database_reads > 0
    over_database.search(StudyQuery(modality="MR"))  # no index narrows a modality alone
    assert database.whole_reads == 1


def test_the_queue_names_only_the_listed_jobs_studies() -> None:
    from echoes.queue import jobs

    studies = summaries(20)
    asked: list[set[str]] = []

    def lookup(uids) -> dict[str, dict]:
        asked.append(set(uids))
        return StudyCatalog(Database(studies)).summaries(uids)

    queue = [jobs.new_job("PACS", {"SOPInstanceUID": f"9.{n}", "StudyInstanceUID": f"1.2.{n}",
                                   "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
                                   "path": f"x/{n}.dcm"}, "forward", 1000.0 + n)
             for n in range(10)]
    listed = catalog.queue_summary(queue, {}, limit=3, studies=lookup)
    assert listed["listed_total"] == 10 and len(listed["jobs"]) == 3
    assert len(asked) == 1 and len(asked[0]) == 3
    by_uid = {s["StudyInstanceUID"]: s for s in studies}
    for view in listed["jobs"]:
        study = by_uid[view["study_instance_uid"]]
        assert (view["patient_name"], view["patient_id"]) == (study["PatientName"],
                                                              study["PatientID"])
