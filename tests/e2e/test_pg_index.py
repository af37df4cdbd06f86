"""The PostgreSQL index backend gives the embedded backend's answers.

The same batches (new studies, a study growing, an object stored again under
another path and another study, one SOP Instance UID twice in one batch,
removals) go into the embedded index and into PostgreSQL (a real server,
tests/pgserver.py); then every reader method and query() at every level, for
a table of filters, must give the same documents.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from echoes.database import prepare
from echoes.index import base
from echoes.index.cache import CachingReader
from echoes.index.embedded import ArchiveIndex
from echoes.index.instance import InstanceRecord
from echoes.index.postgres import PostgresIndex, PostgresIndexWriter

PATIENTS = [("P1", "DOE^JOHN", "19700101", "M"), ("P2", "MÜLLER^HANS", "19800202", "M"),
            ("P3", "doe^jane^^", "19900303", "F"), ("P1\\P9", "SMITH^ANN", "", "F")]
_clock = [0]


def record(sop: str, study: int, series: int, *, modality: str = "CT", patient: int = 0,
           date: str = "20261101", path: str | None = None, accession: str = "") -> InstanceRecord:
    """An instance of study ``study`` (ids become UIDs), received after every earlier one."""
    _clock[0] += 1
    pid, name, birth, sex = PATIENTS[patient]
    return InstanceRecord(
        SOPInstanceUID=f"1.2.9.{sop}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        SeriesInstanceUID=f"1.2.8.{study}.{series}", StudyInstanceUID=f"1.2.8.{study}",
        PatientID=pid, PatientName=name, PatientBirthDate=birth, PatientSex=sex,
        StudyDate=date, StudyTime="101500", StudyDescription=f"study {study}",
        AccessionNumber=accession or f"A{study}", StudyID=str(study), Modality=modality,
        SeriesNumber=str(series), SeriesDescription=f"series {series}",
        InstanceNumber=sop.rsplit(".", 1)[-1], SeriesDate=date, BodyPartExamined="CHEST",
        Rows="512", Columns="512", NumberOfFrames="", TransferSyntaxUID="1.2.840.10008.1.2.1",
        path=path or f"{study}/{series}/{sop}.dcm", size=1000 + int(sop.replace(".", "")),
        received=f"2026-12-04T10:{_clock[0] // 60:02d}:{_clock[0] % 60:02d}.000+00:00",
        calling_ae="MODALITY")


BATCHES: list[list[InstanceRecord]] = [
    [record(f"1.{n}", 1, 1 + n % 2, modality="CT" if n % 2 else "SR") for n in range(6)]
    + [record(f"2.{n}", 2, 1, modality="MR", patient=1, date="20261115") for n in range(3)],
    [record(f"3.{n}", 3, 1, modality="US", patient=2, date="20251231") for n in range(2)]
    + [record(f"1.{n}", 1, 3, modality="CT", date="20261102") for n in range(6, 8)]
    + [record("4.0", 4, 1, modality="DX", patient=3, date="20261120", accession="X\\Y")],
    # stored again: one under another path in another study, one twice in this batch
    [record("1.0", 2, 1, modality="MR", patient=1, date="20261115", path="moved/1.0.dcm"),
     record("3.0", 3, 1, modality="US", patient=2, date="20251231", path="first/3.0.dcm"),
     record("3.0", 3, 2, modality="OT", patient=2, date="20251231", path="second/3.0.dcm"),
     record("1.1", 1, 2, modality="CT", date="20261101")],
]
REMOVED = ["1.2.9.1.3", "1.2.9.4.0", "1.2.9.nothing"]

FILTERS: list[tuple[str, dict[str, str]]] = [
    (base.STUDY, {}),
    (base.STUDY, {"PatientID": "P1"}),
    (base.STUDY, {"PatientID": "P9"}),
    (base.STUDY, {"PatientID": "P*"}),
    (base.STUDY, {"PatientName": "doe*"}),
    (base.STUDY, {"PatientName": "DOE^JANE"}),
    (base.STUDY, {"PatientName": "MÜL*"}),
    (base.STUDY, {"PatientName": "*ANN"}),
    (base.STUDY, {"AccessionNumber": "A2"}),
    (base.STUDY, {"AccessionNumber": "Y"}),
    (base.STUDY, {"StudyDate": "20261101-20261130"}),
    (base.STUDY, {"StudyDate": "-20251231"}),
    (base.STUDY, {"StudyDate": "20261115"}),
    (base.STUDY, {"ModalitiesInStudy": "MR"}),
    (base.STUDY, {"ModalitiesInStudy": "CT\\US"}),
    (base.STUDY, {"ModalitiesInStudy": "SR", "PatientName": "DOE*"}),
    (base.STUDY, {"StudyInstanceUID": "1.2.8.1\\1.2.8.3"}),
    (base.STUDY, {"StudyID": "2", "StudyDate": "20261115"}),
    (base.STUDY, {"StudyID": "2", "StudyDate": "2026*"}),
    (base.SERIES, {}),
    (base.SERIES, {"Modality": "CT"}),
    (base.SERIES, {"PatientID": "P2", "Modality": "MR"}),
    (base.SERIES, {"StudyInstanceUID": "1.2.8.1", "SeriesNumber": "3"}),
    (base.IMAGE, {}),
    (base.IMAGE, {"PatientName": "doe*", "Modality": "CT"}),
    (base.IMAGE, {"StudyInstanceUID": "1.2.8.2", "SOPInstanceUID": "1.2.9.1.0"}),
    (base.IMAGE, {"AccessionNumber": "A3", "InstanceNumber": "0"}),
    # Instances by UID alone (Storage Commitment's lookup, instance_studies):
    # one moved to another study, one removed, one never stored.
    (base.IMAGE, {"SOPInstanceUID": "1.2.9.1.0\\1.2.9.1.3\\1.2.9.3.1\\1.2.9.nothing"}),
    (base.IMAGE, {"SOPInstanceUID": "1.2.9.4.0", "PatientID": "P3"}),
]


def by(key: str, documents) -> list[dict]:
    return sorted(documents, key=lambda doc: doc[key])


def assert_same(embedded, postgres) -> None:
    """Every reader method gives the same documents (order aside where none is promised)."""
    assert by("StudyInstanceUID", postgres.studies()) == by("StudyInstanceUID",
                                                             embedded.studies())
    for summary in embedded.studies():
        uid = summary["StudyInstanceUID"]
        mine, theirs = postgres.study(uid), embedded.study(uid)
        assert mine["study"] == theirs["study"]
        assert by("SeriesInstanceUID", mine["series"]) == by("SeriesInstanceUID",
                                                              theirs["series"])
        assert by("SOPInstanceUID", mine["instances"]) == by("SOPInstanceUID",
                                                              theirs["instances"])
        assert by("SeriesInstanceUID", postgres.series(uid)) == by(
            "SeriesInstanceUID", embedded.series(uid))
        assert by("SOPInstanceUID", postgres.instances(uid)) == by(
            "SOPInstanceUID", embedded.instances(uid))
    assert by("SOPInstanceUID", postgres.instances()) == by("SOPInstanceUID",
                                                             embedded.instances())
    assert postgres.study("1.2.8.404") is None and postgres.series("1.2.8.404") == []
    asked = ["1.2.9.1.0", "1.2.9.3.1", "1.2.9.4.0", "1.2.9.nothing"]
    assert postgres.instance_studies(asked) == embedded.instance_studies(asked)
    for level, filters in FILTERS:
        key = {base.STUDY: "StudyInstanceUID", base.SERIES: "SeriesInstanceUID",
               base.IMAGE: "SOPInstanceUID"}[level]
        expected = by(key, embedded.query(level, filters))
        assert by(key, postgres.query(level, filters)) == expected, (level, filters)
        assert by(key, CachingReader(postgres).query(level, filters)) == expected


@pytest.fixture
def pair(tmp_path: Path, database_url: str):
    prepare(database_url)
    embedded = ArchiveIndex(tmp_path / "index.json")
    postgres = PostgresIndexWriter(database_url)
    yield embedded, postgres
    embedded.close()
    postgres.close()


def test_the_same_batches_give_the_same_documents_and_queries(pair) -> None:
    embedded, postgres = pair
    for batch in BATCHES:
        replaced = postgres.apply(batch)
        assert by("SOPInstanceUID", replaced) == by("SOPInstanceUID", embedded.apply(batch))
        assert_same(embedded, postgres)
    moved = {doc["path"] for doc in replaced}
    assert moved == {"1/1/1.0.dcm", "3/1/3.0.dcm"}  # the earlier files, no longer used
    assert postgres.remove(REMOVED) == embedded.remove(REMOVED) == 2
    assert_same(embedded, postgres)
    assert {s["StudyInstanceUID"] for s in postgres.studies()} == {"1.2.8.1", "1.2.8.2",
                                                                   "1.2.8.3"}


def test_a_filter_table_that_the_queries_answer_differently_would_fail(pair) -> None:
    """The comparison can fail: a study summary changed behind the backend's back
    shows as a difference."""
    embedded, postgres = pair
    for batch in BATCHES:
        embedded.apply(batch)
        postgres.apply(batch)
    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute("UPDATE studies SET patient_id = 'CHANGED' "
                           "WHERE study_instance_uid = '1.2.8.2'")
    with pytest.raises(AssertionError):
        assert_same(embedded, postgres)


def test_version_moves_with_each_write_and_per_study(pair) -> None:
    _embedded, postgres = pair
    reader = PostgresIndex(postgres.url)
    try:
        before = reader.version()
        postgres.apply(BATCHES[0])
        after = reader.version()
        assert after != before
        one, two = reader.version("1.2.8.1"), reader.version("1.2.8.2")
        postgres.apply([record("2.9", 2, 1, modality="MR", patient=1, date="20261115")])
        assert reader.version("1.2.8.1") == one and reader.version("1.2.8.2") != two
        assert reader.version("1.2.8.404") is None
        assert reader.version() == reader.version()
    finally:
        reader.close()


def test_a_failed_batch_changes_nothing(pair) -> None:
    _embedded, postgres = pair
    postgres.apply(BATCHES[0])
    before = (postgres.version(), by("StudyInstanceUID", postgres.studies()))
    broken = [record("5.0", 5, 1), record("5.1", 5, 1, path=None)]
    broken[1] = InstanceRecord(**{**broken[1].__dict__, "path": None})  # NOT NULL refuses
    with pytest.raises(psycopg.Error):
        postgres.apply(broken)
    assert (postgres.version(), by("StudyInstanceUID", postgres.studies())) == before
    assert postgres.study("1.2.8.5") is None
