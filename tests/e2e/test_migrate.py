"""``echoes migrate --to URL``: an embedded echoes, filled over DICOM with its forward
destination down, copied into PostgreSQL and started there: the same studies, the
same C-FIND answers, and the open jobs delivered once the destination is up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pydicom
from helpers import (
    DCMTK_ENV,
    Server,
    echoes_cli,
    free_port,
    make_dataset,
    start_server,
    stop_server,
    studies_json,
    wait_for,
    write_part10,
)
from pydicom.uid import generate_uid


def corpus(folder: Path) -> list[Path]:
    """Two patients, three studies, two series in one, a CT and an MR."""
    folder.mkdir()
    files = []
    for study, patient, name, modality, series_count, images in (
            (generate_uid(), "MIG1", "DOE^JOHN", "CT", 2, 3),
            (generate_uid(), "MIG1", "DOE^JOHN", "MR", 1, 2),
            (generate_uid(), "MIG2", "ROE^JANE", "CT", 1, 4)):
        for _ in range(series_count):
            series = generate_uid()
            for n in range(images):
                ds = make_dataset(study=study, series=series, patient_id=patient,
                                  modality=modality)
                ds.PatientName = name
                ds.AccessionNumber = f"A{patient}{modality}"
                ds.StudyDate = "20261204" if modality == "CT" else "20250101"
                ds.InstanceNumber = n + 1
                files.append(write_part10(ds, folder / f"{len(files)}.dcm"))
    return files


QUERIES = (
    ["QueryRetrieveLevel=STUDY", "PatientID=MIG1"],
    ["QueryRetrieveLevel=STUDY", "PatientName=ROE*"],
    ["QueryRetrieveLevel=STUDY", "StudyDate=20260101-20261231"],
    ["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR"],
    ["QueryRetrieveLevel=STUDY", "AccessionNumber=AMIG1CT"],
)
RETURN_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
               "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances")


def cfind(port: int, keys: list[str], folder: Path) -> list[dict]:
    out = folder / "find"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = ["findscu", "-S", "-X", "-od", str(out), "-aec", "ECHOES"]
    for key in [*keys, *(k for k in RETURN_KEYS if not any(q.startswith(k) for q in keys))]:
        argv += ["-k", key]
    done = subprocess.run([*argv, "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-2000:]
    answers = [pydicom.dcmread(path).to_json_dict() for path in sorted(out.glob("rsp*.dcm"))]
    return sorted(answers, key=lambda answer: json.dumps(answer, sort_keys=True))


def answers(server: Server, folder: Path, study_uids: list[str]) -> list[list[dict]]:
    found = [cfind(server.port, keys, folder) for keys in QUERIES]
    for uid in study_uids:  # series and image level of every study
        found.append(cfind(server.port, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid}",
                                         "SeriesInstanceUID", "Modality",
                                         "NumberOfSeriesRelatedInstances"], folder))
        found.append(cfind(server.port, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={uid}",
                                         "SeriesInstanceUID", "SOPInstanceUID",
                                         "InstanceNumber"], folder))
    return found


def test_an_embedded_echoes_migrated_to_postgresql_answers_the_same_and_sends_its_jobs(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    destination_port = free_port()  # down until after the migration
    section = f"\n[ae:DEST]\nhost = 127.0.0.1\nport = {destination_port}\nforward = yes\n"
    keys = {"retry_interval": 1, "max_attempts": 10000}
    home = tmp_path / "home"
    embedded = start_server(home, sections=section, **keys)
    storescp = None
    try:
        files = corpus(tmp_path / "in")
        subprocess.run(["storescu", "-aec", "ECHOES", "127.0.0.1", str(embedded.port),
                        *map(str, files)], env=DCMTK_ENV, check=True, capture_output=True,
                       timeout=60)
        wait_for(lambda: sum(s["NumberOfInstances"] for s in studies_json(embedded)) == len(files),
                 30, "not all indexed")
        before = studies_json(embedded)
        uids = sorted(s["StudyInstanceUID"] for s in before)
        found_before = answers(embedded, tmp_path, uids)
        assert [len(found) for found in found_before[:5]] == [2, 1, 2, 1, 1]

        # refused while the node runs; nothing written
        running = echoes_cli(embedded, "migrate", "--to", database_url)
        assert running.returncode == 1
        assert running.stderr.startswith("echoes migrate: echoes is running (pid "), running.stderr
        assert running.stderr.rstrip().endswith("stop it first (echoes stop); nothing copied")
    finally:
        stop_server(embedded)
    open_jobs = list((home / "spool" / "outgoing").glob("*.json"))
    assert len(open_jobs) == len(files)  # every job still open: the destination was down

    done = echoes_cli(embedded, "migrate", "--to", database_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"echoes migrate: copied {len(files)} instances of 3 studies and {len(files)} "
        "unfinished jobs into PostgreSQL at 127.0.0.1:"), done.stdout
    again = echoes_cli(embedded, "migrate", "--to", database_url)  # not into a full database
    assert again.returncode == 1
    assert again.stderr.strip().endswith(
        f"is not empty ({len(files)} instances, 3 studies, {len(files)} jobs): echoes migrate "
        "copies only into an empty database; nothing copied"), again.stderr

    # the embedded index moved away: with database_url, index_path is not read
    for path in home.glob("var/index.json*"):
        path.rename(tmp_path / path.name)
    received = tmp_path / "destination"
    received.mkdir()
    migrated = start_server(home, sections=section, database_url=database_url, **keys)
    try:
        assert studies_json(migrated) == before
        assert answers(migrated, tmp_path, uids) == found_before
        storescp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(received),
                                     str(destination_port)], env=DCMTK_ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(list(received.iterdir())) == len(files), 60,
                 "the migrated jobs were not delivered")
        with psycopg.connect(database_url) as connection:
            wait_for(lambda: connection.execute(
                "SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
                == [("done", len(files))], 30, "jobs not done")
        assert sorted(pydicom.dcmread(path).SOPInstanceUID for path in received.iterdir()) \
            == sorted(pydicom.dcmread(path).SOPInstanceUID for path in files)
        assert not list(home.glob("var/index.json*"))  # nor written
    finally:
        stop_server(migrated)
        if storescp is not None:
            storescp.terminate()
            storescp.wait(10)


def test_a_migration_that_fails_leaves_the_database_empty(tmp_path: Path,
                                                          database_url: str) -> None:
    """A broken embedded index midway (after a first batch of 2,000 records was written):
    the copy is one transaction, nothing stays."""
    from echoes import config as config_module
    from echoes.index.embedded import ArchiveIndex
    from echoes.index.instance import InstanceRecord

    home = tmp_path / "home"
    (home / "etc").mkdir(parents=True)
    config_path = home / "etc" / "echoes.ini"
    config_path.write_text("[echoes]\n")
    config = config_module.load(config_path)
    writer = ArchiveIndex(config.index_path)
    study_uids = sorted(generate_uid() for _ in range(3))  # shards are read in name order
    records = [InstanceRecord(generate_uid(), "1.2.840.10008.5.1.4.1.1.7", generate_uid(), uid,
                              PatientID="P", path=f"/x/{uid}/{n}.dcm", size=10,
                              received="2026-12-04T10:00:00")
               for uid, count in zip(study_uids, (1500, 1500, 1), strict=True)
               for n in range(count)]
    for start in range(0, len(records), 500):
        writer.apply(records[start:start + 500])
    writer.close()
    shards = sorted((config.index_path.parent / "index.json.d").rglob("*.json"))
    assert len(shards) == 3
    assert shards[-1].stem == study_uids[-1]
    good = shards[-1].read_bytes()
    shards[-1].write_text("{not json")  # the last shard read is unreadable

    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                           "migrate", "--to", database_url], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"echoes migrate: the embedded index at {config.index_path} "
                                  "cannot be read (JSONDecodeError: "), done.stderr
    assert done.stderr.rstrip().endswith("run echoes reindex first; nothing copied")
    with psycopg.connect(database_url) as connection:
        assert connection.execute("SELECT (SELECT count(*) FROM instances), "
                                  "(SELECT count(*) FROM studies)").fetchone() == (0, 0)

    # the recovery is to run it again, once the cause is fixed
    shards[-1].write_bytes(good)
    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(config_path),
                           "migrate", "--to", database_url], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "copied 3001 instances of 3 studies and 0 unfinished jobs" in done.stdout
