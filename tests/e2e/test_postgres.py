"""echoes on PostgreSQL (database_url), end to end: the real server, a real PostgreSQL
(tests/pgserver.py), dcmtk peers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pydicom
import pytest
from helpers import (
    DCMTK_ENV,
    Server,
    api_json,
    free_port,
    make_dataset,
    start_server,
    stop_server,
    studies_json,
    wait_for,
    write_config,
    write_part10,
)
from pgserver import PgServer
from pydicom.uid import generate_uid


def start_once(home: Path, **extra: object) -> subprocess.CompletedProcess:
    """``echoes start`` in the foreground, expected to give up at once."""
    config_path = write_config(home, **extra)
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path), "start"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_the_database_down_at_start_is_one_line_and_nothing_is_created(
        tmp_path: Path, daemon: bool) -> None:
    home = tmp_path / "home"
    url = f"postgresql://echoes:pw@127.0.0.1:{free_port()}/echoes"  # nobody listens there
    config_path = write_config(home, database_url=url)
    command = [sys.executable, "-m", "echoes", "--config", str(config_path), "start"]
    done = subprocess.run(command + (["--daemon"] if daemon else []), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "database_url: PostgreSQL at 127.0.0.1:" in lines[0]
    assert "Connection refused" in lines[0] and "pw" not in lines[0]
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == [
        "etc", "etc/echoes.ini"]


def test_a_wrong_password_at_start_is_one_line(tmp_path: Path, postgres: PgServer,
                                               database_url: str) -> None:
    home = tmp_path / "home"
    done = start_once(home, database_url=database_url.replace(":echoes-test-secret@", ":bad@"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"echoes: database_url: PostgreSQL at 127.0.0.1:{postgres.port}/"
        f"{database_url.rsplit('/', 1)[1]}: password authentication failed for user "
        '"postgres"']
    assert not (home / "var").exists() and not (home / "spool").exists()


# -- a running echoes on PostgreSQL ------------------------------------------------------

PASSWORD = "correct horse"


def study_files(folder: Path, study: str, patient: str, name: str, count: int) -> list[Path]:
    """``count`` small images of one study, as Part 10 files for storescu."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    series = generate_uid()
    for n in range(count):
        ds = make_dataset(study=study, series=series, patient_id=patient, modality="CT")
        ds.PatientName = name
        ds.AccessionNumber = f"ACC{patient}"
        ds.StudyDate = "20261204"
        ds.InstanceNumber = n + 1
        files.append(write_part10(ds, folder / f"{study}-{n}.dcm"))
    return files


def storescu(port: int, files: list[Path]) -> None:
    done = subprocess.run(["storescu", "-aec", "ECHOES", "127.0.0.1", str(port),
                           *map(str, files)], env=DCMTK_ENV, capture_output=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-2000:]


def test_echoes_on_postgresql_stores_lists_finds_and_forwards(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    from werkzeug.security import generate_password_hash

    destination_port = free_port()
    received = tmp_path / "destination"
    received.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received),
                                 str(destination_port)], env=DCMTK_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = tmp_path / "home"
    server = start_server(home, database_url=database_url, node_name="node-a",
                          retry_interval=1, http_password_hash=generate_password_hash(
                              PASSWORD, method="pbkdf2:sha256:1000"),
                          sections=f"\n[ae:DEST]\nhost = 127.0.0.1\nport = "
                                      f"{destination_port}\nforward = yes\n")
    try:
        one, two = generate_uid(), generate_uid()
        files = (study_files(tmp_path / "in", one, "PG1", "DOE^JOHN", 6)
                 + study_files(tmp_path / "in", two, "PG2", "ROE^JANE", 4))
        storescu(server.port, files)

        # echoes studies --json: both studies, counted, from PostgreSQL
        wait_for(lambda: sum(s["NumberOfInstances"] for s in studies_json(server)) == 10, 30,
                 "not all objects indexed")
        studies = {s["StudyInstanceUID"]: s for s in studies_json(server)}
        assert set(studies) == {one, two}
        assert studies[one]["NumberOfInstances"] == 6 and studies[one]["PatientID"] == "PG1"
        assert not list(home.glob("var/index.json*"))  # the embedded index is not written
        with psycopg.connect(database_url) as connection:
            assert connection.execute("SELECT count(*) FROM instances").fetchone() == (10,)

        # Q/R C-FIND on the store port: by PatientID, name prefix, accession, date range
        for key in ("PatientID=PG1", "PatientName=DOE*", "AccessionNumber=ACCPG1",
                    "StudyDate=20261201-20261231"):
            found = findscu(server.port, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                          "NumberOfStudyRelatedInstances", key], tmp_path)
            expected = {one, two} if key.startswith("StudyDate") else {one}
            assert {ds.StudyInstanceUID for ds in found} == expected, key

        # the Browser's API
        listing = api(server, "/api/studies")
        assert {s["StudyInstanceUID"] for s in listing["studies"]} == {one, two}

        # forwarding: every object at the destination, every job done in PostgreSQL
        wait_for(lambda: len(list(received.iterdir())) == 10, 60, "not all objects forwarded")
        wait_for(lambda: job_states(database_url) == [("done", 10)], 30,
                 f"jobs not all done: {job_states(database_url)}")
        assert not list((home / "spool" / "outgoing").glob("*.json"))  # no job files
    finally:
        stop_server(server)
        storescp.terminate()
        storescp.wait(10)


def job_states(url: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()


def findscu(port: int, keys: list[str], folder: Path) -> list:
    out = folder / "find"
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    argv = ["findscu", "-S", "-X", "-od", str(out), "-aec", "ECHOES"]
    for key in keys:
        argv += ["-k", key]
    done = subprocess.run([*argv, "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-2000:]
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def api(server: Server, path: str):
    return api_json(server, path, PASSWORD)


def test_reindex_and_fsck_on_postgresql(tmp_path: Path, database_url: str) -> None:
    """With the server stopped: reindex fills PostgreSQL from the archive tree, fsck
    compares them, both ways."""
    import shutil

    from echoes import config as config_module
    from echoes.index.record import read_record

    home = tmp_path / "home"
    config_path = write_config(home, database_url=database_url)
    config = config_module.load(config_path)
    made = study_files(tmp_path / "in", generate_uid(), "PG7", "FSCK^ONE", 3)
    archived = []
    for path in made:
        target = config.archive_dir / read_record(path).path
        target.parent.mkdir(parents=True, exist_ok=True)
        archived.append(Path(shutil.copy(path, target)))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                               *args], capture_output=True, text=True, timeout=60)

    for command in (("studies", "--json"), ("fsck", "--quick")):
        before = run(*command)  # nothing set up in this database yet: one line, no traceback
        assert before.returncode == 1
        assert before.stderr.strip().splitlines() == [
            f"echoes: database_url: PostgreSQL at {database_url.split('@', 1)[1]}: no echoes "
            "schema in this database (echoes start creates it)"], before.stderr
    reindexed = run("reindex")
    assert reindexed.returncode == 0, reindexed.stderr
    assert '"indexed": 3' in reindexed.stdout
    studies = json.loads(run("studies", "--json").stdout)
    assert [s["NumberOfInstances"] for s in studies] == [3]
    agree = run("fsck", "--quick")
    assert agree.returncode == 0 and "agree" in agree.stdout, agree.stdout + agree.stderr

    archived[0].unlink()  # a file lost from the archive
    lost = run("fsck", "--quick")
    assert lost.returncode == 1 and "record without file" in lost.stdout
    mended = run("reindex")
    assert '"records removed": 1' in mended.stdout, mended.stdout + mended.stderr
    assert json.loads(run("studies", "--json").stdout)[0]["NumberOfInstances"] == 2
    assert run("fsck", "--quick").returncode == 0


def test_postgresql_lost_while_running_store_acknowledges_and_catches_up_after(
        tmp_path: Path, dcmtk: None) -> None:
    """The database stops under a running echoes: C-STOREs are still acknowledged into
    the spool; ingester and sender retry; when it is back both catch up in the same
    processes, nothing lost, no traceback."""
    import urllib.error

    from pgserver import start_pg
    from werkzeug.security import generate_password_hash

    own = start_pg()  # a server of this test's own: it is stopped midway
    destination_port = free_port()
    received = tmp_path / "destination"
    received.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received),
                                 str(destination_port)], env=DCMTK_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = tmp_path / "home"
    url = own.fresh_database()
    server = start_server(home, database_url=url, retry_interval=1,
                          http_password_hash=generate_password_hash(
                              PASSWORD, method="pbkdf2:sha256:1000"),
                          sections=f"\n[ae:DEST]\nhost = 127.0.0.1\nport = "
                                   f"{destination_port}\nforward = yes\n")
    try:
        study = generate_uid()
        storescu(server.port, study_files(tmp_path / "a", study, "PG5", "LOST^DB", 3))
        wait_for(lambda: len(list(received.iterdir())) == 3, 60, "first objects not forwarded")
        ingester, sender = server.children("ingester"), server.children("sender")

        own.stop()
        storescu(server.port, study_files(tmp_path / "b", study, "PG5", "LOST^DB", 4))
        incoming = home / "spool" / "incoming"
        time.sleep(2)  # the ingester has tried (and failed) meanwhile
        assert len(list(incoming.glob("*.dcm"))) == 4  # acknowledged, kept in the spool
        assert len(list(received.iterdir())) == 3
        with pytest.raises(urllib.error.HTTPError) as refused:  # the Browser says why
            api(server, "/api/studies")
        assert refused.value.code == 503
        assert "PostgreSQL at 127.0.0.1" in json.loads(refused.value.read())["error"]

        own.start()
        wait_for(lambda: len(list(received.iterdir())) == 7, 90,
                 "objects received during the outage were not forwarded after it")
        assert studies_json(server)[0]["NumberOfInstances"] == 7
        assert api(server, "/api/studies")["studies"][0]["NumberOfInstances"] == 7
        assert not list(incoming.glob("*.dcm"))
        assert job_states(url) == [("done", 7)]
        # the same processes caught up (no restart), with one line per outage
        assert (server.children("ingester"), server.children("sender")) == (ingester, sender)
        log = server.config.log_file.read_text()
        assert "Traceback" not in log
        assert log.count("ingest paused") == 1 and "ingest resumed" in log
        assert log.count("job store unavailable") <= 1
    finally:
        stop_server(server)
        storescp.terminate()
        storescp.wait(10)
        own.remove()


def test_echoes_check_reports_the_database_down_as_critical(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()  # nobody listens there
    config_path = write_config(home, database_url=f"postgresql://e:pw@127.0.0.1:{port}/echoes")
    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                           "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert (f"CRITICAL: database unreachable: PostgreSQL at 127.0.0.1:{port}/echoes: "
            "Connection refused") in done.stdout.splitlines()
    assert "Traceback" not in done.stderr


def test_echoes_check_is_quiet_about_a_database_that_answers(tmp_path: Path,
                                                            database_url: str) -> None:
    from echoes.database import prepare

    prepare(database_url)
    config_path = write_config(tmp_path / "home", database_url=database_url)
    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                           "check"], capture_output=True, text=True, timeout=60)
    assert "database" not in done.stdout and "Traceback" not in done.stderr, done.stdout


def test_two_nodes_on_one_database_forward_every_object_exactly_once(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    """Two echoes on one database and one archive folder, both forwarding to one
    destination: each object is sent once (the senders' claims), whichever node
    received it, and both nodes list every study."""
    destination_port = free_port()
    received = tmp_path / "destination"
    received.mkdir()
    log = tmp_path / "storescp.log"
    storescp = subprocess.Popen(["storescp", "-v", "-aet", "DEST", "-od", str(received),
                                 str(destination_port)], env=DCMTK_ENV,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    shared = tmp_path / "archive"
    section = (f"\n[ae:DEST]\nhost = 127.0.0.1\nport = {destination_port}\n"
               "forward = yes\n")
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            nodes.append(start_server(tmp_path / name, database_url=database_url,
                                      node_name=name, archive_dir=shared, retry_interval=1,
                                      sections=section))
        studies = [generate_uid() for _ in nodes]
        batches = [study_files(tmp_path / f"in{n}", study, f"PN{n}", "TWO^NODES", 150)
                   for n, study in enumerate(studies)]
        pushers = [threading.Thread(target=storescu, args=(node.port, files))
                   for node, files in zip(nodes, batches, strict=True)]
        for pusher in pushers:  # both nodes receive, ingest and queue at once
            pusher.start()
        for pusher in pushers:
            pusher.join(120)
        wait_for(lambda: job_states(database_url) == [("done", 300)], 120,
                 f"not all forwarded: {job_states(database_url)}")
        assert len(list(received.iterdir())) == 300
        time.sleep(1.5)  # a second send would come now, at the latest
        assert log.read_text(errors="replace").count("Received Store Request") == 300
        for node in nodes:
            assert {s["StudyInstanceUID"] for s in studies_json(node)} == set(studies)
    finally:
        for node in nodes:
            stop_server(node)
        storescp.terminate()
        storescp.wait(10)
