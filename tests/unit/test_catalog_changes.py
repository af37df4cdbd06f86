"""Readers of the catalog follow its journal: after a change they read the change.

Issue 18: the Browser re-read a catalog of 200,000 studies (6 s) after every
ingester batch.  A reader now reads the catalog whole once, then the journal
lines written since (:func:`echoes.index.journal.read_since`), and the
Browser applies the changed summaries to its snapshot
(:meth:`echoes.web.catalog.CatalogSnapshot.updated`).
"""

from __future__ import annotations

import random

import pytest

from echoes.index import journal
from echoes.index.embedded import ArchiveIndex, EmbeddedIndex, InstanceRecord
from echoes.index.journal import JournalStorage, JournalTail, read_since, read_with_position
from echoes.web.catalog import SORT_KEYS, CatalogSnapshot, StudyCatalog, parse_study_query


def record(n: int, study: int, name: str = "DOE^JANE", date: str = "20261204",
           modality: str = "CT") -> InstanceRecord:
    return InstanceRecord(
        SOPInstanceUID=f"9.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        SeriesInstanceUID=f"9.2.{study}", StudyInstanceUID=f"9.1.{study}", PatientName=name,
        PatientID=f"P{study % 7}", StudyDate=date, Modality=modality,
        path=f"9.1.{study}/9.2.{study}/9.3.{n}.dcm", size=10 + n,
        received=f"2026-12-04T10:{n // 60 % 60:02d}:{n % 60:02d}.000+00:00")


def test_read_since_gives_only_the_lines_written_since(tmp_path):
    path = tmp_path / "t.json"
    storage = JournalStorage(path)
    data = {"t": {"1": {"v": 1}}}
    storage.commit(data, {"t": {"1": {"v": 1}}})  # the first write makes the file
    tail = JournalTail(path)
    assert tail.refresh() is None and tail.data == data and tail.full_reads == 1
    for n in range(2, 6):
        data["t"][str(n)] = {"v": n}
        storage.commit(data, {"t": {str(n): {"v": n}}})
        assert tail.refresh() == [{"t": {str(n): {"v": n}}}]
    assert tail.refresh() == []  # nothing new
    assert tail.data == data and tail.full_reads == 1
    position = tail.position
    del data["t"]["3"]
    storage.commit(data, {"t": {"3": None}})
    assert read_since(path, position)[1] == [{"t": {"3": None}}]
    tail.refresh()
    assert tail.data == data and tail.full_reads == 1


def test_after_a_compaction_the_reader_reads_whole_once(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 200)
    path = tmp_path / "t.json"
    storage = JournalStorage(path)
    data: dict = {"t": {}}
    tail = JournalTail(path)
    positions = []
    for n in range(40):
        data["t"][str(n)] = {"v": "x" * 20}
        storage.commit(data, {"t": {str(n): data["t"][str(n)]}})
        positions.append(read_with_position(path)[1])
        tail.refresh()
        assert tail.data == data
    assert 1 < tail.full_reads < 10  # compacted a few times, each read whole once
    assert read_since(path, positions[0])[1] is None  # that journal is gone


def test_study_changes_of_the_embedded_index(tmp_path):
    path = tmp_path / "index.json"
    writer = ArchiveIndex(path)
    writer.apply([record(1, 1)])
    reader = EmbeddedIndex(path)
    position, changes = reader.study_changes(None)
    assert changes is None  # first: read studies() whole
    assert [s["StudyInstanceUID"] for s in reader.studies()] == ["9.1.1"]
    writer.apply([record(2, 2), record(3, 1)])
    position, changes = reader.study_changes(position)
    assert {uid: s["NumberOfInstances"] for uid, s in changes.items()} == \
        {"9.1.1": 2, "9.1.2": 1}
    position, changes = reader.study_changes(position)
    assert changes == {}
    writer.remove(["9.3.2"])  # a study goes: its removal cannot be told by UID
    assert reader.study_changes(position)[1] is None
    assert [s["StudyInstanceUID"] for s in reader.studies()] == ["9.1.1"]
    assert reader.catalog_reads == 1  # studies() followed the journal too
    writer.close()


@pytest.mark.parametrize("seed", range(5))
def test_an_updated_snapshot_searches_like_a_fresh_one(seed):
    rng = random.Random(seed)
    names = ["DOE^JANE", "ROE^RICHARD", "MÜLLER^ANNA", "adams^x", ""]

    def summary(uid: int) -> dict:
        return {"StudyInstanceUID": f"9.1.{uid}", "PatientName": rng.choice(names),
                "PatientID": f"P{rng.randrange(5)}", "AccessionNumber": f"A{rng.randrange(9)}",
                "StudyDate": f"202612{rng.randrange(1, 29):02d}", "StudyTime": "",
                "ModalitiesInStudy": rng.sample(["CT", "MR", "OT"], rng.randrange(1, 3)),
                "NumberOfInstances": rng.randrange(1, 50),
                "updated": f"2026-12-04T10:00:{rng.randrange(60):02d}.000+00:00"}

    catalog = {f"9.1.{n}": summary(n) for n in range(300)}
    snapshot = CatalogSnapshot(catalog.values())
    for sort in SORT_KEYS[:4]:
        snapshot.order(sort)  # some orders computed already, some not
    for _round in range(6):
        changes = {f"9.1.{n}": summary(n) for n in rng.sample(range(340), 12)}
        catalog.update(changes)
        snapshot = snapshot.updated(changes)
        fresh = CatalogSnapshot(catalog.values())
        assert snapshot.instances == fresh.instances and len(snapshot) == len(fresh)
        for sort in SORT_KEYS:
            for params in ({}, {"patient_name": "doe"}, {"modality": "MR", "order": "asc"},
                           {"date_from": "20261210", "per_page": "7", "page": "2"}):
                query = parse_study_query({"sort": sort, "per_page": "200", **params})
                assert snapshot.search(query) == fresh.search(query), (sort, params)


def test_the_browser_catalog_applies_a_change_without_a_full_load(tmp_path):
    path = tmp_path / "index.json"
    writer = ArchiveIndex(path)
    writer.apply([record(n, n) for n in range(100)])
    reader = EmbeddedIndex(path)
    browser = StudyCatalog(reader)
    assert len(browser.current()) == 100
    writer.apply([record(500, 500, name="NEW^STUDY")])
    snapshot = browser.current()
    assert "9.1.500" in snapshot.by_uid
    newest = snapshot.search(parse_study_query({}))
    assert newest.studies[0]["StudyInstanceUID"] == "9.1.500"  # arrived last: listed first
    assert (browser.full_loads, browser.updates) == (1, 1)
    assert reader.catalog_reads == 1
    writer.remove(["9.3.500"])  # a removal: read whole again
    assert "9.1.500" not in browser.current().by_uid
    assert browser.full_loads == 2
    writer.close()


def test_the_qr_cache_updates_its_catalog_index_from_the_changes(tmp_path):
    from echoes.index.cache import CachingReader

    path = tmp_path / "index.json"
    writer = ArchiveIndex(path)
    rng = random.Random(7)
    names = ["DOE^JANE", "DOE^JOHN", "ROE^R", "MÜLLER^A"]
    writer.apply([record(n, n, name=rng.choice(names), date=f"202612{n % 28 + 1:02d}")
                  for n in range(200)])
    cached = CachingReader(EmbeddedIndex(path))
    queries = [{"PatientID": "P3"}, {"PatientName": "DOE*"}, {"PatientName": "müller*"},
               {"StudyDate": "20261205-20261212"}, {"StudyDate": "20261207"}]
    for round_ in range(4):
        for filters in queries:  # every table built, then carried over each change
            found = {s["StudyInstanceUID"] for s in cached.query("STUDY", filters)}
            fresh = {s["StudyInstanceUID"] for s in EmbeddedIndex(path).query("STUDY", filters)}
            assert found == fresh, (round_, filters)
        # studies changed (patient renamed, new date) and new ones
        writer.apply([record(1000 + round_ * 10 + k, rng.randrange(260), name=rng.choice(names),
                             date=f"202612{rng.randrange(1, 29):02d}") for k in range(10)])
    assert cached.full_loads == 1 and cached.updates == 3
    writer.close()


def test_the_browser_narrows_searches_by_an_index_it_carries_over_changes(tmp_path):
    """A filtered search of the held catalog looks its few candidates up (issue 18:
    one pass over 200,000 studies cost 0.2 s), with the same answers as a pass
    over all, and the index follows each change instead of being built again."""
    path = tmp_path / "index.json"
    writer = ArchiveIndex(path)
    rng = random.Random(3)
    names = ["DOE^JANE", "DOE^JOHN", "ROE^R", "MÜLLER^A", "STRAßE^B", "SMITH"]
    writer.apply([record(n, n, name=rng.choice(names), date=f"2026{n % 12 + 1:02d}01")
                  for n in range(400)])
    reader = EmbeddedIndex(path)
    browser = StudyCatalog(reader)
    searches = [{"patient_id": "P3"}, {"patient_name": "doe"}, {"patient_name": "müll"},
                {"patient_name": "strasse"}, {"date_from": "20260301", "date_to": "20260401"},
                {"patient_name": "ro", "modality": "CT", "sort": "patient_name"},
                {"patient_name": "smith", "date_from": "20260501", "per_page": "3", "page": "2"}]
    for round_ in range(4):
        whole = CatalogSnapshot(EmbeddedIndex(path).studies())
        for params in searches:
            query = parse_study_query(params)
            assert browser.search(query) == whole.search(query), (round_, params)
        writer.apply([record(2000 + round_ * 10 + k, rng.randrange(440), name=rng.choice(names),
                             date=f"2026{rng.randrange(1, 13):02d}01") for k in range(10)])
    # P3, the months, ro + CT, sm(ith) + a date: looked up; doe (a third of all),
    # müll (not ASCII), strasse (ss): one pass
    assert browser.indexed_searches == 4 * 4
    assert browser.full_loads == 1 and browser.updates == 3
    assert browser.current()._index is not None  # carried over, not dropped
    writer.close()
