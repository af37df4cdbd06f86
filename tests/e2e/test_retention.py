"""Retention end to end (issue 20): max_archive_gb filling up, retention_days with a
back-dated arrival, ``echoes delete`` (running and stopped), studies kept for their
unfinished jobs, and a kill -9 in the middle of a deletion.

Objects go in with dcmtk storescu; what is left is read back from the index
(``echoes studies --json``), the archive tree and ``echoes fsck``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DCMTK_ENV, make_dataset, start_server, stop_server, write_part10
from pydicom.uid import generate_uid
from test_forward import _start_existing, wait_for
from test_web import FAST_HASH, Client

#: Objects of 32x32 16-bit pixels: 2048 bytes of pixel data plus header, about
#: 2.5 KB each; two one-object studies fit in 6,000 bytes, three do not.
ROWS = 32
LIMIT_GB = 6000e-9


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path), *args],
                          capture_output=True, text=True)


def study_files(folder: Path, count: int = 1) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    return study, [write_part10(make_dataset(study=study, series=series, rows=ROWS),
                                folder / f"{generate_uid()}.dcm") for _ in range(count)]


def send(server, paths: list[Path], calling: str = "MODALITY") -> None:
    done = subprocess.run(["storescu", "-aet", calling, "127.0.0.1",
                           str(server.config.store_port), *map(str, paths)],
                          env=DCMTK_ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def studies(server) -> set[str]:
    listed = cli(server.config.path, "studies", "--json")
    assert listed.returncode == 0, listed.stderr
    return {s["StudyInstanceUID"] for s in json.loads(listed.stdout)}


def archived_studies(server) -> set[str]:
    return {p.name for p in server.config.archive_dir.iterdir() if p.is_dir()}


@pytest.fixture(scope="module")
def server(tmp_path_factory, dcmtk) -> Iterator:
    base = tmp_path_factory.mktemp("retention")
    # KEEPER's objects are forwarded to a port where nobody listens: their jobs
    # fail (max_attempts 1), and keep the study.
    sections = ("\n[ae:NOBODY]\nhost = 127.0.0.1\nport = 9\nforward = yes\n"
                "forward_calling_aes = KEEPER\n")
    running = start_server(base / "home", sections, retention_days=30, max_archive_gb=LIMIT_GB,
                           max_attempts=1, retry_interval=1, http_password_hash=FAST_HASH)
    yield running
    stop_server(running)


def test_archive_filling_up_deletes_the_oldest_arrived(server, tmp_path) -> None:
    kept, kept_files = study_files(tmp_path / "k")
    send(server, kept_files, calling="KEEPER")
    wait_for(lambda: "1 failed" in cli(server.config.path, "queue").stdout, 30,
             "KEEPER's job did not fail")
    sent = []
    for n in range(4):
        study, paths = study_files(tmp_path / str(n))
        send(server, paths)
        sent.append(study)
        time.sleep(0.1)  # arrival order is what decides
    # Over 6,000 bytes: the oldest-arrived go, but never KEEPER's (its job failed).
    wait_for(lambda: studies(server) == {kept, sent[3]}, 60,
             f"left: {studies(server)}, sent {sent}, kept {kept}")
    assert archived_studies(server) == {kept, sent[3]}
    text = server.config.log_file.read_text()
    assert all(f"deleted study {uid} (max_archive_gb)" in text for uid in sent[:3])
    check = cli(server.config.path, "check")
    assert "deleted: 3 studies in the last 24 h (3 max_archive_gb" in check.stdout
    # By hand, a study with a failed job is refused too.
    refused = cli(server.config.path, "delete", kept)
    assert refused.returncode == 1 and "1 outbound jobs not done" in refused.stderr
    assert kept in studies(server)


def test_retention_days_deletes_a_back_dated_study(server, tmp_path) -> None:
    study, paths = study_files(tmp_path / "old")
    forty_days_ago = time.time_ns() - 40 * 86400 * 10**9
    incoming = server.config.spool_dir / "incoming"
    staged = server.config.spool_dir / "tmp" / "back-dated.dcm"
    staged.write_bytes(paths[0].read_bytes())
    # As if it had arrived forty days ago: the arrival time is in the spool name.
    os.rename(staged, incoming / f"{forty_days_ago:020d}-1-000001.dcm")
    wait_for(lambda: f"deleted study {study} (retention_days)" in
             server.config.log_file.read_text(), 60, "the old study was not deleted")
    assert study not in studies(server) and study not in archived_studies(server)


def test_echoes_delete_by_hand(server, tmp_path) -> None:
    unknown = cli(server.config.path, "delete", "1.2.3.4.5.6")
    assert unknown.returncode != 0 and "no archived study 1.2.3.4.5.6" in unknown.stderr
    study, paths = study_files(tmp_path / "h")
    send(server, paths)
    wait_for(lambda: study in studies(server), 30, "not indexed")
    done = cli(server.config.path, "delete", study)
    assert done.returncode == 0, done.stderr
    assert f"study {study} deleted (1 objects" in done.stdout
    assert study not in studies(server) and study not in archived_studies(server)
    assert f"deleted study {study} (by hand)" in server.config.log_file.read_text()
    assert cli(server.config.path, "fsck", "--quick").returncode == 0


def test_delete_button_in_the_browser(server, tmp_path) -> None:
    study, paths = study_files(tmp_path / "b")
    send(server, paths)
    wait_for(lambda: study in studies(server), 30, "not indexed")
    client = Client(server.config.http_port)
    assert client.login().status == 200
    page = client.get(f"/studies/{study}").text
    assert 'data-testid="delete-study"' in page and f"/api/studies/{study}" in page
    assert client.delete("/api/studies/1.2.3.4.5.6.7").status == 404
    kept = [uid for uid in studies(server)
            if any(row["counts"]["failed"] for row in
                   client.get(f"/api/studies/{uid}/jobs").json()["destinations"])]
    assert len(kept) == 1, kept  # KEEPER's study of the first test
    kept = kept[0]
    refused = client.delete(f"/api/studies/{kept}")
    assert refused.status == 409 and "outbound jobs not done" in refused.error
    done = client.delete(f"/api/studies/{study}")
    assert done.status == 200, done.body
    assert done.json()["instances"] == 1
    assert study not in studies(server) and study not in archived_studies(server)
    assert f"deletion of study {study} asked by admin" in server.config.log_file.read_text()


def test_check_warns_when_kept_studies_hold_the_archive_over(server, tmp_path) -> None:
    for n in range(2):  # with the first KEEPER study: three kept, 7.5 KB > 6,000 bytes
        study, paths = study_files(tmp_path / str(n))
        send(server, paths, calling="KEEPER")
    wait_for(lambda: "3 failed" in cli(server.config.path, "queue").stdout, 30,
             "KEEPER's jobs did not fail")
    wait_for(lambda: "studies are kept for outbound jobs not done" in
             cli(server.config.path, "check").stdout, 60, "no warning about kept studies")
    check = cli(server.config.path, "check")
    assert "WARNING: archive holds 0.000" in check.stdout and "over max_archive_gb" in check.stdout
    assert "3 studies are kept" in check.stdout


def test_kill_9_in_the_middle_of_a_deletion(tmp_path, dcmtk, monkeypatch) -> None:
    monkeypatch.setenv("ECHOES_TEST_DELETE_PAUSE", "30")  # between index and files
    home = tmp_path / "home"
    running = start_server(home, own_group=True)
    study, paths = study_files(tmp_path / "in", 20)
    other, other_paths = study_files(tmp_path / "in2", 2)
    send(running, paths + other_paths)
    wait_for(lambda: {study, other} <= studies(running), 30, "not indexed")
    asker = subprocess.Popen([sys.executable, "-m", "echoes", "--config",
                              str(running.config.path), "delete", study],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    intent = running.config.spool_dir / "deleting" / f"{study}.json"
    try:
        wait_for(intent.exists, 30, "no deletion intent written")
        wait_for(lambda: study not in studies(running), 30, "index records not removed")
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait(10)
    finally:
        asker.kill()
        asker.wait(10)
    # Cut short: records gone, files still there; fsck sees it.
    assert intent.exists() and (running.config.archive_dir / study).exists()
    assert cli(running.config.path, "fsck", "--quick").returncode == 1
    monkeypatch.delenv("ECHOES_TEST_DELETE_PAUSE")
    (running.config.pid_file).unlink(missing_ok=True)
    restarted = _start_existing(home)
    try:
        wait_for(lambda: not intent.exists(), 30, "the intent was not finished at restart")
        fsck = cli(running.config.path, "fsck")
        assert fsck.returncode == 0, fsck.stdout
        assert not (running.config.archive_dir / study).exists()
        assert studies(restarted) == {other}
    finally:
        stop_server(restarted)
    # With the server stopped, echoes delete does the work itself.
    alone = cli(running.config.path, "delete", other)
    assert alone.returncode == 0, alone.stderr
    assert f"deleted study {other} (by hand)" in running.config.log_file.read_text()
    assert cli(running.config.path, "fsck", "--quick").returncode == 0
    assert not any(running.config.archive_dir.iterdir())
