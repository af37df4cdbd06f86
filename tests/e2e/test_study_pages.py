"""One page of the study list through the index seam, end to end, on both backends.

The real server receives 12 one-image studies by storescu; then ``echoes
studies --limit/--offset`` and the Browser's ``/api/studies`` must give the
same page as a slice of the whole list (``echoes studies`` without options,
whose output is unchanged), in study-date and in arrival order; on
PostgreSQL the page must be readable through the index of migration 0003
(the order the query asks for is the index's, collation included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from helpers import (
    DCMTK_ENV,
    Server,
    api_json,
    make_dataset,
    start_server,
    stop_server,
    write_part10,
)
from pydicom.uid import generate_uid
from werkzeug.security import generate_password_hash

from echoes.index import postgres_sql

STUDIES = 12
PASSWORD = "page-secret"


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Server]:
    """echoes with 12 studies (dates shuffled against arrival order), on one backend."""
    root = tmp_path_factory.mktemp(request.param)
    extra: dict[str, object] = {}
    if request.param == "postgres":
        extra["database_url"] = request.getfixturevalue("postgres").fresh_database()
    running = start_server(root / "home", http_password_hash=generate_password_hash(
        PASSWORD, method="pbkdf2:sha256:1000"), **extra)
    try:
        folder = root / "corpus"
        folder.mkdir()
        files = []
        for n in range(STUDIES):
            ds = make_dataset(study=generate_uid(), patient_id=f"P{n}")
            ds.StudyDate = f"202611{(n * 7) % STUDIES + 1:02d}"
            files.append(write_part10(ds, folder / f"{n:02d}.dcm"))
        for path in files:  # one association each: distinct arrival times
            subprocess.run(["storescu", "127.0.0.1", str(running.port), str(path)],
                           env=DCMTK_ENV, check=True, timeout=60)
        yield running
    finally:
        stop_server(running)


def cli(server: Server, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "echoes", "--config",
                           str(server.config.path), "studies", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def every_study(server: Server) -> list[dict]:
    """``echoes studies --json`` once all 12 are indexed."""
    import time

    deadline = time.monotonic() + 30
    while True:
        studies = json.loads(cli(server, "--json"))
        if len(studies) == STUDIES or time.monotonic() > deadline:
            assert len(studies) == STUDIES
            return studies
        time.sleep(0.3)


def api(server: Server, path: str):
    return api_json(server, path, PASSWORD)


def uids(studies: list[dict]) -> list[str]:
    return [s["StudyInstanceUID"] for s in studies]


def test_echoes_studies_pages_are_slices_of_the_whole_list(server: Server) -> None:
    whole = every_study(server)  # newest study date first, as always
    table = cli(server).splitlines()
    assert table[-1] == f"{STUDIES} studies, {STUDIES} instances"
    paged = cli(server, "--limit", "5", "--offset", "3").splitlines()
    assert [line.split()[-1] for line in paged[1:-1]] == uids(whole[3:8])
    assert paged[-1] == (f"studies 4-8 of {STUDIES} (date order, newest first), "
                         f"{STUDIES} instances in all")
    assert json.loads(cli(server, "--json", "--limit", "4", "--offset", "10")) == whole[10:]
    by_arrival = sorted(whole, key=lambda s: (s["updated"], s["StudyInstanceUID"]),
                        reverse=True)
    assert uids(json.loads(cli(server, "--json", "--order", "received", "--limit", "3"))) \
        == uids(by_arrival[:3])
    assert by_arrival[0]["PatientID"] == f"P{STUDIES - 1}"  # the last one sent


@pytest.mark.parametrize("sort", ["date", "received"])
def test_the_browser_list_pages_in_both_orders(server: Server, sort: str) -> None:
    whole = every_study(server)
    key = ((lambda s: (s["StudyDate"], s.get("StudyTime", ""), s["StudyInstanceUID"]))
           if sort == "date" else (lambda s: (s["updated"], s["StudyInstanceUID"])))
    newest = sorted(whole, key=key, reverse=True)
    for page in (1, 2, 3):
        answer = api(server, f"/api/studies?sort={sort}&per_page=5&page={page}")
        assert answer["total"] == STUDIES and answer["pages"] == 3
        assert uids(answer["studies"]) == uids(newest[(page - 1) * 5:page * 5])
    oldest = api(server, f"/api/studies?sort={sort}&order=asc&per_page=4")
    assert uids(oldest["studies"]) == uids(newest[::-1][:4])


@pytest.mark.parametrize("server", ["postgres"], indirect=True)  # the embedded index
def test_postgresql_reads_a_page_through_its_index(server: Server) -> None:  # keeps no order
    assert server.config.database_url
    every_study(server)
    with psycopg.connect(server.config.database_url) as connection:
        connection.execute("SET enable_seqscan = off")  # 12 rows: else a scan is cheaper
        for order, index in (("date", "studies_page_date"),
                             ("received", "studies_page_received")):
            for descending in (True, False):
                statement, params = postgres_sql.page_statement(order, descending, 50, 100)
                plan = "\n".join(row[0] for row in connection.execute(
                    f"EXPLAIN {statement}", params))
                assert index in plan and "Sort" not in plan, plan


def test_postgresql_page_totals_follow_every_write(database_url: str) -> None:
    """The totals a page shows come from index_state (kept by triggers on studies,
    migration 0003): after new studies, an instance sent again into another study,
    and a removal, they must equal a count over the table."""
    from echoes import database
    from echoes.index.instance import InstanceRecord
    from echoes.index.postgres import PostgresIndexWriter

    def record(sop: int, study: int) -> InstanceRecord:
        return InstanceRecord(
            SOPInstanceUID=f"9.3.{sop}", SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
            SeriesInstanceUID=f"9.2.{study}", StudyInstanceUID=f"9.1.{study}",
            StudyDate=f"2026110{study}", path=f"a/{sop}-{study}.dcm", size=10,
            received=f"2026-12-04T10:00:{sop:02d}.000+00:00")

    def counted() -> tuple[int, int]:
        with psycopg.connect(database_url) as connection:
            return connection.execute("SELECT count(*), coalesce(sum(number_of_instances), 0) "
                                      "FROM studies").fetchone()

    database.prepare(database_url)
    writer = PostgresIndexWriter(database_url)
    try:
        writer.apply([record(sop, sop // 2) for sop in range(10)])  # 5 studies of 2
        page = writer.study_page("date", True, 2, 0)
        assert (page.total, page.instances) == counted() == (5, 10)
        writer.apply([record(1, 7), record(20, 7)])  # 9.3.1 moves to a new study
        page = writer.study_page("received", True, 1, 0)
        assert (page.total, page.instances) == counted() == (6, 11)
        assert uids(page.studies) == ["9.1.7"]
        writer.remove(["9.3.0", "9.3.4", "9.3.5"])  # study 0 and study 2 gone
        page = writer.study_page("date", False, None, 0)
        assert (page.total, page.instances) == counted() == (4, 8)
        assert uids(page.studies) == ["9.1.1", "9.1.3", "9.1.4", "9.1.7"]
    finally:
        writer.close()


def test_the_browser_searches_and_counts_without_the_whole_catalog(server: Server) -> None:
    """Filtered searches, a study, the queue and the health page give what the whole
    list says, on both backends; on PostgreSQL without reading the whole catalog
    (issue 18: the database's indexes answer, the web process holds no catalog)."""
    whole = every_study(server)
    searches = {
        "patient_id=P3": [s for s in whole if s["PatientID"] == "P3"],
        "date_from=20261103&date_to=20261106": [s for s in whole
                                                if "20261103" <= s["StudyDate"] <= "20261106"],
        "patient_name=test": whole,
        "patient_name=TEST%5EPAT*&patient_id=P1": [s for s in whole if s["PatientID"] == "P1"],
        "patient_name=nobody": [],
    }
    for params, expected in searches.items():
        answer = api(server, f"/api/studies?{params}&sort=date&per_page=50")
        assert answer["total"] == len(expected), params
        assert uids(answer["studies"]) == uids(expected), params  # newest study date first
    first = whole[0]
    detail = api(server, f"/api/studies/{first['StudyInstanceUID']}")
    assert (detail["StudyInstanceUID"], detail["PatientID"]) == (first["StudyInstanceUID"],
                                                                 first["PatientID"])
    assert api(server, "/api/queue")["listed_total"] == 0
    health = api(server, "/api/health")
    assert (health["studies"], health["instances"]) == (STUDIES, STUDIES)
    assert health["received_last_hour"] == STUDIES
    if server.config.database_url:
        assert health["catalog"]["full_loads"] == 0, health["catalog"]
        assert health["catalog"]["database_reads"] >= len(searches) + 2


def test_qido_lists_every_study_a_page_at_a_time(server: Server) -> None:
    """A viewer's study list (QIDO-RS without filters, limit and offset) is a page of
    the index: the same studies as a slice of the whole list in QIDO's order (study
    date, time, UID ascending); on PostgreSQL without reading every study."""
    whole = sorted(every_study(server), key=lambda s: (s["StudyDate"], s.get("StudyTime", ""),
                                                       s["StudyInstanceUID"]))
    answer = api(server, "/dicom-web/studies?limit=5&offset=3&includefield=PatientID")
    assert [a["0020000D"]["Value"][0] for a in answer] == uids(whole[3:8])
    assert [a["00100020"]["Value"][0] for a in answer] == [s["PatientID"] for s in whole[3:8]]
    universal = api(server, "/dicom-web/studies?PatientName=&limit=2")  # empty: no filter
    assert [a["0020000D"]["Value"][0] for a in universal] == uids(whole[:2])
    if server.config.database_url:
        assert api(server, "/api/health")["catalog"]["dicomweb_full_loads"] == 0
