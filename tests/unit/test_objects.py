"""The object store's first backend, the archive tree: keys, put, delete, iterate."""

from __future__ import annotations

from pathlib import Path

import pytest

from echoes.storage.archive import ArchiveTree
from echoes.storage.objects import object_key

STUDY, SERIES = "1.2.3", "1.2.3.4"


def spooled(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def test_key_is_the_archive_path_and_refuses_non_uids():
    assert object_key(STUDY, SERIES, "1.2.3.4.5") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        object_key(STUDY, SERIES, "../../etc/passwd")


def test_put_batch_moves_in_replaces_and_deletes(tmp_path):
    store = ArchiveTree(tmp_path / "archive")
    store.create()
    spool = tmp_path / "spool"
    first, second = object_key(STUDY, SERIES, "1.1"), object_key(STUDY, "9.9", "1.2")
    store.put_batch([(spooled(spool, "a", b"one"), first), (spooled(spool, "b", b"two"), second)])
    assert not list(spool.iterdir())  # moved, not copied
    assert store.exists(first) and store.exists(second)
    assert store.path_of(first) == tmp_path / "archive" / STUDY / SERIES / "1.1.dcm"
    store.put(spooled(spool, "c", b"newer"), first)  # the same key again: replaced
    with store.open(first) as handle:
        assert handle.read() == b"newer"
    store.put_batch([], delete=[second])
    assert not store.exists(second)
    assert sorted(store.iterate()) == [(first, 5)]
    store.delete(first)
    store.delete(first)  # nothing there: nothing to do
    assert list(store.iterate()) == []


def test_iterate_skips_temporary_and_foreign_files(tmp_path):
    store = ArchiveTree(tmp_path)
    key = object_key(STUDY, SERIES, "1.1")
    store.put(spooled(tmp_path / "spool", "a", b"x"), key)
    (tmp_path / STUDY / SERIES / ".1.2.dcm.part").write_bytes(b"partial")
    (tmp_path / STUDY / "notes.txt").write_text("not an object")
    assert list(store.iterate()) == [(key, 1)]


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "a/../../b.dcm", "a\\b.dcm"])
def test_keys_cannot_leave_the_tree(tmp_path, key):
    with pytest.raises(ValueError):
        ArchiveTree(tmp_path).path_of(key)


def test_move_into_archive_names_every_folder_it_changed(tmp_path):
    """The folders to fsync: a new study's chain of new folders the first time,
    then only the two the rename touched (no mkdir per object); a missing
    spooled file is an error, not a folder made for nothing."""
    from echoes.storage.archive import move_into_archive

    archive, spool = tmp_path / "archive", tmp_path / "spool"
    archive.mkdir()
    first = archive / STUDY / SERIES / "1.1.dcm"
    assert move_into_archive(spooled(spool, "a", b"one"), first) == {
        spool, archive, archive / STUDY, archive / STUDY / SERIES}
    second = archive / STUDY / SERIES / "1.2.dcm"
    assert move_into_archive(spooled(spool, "b", b"two"), second) == {
        spool, archive / STUDY / SERIES}
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    with pytest.raises(FileNotFoundError):
        move_into_archive(spool / "gone", archive / "9.9" / "9.9.9" / "1.3.dcm")
    assert not (archive / "9.9").exists()


def test_move_into_archive_copies_across_file_systems(tmp_path, monkeypatch):
    """EXDEV from the rename: copy, fsync, rename, one rename tried per object."""
    import errno
    import os

    from echoes.storage import archive

    real = os.replace
    tried = []

    def replace(source, target):
        if not Path(source).name.startswith("."):  # the spooled file, not the copy
            tried.append(source)
            if not Path(target).parent.exists():  # as rename(2): ENOENT before EXDEV
                raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(source, target)

    monkeypatch.setattr(archive.os, "replace", replace)
    root, spool = tmp_path / "archive", tmp_path / "spool"
    first = root / STUDY / SERIES / "1.1.dcm"
    assert archive.move_into_archive(spooled(spool, "a", b"one"), first) == {
        spool, tmp_path, root, root / STUDY, root / STUDY / SERIES}
    second = root / STUDY / SERIES / "1.2.dcm"
    archive.move_into_archive(spooled(spool, "b", b"two"), second)
    assert len(tried) == 3  # the first object: before and after making its folders
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert not list(spool.iterdir()) and not list((root / STUDY / SERIES).glob(".*"))
