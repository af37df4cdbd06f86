"""Fault injection: 2,000 objects from 4 storescu clients while processes are killed.

For each seed: four dcmtk ``storescu`` clients keep sending their share of
2,000 objects (re-sending what was not yet acknowledged after an abort) while
a killer sends SIGKILL, at random moments, to each kind of process in turn --
store worker, ingester, sender, MWL SCP, the Browser's web process and the
supervisor itself (which is then started again) -- and the forwarding
destination (a dcmtk storescp) is stopped and started.  At the end it counts
objects sent, acknowledged, archived, indexed and forwarded, duplicates in
the index and files outside the archive and spool, and requires
acknowledged = archived = indexed = forwarded with nothing lost and nothing
doubled.

Each seed runs on both backends: the embedded index and job files, and
PostgreSQL (``database_url``: index and job queue in a database of the
test's own on the session's real server, see tests/pgserver.py), where the
index is read back through SQL and the index seam.

Run: ``bin/test -m soak tests/soak -s`` (about a minute per seed and backend).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pydicom
import pytest
from helpers import DCMTK_ENV, Server, free_port, make_dataset, write_config, write_part10
from pydicom.uid import generate_uid

from echoes import config as config_module

pytestmark = [pytest.mark.slow, pytest.mark.soak]

OBJECTS = 2000
CLIENTS = 4
KINDS = ("store", "ingester", "sender", "mwl", "web", "supervisor")
KILL_ROUNDS = 12


def corpus(folder: Path) -> list[Path]:
    folder.mkdir()
    study = generate_uid()
    series = [generate_uid() for _ in range(4)]
    return [write_part10(make_dataset(study=study, series=series[n % 4], rows=32),
                         folder / f"{n:05d}.dcm") for n in range(OBJECTS)]


class Destination:
    """storescp as the forwarding destination, stoppable."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.folder.mkdir()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["storescp", "+xa", "-od", str(self.folder),
                                         str(self.port)], env=DCMTK_ENV,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def received(self) -> set[str]:
        return {p.name.split(".", 1)[1] for p in self.folder.iterdir()}


def start(config_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config_path),
                             "start"], stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def children(pid: int, role: str) -> list[int]:
    found = []
    try:
        for child in psutil.Process(pid).children():
            try:
                if child.cmdline() and child.cmdline()[0].strip() == f"echoes: {role}":
                    found.append(child.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def send_until_acknowledged(port: int, files: list[Path], acknowledged: set[str],
                            sent: Counter, stop_at: float) -> None:
    """storescu the files not yet acknowledged, again and again, until all are."""
    remaining = list(files)
    while remaining and time.monotonic() < stop_at:
        done = subprocess.run(["storescu", "-v", "-aet", "SOAK", "127.0.0.1", str(port),
                               *map(str, remaining)], env=DCMTK_ENV, capture_output=True,
                              text=True, timeout=600)
        current = None
        for line in (done.stdout + done.stderr).splitlines():
            match = re.search(r"Sending file: (\S+)", line)
            if match:
                current = match.group(1)
                sent[current] += 1
            elif "Received Store Response (Success)" in line and current:
                acknowledged.add(current)
                current = None
        remaining = [f for f in remaining if str(f) not in acknowledged]
        if remaining:
            time.sleep(0.3)


class PostgresView:
    """What the database holds after a soak on PostgreSQL (the same figures as
    :class:`helpers.Server` reads from the embedded index)."""

    def __init__(self, server: Server, url: str) -> None:
        self.server, self.url = server, url

    def _rows(self, statement: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute(statement).fetchall()

    def indexed_sops(self) -> list[str]:
        """Every indexed instance once per row, read through the index seam (a
        SOP Instance UID written twice would come back twice)."""
        from echoes.index import open_index

        reader = open_index(self.server.config)
        try:
            return [doc["SOPInstanceUID"] for doc in reader.instances()]
        finally:
            reader.close()

    def catalog_problems(self) -> list[str]:
        """Where the study summaries (what the Browser and ``echoes studies`` list)
        disagree with the instances: after any kill they must not."""
        from echoes.index import open_index

        reader = open_index(self.server.config)
        try:
            catalog = {s["StudyInstanceUID"]: s for s in reader.studies()}
            with_instances = {row[0] for row in self._rows(
                "SELECT DISTINCT study_instance_uid FROM instances")}
            problems = [f"study {uid} has instances, no summary"
                        for uid in sorted(with_instances - set(catalog))]
            problems += [f"study {uid} has a summary, no instances"
                         for uid in sorted(set(catalog) - with_instances)]
            kept = self._rows("SELECT studies, instances FROM index_state")[0]
            counted = self._rows("SELECT count(*), coalesce(sum(number_of_instances), 0) "
                                 "FROM studies")[0]
            if tuple(kept) != tuple(counted):  # the totals a study page shows
                problems.append(f"index_state totals {kept}, the studies table {counted}")
            for uid, summary in sorted(catalog.items()):
                detail = reader.study(uid) or {"instances": []}
                counted = (len(detail["instances"]),
                           len({doc["SeriesInstanceUID"] for doc in detail["instances"]}))
                summarized = (summary.get("NumberOfInstances"), summary.get("NumberOfSeries"))
                if counted != summarized:
                    problems.append(f"study {uid}: summary counts {summarized} "
                                    f"(instances, series), the index holds {counted}")
            return problems
        finally:
            reader.close()


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_soak(tmp_path: Path, dcmtk: None, seed: int, backend: str,
              request: pytest.FixtureRequest) -> None:
    rng = random.Random(seed)
    files = corpus(tmp_path / "corpus")
    uid_of = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    destination = Destination(tmp_path / "dest", free_port())
    destination.start()
    home = tmp_path / "home"
    database = {} if backend == "embedded" else {
        "database_url": request.getfixturevalue("database_url")}
    config_path = write_config(home, store_workers=2, retry_interval=1, max_attempts=100000,
                               dimse_timeout=20, **database)
    config_path.write_text(config_path.read_text() + f"\n[ae:SOAKDEST]\nhost = 127.0.0.1\n"
                                                     f"port = {destination.port}\nforward = yes\n")
    config = config_module.load(config_path)
    log = tmp_path / "echoes.out"
    supervisor = start(config_path, log)
    time.sleep(3)

    acknowledged: set[str] = set()
    sent: Counter = Counter()
    stop_at = time.monotonic() + 240
    chunks = [files[i::CLIENTS] for i in range(CLIENTS)]
    clients = [threading.Thread(target=send_until_acknowledged,
                                args=(config.store_port, chunk, acknowledged, sent, stop_at))
               for chunk in chunks]
    for client in clients:
        client.start()

    faults: Counter = Counter()
    for round_number in range(KILL_ROUNDS):
        time.sleep(rng.uniform(0.3, 1.5))
        if round_number == 3:
            destination.stop()
            faults["destination stopped"] += 1
        if round_number == 7:
            destination.start()
            faults["destination started"] += 1
        kind = KINDS[round_number % len(KINDS)]
        if kind == "supervisor":
            os.kill(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
            supervisor = start(config_path, log)  # waits for orphans to free the ports
            faults[kind] += 1
            continue
        deadline = time.monotonic() + 30  # a restarted supervisor needs a moment
        victims = children(supervisor.pid, kind)
        while not victims and time.monotonic() < deadline:
            time.sleep(0.2)
            victims = children(supervisor.pid, kind)
        if victims:
            os.kill(rng.choice(victims), signal.SIGKILL)
            faults[kind] += 1
        else:  # say so: a restarted supervisor may still wait for draining orphans
            faults[f"{kind}: no process within 30 s"] += 1
    if destination.process is None:
        destination.start()
    for client in clients:
        client.join()

    expected = {uid_of[name] for name in acknowledged}
    server = Server(home, config, supervisor)
    view: Server | PostgresView = server if backend == "embedded" else PostgresView(
        server, config.database_url)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if expected <= set(view.indexed_sops()) and expected <= destination.received():
            break
        time.sleep(0.5)
    indexed = view.indexed_sops()
    archived = server.archived_sops()
    forwarded = destination.received()
    duplicates = len(indexed) - len(set(indexed))
    outside = server.files_outside()
    print(f"\n{backend} seed {seed}: sent {len(uid_of)} objects ({sum(sent.values())} sends), "
          f"acknowledged {len(expected)}, archived {len(set(archived))}, "
          f"indexed {len(set(indexed))}, forwarded {len(forwarded & expected)}, "
          f"lost {len(expected - set(archived))}, duplicates in index {duplicates}, "
          f"files outside {len(outside)}; faults {dict(faults)}")
    try:
        assert len(expected) == OBJECTS, "clients gave up before every object was acknowledged"
        assert expected == set(archived) == set(indexed)
        assert expected <= forwarded
        assert duplicates == 0 and not outside
        assert not view.catalog_problems()  # what the Browser lists = what is indexed
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(120)
        destination.stop()
    # Killed processes print nothing; one that crashed (or stopped badly when its
    # supervisor was killed and it got SIGTERM) prints a traceback here.
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output[output.find("Traceback"):][:3000]
