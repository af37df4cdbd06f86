"""The sharded TinyDB index: idempotent writes, moves between studies, readers."""

import json
from dataclasses import replace

from echoes import index
from echoes.index import ArchiveIndex, InstanceRecord


def record(sop: str, study: str = "1.2.3", series: str = "1.2.3.1", **kw) -> InstanceRecord:
    values = dict(
        SOPInstanceUID=sop, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", SeriesInstanceUID=series,
        StudyInstanceUID=study, PatientID="P1", PatientName="DOE^JANE", Modality="CT",
        path=f"{study}/{series}/{sop}.dcm", size=100, received="2026-11-29T10:00:00")
    values.update(kw)
    return InstanceRecord(**values)


def test_same_sop_twice_is_one_record(tmp_path):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record("1.1"), record("1.2")])
    db.apply([replace(record("1.1"), size=999)])
    db.close()
    studies = index.read_studies(path)
    assert len(studies) == 1 and studies[0]["NumberOfInstances"] == 2
    detail = index.read_study(path, "1.2.3")
    sizes = {i["SOPInstanceUID"]: i["size"] for i in detail["instances"]}
    assert sizes == {"1.1": 999, "1.2": 100}
    assert detail["series"][0]["NumberOfSeriesRelatedInstances"] == 2


def test_reopen_keeps_locations_and_moving_study_removes_old(tmp_path):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record("1.1", study="9.1", series="9.1.1")])
    db.close()
    db = ArchiveIndex(path)  # a restarted ingester
    replaced = db.apply([record("1.1", study="9.2", series="9.2.1")])
    db.close()
    assert [r["path"] for r in replaced] == ["9.1/9.1.1/1.1.dcm"]
    assert [s["StudyInstanceUID"] for s in index.read_studies(path)] == ["9.2"]
    assert not index.shard_path(path, "9.1").exists()


def test_summary_fields_for_studies_json(tmp_path):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record("1.1"), record("1.2", series="1.2.3.2", Modality="SR")])
    db.close()
    study = index.read_studies(path)[0]
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate",
                "ModalitiesInStudy", "NumberOfSeries", "NumberOfInstances"):
        assert key in study
    assert study["ModalitiesInStudy"] == ["CT", "SR"] and study["NumberOfSeries"] == 2


def test_files_are_whole_json_and_no_temp_left(tmp_path):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    for n in range(20):
        db.apply([record(f"1.{n}")])
    db.close()
    json.loads(path.read_text())
    json.loads(index.shard_path(path, "1.2.3").read_text())
    assert not list(tmp_path.rglob("*.tmp"))


def test_reader_of_missing_index():
    from pathlib import Path

    assert index.read_studies(Path("/nonexistent/index.json")) == []


def test_catalog_rebuilt_from_shards_after_a_crash(tmp_path):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.flush_catalog()
    db._catalog_flushed = float("inf")  # as if killed before the next catalog write
    from echoes import index as index_module

    saved = index_module.CATALOG_FLUSH_SECONDS
    index_module.CATALOG_FLUSH_SECONDS = float("inf")
    try:
        db.apply([record("1.1"), record("1.2", study="7.7", series="7.7.1")])
    finally:
        index_module.CATALOG_FLUSH_SECONDS = saved
    assert index.read_studies(path) == []  # catalog not yet written; shards are
    ArchiveIndex(path).close()  # the restarted ingester
    assert {s["StudyInstanceUID"] for s in index.read_studies(path)} == {"1.2.3", "7.7"}
