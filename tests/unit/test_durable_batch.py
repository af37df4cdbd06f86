"""atomic_write_batch: several files durably, each whole, none half written."""

from __future__ import annotations

import pytest

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
