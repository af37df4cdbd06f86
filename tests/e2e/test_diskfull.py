"""A full disk mid-transfer: 0xA700, nothing half-stored, and recovery by itself.

The spool, archive and index live on a small tmpfs the test mounts (root
only; skipped with the reason elsewhere).  ``min_free_mb = 0`` so the real
ENOSPC path is exercised, not the free-space floor.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from helpers import make_dataset, start_server, stop_server
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from echoes.dicom.part10 import check_part10
from echoes.dicom.requestor import Requestor

SIZE_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs",
                           str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def send(port: int, datasets: list) -> list[int]:
    """C-STORE each data set over one association; the statuses (-1: no response).

    Through echoes' blocking requestor, not pynetdicom's: pynetdicom's reactor
    thread sometimes takes a fast C-STORE-RSP off the queue before
    send_c_store waits for it ("Received unexpected C-STORE service message",
    then a DIMSE timeout; seen once in CI on this test, whose refusals come
    back quickly).
    """
    syntax = str(datasets[0].file_meta.TransferSyntaxUID)
    assoc = Requestor.connect("127.0.0.1", port, "FILLER", "ECHOES",
                              [(str(datasets[0].SOPClassUID), [syntax])], 16384, 30, 60)
    context = assoc.context_for(str(datasets[0].SOPClassUID), syntax)
    assert context is not None
    statuses = []
    for ds in datasets:
        data = encode(ds, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
        result = assoc.send_c_store(context, ds.SOPInstanceUID, io.BytesIO(data))
        statuses.append(-1 if result is None else result.status)
    assoc.release()
    return statuses


def test_disk_full_mid_transfer(tmp_path: Path, small_disk: Path) -> None:
    server = start_server(tmp_path / "home", store_workers=1, min_free_mb=0,
                          spool_dir=small_disk / "spool", archive_dir=small_disk / "archive",
                          index_path=small_disk / "index.json")
    try:
        study = generate_uid()
        big = [make_dataset(study=study, rows=724) for _ in range(40)]  # ~1 MB each
        statuses = send(server.port, big)
        stored = [ds.SOPInstanceUID for ds, s in zip(big, statuses, strict=True) if s == 0]
        assert 0xA700 in statuses, statuses
        assert all(s in (0x0000, 0xA700) for s in statuses), statuses
        assert stored, "nothing fit at all"

        # Nothing half-stored: every archived file is whole and indexed, and
        # every acknowledged object is (or will be) archived.
        server.wait_ingested(len(stored), timeout=60)
        for path in (small_disk / "archive").rglob("*.dcm"):
            with open(path, "rb") as handle:
                check_part10(handle, path.stat().st_size)
        assert set(server.archived_sops()) == set(stored)
        assert set(server.indexed_sops()) == set(stored)
        # Empty ones are the workers' spares (store.SpareFiles).
        assert not [p for p in (small_disk / "spool" / "tmp").rglob("*.part")
                    if p.stat().st_size > 0]
        assert "0xA700" in server.config.log_file.read_text()

        # Space comes back: the same objects go in, and are archived, by themselves.
        subprocess.run(["mount", "-o", f"remount,size={SIZE_MB * 4}m", str(small_disk)],
                       check=True)
        rest = [ds for ds, s in zip(big, statuses, strict=True) if s != 0]
        assert set(send(server.port, rest)) == {0}
        server.wait_ingested(len(big), timeout=60)
        assert set(server.archived_sops()) == {ds.SOPInstanceUID for ds in big}
        assert all(pydicom.dcmread(p).SOPInstanceUID == p.stem
                   for p in (small_disk / "archive").rglob("*.dcm"))
        assert not server.files_outside()
    finally:
        stop_server(server)
