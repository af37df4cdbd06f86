"""JournalStorage: TinyDB data as a file plus a journal of changes.

Replay after a torn or damaged line, compaction, generations (stale and
orphan journals), and readers that only ever see whole writes.
"""

from __future__ import annotations

import json
import threading

import pytest
from tinydb import TinyDB

from echoes.index import journal
from echoes.index.journal import JournalStorage, journal_path


def docs(*keys: int, table: str = "t", value: int = 0) -> dict:
    return {table: {str(k): {"k": k, "v": value} for k in keys}}


def reread(path) -> dict | None:
    return JournalStorage(path).read()


def test_plain_tinydb_round_trip(tmp_path):
    path = tmp_path / "db.json"
    db = TinyDB(path, storage=JournalStorage)
    db.table("people").insert_multiple([{"name": "ann"}, {"name": "bob"}])
    db.table("people").remove(doc_ids=[1])
    db.close()
    again = TinyDB(path, storage=JournalStorage)
    assert [d["name"] for d in again.table("people").all()] == ["bob"]
    assert "_generation" not in again.tables()
    assert json.loads(path.read_text())["people"]  # the file is plain JSON


def test_commit_appends_only_the_changes(tmp_path):
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    data = docs(*range(100))
    writer.commit(data, data)  # no file yet: written whole
    base = path.read_bytes()
    for n in range(100, 110):
        data["t"][str(n)] = {"k": n, "v": 0}
        writer.commit(data, docs(n))
    del data["t"]["5"]
    writer.commit(data, {"t": {"5": None}})
    assert path.read_bytes() == base  # the file was not rewritten
    lines = journal_path(path).read_bytes().splitlines()
    assert len(lines) == 1 + 11 and json.loads(lines[0]) == {"_generation": 1}
    assert reread(path) == data


def test_torn_last_line_is_ignored_then_cut_off_by_the_writer(tmp_path):
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    data = docs(1)
    writer.commit(data, data)
    data["t"]["2"] = {"k": 2, "v": 0}
    writer.commit(data, docs(2))
    whole = journal_path(path).read_bytes()
    with open(journal_path(path), "ab") as handle:  # killed in the middle of a write
        handle.write(journal.encode_line(docs(3))[:-7])
    assert reread(path) == data

    restarted = JournalStorage(path)
    assert restarted.load() == data
    assert journal_path(path).read_bytes() == whole
    data["t"]["4"] = {"k": 4, "v": 0}
    restarted.commit(data, docs(4))
    assert reread(path) == data


def test_a_damaged_line_ends_the_replay(tmp_path):
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    data = docs(1)
    writer.commit(data, data)
    writer.commit(docs(1, 2), docs(2))
    writer.commit(docs(1, 2, 3), docs(3))
    raw = journal_path(path).read_bytes()
    lines = raw.split(b"\n")
    lines[2] = lines[2].replace(b'"v":0', b'"v":9')  # checksum no longer matches
    journal_path(path).write_bytes(b"\n".join(lines))
    assert reread(path) == docs(1, 2)


def test_compaction_keeps_the_data_and_bounds_the_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 2000)
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    data: dict = {"t": {}, "u": {}}
    for n in range(400):
        data["t"][str(n)] = {"k": n, "v": n}
        changes: dict = {"t": {str(n): data["t"][str(n)]}}
        if n % 3 == 0:
            data["t"].pop(str(n // 2), None)
            changes["t"][str(n // 2)] = None
        if n % 50 == 0:
            data["u"]["x"] = {"n": n}
            changes["u"] = {"x": {"n": n}}
        writer.commit(data, changes)
        assert writer.journal_bytes <= max(2000, writer.base_bytes)
    assert writer.generation > 3
    assert reread(path) == data
    assert JournalStorage(path).load() == data


def test_journal_older_than_the_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 0)
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    writer.commit(docs(1), docs(1))
    writer.commit(docs(1, 2), docs(2))  # journal of generation 1
    writer.commit(docs(1, 2, 3), docs(3))  # too big: compacted to generation 2
    assert json.loads(journal_path(path).read_bytes().split(b"\n")[0])["_generation"] == 1
    assert reread(path) == docs(1, 2, 3)


def test_a_journal_newer_than_an_unchanged_file_is_a_leftover(tmp_path):
    path = tmp_path / "db.json"
    path.write_text('{"_generation":1,"t":{"1":{"k":1}}}')
    journal_path(path).write_bytes(b'{"_generation":2}\n' + journal.encode_line(docs(9)))
    assert reread(path) == {"t": {"1": {"k": 1}}}


def test_orphan_journal_is_never_replayed_onto_a_new_file(tmp_path):
    path = tmp_path / "db.json"
    old = JournalStorage(path)
    old.commit(docs(1), docs(1))
    old.commit(docs(1, 2), docs(2))
    path.unlink()  # killed between removing the file and its journal
    assert reread(path) is None
    new = JournalStorage(path)
    assert new.load() is None
    new.commit(docs(7), docs(7))
    assert reread(path) == docs(7)
    new.commit(docs(7, 8), docs(8))
    assert reread(path) == docs(7, 8)


def test_failed_append_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    writer.commit(docs(1), docs(1))
    writer.commit(docs(1, 2), docs(2))
    before = journal_path(path).read_bytes()

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "fdatasync", disk_full)  # after the line is written
    with pytest.raises(OSError):
        writer.commit(docs(1, 2, 3), docs(3))
    monkeypatch.undo()
    assert journal_path(path).read_bytes() == before
    writer.commit(docs(1, 2, 4), docs(4))  # reloads, then appends again
    assert reread(path) == docs(1, 2, 4)


def test_readers_only_ever_see_whole_writes(tmp_path, monkeypatch):
    """Each write keeps sum == count; a reader racing appends and compactions checks it."""
    monkeypatch.setattr(journal, "COMPACT_MIN_BYTES", 4000)
    path = tmp_path / "db.json"
    writer = JournalStorage(path)
    data: dict = {"items": {}, "meta": {"count": {"n": 0}}}
    writer.commit(data, data)
    done = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read_loop() -> None:
        while not done.is_set():
            got = reread(path)
            count = got["meta"]["count"]["n"]
            if len(got["items"]) != count:
                problems.append(f"{len(got['items'])} items, count says {count}")
            seen.append(count)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for n in range(1, 600):
            changes = {"items": {str(n): {"n": n, "pad": "x" * 40}},
                       "meta": {"count": {"n": n}}}
            journal.apply_changes(data, changes)
            writer.commit(data, changes)
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:3]
    assert seen and seen == sorted(seen)  # never back to an older state
    assert writer.generation > 2


def test_paused_gc_is_enabled_again_by_the_last_of_overlapping_users():
    import gc

    assert gc.isenabled()
    first, second = journal.paused_gc(), journal.paused_gc()
    first.__enter__()
    second.__enter__()  # another thread's read, overlapping
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second still decodes
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()  # a process that runs without it keeps it off
    try:
        with journal.paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
