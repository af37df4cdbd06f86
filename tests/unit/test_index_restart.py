"""The embedded writer's start: the catalog taken as it is when it can be trusted.

Issue 18: reading every shard at each ingester start cost 37 s at 200,000
studies.  The catalog records its last batch (intent before the shards, done
after); these tests show when a start trusts it, when it reads a few shards
again, and when it still reads them all.
"""

from __future__ import annotations

import pytest

from echoes.index import embedded as index
from echoes.index.embedded import ArchiveIndex, InstanceRecord, resume_plan

BOOT = "boot-a"


def record(sop: str, study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceRecord:
    return InstanceRecord(
        SOPInstanceUID=sop, SOPClassUID="1.2.840.10008.5.1.4.1.1.7", SeriesInstanceUID=series,
        StudyInstanceUID=study, PatientName="DOE^JANE", Modality="OT",
        path=f"{study}/{series}/{sop}.dcm", size=10, received="2026-12-04T10:00:00")


@pytest.mark.parametrize(("last", "boot", "plan"), [
    (None, BOOT, None),  # a catalog of an older echoes: no marker
    ({"seq": 3, "done": True, "boot": BOOT}, BOOT, []),  # killed between batches
    ({"seq": 3, "done": True, "boot": BOOT}, "boot-b", None),  # and the machine lost power
    ({"seq": 3, "done": True, "boot": BOOT}, None, None),  # no boot id: never trusted
    ({"seq": 3, "done": True, "boot": BOOT, "clean": True}, "boot-b", []),  # clean stop, reboot
    ({"seq": 3, "done": False, "boot": BOOT, "studies": ["1.2", "1.3"]}, BOOT, ["1.2", "1.3"]),
    ({"seq": 3, "done": False, "boot": BOOT, "studies": ["1.2"]}, "boot-b", None),
    ({"seq": 3, "done": False, "boot": BOOT}, BOOT, None),  # intent without its studies
    ({"seq": "3", "done": True, "boot": BOOT}, BOOT, None),
])
def test_resume_plan(last, boot, plan):
    assert resume_plan(last, boot) == plan


@pytest.fixture
def boot(monkeypatch):
    """The machine's boot id, changeable by the test (a reboot)."""
    current = {"id": BOOT}
    monkeypatch.setattr(index, "boot_id", lambda: current["id"])
    return current


def no_shard_scan(monkeypatch):
    """Make reading every shard fail: a start that does it is caught."""
    def scan(_path):
        raise AssertionError("every shard was read")
        yield  # pragma: no cover

    monkeypatch.setattr(index, "_shard_files", scan)


def build(path) -> ArchiveIndex:
    db = ArchiveIndex(path)
    db.apply([record("1.1"), record("1.2", study="7.7", series="7.7.1")])
    db.apply([record("1.3", study="7.7", series="7.7.1")])
    return db


def uids(path) -> dict[str, int]:
    return {s["StudyInstanceUID"]: s["NumberOfInstances"] for s in index.read_studies(path)}


def test_clean_stop_then_start_reads_no_shard(tmp_path, boot, monkeypatch):
    path = tmp_path / "index.json"
    build(path).close()
    boot["id"] = "boot-b"  # even after a reboot: close() fsynced and marked it clean
    no_shard_scan(monkeypatch)
    db = ArchiveIndex(path)
    assert db.started_from == "the catalog"
    assert db.location("1.3") == "7.7"
    db.apply([record("1.3", study="8.8", series="8.8.1")])  # moved: the old study loses it
    db.close()
    assert uids(path) == {"1.2.3": 1, "7.7": 1, "8.8": 1}


def test_kill_between_batches_then_start_reads_no_shard(tmp_path, boot, monkeypatch):
    path = tmp_path / "index.json"
    build(path)  # never closed: what kill -9 leaves (every write is in the page cache)
    no_shard_scan(monkeypatch)
    db = ArchiveIndex(path)
    assert db.started_from == "the catalog"
    assert db.location("1.2") == "7.7"
    db.close()
    assert uids(path) == {"1.2.3": 1, "7.7": 2}


def test_kill_then_reboot_reads_every_shard(tmp_path, boot):
    path = tmp_path / "index.json"
    build(path)
    boot["id"] = "boot-b"  # the catalog and locations were not fsynced: maybe lost
    db = ArchiveIndex(path)
    assert db.started_from == "every shard"
    assert db.location("1.3") == "7.7"
    db.close()
    assert uids(path) == {"1.2.3": 1, "7.7": 2}


def test_an_older_catalog_or_a_damaged_one_is_rebuilt(tmp_path, boot):
    path = tmp_path / "index.json"
    build(path).close()
    index.locations_path(path).unlink()  # an index written before the locations log
    db = ArchiveIndex(path)
    assert db.started_from == "every shard"
    assert db.location("1.2") == "7.7"
    db.close()
    path.write_text("{not json")
    db = ArchiveIndex(path)
    assert db.started_from == "every shard"
    db.close()
    assert uids(path) == {"1.2.3": 1, "7.7": 2}


def test_kill_after_the_shards_before_the_catalog(tmp_path, boot, monkeypatch):
    """The batch's shards are fsynced, its done line never written: those studies,
    and only those, are read again."""
    path = tmp_path / "index.json"
    db = build(path)
    mark = db._mark

    def killed_at_done(last, changes=None):
        if last["done"]:
            raise KeyboardInterrupt("kill -9")
        mark(last, changes)

    monkeypatch.setattr(db, "_mark", killed_at_done)
    with pytest.raises(KeyboardInterrupt):
        db.apply([record("2.1", study="9.9", series="9.9.1"),
                  record("1.1", study="9.9", series="9.9.1")])  # 1.1 moves from 1.2.3
    assert uids(path) == {"1.2.3": 1, "7.7": 2}  # what readers see: the batch not yet
    monkeypatch.undo()
    monkeypatch.setattr(index, "boot_id", lambda: BOOT)
    no_shard_scan(monkeypatch)
    restarted = ArchiveIndex(path)
    assert restarted.started_from == \
        "the catalog, 2 studies of an unfinished batch read again"
    assert restarted.location("1.1") == "9.9"
    restarted.close()
    assert uids(path) == {"7.7": 2, "9.9": 2}


def test_the_locations_log_survives_a_torn_record_and_is_rewritten_when_long(
        tmp_path, boot, monkeypatch):
    path = tmp_path / "index.json"
    log = index.locations_path(path)
    db = build(path)
    with open(log, "ab") as handle:
        handle.write(b"\x01\x02\x03")  # a record torn by the kill
    db = ArchiveIndex(path)
    assert log.stat().st_size % 16 == 0
    assert db.location("1.1") == "1.2.3"
    for _round in range(3):  # the same three instances written again and again
        db.apply([record("1.1"), record("1.2", study="7.7", series="7.7.1")])
        db.apply([record("1.2"), record("1.1", study="7.7", series="7.7.1")])
    db._locations._records = 10**6  # as if long: the next flush rewrites it
    db.apply([record("1.3")])
    assert log.stat().st_size == 3 * 16
    db.close()
    db = ArchiveIndex(path)
    assert {sop: db.location(sop) for sop in ("1.1", "1.2", "1.3")} == \
        {"1.1": "7.7", "1.2": "1.2.3", "1.3": "1.2.3"}
    db.close()


def test_shards_removed_by_hand_are_noticed(tmp_path, boot):
    """The catalog is not trusted when the folder holds another number of studies
    (an admin who deleted shards to have them rebuilt)."""
    path = tmp_path / "index.json"
    build(path).close()
    index.shard_path(path, "7.7").unlink()
    db = ArchiveIndex(path)
    assert db.started_from == "every shard"
    db.close()
    assert uids(path) == {"1.2.3": 1}
