"""echoes as a unix service: the daemon cycle, the init scripts, signals, echoes check.

Everything here runs the real commands and scripts against a real server on
loopback ports: ``echoes start --daemon``, ``etc/init.d/echoes`` as root,
``systemd-analyze verify`` on the unit, SIGHUP and SIGTERM under load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    DCMTK_ENV,
    echo_ok,
    make_dataset,
    start_server,
    stop_server,
    write_config,
    write_part10,
)
from pydicom.uid import generate_uid
from pynetdicom import AE

from echoes import config as config_module
from echoes.queue import jobs

REPO = Path(__file__).resolve().parents[2]
ECHOES_BIN = Path(sys.executable).parent / "echoes"


def echoes(config_path: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_daemon_cycle(home: Path) -> None:
    config_path = write_config(home, store_workers=1)
    config = config_module.load(config_path)
    try:
        started = echoes(config_path, "start", "--daemon")
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("echoes: running (pid ")
        assert echo_ok(config.store_port) and echo_ok(config.mwl_port)  # answered before return
        status = echoes(config_path, "status")
        assert status.returncode == 0
        for role in ("store", "mwl", "ingester", "sender"):
            assert f"echoes: {role}" in status.stdout
        second = echoes(config_path, "start", "--daemon")
        assert second.returncode == 1 and "already running" in second.stderr
        reload = echoes(config_path, "reload")
        assert reload.returncode == 0
    finally:
        stopped = echoes(config_path, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert echoes(config_path, "status").returncode == 3
    assert not config.pid_file.exists()
    assert echoes(config_path, "reload").returncode == 7


def test_stale_pid_file_is_taken_over(home: Path) -> None:
    config_path = write_config(home, store_workers=1)
    config = config_module.load(config_path)
    config.pid_file.parent.mkdir(parents=True)
    # A pid that is alive but not echoes (ours), as after a reboot reused it.
    config.pid_file.write_text(f"{os.getpid()}\n")
    status = echoes(config_path, "status")
    assert status.returncode == 3, status.stdout
    try:
        started = echoes(config_path, "start", "--daemon")
        assert started.returncode == 0, started.stderr
        assert config.pid_file.read_text().strip() != str(os.getpid())
    finally:
        echoes(config_path, "stop")


def test_start_fails_clearly_when_a_port_is_taken(home: Path) -> None:
    config_path = write_config(home, store_workers=1)
    config = config_module.load(config_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.store_port))
        squatter.listen()
        started = echoes(config_path, "start", "--daemon")
    assert started.returncode == 1
    assert "failed to start" in started.stderr
    assert f"store_port: cannot listen on 127.0.0.1:{config.store_port}" in started.stderr
    assert echoes(config_path, "status").returncode == 3


def test_sysv_init_script(home: Path) -> None:
    config_path = write_config(home, store_workers=1)
    config = config_module.load(config_path)
    env = {**os.environ, "ECHOES_HOME": str(REPO), "ECHOES_CONFIG": str(config_path),
           "ECHOES_BIN": str(ECHOES_BIN), "ECHOES_USER": subprocess.run(
               ["id", "-un"], capture_output=True, text=True).stdout.strip(),
           "ECHOES_DEFAULTS": "/nonexistent"}
    script = str(REPO / "etc" / "init.d" / "echoes")

    def run(action: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, action], env=env, capture_output=True, text=True,
                              timeout=150)

    try:
        assert run("start").returncode == 0
        assert echo_ok(config.store_port) and echo_ok(config.mwl_port)
        status = run("status")
        assert status.returncode == 0 and "echoes: store" in status.stdout
        assert run("reload").returncode == 0
        assert run("restart").returncode == 0
        assert run("status").returncode == 0
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0
    assert run("status").returncode == 3
    assert run("bogus").returncode == 2


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here (no systemd): unit not verified")
    unit = (REPO / "etc" / "systemd" / "echoes.service").read_text()
    # Point the unit at this checkout: verify checks that ExecStart exists.
    unit = unit.replace("/opt/echoes/.venv/bin/echoes", str(ECHOES_BIN))
    path = tmp_path / "echoes.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "echoes.service" not in done.stderr, done.stderr  # no warnings about the unit


def test_sighup_adds_a_destination_without_dropping_an_association(tmp_path: Path,
                                                                   dcmtk: None) -> None:
    dest_port = __import__("helpers").free_port()
    received = tmp_path / "dest"
    received.mkdir()
    storescp = subprocess.Popen(["storescp", "+xa", "-od", str(received), str(dest_port)],
                                env=DCMTK_ENV)
    server = start_server(tmp_path / "home", store_workers=1)
    try:
        ae = AE(ae_title="MODALITY")
        first, second = make_dataset(), make_dataset()
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", server.port)
        assert assoc.is_established
        assert assoc.send_c_store(first).Status == 0
        server.wait_ingested(1)  # archived before the change: not forwarded
        config_path = server.config.path
        config_path.write_text(config_path.read_text() + f"\n[ae:NEWDEST]\nhost = 127.0.0.1\n"
                                                         f"port = {dest_port}\nforward = yes\n")
        assert echoes(config_path, "reload").returncode == 0
        time.sleep(1.0)
        assert assoc.is_established  # the association in flight survived SIGHUP
        assert assoc.send_c_store(second).Status == 0
        assoc.release()
        assert assoc.is_released
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(received.iterdir()):
            time.sleep(0.1)
        names = [p.name for p in received.iterdir()]
        assert names == [f"SC.{second.SOPInstanceUID}"], names
    finally:
        stop_server(server)
        storescp.terminate()
        storescp.wait()


def test_sigterm_during_transfer_archives_every_acknowledged_object(tmp_path: Path,
                                                                    dcmtk: None) -> None:
    import pydicom
    from test_crash import send_counting

    study = generate_uid()
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = [write_part10(make_dataset(study=study, rows=64), folder / f"{n:04d}.dcm")
             for n in range(200)]
    uid_of = {f.name: pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    server = start_server(tmp_path / "home", store_workers=2)
    acknowledged: set[str] = set()
    sending = threading.Thread(target=lambda: acknowledged.update(
        send_counting(server.port, files)))
    sending.start()
    time.sleep(0.8)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(120) == 0
    sending.join(120)
    expected = {uid_of[name] for name in acknowledged}
    assert expected, "nothing was acknowledged before SIGTERM"
    assert expected <= set(server.archived_sops())
    assert expected <= set(server.indexed_sops())
    assert not list((server.config.spool_dir / "incoming").glob("*.dcm"))
    print(f"\nSIGTERM after 0.8 s: {len(expected)} of 200 acknowledged, all archived")


# -- echoes check ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("check") / "home"
    server = start_server(home, store_workers=1, disk_warning_mb=0)
    yield server
    stop_server(server)


def check(config_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return echoes(config_path, "check", *extra)


def variant(server, tmp_path: Path, **changes: object) -> Path:
    """A copy of the server's config with some keys changed (same folders and pid file)."""
    text = server.config.path.read_text()
    lines = [line for line in text.splitlines() if line.split("=")[0].strip() not in changes]
    paths = {key: getattr(server.config, key) for key in
             ("spool_dir", "archive_dir", "index_path", "worklist_dir", "log_file", "pid_file")}
    lines += [f"{key} = {value}" for key, value in {**paths, **changes}.items()]
    path = tmp_path / "etc" / "echoes.ini"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_ok(running) -> None:
    done = check(running.config.path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("ECHOES OK - ")


def test_check_not_running(home: Path) -> None:
    done = check(write_config(home))
    assert done.returncode == 2
    assert done.stdout.startswith("ECHOES CRITICAL - echoes is not running")


def test_check_disk_thresholds(running, tmp_path: Path) -> None:
    warning = check(variant(running, tmp_path / "w", disk_warning_mb=10**9))
    assert warning.returncode == 1 and "ECHOES WARNING - spool disk" in warning.stdout
    critical = check(variant(running, tmp_path / "c", min_free_mb=10**9))
    assert critical.returncode == 2 and "under min_free_mb" in critical.stdout


def test_check_invalid_worklist_file(running) -> None:
    bad = running.config.worklist_dir / "broken.json"
    bad.write_text("{")
    try:
        done = check(running.config.path)
        assert done.returncode == 1
        assert "WARNING: worklist file broken.json skipped: not JSON" in done.stdout
    finally:
        bad.unlink()


def _job(state: str, age: float, destination: str = "PACS") -> jobs.Job:
    now = time.time()
    record = {"SOPInstanceUID": generate_uid(), "StudyInstanceUID": generate_uid(),
              "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "path": "x/y/z.dcm"}
    job = jobs.new_job(destination, record, "push", now - age)
    if state == jobs.FAILED:
        job = jobs.refused(job, "0xA900 data set does not match SOP class", now)
    return job


def test_check_failed_and_stale_jobs(running, tmp_path: Path) -> None:
    store = jobs.JobStore(running.config.spool_dir / "outgoing")
    failed, stale = _job(jobs.FAILED, 0), _job(jobs.PENDING, 7200, "ARCHIVE")
    config_path = variant(running, tmp_path, retry_interval=3600)
    config_path.write_text(config_path.read_text() + "\n[ae:PACS]\nhost = 127.0.0.1\n"
                           "port = 9\n\n[ae:ARCHIVE]\nhost = 127.0.0.1\nport = 9\n")
    store.write(failed)
    store.write(stale)
    try:
        done = check(config_path, "--json")
        report = json.loads(done.stdout)
        assert done.returncode == 2 and report["status"] == "CRITICAL"
        messages = {(p["severity"], p["message"]) for p in report["problems"]}
        assert ("CRITICAL", "1 failed jobs to PACS (see echoes queue; echoes retry --failed)") \
            in messages
        assert ("WARNING", "1 jobs to ARCHIVE waiting longer than 60 min") in messages
    finally:
        store.remove(failed.id)
        store.remove(stale.id)


def check_with_child_killed(running, role: str) -> subprocess.CompletedProcess:
    """``echoes check`` while ``role``'s process is dead and not yet restarted,
    then wait until check is clean again (the supervisor restarted it).
    """
    supervisor = running.process.pid
    [child] = running.children(role)
    os.kill(supervisor, signal.SIGSTOP)  # so it cannot restart the child yet
    try:
        os.kill(child, signal.SIGKILL)
        time.sleep(0.3)
        done = check(running.config.path)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and check(running.config.path).returncode != 0:
        time.sleep(0.5)
    assert check(running.config.path).returncode == 0
    return done


def test_check_process_down_and_port_silent(running) -> None:
    done = check_with_child_killed(running, "mwl")
    assert done.returncode == 2
    assert "CRITICAL: mwl: 0 of 1 processes running" in done.stdout
    assert f"CRITICAL: worklist port {running.config.mwl_port} does not answer C-ECHO" \
        in done.stdout


def test_check_web_down_is_a_warning_not_critical(running) -> None:
    done = check_with_child_killed(running, "web")
    assert done.returncode == 1, done.stdout
    assert "WARNING: web: 0 of 1 processes running" in done.stdout
    assert f"WARNING: Browser port {running.config.http_port} does not answer" in done.stdout


def test_check_rejected_spool_files_and_orphan_jobs(running) -> None:
    rejected = running.config.spool_dir / "rejected" / "0001-1-000001.dcm"
    rejected.write_bytes(b"not dicom")
    store = jobs.JobStore(running.config.spool_dir / "outgoing")
    orphan = _job(jobs.PENDING, 0, "GONE")
    store.write(orphan)
    try:
        done = check(running.config.path)
        assert done.returncode == 1, done.stdout
        assert "WARNING: 1 spooled files rejected" in done.stdout
        assert "WARNING: 1 jobs to GONE, which is no longer configured" in done.stdout
    finally:
        rejected.unlink()
        store.remove(orphan.id)
