"""echoes fsck and echoes reindex, on a running server and on a stopped one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import Server, make_dataset, start_server, stop_server
from pydicom.uid import generate_uid
from pynetdicom import AE


def echoes(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(server.config.path),
                           *args], capture_output=True, text=True, timeout=120)


def store(server: Server, count: int) -> list[str]:
    study = generate_uid()
    datasets = [make_dataset(study=study) for _ in range(count)]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")
    assert all(assoc.send_c_store(ds).Status == 0 for ds in datasets)
    assoc.release()
    server.wait_ingested(count)
    return [ds.SOPInstanceUID for ds in datasets]


def test_fsck_and_reindex_while_running(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", store_workers=1)
    try:
        sops = store(server, 6)
        clean = echoes(server, "fsck")
        assert clean.returncode == 0 and "index and archive agree" in clean.stdout

        files = sorted(server.config.archive_dir.rglob("*.dcm"))
        files[0].unlink()                                    # record without file
        with open(files[1], "r+b") as handle:                # size mismatch
            handle.truncate(files[1].stat().st_size - 10)
        stray = files[2].parent / f"{generate_uid()}.dcm"    # file without record,
        shutil.copy(files[2], stray)                         # holding another UID
        found = echoes(server, "fsck")
        assert found.returncode == 1
        out = found.stdout
        assert f"record without file: {files[0].relative_to(server.config.archive_dir)}" in out
        assert "size mismatch" in out and "file without record" in out
        assert "UID mismatch" in out and "which belongs at" in out
        quick = echoes(server, "fsck", "--quick")
        assert quick.returncode == 1 and "UID mismatch" not in quick.stdout

        stray.unlink()
        rebuilt = echoes(server, "reindex")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert '"records removed": 1' in rebuilt.stdout
        assert set(server.indexed_sops()) == set(sops) - {files[0].stem}
        assert "size mismatch" not in echoes(server, "fsck").stdout
    finally:
        stop_server(server)


def test_reindex_when_stopped_rebuilds_a_lost_index(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", store_workers=1)
    try:
        sops = store(server, 4)
    finally:
        stop_server(server)
    server.config.index_path.unlink()
    shutil.rmtree(server.config.index_path.with_name(server.config.index_path.name + ".d"))
    rebuilt = echoes(server, "reindex")
    assert rebuilt.returncode == 0 and '"indexed": 4' in rebuilt.stdout
    assert sorted(server.indexed_sops()) == sorted(sops)
    assert echoes(server, "fsck").returncode == 0
    studies = echoes(server, "studies", "--json")
    assert '"NumberOfInstances": 4' in studies.stdout
