"""The echoes Browser: its read models (pure), and every endpoint over real HTTP.

The app is served by waitress on a loopback port, in a thread of this test
process (so a test can reach the app's own session serializer to make an old
session), over a real index written by ``ArchiveIndex`` from DICOM files made
with pydicom, a real config file and real job files.  Push and C-ECHO go to a
dcmtk ``storescp``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from helpers import DCMTK_ENV, TEST_FILES, free_port, make_dataset, write_part10
from PIL import Image
from pydicom.uid import generate_uid
from werkzeug.security import generate_password_hash

from echoes import config as config_module
from echoes import config_edit
from echoes.config import RemoteAE
from echoes.index import embedded as index
from echoes.index.embedded import ArchiveIndex
from echoes.index.record import read_record
from echoes.queue import jobs, open_job_store
from echoes.web import auth, catalog, create_app, listen, make_server, stop_server, thumbnail

PASSWORD = "correct horse"
#: A cheap hash keeps logins fast in tests (the default scrypt costs ~0.1 s).
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")


# -- pure: study search ------------------------------------------------------------------


def study_doc(uid: str, name: str = "DOE^JANE", pid: str = "P1", accession: str = "A1",
              date: str = "20261101", time_: str = "0900", modalities: tuple = ("CT",),
              instances: int = 10, updated: str = "2026-11-29T10:00:00.000+00:00") -> dict:
    return {"StudyInstanceUID": uid, "PatientName": name, "PatientID": pid,
            "AccessionNumber": accession, "StudyDate": date, "StudyTime": time_,
            "ModalitiesInStudy": list(modalities), "NumberOfSeries": 1,
            "NumberOfInstances": instances, "updated": updated}


CATALOG = [
    study_doc("1.1", "DOE^JANE", "P1", "A1", "20261101", modalities=("CT", "SR"), instances=30,
              updated="2026-11-29T08:00:00.000+00:00"),
    study_doc("1.2", "DOE^JOHN", "P2", "A2", "20261115", modalities=("MR",), instances=5,
              updated="2026-11-29T09:45:00+01:00"),  # 08:45 UTC: by instant, not by text
    study_doc("1.3", "Müller^Hans", "P3", "B7", "20261120", modalities=("US",), instances=12,
              updated="2026-11-28T10:00:00.000+00:00"),
    study_doc("1.4", "SMITH^ANNA", "P1", "A4", "20261120", "1000", ("CT",), 1,
              updated="2026-11-29T09:00:00.000+00:00"),
    # no study date, received last: the study an admin looks for first
    study_doc("1.5", "ADAMS^[X]", "X.1", "", "", modalities=(), instances=2,
              updated="2026-11-30T07:00:00.000+00:00"),
]


def search(**params: str) -> catalog.SearchResult:
    """A search of CATALOG; without ``sort``, by study date (what the filter tests read)."""
    params.setdefault("sort", "date")
    return catalog.CatalogSnapshot(CATALOG).search(catalog.parse_study_query(params))


def uids(result: catalog.SearchResult) -> list[str]:
    return [s["StudyInstanceUID"] for s in result.studies]


def test_query_defaults_last_received_first_fifty_a_page() -> None:
    query = catalog.parse_study_query({})
    assert (query.sort, query.order, query.page, query.per_page) == ("received", "desc", 1, 50)
    assert catalog.parse_study_query({"sort": "date"}).order == "desc"
    assert catalog.parse_study_query({"sort": "received"}).order == "desc"
    assert catalog.parse_study_query({"sort": "patient_name"}).order == "asc"
    assert catalog.parse_study_query({"sort": "instances"}).order == "desc"


@pytest.mark.parametrize("params, message", [
    ({"date_from": "2026-13-01"}, "date_from: no such day"),
    ({"date_to": "yesterday"}, "date_to: not a date"),
    ({"date_from": "20261201", "date_to": "20261101"}, "is after date_to"),
    ({"sort": "size"}, "sort: must be one of"),
    ({"order": "up"}, "order: must be asc or desc"),
    ({"page": "0"}, "page: must be between"),
    ({"per_page": "201"}, "per_page: must be between 1 and 200"),
    ({"per_page": "ten"}, "per_page: not a whole number"),
    ({"patientname": "DOE"}, "unknown parameter 'patientname'"),
    ({"patient_name": "X" * 129}, "longer than 128"),
])
def test_bad_query_parameters_say_what_is_wrong(params: dict, message: str) -> None:
    with pytest.raises(catalog.QueryError, match=re.escape(message)):
        catalog.parse_study_query(params)


def test_dates_in_either_form() -> None:
    query = catalog.parse_study_query({"date_from": "2026-11-01", "date_to": "20261130"})
    assert (query.date_from, query.date_to) == ("20261101", "20261130")


def test_wildcards_are_dicom_style_not_regular_expressions() -> None:
    assert catalog.wildcard_matcher("DOE^J*", fold=False)("DOE^JANE")
    assert catalog.wildcard_matcher("D?E*", fold=False)("DOE^JOHN")
    assert not catalog.wildcard_matcher("D?E", fold=False)("DOE^JOHN")
    assert catalog.wildcard_matcher("ADAMS^[X]*", fold=False)("ADAMS^[X]")
    assert not catalog.wildcard_matcher("A.AMS*", fold=False)("ADAMS")
    assert catalog.wildcard_matcher("x.1", fold=True)("X.1".casefold())


def test_patient_name_search_is_case_insensitive_with_implicit_prefix() -> None:
    assert uids(search(patient_name="doe")) == ["1.2", "1.1"]
    assert uids(search(patient_name="*jo*")) == ["1.2"]
    assert uids(search(patient_name="doe^j?ne")) == ["1.1"]
    assert uids(search(patient_name="MÜLLER")) == ["1.3"]
    assert uids(search(patient_name="*[x]")) == ["1.5"]
    assert search(patient_name="nobody").total == 0


def test_patient_id_accession_modality_and_date_filters() -> None:
    assert uids(search(patient_id="P1")) == ["1.4", "1.1"]
    assert uids(search(patient_id="P*", sort="patient_id", order="asc")) == ["1.1", "1.4",
                                                                                "1.2", "1.3"]
    assert uids(search(accession="B7")) == ["1.3"]
    assert uids(search(modality="ct")) == ["1.4", "1.1"]
    assert uids(search(modality="SR")) == ["1.1"]
    assert uids(search(date_from="20261115")) == ["1.4", "1.3", "1.2"]
    assert uids(search(date_to="20261115")) == ["1.2", "1.1"]  # no date: not in a range
    assert uids(search(date_from="20261120", date_to="20261120", modality="US")) == ["1.3"]


@pytest.mark.parametrize("sort, ascending", [
    ("received", ["1.3", "1.1", "1.2", "1.4", "1.5"]),
    ("date", ["1.5", "1.1", "1.2", "1.3", "1.4"]),
    ("patient_name", ["1.5", "1.1", "1.2", "1.3", "1.4"]),
    ("patient_id", ["1.1", "1.4", "1.2", "1.3", "1.5"]),
    ("accession", ["1.5", "1.1", "1.2", "1.4", "1.3"]),
    ("modality", ["1.5", "1.4", "1.1", "1.2", "1.3"]),
    ("instances", ["1.4", "1.5", "1.2", "1.3", "1.1"]),
])
def test_every_sort_key_both_ways(sort: str, ascending: list[str]) -> None:
    assert uids(search(sort=sort, order="asc")) == ascending
    assert uids(search(sort=sort, order="desc")) == ascending[::-1]


def test_last_received_first_by_default_and_old_entries_without_arrival_time() -> None:
    snapshot = catalog.CatalogSnapshot(CATALOG)
    default = snapshot.search(catalog.parse_study_query({}))
    assert uids(default) == ["1.5", "1.4", "1.2", "1.1", "1.3"]
    # a catalog entry written before arrival times were kept still loads, sorted oldest
    old = {key: value for key, value in study_doc("1.0").items() if key != "updated"}
    with_old = catalog.CatalogSnapshot([*CATALOG, old])
    assert uids(with_old.search(catalog.parse_study_query({})))[-1] == "1.0"
    ascending = with_old.search(catalog.parse_study_query({"order": "asc"}))
    assert uids(ascending)[0] == "1.0"


def test_paging_counts_every_match_and_slices_the_page() -> None:
    first = search(per_page="2")
    assert (first.total, first.pages, uids(first)) == (5, 3, ["1.4", "1.3"])
    assert uids(search(per_page="2", page="3")) == ["1.5"]
    assert uids(search(per_page="2", page="9")) == []
    filtered = search(patient_id="P*", per_page="1", page="2")
    assert (filtered.total, uids(filtered)) == (4, ["1.3"])


def test_query_params_for_links_keep_only_what_differs() -> None:
    query = catalog.parse_study_query({"patient_name": "DOE", "page": "2"})
    assert query.as_params(page=3) == {"patient_name": "DOE", "page": "3"}
    assert query.as_params(sort="date", order="desc", page=1) == {
        "patient_name": "DOE", "sort": "date", "order": "desc", "page": "1"}


def test_a_search_of_ten_thousand_studies_finds_every_match() -> None:
    # How fast it is, is bench/web.py's business (tests assert no wall-clock times).
    big = catalog.CatalogSnapshot(
        study_doc(f"2.{n}", f"NAME^{n}", f"P{n % 700}", f"A{n}", f"2026{n % 12 + 1:02d}01",
                  modalities=(("CT", "MR", "US")[n % 3],)) for n in range(10_000))
    big.order("patient_name")  # what the first request of a catalog version pays
    result = big.search(catalog.parse_study_query(
        {"patient_name": "name^1*", "modality": "CT", "sort": "patient_name"}))
    assert result.total == len([n for n in range(10_000)
                                if str(n).startswith("1") and n % 3 == 0])


# -- pure: series, queue, progress, worklist, recent arrivals --------------------------------


def test_series_by_number_and_the_middle_instance() -> None:
    study = {"series": [
        {"SeriesInstanceUID": "9.2", "SeriesNumber": "10", "Modality": "CT",
         "NumberOfSeriesRelatedInstances": 3},
        {"SeriesInstanceUID": "9.1", "SeriesNumber": "2", "Modality": "CT",
         "NumberOfSeriesRelatedInstances": 1},
        {"SeriesInstanceUID": "9.3", "SeriesNumber": "", "Modality": "SR",
         "NumberOfSeriesRelatedInstances": 1}]}
    assert [s["SeriesInstanceUID"] for s in catalog.series_list(study)] == ["9.1", "9.2", "9.3"]
    instances = [{"SeriesInstanceUID": "9.2", "SOPInstanceUID": f"5.{n}",
                  "InstanceNumber": str(n)} for n in (3, 1, 20, 2)]
    assert catalog.middle_instance(instances, "9.2")["InstanceNumber"] == "3"
    assert catalog.middle_instance(instances, "9.9") is None


def job(destination: str, sop: str, state: str = jobs.PENDING, study: str = "1.1",
        error: str = "", updated: float = 100.0) -> jobs.Job:
    record = {"SOPInstanceUID": sop, "StudyInstanceUID": study, "SOPClassUID": "1.2",
              "path": f"{study}/x/{sop}.dcm"}
    return replace(jobs.new_job(destination, record, "push", 100.0), state=state,
                   last_error=error, updated=updated, next_attempt=150.0)


REMOTES = {"PACS": RemoteAE("PACS", "10.0.0.5", 104, True),
           "VIEWER": RemoteAE("VIEWER", "10.0.0.6", 104, False)}


def test_queue_summary_counts_every_destination_and_lists_what_needs_attention() -> None:
    queue = [job("PACS", "1", jobs.DONE), job("PACS", "2", jobs.RETRYING, error="refused"),
             job("PACS", "3", jobs.FAILED, error="0xA900"), job("GONE", "4"),
             job("PACS", "5", jobs.CANCELLED)]
    summary = catalog.queue_summary(queue, REMOTES)
    rows = {row["destination"]: row for row in summary["destinations"]}
    assert list(rows) == ["GONE", "PACS", "VIEWER"]
    assert rows["PACS"]["counts"] == {"pending": 0, "retrying": 1, "failed": 1, "done": 1,
                                      "cancelled": 1, "held": 0}
    assert rows["GONE"]["configured"] is False and rows["VIEWER"]["counts"]["pending"] == 0
    assert [(j["destination"], j["state"]) for j in summary["jobs"]] == [
        ("GONE", "pending"), ("PACS", "failed"), ("PACS", "retrying")]
    retrying = summary["jobs"][2]
    assert retrying["last_error"] == "refused" and retrying["next_attempt_epoch"] == 150.0
    assert retrying["next_attempt"].startswith("19")  # ISO 8601, local time
    only = catalog.queue_summary(queue, REMOTES, destination="PACS", state=jobs.DONE)
    assert [r["destination"] for r in only["destinations"]] == ["PACS"]
    assert [j["state"] for j in only["jobs"]] == ["done"]
    limited = catalog.queue_summary(queue, REMOTES, limit=1)
    assert len(limited["jobs"]) == 1 and limited["listed_total"] == 3


def test_queue_jobs_name_their_study_and_done_ones_their_delivery() -> None:
    queue = [job("PACS", "1", jobs.DONE, updated=1000.0), job("PACS", "2", jobs.DONE,
                                                                updated=3000.0),
             job("PACS", "3", jobs.DONE, study="9.9", updated=2000.0),
             job("PACS", "4", jobs.FAILED, error="0xA900")]
    studies = {"1.1": study_doc("1.1", "DOE^JANE", "P100", "ACC1")}
    done = catalog.queue_summary(queue, REMOTES, state=jobs.DONE, studies=studies)["jobs"]
    # last delivered first: with a limit, the recent deliveries are the ones kept
    assert [j["sop_instance_uid"] for j in done] == ["2", "3", "1"]
    assert [j["delivered_epoch"] for j in done] == [3000.0, 2000.0, 1000.0]
    assert done[0]["delivered"] == catalog.iso(3000.0) and done[0]["next_attempt"] is None
    assert (done[0]["patient_name"], done[0]["patient_id"], done[0]["accession"]) == (
        "DOE^JANE", "P100", "ACC1")
    # a study no longer in the index: the UID alone
    assert (done[1]["patient_name"], done[1]["patient_id"], done[1]["accession"]) == ("", "", "")
    failed = catalog.queue_summary(queue, REMOTES, studies=studies)["jobs"]
    assert [(j["state"], j["delivered"]) for j in failed] == [("failed", None)]


def test_study_progress_is_finished_when_nothing_waits() -> None:
    queue = [job("PACS", "1", jobs.DONE), job("PACS", "2", jobs.PENDING),
             job("VIEWER", "1", jobs.FAILED, error="0xA900 refused", updated=5),
             job("VIEWER", "2", jobs.DONE), job("PACS", "9", study="other")]
    progress = catalog.study_progress(queue, "1.1")
    rows = {row["destination"]: row for row in progress["destinations"]}
    assert rows["PACS"]["finished"] is False and rows["PACS"]["total"] == 2
    assert rows["VIEWER"]["finished"] is True and rows["VIEWER"]["last_error"] == "0xA900 refused"
    assert progress["finished"] is False
    done = catalog.study_progress([job("PACS", "1", jobs.DONE)], "1.1")
    assert done["finished"] is True
    assert catalog.study_progress([], "1.1") == {"study": "1.1", "destinations": [],
                                                 "finished": True}


@dataclass
class Item:
    name: str
    tree: dict = field(default_factory=dict)


def step_tree(station: str, date: str, time_: str, name: str = "DOE^JANE") -> dict:
    return {0x00100010: name, 0x00100020: "P1", 0x00080050: "A1", 0x00321060: "CT HEAD",
            0x00400100: [{0x00400001: station, 0x00400002: date, 0x00400003: time_,
                          0x00080060: "CT"}]}


def test_worklist_day_groups_by_station_in_time_order() -> None:
    items = [Item("b.json", step_tree("CT01", "20261130", "1000")),
             Item("a.json", step_tree("CT01", "20261130", "0830")),
             Item("c.json", step_tree("MR01", "20261130", "0900")),
             Item("d.json", step_tree("CT01", "20261201", "0800")),
             Item("e.json", step_tree("", "20261130", "")),
             Item("f.json", {0x00100010: "NO^STEPS"})]
    stations = catalog.worklist_day(items, "20261130")
    assert [(s["station"], [x["file"] for x in s["steps"]]) for s in stations] == [
        ("CT01", ["a.json", "b.json"]), ("MR01", ["c.json"]), ("(no station)", ["e.json"])]
    first = stations[0]["steps"][0]
    assert (first["patient_name"], first["procedure"], first["modality"]) == ("DOE^JANE",
                                                                             "CT HEAD", "CT")


def test_received_within_the_last_hour() -> None:
    now = time.time()
    recent = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    old = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 7200))
    studies = [{"StudyInstanceUID": "1", "updated": recent},
               {"StudyInstanceUID": "2", "updated": old}, {"StudyInstanceUID": "3"}]
    assert catalog.updated_since(studies, now - 3600) == ["1"]
    instances = [{"received": recent}, {"received": old}, {"received": "garbage"}]
    assert catalog.received_since(instances, now - 3600) == 1


# -- pure: auth pieces ----------------------------------------------------------------------


@pytest.mark.parametrize("target, expected", [
    ("/studies/1.2?x=1", "/studies/1.2?x=1"), ("//evil.example/", "/"),
    ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("", "/"), (None, "/"),
    ("javascript:alert(1)", "/"), ("/ok\r\nSet-Cookie: x", "/"),
])
def test_next_is_a_local_path_or_home(target: str | None, expected: str) -> None:
    assert auth.safe_next(target) == expected


def test_session_problems(tmp_path: Path) -> None:
    config = load_config(tmp_path, http_session_minutes=1)
    good = {auth.USER: "admin", auth.SEEN: 1000.0,
            auth.PASSWORD: auth.password_fingerprint(config.http_password_hash)}
    assert auth.session_problem(good, config, 1059.0) is None
    assert "expired" in auth.session_problem(good, config, 1061.0)
    assert auth.session_problem({}, config, 1000.0) == "login required"
    assert "changed" in auth.session_problem({**good, auth.PASSWORD: "x"}, config, 1000.0)
    assert "changed" in auth.session_problem({**good, auth.USER: "eve"}, config, 1000.0)
    unset = replace(config, http_password_hash="")
    assert auth.session_problem(good, unset, 1000.0) == auth.NO_PASSWORD


def test_secret_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = auth.load_secret(tmp_path / "var")
    assert first == auth.load_secret(tmp_path / "var") and len(first) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "var" / auth.SECRET_FILE).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "var").iterdir()] == [auth.SECRET_FILE]


# -- the archive and the served app -------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    archive_dir: Path
    index_path: Path
    ct_study: str
    ct_series: str
    sr_series: str
    jpeg_series: str
    mr_study: str
    instances: int


def _index(archive_dir: Path, index_path: Path, files: list[Path]) -> None:
    records = []
    start = time.time_ns()
    for n, source in enumerate(files):  # arrivals 1 ms apart, in the order given
        spooled = source.with_name(f"{start + n * 1_000_000}-1-{n}.dcm")
        source.rename(spooled)
        record = read_record(spooled)
        target = archive_dir / record.path
        target.parent.mkdir(parents=True, exist_ok=True)
        spooled.rename(target)
        records.append(record)
    archive_index = ArchiveIndex(index_path)
    archive_index.apply(records)
    archive_index.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """Two studies: a CT (3 CT images, a JPEG series, an SR without pixels) and an MR.

    The MR has the later study date but arrived first: the CT (an old study
    sent today) is the last received.
    """
    root = tmp_path_factory.mktemp("archive")
    incoming = root / "incoming"
    incoming.mkdir()
    ct_study, ct_series, sr_series = generate_uid(), generate_uid(), generate_uid()
    files = []
    for number in (1, 2, 3):
        ds = make_dataset("1.2.840.10008.5.1.4.1.1.2", ct_study, ct_series, rows=16,
                          patient_id="P100", modality="CT")
        ds.PatientName, ds.AccessionNumber, ds.InstanceNumber = "DOE^JANE", "ACC1", number
        ds.StudyDate, ds.SeriesNumber, ds.SeriesDescription = "20261101", 1, "AXIAL"
        ds.PixelData = bytes(range(256)) * 2
        files.append(write_part10(ds, incoming / f"ct{number}.dcm"))
    sr = make_dataset("1.2.840.10008.5.1.4.1.1.88.11", ct_study, sr_series,
                      patient_id="P100", modality="SR")
    for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(sr, keyword)
    sr.PatientName, sr.StudyDate, sr.SeriesNumber = "DOE^JANE", "20261101", 3
    files.append(write_part10(sr, incoming / "sr.dcm"))
    jpeg = (incoming / "jpeg.dcm")
    jpeg.write_bytes((TEST_FILES / "SC_rgb_jpeg_gdcm.dcm").read_bytes())  # JPEG lossless
    import pydicom

    jpeg_ds = pydicom.dcmread(jpeg)
    jpeg_ds.StudyInstanceUID, jpeg_ds.SeriesNumber = ct_study, 2
    jpeg_ds.PatientName, jpeg_ds.PatientID, jpeg_ds.StudyDate = "DOE^JANE", "P100", "20261101"
    jpeg_ds.AccessionNumber = "ACC1"
    jpeg_ds.save_as(jpeg)
    files.append(jpeg)
    mr_study = generate_uid()
    mr = make_dataset("1.2.840.10008.5.1.4.1.1.4", mr_study, None, patient_id="P200",
                      modality="MR")
    mr.PatientName, mr.StudyDate, mr.AccessionNumber = "SMITH^JOHN", "20261115", "ACC2"
    files.insert(0, write_part10(mr, incoming / "mr.dcm"))
    archive_dir, index_path = root / "archive", root / "var" / "index.json"
    _index(archive_dir, index_path, files)
    return Archive(archive_dir, index_path, ct_study, ct_series, sr_series,
                   str(jpeg_ds.SeriesInstanceUID), mr_study, len(files))


def write_home(home: Path, archive: Archive | None = None, aes: str = "",
               **extra: object) -> Path:
    (home / "etc").mkdir(parents=True, exist_ok=True)
    values = {"store_port": free_port(), "mwl_port": free_port(), "http_port": free_port(),
              "bind": "127.0.0.1", "min_free_mb": 1, "http_password_hash": FAST_HASH}
    if archive is not None:
        values.update(archive_dir=archive.archive_dir, index_path=archive.index_path)
    values.update(extra)
    path = home / "etc" / "echoes.ini"
    path.write_text("# the Browser's test configuration\n[echoes]\n"
                    + "".join(f"{k} = {v}\n" for k, v in values.items()) + aes)
    return path


def load_config(home: Path, **extra: object) -> config_module.Config:
    return config_module.load(write_home(home, **extra))


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.body
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json()["error"]

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """HTTP/1.1 over loopback, with the session cookie kept like a browser keeps it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
                content_type: str | None = None, headers: dict | None = None,
                form: dict | None = None, basic: tuple[str, str] | None = None) -> Reply:
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
        if form is not None:
            data = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if content_type:
            sent["Content-Type"] = content_type
        if basic:
            sent["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
        elif self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            connection.close()
        for header in reply.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or "1970" in morsel["expires"] or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: object = None, **kw) -> Reply:
        if self.csrf and "headers" not in kw and not kw.get("basic"):
            kw["headers"] = {"X-CSRF-Token": self.csrf}
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: object = None, **kw) -> Reply:
        kw.setdefault("headers", {"X-CSRF-Token": self.csrf})
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw) -> Reply:
        kw.setdefault("headers", {"X-CSRF-Token": self.csrf})
        return self.request("DELETE", path, **kw)

    def login(self, password: str = PASSWORD) -> Reply:
        reply = self.request("POST", "/api/login", {"user": "admin", "password": password})
        if reply.status == 200:
            self.csrf = reply.json()["csrf_token"]
        return reply


@dataclass
class Site:
    config: config_module.Config
    app: object
    client: Client
    archive: Archive | None

    @property
    def port(self) -> int:
        return self.client.port

    def anonymous(self) -> Client:
        return Client(self.port)

    def job_store(self) -> jobs.JobStore:
        return open_job_store(self.config)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """serve(home, ...) -> Site: the app on waitress in a thread, on 127.0.0.1."""
    servers = []

    def start(archive: Archive | None = None, aes: str = "", **extra: object) -> Site:
        config = config_module.load(write_home(tmp_path / f"home{len(servers)}", archive, aes,
                                               **extra))
        app = create_app(config, reload_interval=0)
        server = make_server(app, listen(config))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        return Site(config, app, Client(config.http_port), archive)

    yield start
    for server, thread in servers:
        stop_server(server)
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def site(serve, archive: Archive) -> Site:
    """A served app over the archive, logged in."""
    running = serve(archive)
    assert running.client.login().status == 200
    return running


# -- security --------------------------------------------------------------------------------

PAGES = ["/", "/studies/1.2.3", "/aes", "/queue", "/worklist", "/health"]
ENDPOINTS = [
    ("GET", "/api/studies"), ("GET", "/api/studies/1.2.3"),
    ("GET", "/api/studies/1.2.3/series/1.2.4/thumbnail.png"),
    ("POST", "/api/studies/1.2.3/push"), ("GET", "/api/studies/1.2.3/jobs"),
    ("GET", "/api/aes"), ("POST", "/api/aes"), ("GET", "/api/aes/PACS"),
    ("PUT", "/api/aes/PACS"), ("DELETE", "/api/aes/PACS"), ("POST", "/api/aes/PACS/echo"),
    ("GET", "/api/queue"), ("POST", "/api/queue/retry-failed"),
    ("GET", "/api/jobs/0123456789abcdef0123"),
    ("POST", "/api/jobs/0123456789abcdef0123/retry"),
    ("POST", "/api/jobs/0123456789abcdef0123/cancel"),
    ("GET", "/api/worklist"), ("GET", "/api/health"), ("POST", "/api/logout"),
    ("GET", "/api/no-such-thing"),
]


def test_pages_redirect_to_login_without_a_session(serve, archive: Archive) -> None:
    anonymous = serve(archive).anonymous()
    for page in PAGES:
        reply = anonymous.get(page + "?a=1")
        assert reply.status == 302, page
        location = urlsplit(reply.headers["Location"])
        assert (location.path, parse_qs(location.query)) == ("/login", {"next": [page + "?a=1"]})
    assert anonymous.get("/login").status == 200
    assert anonymous.get("/static/app.js").status == 200


def test_every_api_endpoint_is_refused_without_login(serve, archive: Archive) -> None:
    running = serve(archive)
    anonymous = running.anonymous()
    for method, path in ENDPOINTS:
        reply = anonymous.request(method, path, {"ae": "PACS"} if method != "GET" else None)
        assert reply.status == 401, (method, path, reply.body)
        assert reply.error == "login required"
        assert "WWW-Authenticate" not in reply.headers
        wrong = anonymous.request(method, path, basic=("admin", "guess"))
        assert (wrong.status, wrong.error) == (401, auth.WRONG), (method, path)
        assert "WWW-Authenticate" not in wrong.headers
        running.app.extensions["echoes.throttle"].succeeded("127.0.0.1")  # not 429 next time


def test_csrf_token_is_needed_for_every_change(site: Site) -> None:
    client = site.client
    for method, path in [(m, p) for m, p in ENDPOINTS if m != "GET"]:
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            reply = client.request(method, path, {"ae": "PACS"}, headers=headers)
            assert reply.status == 403, (method, path, headers)
            assert "CSRF" in reply.error
    assert client.get("/api/studies").status == 200  # still logged in


def test_login_form_with_csrf_field_and_next(serve, archive: Archive) -> None:
    browser = serve(archive).anonymous()
    page = browser.get("/login?next=/queue")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert 'name="next" value="/queue"' in page.text
    forged = browser.post("/login", form={"user": "admin", "password": PASSWORD,
                                          "next": "/queue"})
    assert forged.status == 403 and "expired" in forged.text
    wrong = browser.post("/login", form={"user": "admin", "password": "no",
                                         "csrf_token": token, "next": "/queue"})
    assert wrong.status == 401 and auth.WRONG in wrong.text
    evil = browser.post("/login", form={"user": "admin", "password": PASSWORD,
                                        "csrf_token": token, "next": "//evil.example/x"})
    assert (evil.status, evil.headers["Location"]) == (302, "/")
    assert browser.get("/queue").status == 200


def test_login_form_goes_where_it_was_asked(serve, archive: Archive) -> None:
    browser = serve(archive).anonymous()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      browser.get("/login").text).group(1)
    reply = browser.post("/login", form={"user": "admin", "password": PASSWORD,
                                         "csrf_token": token, "next": "/worklist?date=20261130"})
    assert (reply.status, reply.headers["Location"]) == (302, "/worklist?date=20261130")


def test_failed_logins_are_logged_without_the_password(serve, archive: Archive,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    client = serve(archive).anonymous()
    with caplog.at_level("WARNING", logger="echoes.web"):
        reply = client.request("POST", "/api/login", {"user": "mallory", "password": "hunter2"})
    assert (reply.status, reply.error) == (401, auth.WRONG)
    assert "failed login for user 'mallory' from 127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


def test_login_api_bad_bodies(serve, archive: Archive) -> None:
    client = serve(archive).anonymous()
    assert client.request("POST", "/api/login", {"user": "admin"}).status == 400
    malformed = client.request("POST", "/api/login", raw=b"{", content_type="application/json")
    assert malformed.status == 400 and malformed.error.startswith("malformed JSON")
    form = client.request("POST", "/api/login", raw=b"user=admin", content_type="text/plain")
    assert form.status == 415 and "application/json" in form.error


def test_repeated_failures_from_one_address_must_wait(serve, archive: Archive) -> None:
    client = serve(archive).anonymous()
    for _ in range(auth.MAX_FAILURES):
        assert client.login("wrong").status == 401
    assert client.login().status == 429


def test_no_password_set_nobody_gets_in(serve, archive: Archive) -> None:
    running = serve(archive, http_password_hash="")
    client = running.anonymous()
    assert auth.NO_PASSWORD in client.get("/login").text
    refused = client.login("")
    assert (refused.status, refused.error) == (403, auth.NO_PASSWORD)
    basic = client.get("/api/studies", basic=("admin", ""))
    assert (basic.status, basic.error) == (401, auth.NO_PASSWORD)


def test_session_expires_when_idle(serve, archive: Archive) -> None:
    running = serve(archive, http_session_minutes=1)
    serializer = running.app.session_interface.get_signing_serializer(running.app)
    fingerprint = auth.password_fingerprint(running.config.http_password_hash)
    client = running.anonymous()

    def session_seen(seconds_ago: float) -> None:
        client.cookies["echoes_session"] = serializer.dumps({
            auth.USER: "admin", auth.SEEN: time.time() - seconds_ago, auth.CSRF: "t",
            auth.PASSWORD: fingerprint})

    session_seen(50)
    assert client.get("/api/studies").status == 200  # and that request refreshed it
    assert client.get("/api/studies").status == 200
    session_seen(61)
    expired = client.get("/api/studies")
    assert (expired.status, expired.error) == (401, "session expired: log in again")
    assert "echoes_session" not in client.cookies  # the stale cookie is dropped
    session_seen(61)
    assert client.get("/queue").headers["Location"].startswith("/login")


def test_automatic_refreshes_do_not_keep_a_session_alive(serve, archive: Archive) -> None:
    running = serve(archive, http_session_minutes=1)
    serializer = running.app.session_interface.get_signing_serializer(running.app)
    client = running.anonymous()
    seen = time.time() - 50
    client.cookies["echoes_session"] = serializer.dumps({
        auth.USER: "admin", auth.SEEN: seen, auth.CSRF: "t",
        auth.PASSWORD: auth.password_fingerprint(running.config.http_password_hash)})
    reply = client.get("/api/queue", headers={auth.POLL_HEADER: "1"})
    assert reply.status == 200 and "Set-Cookie" not in reply.headers
    assert serializer.loads(client.cookies["echoes_session"])[auth.SEEN] == seen
    client.get("/api/queue")  # a person's request: the idle clock starts again
    assert serializer.loads(client.cookies["echoes_session"])[auth.SEEN] > seen


def test_changing_the_password_logs_everybody_out(site: Site) -> None:
    assert site.client.get("/api/studies").status == 200
    config_edit.set_option(site.config.path, "http_password_hash",
                           generate_password_hash("new one", method="pbkdf2:sha256:1000"))
    reply = site.client.get("/api/studies")
    assert (reply.status, reply.error) == (401, "the password or user was changed: log in again")
    assert site.client.login().status == 401
    assert site.client.login("new one").status == 200


def test_logout(site: Site) -> None:
    assert site.client.post("/api/logout").json() == {"logged_out": True}
    assert site.client.get("/api/studies").status == 401
    site.client.login()
    page = site.client.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    reply = site.client.post("/logout", form={"csrf_token": token}, headers={})
    assert reply.status == 302 and reply.headers["Location"].startswith("/login")
    assert site.client.get("/").status == 302


def test_basic_auth_for_scripts_needs_no_csrf_and_sets_no_cookie(site: Site) -> None:
    script = site.anonymous()
    reply = script.get("/api/studies", basic=("admin", PASSWORD))
    assert reply.status == 200 and "Set-Cookie" not in reply.headers
    added = script.request("POST", "/api/aes", {"title": "SCRIPTED", "host": "127.0.0.1",
                                                "port": 104}, basic=("admin", PASSWORD))
    assert added.status == 201
    assert script.get("/api/studies", basic=("eve", PASSWORD)).status == 401


def test_security_headers_and_cookie_flags(serve, archive: Archive) -> None:
    client = serve(archive).anonymous()
    reply = client.request("POST", "/api/login", {"user": "admin", "password": PASSWORD})
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    for page in (reply, client.get("/"), client.get("/api/studies")):
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "same-origin"
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in client.get("/").text  # every script is static/app.js


def test_http_bind_defaults_to_loopback_only(tmp_path: Path) -> None:
    config = load_config(tmp_path, http_port=free_port())
    assert config.http_bind == "127.0.0.1"
    with listen(config) as sock:
        assert sock.getsockname() == ("127.0.0.1", config.http_port)


def _run_web(config: config_module.Config, sock: socket.socket) -> subprocess.Popen:
    code = ("import sys; from echoes import config; from echoes.processes.web import run; "
            f"sys.exit(run(config.load({str(config.path)!r}), {sock.fileno()}))")
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(sock.fileno(),),
                            stderr=subprocess.PIPE)


def test_run_serves_the_supervisors_socket_and_stops_on_sigterm(tmp_path: Path,
                                                                archive: Archive) -> None:
    config = config_module.load(write_home(tmp_path, archive))
    sock = listen(config)
    process = _run_web(config, sock)
    sock.close()
    try:
        client = Client(config.http_port)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert client.get("/login").status == 200
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "web did not answer"
                time.sleep(0.1)
        assert client.login().status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        process.kill()


def test_run_refuses_a_socket_bound_elsewhere_than_http_bind(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    process = _run_web(config, sock)
    sock.close()
    assert process.wait(15) == 1


# -- the API, endpoint by endpoint -----------------------------------------------------------


def test_studies_list_search_sort_and_paging(site: Site) -> None:
    listing = site.client.get("/api/studies").json()
    assert (listing["total"], listing["page"], listing["per_page"]) == (2, 1, 50)
    # last received first: the CT of November 1st came after the MR of November 15th
    assert (listing["sort"], listing["order"]) == ("received", "desc")
    assert [s["PatientName"] for s in listing["studies"]] == ["DOE^JANE", "SMITH^JOHN"]
    by_date = site.client.get("/api/studies?sort=date").json()
    assert [s["PatientName"] for s in by_date["studies"]] == ["SMITH^JOHN", "DOE^JANE"]
    oldest = site.client.get("/api/studies?sort=received&order=asc").json()
    assert [s["PatientName"] for s in oldest["studies"]] == ["SMITH^JOHN", "DOE^JANE"]
    ct = listing["studies"][0]
    assert ct["updated"] > listing["studies"][1]["updated"]
    assert (ct["NumberOfInstances"], ct["ModalitiesInStudy"]) == (5, ["CT", "OT", "SR"])
    assert ct["url"] == f"/studies/{site.archive.ct_study}"
    found = site.client.get("/api/studies?" + urlencode({"patient_name": "doe*",
                                                         "modality": "ct"})).json()
    assert [s["StudyInstanceUID"] for s in found["studies"]] == [site.archive.ct_study]
    ranged = site.client.get("/api/studies?date_from=20261110&date_to=20261130").json()
    assert [s["PatientID"] for s in ranged["studies"]] == ["P200"]
    assert site.client.get("/api/studies?accession=ACC2").json()["total"] == 1
    assert site.client.get("/api/studies?patient_id=P100").json()["total"] == 1
    paged = site.client.get("/api/studies?sort=patient_name&order=asc&per_page=1&page=2").json()
    assert (paged["total"], paged["pages"], paged["studies"][0]["PatientName"]) == (
        2, 2, "SMITH^JOHN")


@pytest.mark.parametrize("query, message", [
    ("date_from=20261301", "date_from: no such day"),
    ("date_to=2026-1-1", "date_to: not a date"),
    ("sort=size", "sort: must be one of"),
    ("per_page=500", "per_page: must be between 1 and 200"),
    ("name=DOE", "unknown parameter 'name'"),
])
def test_studies_bad_parameters_are_400(site: Site, query: str, message: str) -> None:
    reply = site.client.get("/api/studies?" + query)
    assert reply.status == 400 and message in reply.error


def test_study_with_its_series_counts_and_thumbnails(site: Site) -> None:
    archive = site.archive
    detail = site.client.get(f"/api/studies/{archive.ct_study}").json()
    assert (detail["PatientID"], detail["NumberOfSeries"], detail["NumberOfInstances"]) == (
        "P100", 3, 5)
    series = {s["SeriesInstanceUID"]: s for s in detail["series"]}
    assert [s["SeriesNumber"] for s in detail["series"]] == ["1", "2", "3"]
    assert series[archive.ct_series]["NumberOfSeriesRelatedInstances"] == 3
    assert series[archive.ct_series]["Modality"] == "CT"
    assert series[archive.sr_series]["thumbnail"] == (
        f"/api/studies/{archive.ct_study}/series/{archive.sr_series}/thumbnail.png")
    assert detail["jobs"] == f"/api/studies/{archive.ct_study}/jobs"


def test_unknown_and_malformed_study_uids(site: Site) -> None:
    unknown = site.client.get("/api/studies/1.2.999")
    assert (unknown.status, unknown.error) == (404, "no archived study 1.2.999")
    traversal = site.client.get("/api/studies/..%2F..%2Fetc")
    assert traversal.status in (400, 404)
    bad = site.client.get("/api/studies/abc")
    assert bad.status == 400 and "not a valid UID" in bad.error
    assert site.client.get("/api/studies/1.2.999/jobs").status == 404
    assert site.client.get("/studies/1.2.999").status == 404


def png_image(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def test_thumbnails_from_pixels_compressed_and_a_placeholder(site: Site) -> None:
    archive = site.archive
    base = f"/api/studies/{archive.ct_study}/series"
    ct = site.client.get(f"{base}/{archive.ct_series}/thumbnail.png")
    assert ct.status == 200 and ct.headers["Content-Type"] == "image/png"
    assert "private" in ct.headers["Cache-Control"]
    middle = sorted(archive.archive_dir.joinpath(archive.ct_study, archive.ct_series).iterdir())
    assert ct.body in {thumbnail.render(path) for path in middle}
    assert png_image(ct.body).size == (16, 16)
    jpeg = site.client.get(f"{base}/{archive.jpeg_series}/thumbnail.png")
    assert jpeg.status == 200 and jpeg.body != thumbnail.placeholder("cannot decode")
    assert png_image(jpeg.body).size == (100, 100)
    sr = site.client.get(f"{base}/{archive.sr_series}/thumbnail.png")
    assert sr.body == thumbnail.placeholder("SR")
    again = site.client.get(f"{base}/{archive.ct_series}/thumbnail.png",
                            headers={"If-None-Match": ct.headers["ETag"]})
    assert again.status == 304
    small = site.client.get(f"{base}/{archive.jpeg_series}/thumbnail.png?size=32")
    assert max(png_image(small.body).size) == 32
    assert site.client.get(f"{base}/{archive.ct_series}/thumbnail.png?size=5000").status == 400
    missing = site.client.get(f"{base}/1.2.3.4/thumbnail.png")
    assert missing.status == 404 and "no series 1.2.3.4" in missing.error


def test_push_bad_input(site: Site) -> None:
    study = site.archive.ct_study
    unknown_ae = site.client.post(f"/api/studies/{study}/push", {"ae": "NOBODY"})
    assert (unknown_ae.status, unknown_ae.error) == (404, "unknown AE NOBODY (configured: none)")
    site.client.post("/api/aes", {"title": "PACS", "host": "127.0.0.1", "port": 104})
    unknown_study = site.client.post("/api/studies/1.2.999/push", {"ae": "PACS"})
    assert (unknown_study.status, unknown_study.error) == (404, "no archived study 1.2.999")
    malformed = site.client.post(f"/api/studies/{study}/push", raw=b'{"ae": ',
                                 content_type="application/json")
    assert malformed.status == 400 and malformed.error.startswith("malformed JSON")
    assert site.client.post(f"/api/studies/{study}/push", {"ae": 7}).status == 400
    assert site.client.post(f"/api/studies/{study}/push", ["PACS"]).status == 400
    text = site.client.post(f"/api/studies/{study}/push", raw=b"ae=PACS",
                            content_type="application/x-www-form-urlencoded")
    assert text.status == 415
    assert site.job_store().all() == []


@dataclass
class Storescp:
    title: str
    port: int
    folder: Path
    process: subprocess.Popen

    def received(self) -> list[Path]:
        return sorted(self.folder.iterdir())


@pytest.fixture
def storescp(tmp_path: Path, dcmtk: None) -> Iterator[Storescp]:
    port, folder = free_port(), tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "STORESCP", "+xa", "-od", str(folder),
                                str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.05)
    yield Storescp("STORESCP", port, folder, process)
    process.terminate()
    process.wait(10)


def test_push_queues_the_study_and_shows_progress_until_done(serve, archive: Archive,
                                                             storescp: Storescp) -> None:
    from echoes.processes.sender import Sender

    running = serve(archive, aes=f"[ae:STORESCP]\nhost = 127.0.0.1\nport = {storescp.port}\n")
    client = running.client
    client.login()
    pushed = client.post(f"/api/studies/{archive.ct_study}/push", {"ae": "STORESCP"})
    assert pushed.status == 202
    assert pushed.json() == {"queued": 5, "destination": "STORESCP", "study": archive.ct_study,
                             "progress": f"/api/studies/{archive.ct_study}/jobs"}
    waiting = client.get(pushed.json()["progress"]).json()
    assert waiting["finished"] is False
    assert waiting["destinations"][0]["counts"]["pending"] == 5
    Sender(running.config).send_batch("STORESCP")
    done = client.get(pushed.json()["progress"]).json()
    assert done["finished"] is True
    assert done["destinations"] == [{"destination": "STORESCP", "total": 5, "finished": True,
                                     "last_error": "", "counts": {
                                         "pending": 0, "retrying": 0, "failed": 0, "done": 5,
                                         "cancelled": 0, "held": 0}}]
    assert len(storescp.received()) == 5
    other = client.get(f"/api/studies/{archive.mr_study}/jobs").json()
    assert other == {"study": archive.mr_study, "destinations": [], "finished": True}


#: The routing rules of an AE without any (issue 20).
NO_RULES = {"forward_modalities": [], "forward_calling_aes": [], "forward_when": "instance",
            "stable_study_seconds": 60}


def test_aes_add_edit_rename_remove_keep_the_comments(site: Site) -> None:
    client, path = site.client, site.config.path
    assert client.get("/api/aes").json() == {"aes": []}
    added = client.post("/api/aes", {"title": "PACS", "host": "10.0.0.5", "port": 104,
                                     "forward": True})
    assert added.status == 201
    assert added.json() == {"title": "PACS", "host": "10.0.0.5", "port": 104, "forward": True,
                            "tls": False, **NO_RULES}
    assert "[ae:PACS]" in path.read_text()
    assert client.get("/api/aes/PACS").json()["forward"] is True
    toggled = client.put("/api/aes/PACS", {"forward": False})
    assert toggled.status == 200 and toggled.json()["forward"] is False
    assert config_module.load(path).remote_aes["PACS"].forward is False
    waiting = {"SOPInstanceUID": "1.2.3.4", "StudyInstanceUID": "1.2.3",
               "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "path": "a/b/c.dcm"}
    site.job_store().queue("PACS", [waiting], "push", time.time())
    renamed = client.put("/api/aes/PACS", {"title": "ARCHIVE2", "port": 11112})
    assert renamed.json() == {"title": "ARCHIVE2", "host": "10.0.0.5", "port": 11112,
                              "forward": False, "tls": False, **NO_RULES, "jobs_moved": 1}
    assert [ae["title"] for ae in client.get("/api/aes").json()["aes"]] == ["ARCHIVE2"]
    assert [(job.destination, job.state) for job in site.job_store().all()] == [
        ("ARCHIVE2", "pending")]  # the queue follows the rename
    same = client.put("/api/aes/ARCHIVE2", {"port": 11113})
    assert same.json()["jobs_moved"] == 0
    assert client.delete("/api/aes/ARCHIVE2").json() == {"removed": "ARCHIVE2"}
    assert client.get("/api/aes").json() == {"aes": []}
    assert path.read_text().startswith("# the Browser's test configuration\n")


def test_aes_bad_input(site: Site) -> None:
    client = site.client
    assert client.post("/api/aes", {"title": "PACS", "host": "h", "port": 104}).status == 201
    assert client.post("/api/aes", {"title": "VIEW", "host": "h", "port": 105}).status == 201
    duplicate = client.post("/api/aes", {"title": "PACS", "host": "h2", "port": 1})
    assert (duplicate.status, duplicate.error) == (409, "AE PACS is already configured")
    clash = client.put("/api/aes/VIEW", {"title": "PACS"})
    assert (clash.status, clash.error) == (409, "AE PACS is already configured")
    for body, message in [
        ({"title": "X", "host": "h"}, "port: missing"),
        ({"title": "X", "host": "h", "port": 0}, "port: must be a whole number from 1"),
        ({"title": "X", "host": "h", "port": True}, "port: must be a whole number"),
        ({"title": "X" * 17, "host": "h", "port": 1}, "title: must be at most 16"),
        ({"title": "X", "host": "h", "port": 1, "forward": "yes"}, "forward: must be true"),
        ({"title": "X", "host": "h", "port": 1, "colour": "red"}, "unknown field 'colour'"),
        ({"title": "X", "host": "bad host ; x", "port": 1}, "host"),
        ({"title": "X", "host": "", "port": 1}, "host: must be"),
    ]:
        reply = client.post("/api/aes", body)
        assert reply.status == 400 and message in reply.error, (body, reply.body)
    malformed = client.post("/api/aes", raw=b"[", content_type="application/json")
    assert malformed.status == 400 and "malformed JSON" in malformed.error
    for reply in (client.get("/api/aes/NOBODY"), client.put("/api/aes/NOBODY", {"port": 1}),
                  client.delete("/api/aes/NOBODY"), client.post("/api/aes/NOBODY/echo")):
        assert (reply.status, reply.error) == (404, "unknown AE NOBODY")
    assert sorted(config_module.load(site.config.path).remote_aes) == ["PACS", "VIEW"]


def test_ae_changes_are_used_without_a_restart(site: Site) -> None:
    """Another writer (the admin's editor) changes the file: the next request sees it."""
    config_edit.save_remote_ae(site.config.path, RemoteAE("EDITOR", "10.1.1.1", 104, True))
    assert [ae["title"] for ae in site.client.get("/api/aes").json()["aes"]] == ["EDITOR"]


def test_c_echo_button(serve, archive: Archive, storescp: Storescp) -> None:
    closed = free_port()
    running = serve(archive, aes=(f"[ae:STORESCP]\nhost = 127.0.0.1\nport = {storescp.port}\n"
                                  f"[ae:DOWN]\nhost = 127.0.0.1\nport = {closed}\n"))
    running.client.login()
    good = running.client.post("/api/aes/STORESCP/echo").json()
    assert good["ok"] is True and good["ae"] == "STORESCP" and good["ms"] >= 0
    down = running.client.post("/api/aes/DOWN/echo").json()
    assert down["ok"] is False and down["message"]


def write_jobs(site: Site) -> dict[str, jobs.Job]:
    now = time.time()
    record = {"StudyInstanceUID": site.archive.ct_study, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}
    made = {
        "pending": jobs.new_job("PACS", {**record, "SOPInstanceUID": "1.9.1", "path": "a"},
                                "forward", now),
        "retrying": jobs.attempt_failed(
            jobs.new_job("PACS", {**record, "SOPInstanceUID": "1.9.2", "path": "b"}, "forward",
                         now), "cannot connect to 10.0.0.5:104: Connection refused", now, 30, 20),
        "failed": jobs.refused(
            jobs.new_job("GONE", {**record, "SOPInstanceUID": "1.9.3", "path": "c"}, "push",
                         now), "0xA900 data set does not match", now),
        "done": jobs.delivered(
            jobs.new_job("PACS", {**record, "SOPInstanceUID": "1.9.4", "path": "d"}, "push",
                         now), now),
    }
    site.job_store().write_many(made.values())
    return made


def test_queue_by_destination_and_state(site: Site) -> None:
    site.client.post("/api/aes", {"title": "PACS", "host": "10.0.0.5", "port": 104,
                                  "forward": True})
    made = write_jobs(site)
    queue = site.client.get("/api/queue").json()
    rows = {row["destination"]: row for row in queue["destinations"]}
    assert rows["PACS"]["counts"] == {"pending": 1, "retrying": 1, "failed": 0, "done": 1,
                                      "cancelled": 0, "held": 0}
    assert rows["GONE"]["configured"] is False and rows["GONE"]["counts"]["failed"] == 1
    listed = {j["id"]: j for j in queue["jobs"]}
    assert set(listed) == {made[s].id for s in ("pending", "retrying", "failed")}
    retrying = listed[made["retrying"].id]
    assert retrying["attempts"] == 1 and "Connection refused" in retrying["last_error"]
    assert abs(retrying["next_attempt_epoch"] - made["retrying"].next_attempt) < 1e-6
    assert retrying["next_attempt"][:4] == time.strftime("%Y")
    only_done = site.client.get("/api/queue?state=done&destination=PACS").json()
    assert [j["id"] for j in only_done["jobs"]] == [made["done"].id]
    bad = site.client.get("/api/queue?state=stuck")
    assert bad.status == 400 and "state: must be one of" in bad.error
    assert site.client.get("/api/queue?limit=0").status == 400


def test_queue_jobs_show_patient_accession_and_delivery_time(site: Site) -> None:
    made = write_jobs(site)
    listed = {j["id"]: j for j in site.client.get("/api/queue").json()["jobs"]}
    for job_id in (made["pending"].id, made["retrying"].id, made["failed"].id):
        shown = listed[job_id]
        assert (shown["patient_name"], shown["patient_id"], shown["accession"]) == (
            "DOE^JANE", "P100", "ACC1")
        assert shown["delivered"] is None
    done = site.client.get("/api/queue?state=done").json()["jobs"]
    assert [j["id"] for j in done] == [made["done"].id]
    assert done[0]["delivered_epoch"] == pytest.approx(made["done"].updated)
    assert done[0]["delivered"] == catalog.iso(made["done"].updated)
    one = site.client.get(f"/api/jobs/{made['done'].id}").json()
    assert (one["patient_name"], one["accession"], one["delivered"]) == (
        "DOE^JANE", "ACC1", done[0]["delivered"])


def write_more_jobs(site: Site) -> dict[str, jobs.Job]:
    """write_jobs and a failed and a cancelled job for PACS, and a failed one for VIEWER."""
    made = write_jobs(site)
    now = time.time()
    record = {"StudyInstanceUID": site.archive.mr_study,
              "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}
    made["failed PACS"] = jobs.attempt_failed(
        jobs.new_job("PACS", {**record, "SOPInstanceUID": "1.9.5", "path": "e"}, "forward",
                     now), "association lost", now, 30, 1)
    made["failed VIEWER"] = jobs.refused(
        jobs.new_job("VIEWER", {**record, "SOPInstanceUID": "1.9.6", "path": "f"}, "push",
                     now), "0xC000 cannot understand", now)
    made["cancelled"] = jobs.cancelled(
        jobs.new_job("PACS", {**record, "SOPInstanceUID": "1.9.7", "path": "g"}, "push", now),
        now)
    site.job_store().write_many(made.values())
    assert {name: job.state for name, job in made.items()} == {
        "pending": "pending", "retrying": "retrying", "failed": "failed", "done": "done",
        "failed PACS": "failed", "failed VIEWER": "failed", "cancelled": "cancelled"}
    return made


def test_retry_all_failed_retries_only_failed_jobs_as_the_cli_does(site: Site) -> None:
    from echoes import cli

    made = write_more_jobs(site)

    def states() -> dict[str, str]:
        return {name: site.job_store().read(job.id).state for name, job in made.items()}

    one = site.client.post("/api/queue/retry-failed", {"destination": "VIEWER"})
    assert one.status == 200 and one.json() == {"retried": 1, "destination": "VIEWER"}
    assert states()["failed VIEWER"] == "pending"
    assert states()["failed"] == states()["failed PACS"] == "failed"
    every = site.client.post("/api/queue/retry-failed")  # no body: every destination
    assert every.json() == {"retried": 2, "destination": None}
    after_api = states()
    assert after_api == {"pending": "pending", "retrying": "retrying", "failed": "pending",
                         "done": "done", "failed PACS": "pending", "failed VIEWER": "pending",
                         "cancelled": "cancelled"}
    revived = site.job_store().read(made["failed PACS"].id)
    assert (revived.attempts, revived.last_error) == (0, "")
    assert site.client.post("/api/queue/retry-failed", {}).json()["retried"] == 0
    # the CLI's rule, on the same jobs: the same outcome
    site.job_store().write_many(made.values())
    assert cli.main(["--config", str(site.config.path), "retry", "--failed"]) == 0
    assert states() == after_api
    for body, message in (({"destination": 5}, "destination: must be"),
                          ({"state": "done"}, "unknown field 'state'")):
        bad = site.client.post("/api/queue/retry-failed", body)
        assert bad.status == 400 and message in bad.error


def test_queue_page_filters_as_its_url_says(site: Site) -> None:
    write_jobs(site)  # jobs for PACS and GONE, neither configured
    page = site.client.get("/queue?state=done&destination=GONE")
    assert page.status == 200
    assert '<option value="done" selected>' in page.text
    assert '<option value="GONE" selected>' in page.text
    assert '<option value="PACS">' in page.text  # every destination with jobs is offered
    assert 'data-testid="queue-retry-failed"' in page.text
    plain = site.client.get("/queue").text
    assert " selected>" not in plain
    bad = site.client.get("/queue?state=stuck")
    assert bad.status == 400 and "state: must be one of" in bad.text
    assert " selected>" not in bad.text


def test_retry_and_cancel_jobs(site: Site) -> None:
    made = write_jobs(site)
    failed = made["failed"].id
    assert site.client.get(f"/api/jobs/{failed}").json()["state"] == "failed"
    retried = site.client.post(f"/api/jobs/{failed}/retry").json()
    assert (retried["state"], retried["attempts"], retried["last_error"]) == ("pending", 0, "")
    assert site.job_store().read(failed).state == jobs.PENDING
    cancelled = site.client.post(f"/api/jobs/{failed}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert site.job_store().read(failed).state == jobs.CANCELLED
    assert site.client.post(f"/api/jobs/{failed}/cancel").json()["state"] == "cancelled"
    done = site.client.post(f"/api/jobs/{made['done'].id}/cancel")
    assert done.status == 409 and "already done" in done.error
    done_again = site.client.post(f"/api/jobs/{made['done'].id}/retry")
    assert done_again.status == 409 and "already done" in done_again.error
    pending = site.client.post(f"/api/jobs/{made['pending'].id}/retry")
    assert pending.status == 409 and "pending already" in pending.error
    assert site.job_store().read(made["pending"].id) == made["pending"]
    for job_id in ("0123456789abcdef0123", "..%2E%2E", "XYZ"):
        for reply in (site.client.post(f"/api/jobs/{job_id}/retry"),
                      site.client.post(f"/api/jobs/{job_id}/cancel"),
                      site.client.get(f"/api/jobs/{job_id}")):
            assert reply.status == 404 and reply.error.startswith("no job"), reply.body
    traversal = site.client.post("/api/jobs/..%2F..%2Fetc%2Fpasswd/retry")
    assert traversal.status == 404


def write_worklist(folder: Path, name: str, station: str, day: str, time_: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({
        "PatientName": "DOE^JANE", "PatientID": "P100", "AccessionNumber": "ACC9",
        "RequestedProcedureDescription": "CT HEAD",
        "ScheduledProcedureStepSequence": [{
            "Modality": "CT", "ScheduledStationAETitle": station,
            "ScheduledProcedureStepStartDate": day, "ScheduledProcedureStepStartTime": time_}]}))


def test_worklist_of_a_day_by_station_and_invalid_files(site: Site) -> None:
    folder = site.config.worklist_dir
    today = time.strftime("%Y%m%d")
    write_worklist(folder, "one.json", "CT01", today, "0930")
    write_worklist(folder, "two.json", "CT01", today, "0800")
    write_worklist(folder, "three.json", "MR01", "20261231", "1200")
    (folder / "broken.json").write_text('{"PatientsName": "TYPO"}')
    day = site.client.get("/api/worklist").json()
    assert day["date"] == today and day["steps"] == 2
    assert [(s["station"], [x["file"] for x in s["steps"]]) for s in day["stations"]] == [
        ("CT01", ["two.json", "one.json"])]
    assert day["stations"][0]["steps"][0]["procedure"] == "CT HEAD"
    assert list(day["invalid"]) == ["broken.json"] and "PatientsName" in day["invalid"][
        "broken.json"]
    write_worklist(folder, "four.json", "MR01", "20261231", "0700")  # seen without a restart
    later = site.client.get("/api/worklist?date=20261231").json()
    assert [x["file"] for x in later["stations"][0]["steps"]] == ["four.json", "three.json"]
    bad = site.client.get("/api/worklist?date=31.12.2026")
    assert bad.status == 400 and "date: not a date" in bad.error


def test_health(site: Site) -> None:
    report = site.client.get("/api/health").json()
    assert (report["studies"], report["instances"]) == (2, site.archive.instances)
    assert report["received_last_hour"] == site.archive.instances
    assert report["status"] == "CRITICAL" and "not running" in report["summary"]
    roles = [p["role"] for p in report["processes"]]
    assert roles[0] == "supervisor" and {"store", "ingester", "sender", "mwl"} <= set(roles)
    assert all(p["state"] == "missing" for p in report["processes"])
    ports = {p["name"]: p for p in report["ports"]}
    assert ports["http"]["listening"] is True and ports["store"]["listening"] is False
    assert ports["http"]["address"] == "127.0.0.1"
    disks = {d["name"]: d for d in report["disks"]}
    assert disks["archive"]["free_mb"] > 0
    assert any("echoes is not running" in p["message"] for p in report["problems"])


def test_a_new_study_is_listed_without_loading_the_catalog_again(serve, tmp_path: Path) -> None:
    """Issue 18: after an ingester batch the Browser applies the changed studies to its
    list; it does not read the whole catalog again (counted by /api/health)."""
    from echoes.index.instance import InstanceRecord

    def instance(n: int, name: str) -> InstanceRecord:
        study = f"1.2.826.0.1.3680043.99.1.{n}"
        return InstanceRecord(
            SOPInstanceUID=f"1.2.826.0.1.3680043.99.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
            SeriesInstanceUID=f"1.2.826.0.1.3680043.99.2.{n}", StudyInstanceUID=study,
            PatientName=name, Modality="OT", path=f"{study}/x/{n}.dcm", size=10,
            received=f"2026-12-04T10:00:{n:02d}.000+00:00")

    archive_dir, index_path = tmp_path / "archive", tmp_path / "var" / "index.json"
    writer = ArchiveIndex(index_path)  # the ingester of this archive
    writer.apply([instance(n, f"OLD^{n}") for n in range(20)])
    running = serve(Archive(archive_dir, index_path, "", "", "", "", "", 20))
    assert running.client.login().status == 200
    assert running.client.get("/api/studies").json()["total"] == 20
    first = running.client.get("/api/health").json()["catalog"]
    assert first["full_loads"] == 1
    for n in (40, 41):  # two more batches, each one new study
        writer.apply([instance(n, f"NEW^{n}")])
        deadline = time.monotonic() + 30
        while True:  # the catalog may be updated a moment after the write
            listed = running.client.get("/api/studies").json()
            if listed["total"] == n - 19:
                break
            assert time.monotonic() < deadline, listed["total"]
            time.sleep(0.05)
        assert listed["studies"][0]["PatientName"] == f"NEW^{n}"  # the last received first
    now = running.client.get("/api/health").json()["catalog"]
    assert now["full_loads"] == 1 and now["updates"] >= 2
    writer.close()


def test_api_errors_are_json_for_unknown_routes_methods_and_big_bodies(site: Site) -> None:
    unknown = site.client.get("/api/nothing")
    assert (unknown.status, unknown.error) == (404, "no such API endpoint: GET /api/nothing")
    method = site.client.delete("/api/studies")
    assert method.status == 405 and "DELETE is not allowed" in method.error
    assert "GET" in method.headers["Allow"]
    big = site.client.post("/api/aes", raw=b"{" + b" " * 100_000 + b"}",
                           content_type="application/json")
    assert big.status == 413 and "too large" in big.error


# -- the pages, logged in ----------------------------------------------------------------------


def test_study_list_page_shows_and_sorts_by_arrival(site: Site) -> None:
    archive, client = site.archive, site.client
    page = client.get("/").text
    rows = re.findall(r'data-testid="study-row" data-study-uid="([^"]+)"', page)
    assert rows == [archive.ct_study, archive.mr_study]  # last received first
    heading = re.search(r'<th aria-sort="descending">\s*<a id="sort-received"[^>]*href="([^"]+)"',
                        page)
    assert heading, "the Received column is not the current sort"
    assert parse_qs(urlsplit(heading.group(1).replace("&amp;", "&")).query)["order"] == ["asc"]
    received = re.findall(r'data-testid="study-received" title="([^"]+)">([^<]+)<', page)
    ct_updated = next(s for s in index.read_studies(archive.index_path)
                      if s["StudyInstanceUID"] == archive.ct_study)["updated"]
    local = datetime.fromisoformat(ct_updated).astimezone().strftime("%Y-%m-%d %H:%M")
    assert received[0] == (ct_updated, local)
    oldest = client.get("/?sort=received&order=asc").text
    assert re.findall(r'data-study-uid="([^"]+)"', oldest)[:2] == [archive.mr_study,
                                                                   archive.ct_study]
    assert 'name="sort" value="received"' not in page  # the default needs no hidden field
    by_date = client.get("/?sort=date").text
    assert 'name="sort" value="date"' in by_date


def test_pages_show_the_data(site: Site) -> None:
    archive, client = site.archive, site.client
    studies = client.get("/?patient_name=doe")
    assert studies.status == 200
    assert studies.text.count('data-testid="study-row"') == 1
    assert f'data-study-uid="{archive.ct_study}"' in studies.text and "DOE, JANE" in studies.text
    assert client.get("/?date_from=nope").status == 400
    study = client.get(f"/studies/{archive.ct_study}")
    assert study.text.count('data-testid="series-card"') == 3
    assert f"/api/studies/{archive.ct_study}/series/{archive.ct_series}/thumbnail.png" in study.text
    assert 'data-testid="push-no-aes"' in study.text
    client.post("/api/aes", {"title": "PACS", "host": "10.0.0.5", "port": 104})
    assert '<option value="PACS">' in client.get(f"/studies/{archive.ct_study}").text
    assert 'data-title="PACS"' in client.get("/aes").text
    assert 'id="queue-jobs"' in client.get("/queue").text
    write_worklist(site.config.worklist_dir, "a.json", "CT01", "20261130", "0930")
    worklist = client.get("/worklist?date=2026-11-30").text
    assert 'data-station="CT01"' in worklist and 'data-file="a.json"' in worklist
    health = client.get("/health").text
    assert f'data-testid="health-instances">{archive.instances}<' in health
