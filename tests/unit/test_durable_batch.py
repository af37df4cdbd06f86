"""atomic_write_batch: several files durably, each whole, none half written; the
store worker's early writeback."""

from __future__ import annotations

import os

import pytest

from echoes.storage import durable
from echoes.storage.durable import atomic_write_batch


def test_writes_every_file_and_makes_missing_folders(tmp_path) -> None:
    (tmp_path / "a.json").write_bytes(b"old")
    files = [(tmp_path / "a.json", b"new a"), (tmp_path / "sub" / "b.json", b"b" * 70000)]
    assert atomic_write_batch(files) == 2
    assert (tmp_path / "a.json").read_bytes() == b"new a"
    assert (tmp_path / "sub" / "b.json").read_bytes() == b"b" * 70000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.json", "sub"]


def test_a_failure_leaves_no_target_changed_and_no_temporary_file(tmp_path) -> None:
    (tmp_path / "a.json").write_bytes(b"old")
    (tmp_path / "plain").write_bytes(b"a file, not a folder")
    files = [(tmp_path / "a.json", b"new"), (tmp_path / "plain" / "b.json", b"b")]
    with pytest.raises(OSError):
        atomic_write_batch(files)
    assert (tmp_path / "a.json").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain"]


def test_nothing_to_write_touches_nothing(tmp_path) -> None:
    assert atomic_write_batch([]) == 0
    assert list(tmp_path.iterdir()) == []


def test_start_writeback_hands_a_written_range_to_the_disk(tmp_path) -> None:
    """The store worker's early writeback (Linux sync_file_range): the kernel takes a
    written range of a regular file, refuses a closed descriptor, and the bytes
    stay the bytes."""
    path = tmp_path / "object.dcm"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\x5a" * (3 * durable.WRITEBACK_CHUNK))
        assert durable.start_writeback(fd, 0, 2 * durable.WRITEBACK_CHUNK)
        assert not durable.start_writeback(fd, 0, 0)  # nothing to hand over
    finally:
        os.close(fd)
    assert not durable.start_writeback(fd, 0, durable.WRITEBACK_CHUNK)  # closed: EBADF
    assert path.read_bytes() == b"\x5a" * (3 * durable.WRITEBACK_CHUNK)
