"""The PostgreSQL index backend's pure part (echoes/index/postgres_sql.py): rows and
documents, the study keys, the candidate SQL a query makes."""

from __future__ import annotations

import dataclasses

from echoes.index import base, postgres_sql
from echoes.index.instance import InstanceRecord
from echoes.index.tally import summarize_study


def instance(**values: str) -> InstanceRecord:
    fields = {"SOPInstanceUID": "1.1", "SOPClassUID": "1.2", "SeriesInstanceUID": "1.3",
              "StudyInstanceUID": "1.4", "path": "a/b.dcm", "size": 5,
              "received": "2026-12-04T10:00:00"}
    return InstanceRecord(**{**fields, **values})


def test_every_instance_field_has_a_column_and_a_row_reads_back_as_the_document() -> None:
    assert list(postgres_sql.INSTANCE_COLUMNS) == [
        field.name for field in dataclasses.fields(InstanceRecord)]
    record = instance(PatientName="DOE^JOHN", Modality="CT")
    row = postgres_sql.instance_row(record)
    assert postgres_sql.instance_doc(row) == record.__dict__


def test_a_study_row_reads_back_as_its_summary() -> None:
    summary, series = summarize_study([instance(Modality="CT").__dict__])
    assert postgres_sql.study_doc(postgres_sql.study_row(summary, 7)[:-1]) == summary
    assert postgres_sql.series_doc(postgres_sql.series_row("1.4", series[0])[1:]) == series[0]


def test_study_keys_hold_every_form_a_constraint_compares_with() -> None:
    summary, _ = summarize_study([instance(PatientID="P1\\P2", PatientName="Doe^Jane^^",
                                           StudyDate="2026.12.04", Modality="MR").__dict__])
    keys = {(name, key) for name, key, uid in postgres_sql.key_rows(summary)}
    assert {("PatientID", "P1\\P2"), ("PatientID", "P1"), ("PatientID", "P2"),
            ("PatientName", "doe^jane"), ("StudyDate", "20261204"),
            ("ModalitiesInStudy", "MR")} <= keys
    assert all(key for _name, key in keys)  # empty values are not keys


def test_a_query_narrows_by_every_constrained_key_and_a_name_prefix() -> None:
    query = base.compile_filters({"PatientID": "P1", "StudyDate": "20261101-20261130",
                           "PatientName": "DOE*"})
    statement, params = postgres_sql.candidates(query)
    assert statement.count("study_instance_uid IN (SELECT") == 3
    assert params == ["PatientID", ["P1"], "StudyDate", "20261101", "20261130",
                      "PatientName", "doe", "doe" + postgres_sql.TOP]


def test_a_query_without_an_indexed_key_scans() -> None:
    assert postgres_sql.candidates(base.compile_filters({"PatientName": "*ANN"})) is None
    assert postgres_sql.candidates(base.compile_filters({"StudyDescription": "x"})) is None


def test_summaries_from_the_aggregate_rows_are_the_tallys() -> None:
    """The rows the three queries give (newest of the study, newest of each series with
    its count, totals) make the documents summarize_study makes from every instance."""
    docs = [instance(SOPInstanceUID=f"1.1.{n}", SeriesInstanceUID=f"1.3.{n % 2}",
                     Modality=("CT", "SR")[n % 2], PatientName=f"NAME{n}").__dict__
            | {"received": f"2026-12-04T10:00:0{n}", "size": 10 + n} for n in range(5)]
    docs[2]["Modality"] = ""  # an older CT instance without Modality: the newest decides
    expected_summary, expected_series = summarize_study(docs)
    column = postgres_sql.INSTANCE_COLUMNS
    newest = [tuple(docs[4][name] for name in column)]
    series = [("1.4", *(docs[n][name] for name in ("SeriesInstanceUID", "Modality",
                                                   "SeriesNumber", "SeriesDescription",
                                                   "SeriesDate", "BodyPartExamined")), count)
              for n, count in ((4, 3), (3, 2))]
    totals = [("1.4", 5, sum(doc["size"] for doc in docs))]
    summary, series_docs = postgres_sql.summaries(newest, series, totals)["1.4"]
    assert summary == expected_summary
    assert sorted(series_docs, key=lambda s: s["SeriesInstanceUID"]) == sorted(
        expected_series, key=lambda s: s["SeriesInstanceUID"])
