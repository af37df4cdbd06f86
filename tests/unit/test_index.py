"""The sharded TinyDB index: idempotent writes, moves between studies, readers."""

import json
import random
from dataclasses import replace

import pytest

from echoes.index import embedded as index
from echoes.index import journal as journal_module
from echoes.index.embedded import ArchiveIndex, InstanceRecord
from echoes.index.journal import journal_path
from echoes.index.tally import summarize_study


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


def test_catalog_rebuilt_from_shards_after_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)

    def killed(*_args):
        raise KeyboardInterrupt("killed between the shard writes and the catalog write")

    commit = db._catalog.commit
    lines = []

    def intent_then_killed(data, changes):
        if lines:
            killed()
        lines.append(changes)
        commit(data, changes)  # the intent line: the batch's studies, before their shards

    monkeypatch.setattr(db._catalog, "commit", intent_then_killed)
    with pytest.raises(KeyboardInterrupt):
        db.apply([record("1.1"), record("1.2", study="7.7", series="7.7.1")])
    assert index.read_studies(path) == []  # catalog not yet written; shards are
    restarted = ArchiveIndex(path)  # the restarted ingester
    assert "2 studies of an unfinished batch" in restarted.started_from
    assert restarted.location("1.2") == "7.7"
    restarted.close()
    assert {s["StudyInstanceUID"] for s in index.read_studies(path)} == {"1.2.3", "7.7"}


def test_a_batch_writes_its_records_not_the_study(tmp_path):
    """One big study: each batch appends to the shard's journal; the file stays."""
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record(f"1.{n}") for n in range(300)])
    shard = index.shard_path(path, "1.2.3")
    base = shard.read_bytes()
    journal = journal_path(shard)
    for n in range(300, 310):
        size = journal.stat().st_size if journal.exists() else 0
        db.apply([record(f"1.{n}")])
        assert journal.stat().st_size - size < 1000
    assert shard.read_bytes() == base
    detail = index.read_study(path, "1.2.3")
    assert len(detail["instances"]) == 310
    assert detail["series"][0]["NumberOfSeriesRelatedInstances"] == 310
    assert index.read_studies(path)[0]["NumberOfInstances"] == 310
    db.close()


def test_running_summaries_match_a_full_recount(tmp_path, monkeypatch):
    """Random sends, re-sends, moves between series and studies, and removals."""
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 3000)
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    rng = random.Random(7)
    studies = ["5.1", "5.2", "5.3"]
    clock = 0
    for _round in range(60):
        batch = []
        for _ in range(rng.randint(1, 8)):
            clock += 1
            study = rng.choice(studies)
            series = f"{study}.{rng.randint(1, 3)}"
            batch.append(record(
                f"9.{rng.randint(1, 40)}", study=study, series=series,
                Modality=rng.choice(["CT", "MR", ""]), PatientName=f"P^{clock}",
                size=rng.randint(1, 100), received=f"2026-11-29T10:00:{clock:05d}"))
        db.apply(batch)
        if rng.random() < 0.2:
            db.remove([f"9.{rng.randint(1, 40)}" for _ in range(3)])
        if rng.random() < 0.1:
            db.close()
            db = ArchiveIndex(path)
    db.close()
    catalog = {s["StudyInstanceUID"]: s for s in index.read_studies(path)}
    for study in studies:
        detail = index.read_study(path, study)
        if detail is None:
            assert study not in catalog
            continue
        expected, series = summarize_study(detail["instances"])
        assert catalog[study] == expected
        assert sorted(detail["series"], key=str) == sorted(series, key=str)
    assert sum(s["NumberOfInstances"] for s in catalog.values()) == len(
        list(index.iter_instances(path)))


def test_failed_batch_is_retried_from_what_is_on_disk(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record("1.1", study="8.1", series="8.1.1")])
    db.apply([record("1.2", study="8.1", series="8.1.1")])  # 8.1 has a journal now

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fdatasync", disk_full)
    moved = record("1.1", study="8.2", series="8.2.1")
    with pytest.raises(OSError):
        db.apply([moved, record("1.5", study="8.1", series="8.1.1")])
    monkeypatch.undo()
    replaced = db.apply([moved, record("1.5", study="8.1", series="8.1.1")])
    assert [r["path"] for r in replaced] == ["8.1/8.1.1/1.1.dcm"]
    db.close()
    found = {i["SOPInstanceUID"]: i["StudyInstanceUID"] for i in index.iter_instances(path)}
    assert found == {"1.1": "8.2", "1.2": "8.1", "1.5": "8.1"}
    assert {s["StudyInstanceUID"]: s["NumberOfInstances"]
            for s in index.read_studies(path)} == {"8.1": 2, "8.2": 1}


def test_leftovers_of_a_killed_writer_are_removed_at_start(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record("1.1"), record("1.2", study="4.4", series="4.4.1")])
    db.apply([record("1.3", study="4.4", series="4.4.1")])
    shard = index.shard_path(path, "4.4")

    def killed_midway(self):
        (shard.parent / ".4.4.json.123.tmp").write_text("{")
        (tmp_path / ".index.json.123.tmp").write_text("{")
        self.storage.path.unlink()
        raise KeyboardInterrupt("killed between removing a shard and its journal")

    monkeypatch.setattr(index._Shard, "remove_files", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        db.remove(["1.2", "1.3"])  # the study goes: its shard's files are removed
    monkeypatch.undo()
    restarted = ArchiveIndex(path)  # without close: the writer was killed
    assert "1 studies of an unfinished batch" in restarted.started_from
    restarted.close()
    assert not journal_path(shard).exists()
    assert not list(tmp_path.rglob("*.tmp"))
    assert [s["StudyInstanceUID"] for s in index.read_studies(path)] == ["1.2.3"]


def test_memory_holds_a_bounded_number_of_instances(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "OPEN_INSTANCES", 10)
    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    for study in range(5):
        db.apply([record(f"2.{study}.{n}", study=f"3.{study}", series=f"3.{study}.1")
                  for n in range(6)])
    assert len(db._shards) == 1  # each shard alone is over half the bound
    db.apply([record("2.0.0", study="3.0", series="3.0.1", size=5)])  # reloaded from disk
    db.close()
    assert len(list(index.iter_instances(path))) == 30


def test_an_index_written_before_journals_is_read_and_extended(tmp_path):
    """Files of the earlier AtomicJSONStorage: plain TinyDB JSON, no generation."""
    path = tmp_path / "index.json"
    old = record("1.1").__dict__
    shard = index.shard_path(path, "1.2.3")
    shard.parent.mkdir()
    shard.write_text(json.dumps({
        "series": {str(index.doc_id("1.2.3.1")): {
            "SeriesInstanceUID": "1.2.3.1", "Modality": "CT", "SeriesNumber": "",
            "SeriesDescription": "", "NumberOfSeriesRelatedInstances": 1}},
        "instances": {str(index.doc_id("1.1")): old}}))
    path.write_text(json.dumps({"studies": {}}))  # a stale catalog
    assert index.read_study(path, "1.2.3")["instances"] == [old]
    db = ArchiveIndex(path)
    assert index.read_studies(path)[0]["NumberOfInstances"] == 1
    db.apply([record("1.2")])
    db.close()
    assert index.read_studies(path)[0]["NumberOfInstances"] == 2
    assert {i["SOPInstanceUID"] for i in index.iter_instances(path)} == {"1.1", "1.2"}


def test_instances_are_found_by_uid_without_reading_every_study(tmp_path, monkeypatch):
    """An IMAGE query naming instances and no study (Storage Commitment's) reads
    the shards of the studies the locations log names, and finds what a scan of
    every study finds: moved instances in their new study, removed ones nowhere."""
    from echoes.index.base import query

    path = tmp_path / "index.json"
    db = ArchiveIndex(path)
    db.apply([record(f"1.{study}.{n}", study=f"9.{study}", series=f"9.{study}.1")
              for study in range(20) for n in range(3)])
    db.apply([record("1.0.0", study="9.5", series="9.5.1")])  # re-sent under study 9.5
    db.remove(["1.3.1"])
    db.close()
    reader = index.EmbeddedIndex(path)
    asked = "\\".join(["1.0.0", "1.3.1", "1.7.2", "1.19.0", "1.99.9"])
    assert reader.instance_studies(asked.split("\\")) == {
        "1.0.0": "9.5", "1.7.2": "9.7", "1.19.0": "9.19"}
    read = []
    shard = index.EmbeddedIndex._read_shard
    monkeypatch.setattr(index.EmbeddedIndex, "_read_shard",
                        lambda self, uid: (read.append(uid), shard(self, uid))[1])
    found = reader.query("IMAGE", {"SOPInstanceUID": asked})
    assert sorted(read) == ["9.19", "9.5", "9.7"]
    assert sorted((d["SOPInstanceUID"], d["StudyInstanceUID"]) for d in found) == [
        ("1.0.0", "9.5"), ("1.19.0", "9.19"), ("1.7.2", "9.7")]
    # A single UID, and a patient key beside the UIDs, go the same way.
    assert [d["SOPInstanceUID"] for d in reader.query("IMAGE", {"SOPInstanceUID": "1.7.2"})] == [
        "1.7.2"]
    assert reader.query("IMAGE", {"SOPInstanceUID": "1.7.2", "PatientID": "NOBODY"}) == []
    assert sorted(read) == ["9.19", "9.5", "9.7", "9.7", "9.7"]
    monkeypatch.setattr(index.EmbeddedIndex, "instance_studies", lambda self, uids: None)
    scanned = query(reader, "IMAGE", {"SOPInstanceUID": asked})  # no log: every study read
    assert len(read) > 20
    assert sorted(map(json.dumps, scanned)) == sorted(map(json.dumps, found))
