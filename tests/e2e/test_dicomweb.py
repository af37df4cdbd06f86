"""DICOMweb (QIDO-RS, WADO-RS) against a real echoes, with dicomweb-client as the peer.

One echoes per module receives its objects over DICOM from dcmtk's storescu
(a JPEG lossless one made by dcmtk's dcmcjpeg), then dicomweb-client, the
independent DICOMweb client library, searches and retrieves them over real
HTTP.  Bad requests go through http.client so that nothing normalises the
path on the way (a traversal must reach the server as sent).
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from helpers import DCMTK_ENV, Server, free_port, start_server, stop_server, write_part10
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLosslessSV1, generate_uid
from werkzeug.security import generate_password_hash

PASSWORD = "dicomweb-secret"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FRAMES = 5


def image(study: str, series: str, number: int, *, name: str, pid: str, date: str,
          modality: str, series_number: int, rows: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else \
        "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = name, pid, date, "101500"
    ds.StudyDescription = f"study of {name}"
    ds.AccessionNumber = f"ACC{pid}"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.arange(rows * rows, dtype=np.uint16) * (number + 3)) % 4096
    ds.PixelData = pixels.tobytes()
    return ds


@dataclass
class Sent:
    server: Server
    client: DICOMwebClient
    base: str
    studies: dict[str, str]  # label -> StudyInstanceUID
    datasets: dict[str, Dataset]  # SOPInstanceUID -> the data set sent
    series: dict[str, str]  # label -> SeriesInstanceUID
    jpeg_sop: str
    jpeg_source: Dataset  # the uncompressed data set the JPEG object was made from
    jpeg_file: Path
    files: list[tuple[Path, str]]  # every file sent, with the storescu option it needs


def storescu(port: int, files: list[Path], *flags: str) -> None:
    result = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "ECHOES",
                             *(flag for flag in flags if flag),
                             "127.0.0.1", str(port), *map(str, files)], env=DCMTK_ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory, dcmtk: None) -> Iterator[Sent]:
    root = tmp_path_factory.mktemp("dicomweb")
    server = start_server(root / "home", http_password_hash=FAST_HASH)
    try:
        studies = {label: generate_uid() for label in "ABC"}
        series = {label: generate_uid() for label in ("A-CT", "A-MR", "B-OT", "C-CT")}
        plan = [("A", "A-CT", 3, "DOE^JANE", "PA", "20260110", "CT", 1),
                ("A", "A-MR", 2, "DOE^JANE", "PA", "20260110", "MR", 2),
                ("B", "B-OT", 1, "DOE^JOHN", "PB", "20260215", "OT", 1),
                ("C", "C-CT", 1, "SMITH^ANNA", "PC", "20260320", "CT", 1)]
        datasets: dict[str, Dataset] = {}
        files = []
        for study, label, count, name, pid, date, modality, number in plan:
            for n in range(1, count + 1):
                ds = image(studies[study], series[label], n, name=name, pid=pid, date=date,
                           modality=modality, series_number=number)
                datasets[ds.SOPInstanceUID] = ds
                files.append(write_part10(ds, root / f"{ds.SOPInstanceUID}.dcm"))
        storescu(server.port, files)
        source = image(studies["C"], series["C-CT"], 2, name="SMITH^ANNA", pid="PC",
                       date="20260320", modality="CT", series_number=1, rows=32)
        plain = write_part10(source, root / "jpeg-source.dcm")
        jpeg = root / "jpeg.dcm"
        subprocess.run(["dcmcjpeg", str(plain), str(jpeg)], check=True, env=DCMTK_ENV,
                       capture_output=True, timeout=60)
        assert pydicom.dcmread(jpeg).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        storescu(server.port, [jpeg], "-xs")
        studies["D"], series["D-MF"] = generate_uid(), generate_uid()
        multi = image(studies["D"], series["D-MF"], 1, name="ROE^MULTI", pid="PD",
                      date="20270101", modality="OT", series_number=1, rows=8)
        multi.NumberOfFrames = FRAMES
        multi.PixelData = np.arange(8 * 8 * FRAMES, dtype=np.uint16).tobytes()
        datasets[multi.SOPInstanceUID] = multi
        files.append(write_part10(multi, root / "multi.dcm"))
        studies["E"], series["E-OT"] = generate_uid(), generate_uid()
        latin = image(studies["E"], series["E-OT"], 1, name="MÜLLER^HANS", pid="PE",
                      date="20280101", modality="OT", series_number=1)
        latin.SpecificCharacterSet = "ISO_IR 192"
        datasets[latin.SOPInstanceUID] = latin
        files.append(write_part10(latin, root / "latin.dcm"))
        storescu(server.port, files[-2:])
        server.wait_ingested(len(datasets) + 1)
        base = f"http://127.0.0.1:{server.config.http_port}/dicom-web"
        session = requests.Session()
        session.auth = ("admin", PASSWORD)
        client = DICOMwebClient(url=base, session=session)
        yield Sent(server, client, base, studies, datasets, series, source.SOPInstanceUID,
                   source, jpeg, [(f, "") for f in files] + [(jpeg, "-xs")])
    finally:
        stop_server(server)


def uids(answers: list[dict], tag: str) -> set[str]:
    return {answer[tag]["Value"][0] for answer in answers}


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"

# -- QIDO-RS -------------------------------------------------------------------------------


def test_search_at_every_level(sent: Sent) -> None:
    client = sent.client
    assert uids(client.search_for_studies(), STUDY_UID) == set(sent.studies.values())
    a = sent.studies["A"]
    assert uids(client.search_for_series(a), SERIES_UID) == {sent.series["A-CT"],
                                                              sent.series["A-MR"]}
    assert len(client.search_for_series()) == 6
    ct = client.search_for_instances(a, sent.series["A-CT"])
    assert len(ct) == 3 and {x[SERIES_UID]["Value"][0] for x in ct} == {sent.series["A-CT"]}
    assert len(client.search_for_instances(a)) == 5
    assert len(client.search_for_instances()) == len(sent.datasets) + 1


def test_answers_are_dicom_json(sent: Sent) -> None:
    [study] = sent.client.search_for_studies(search_filters={"PatientID": "PA"})
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries
    assert study["00201208"] == {"vr": "IS", "Value": [5]}  # NumberOfStudyRelatedInstances
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    answer = requests.get(f"{sent.base}/studies", auth=("admin", PASSWORD),
                          params={"PatientID": "PA"}, timeout=10)
    assert answer.headers["Content-Type"].startswith("application/dicom+json")


def test_matching_wildcards_case_dates_and_uid_lists(sent: Sent) -> None:
    search = sent.client.search_for_studies
    s = sent.studies
    assert uids(search(search_filters={"PatientName": "DOE*"}), STUDY_UID) == {s["A"], s["B"]}
    assert uids(search(search_filters={"PatientName": "doe^j?n*"}), STUDY_UID) == {s["A"]}
    assert uids(search(search_filters={"00100010": "*ANNA"}), STUDY_UID) == {s["C"]}
    assert uids(search(search_filters={"StudyDate": "20260201-20260331"}),
                STUDY_UID) == {s["B"], s["C"]}
    assert uids(search(search_filters={"StudyDate": "-20260131"}), STUDY_UID) == {s["A"]}
    assert uids(search(search_filters={"StudyInstanceUID": [s["A"], s["C"]]}),
                STUDY_UID) == {s["A"], s["C"]}
    assert uids(search(search_filters={"StudyInstanceUID": f"{s['B']},{s['C']}"}),
                STUDY_UID) == {s["B"], s["C"]}
    assert search(search_filters={"PatientName": "NOBODY*"}) == []
    assert uids(sent.client.search_for_series(search_filters={"Modality": "CT"}),
                SERIES_UID) == {sent.series["A-CT"], sent.series["C-CT"]}
    assert len(sent.client.search_for_instances(search_filters={"PatientID": "PA",
                                                                "Modality": "MR"})) == 2


def test_percent_decoded_non_ascii_names_match_case_insensitively(sent: Sent) -> None:
    status, _headers, body = raw_get(sent, "/dicom-web/studies?PatientName=m%C3%BCller*")
    assert status == 200
    [study] = json.loads(body)
    assert study["00100010"]["Value"] == [{"Alphabetic": "MÜLLER^HANS"}]
    assert study[STUDY_UID]["Value"] == [sent.studies["E"]]


def test_nothing_matches_is_204(sent: Sent) -> None:
    answer = requests.get(f"{sent.base}/studies", params={"PatientID": "NOBODY"},
                          auth=("admin", PASSWORD), timeout=10)
    assert answer.status_code == 204 and answer.content == b""


def test_limit_and_offset_page_without_overlap(sent: Sent) -> None:
    search = sent.client.search_for_instances
    every = [x[SOP_UID]["Value"][0] for x in search()]
    pages = [search(limit=3, offset=offset) for offset in range(0, len(every), 3)]
    assert [len(p) for p in pages[:-1]] == [3] * (len(pages) - 1)
    assert [x[SOP_UID]["Value"][0] for page in pages for x in page] == every


def test_includefield(sent: Sent) -> None:
    [plain] = sent.client.search_for_instances(sent.studies["B"])
    assert "00080018" in plain and "00100020" not in plain
    [patient] = sent.client.search_for_instances(sent.studies["B"], fields=["00100020"])
    assert patient["00100020"]["Value"] == ["PB"]
    [every] = sent.client.search_for_instances(sent.studies["B"], fields=["all"])
    assert every["00100020"]["Value"] == ["PB"]  # PatientID, kept by the index
    [series] = sent.client.search_for_series(sent.studies["B"], fields=["PatientName"])
    assert series["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN"}]
    [chosen] = sent.client.search_for_studies(search_filters={"PatientID": "PB"},
                                              fields=["00081030"])
    assert chosen["00081030"]["Value"] == ["study of DOE^JOHN"]


def test_fuzzymatching_is_ignored_with_a_warning(sent: Sent) -> None:
    answer = requests.get(f"{sent.base}/studies", auth=("admin", PASSWORD), timeout=10,
                          params={"PatientName": "DOE^JOHN", "fuzzymatching": "true"})
    assert answer.status_code == 200 and len(answer.json()) == 1
    assert "fuzzymatching" in answer.headers["Warning"]


# -- WADO-RS -------------------------------------------------------------------------------


def same_dataset(got: Dataset, expected: Dataset) -> None:
    for element in expected:
        assert got[element.tag].value == element.value, element.keyword
    assert got.PixelData == expected.PixelData


def test_retrieve_instance_equal_to_what_was_sent(sent: Sent) -> None:
    sop, expected = next(iter(sent.datasets.items()))
    got = sent.client.retrieve_instance(expected.StudyInstanceUID, expected.SeriesInstanceUID,
                                        sop)
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    same_dataset(got, expected)


def test_retrieve_series_and_study(sent: Sent) -> None:
    a, ct = sent.studies["A"], sent.series["A-CT"]
    series = sent.client.retrieve_series(a, ct)
    assert len(series) == 3
    for got in series:
        same_dataset(got, sent.datasets[got.SOPInstanceUID])
    study = sent.client.retrieve_study(a)
    assert {d.SOPInstanceUID for d in study} == {
        sop for sop, ds in sent.datasets.items() if ds.StudyInstanceUID == a}


def test_stored_syntax_byte_for_byte_with_transfer_syntax_star(sent: Sent) -> None:
    c, ct = sent.studies["C"], sent.series["C-CT"]
    got = sent.client.retrieve_instance(c, ct, sent.jpeg_sop,
                                        media_types=(("application/dicom", "*"),))
    sent_file = pydicom.dcmread(sent.jpeg_file)
    assert got.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert got.PixelData == sent_file.PixelData  # the compressed stream, untouched


def test_compressed_object_comes_back_decoded_as_explicit_le(sent: Sent) -> None:
    c, ct = sent.studies["C"], sent.series["C-CT"]
    for media_types in (("application/dicom",), (("application/dicom", EXPLICIT_LE),)):
        got = sent.client.retrieve_instance(c, ct, sent.jpeg_sop, media_types=media_types)
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert got.SOPInstanceUID == sent.jpeg_sop
        assert np.array_equal(got.pixel_array, sent.jpeg_source.pixel_array)
        assert got.PixelData == sent.jpeg_source.PixelData


def test_metadata_with_bulk_data_uri_resolving_to_the_pixels(sent: Sent) -> None:
    sop, expected = next(iter(sent.datasets.items()))
    meta = sent.client.retrieve_instance_metadata(expected.StudyInstanceUID,
                                                    expected.SeriesInstanceUID, sop)
    assert meta["00100010"]["Value"] == [{"Alphabetic": str(expected.PatientName)}]
    assert meta["00280010"]["Value"] == [expected.Rows]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert meta["7FE00010"]["vr"] == "OW" and "Value" not in meta["7FE00010"]
    assert sent.client.retrieve_bulkdata(uri) == [expected.PixelData]
    series = sent.client.retrieve_series_metadata(sent.studies["A"], sent.series["A-MR"])
    assert len(series) == 2
    study = sent.client.retrieve_study_metadata(sent.studies["A"])
    assert {m[SOP_UID]["Value"][0] for m in study} == {
        s for s, d in sent.datasets.items() if d.StudyInstanceUID == sent.studies["A"]}


def test_compressed_pixel_bulk_data_is_decoded(sent: Sent) -> None:
    c, ct = sent.studies["C"], sent.series["C-CT"]
    meta = sent.client.retrieve_instance_metadata(c, ct, sent.jpeg_sop)
    assert meta["7FE00010"]["vr"] == "OB"
    assert sent.client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"]) == [
        sent.jpeg_source.PixelData]


def multiframe(sent: Sent) -> Dataset:
    return next(d for d in sent.datasets.values() if d.StudyInstanceUID == sent.studies["D"])


def test_frames_of_a_multiframe_object(sent: Sent) -> None:
    ds = multiframe(sent)
    size = 8 * 8 * 2
    frames = sent.client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                  ds.SOPInstanceUID, frame_numbers=[2, 5, 1])
    assert frames == [ds.PixelData[(n - 1) * size:n * size] for n in (2, 5, 1)]
    status, _headers, body = raw_get(sent, f"/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                                           f"{ds.SeriesInstanceUID}/instances/"
                                           f"{ds.SOPInstanceUID}/frames/{FRAMES + 1}")
    assert status == 404 and f"{FRAMES} frame(s)" in json.loads(body)["error"]


def test_the_frame_of_a_compressed_object_is_decoded(sent: Sent) -> None:
    [frame] = sent.client.retrieve_instance_frames(sent.studies["C"], sent.series["C-CT"],
                                                   sent.jpeg_sop, frame_numbers=[1])
    assert frame == sent.jpeg_source.PixelData


# -- bad requests --------------------------------------------------------------------------


def raw_get(sent: Sent, path: str, headers: dict[str, str] | None = None,
            auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", sent.server.config.http_port,
                                            timeout=10)
    given = dict(headers or {})
    if auth:
        given["Authorization"] = "Basic " + base64.b64encode(
            f"admin:{PASSWORD}".encode()).decode()
    try:
        connection.request("GET", path, headers=given)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_a_study_in_its_stored_syntax_goes_with_content_length(sent: Sent) -> None:
    """Sent as stored: the length is known before the first byte, so no chunked framing
    (a converted object's is not, and the answer goes chunked)."""
    a = sent.studies["A"]
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    status, headers, body = raw_get(sent, f"/dicom-web/studies/{a}", accept)
    assert status == 200 and "transfer-encoding" not in headers
    assert int(headers["content-length"]) == len(body) > 0
    c = sent.studies["C"]  # holds the JPEG object, converted when EXPLICIT_LE is asked for
    status, headers, body = raw_get(sent, f"/dicom-web/studies/{c}",
                                    {"Accept": 'multipart/related; type="application/dicom"'})
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body.count(b"Content-Type: application/dicom") >= 2


def log_text(sent: Sent) -> str:
    return sent.server.config.log_file.read_text(errors="replace")


def test_unknown_parameter_is_400_naming_it(sent: Sent) -> None:
    status, _headers, body = raw_get(sent, "/dicom-web/studies?PatientNam=DOE")
    assert status == 400 and "PatientNam" in json.loads(body)["error"]
    status, _headers, body = raw_get(sent, "/dicom-web/studies?limit=-3")
    assert status == 400 and "limit" in json.loads(body)["error"]


def test_unknown_uids_are_404(sent: Sent) -> None:
    a, ct = sent.studies["A"], sent.series["A-CT"]
    for path in ("/dicom-web/studies/1.2.3.999", f"/dicom-web/studies/{a}/series/1.2.3.999",
                 f"/dicom-web/studies/{a}/series/{ct}/instances/1.2.3.999",
                 f"/dicom-web/studies/{a}/series/{ct}/instances/1.2.3.999/metadata"):
        status, _headers, body = raw_get(sent, path)
        assert status == 404 and "1.2.3.999" in json.loads(body)["error"], path


def test_accept_we_cannot_produce_is_406(sent: Sent) -> None:
    a = sent.studies["A"]
    for path, accept in ((f"/dicom-web/studies/{a}", "image/png"),
                         (f"/dicom-web/studies/{a}",
                          'multipart/related; type="application/dicom"; '
                          "transfer-syntax=1.2.840.10008.1.2.4.50"),
                         ("/dicom-web/studies", "application/dicom+xml"),
                         (f"/dicom-web/studies/{a}/metadata", "text/html")):
        status, _headers, _body = raw_get(sent, path, {"Accept": accept})
        assert status == 406, (path, accept)


def test_path_traversal_is_400_and_logged(sent: Sent) -> None:
    for path in ("/dicom-web/studies/../../../etc/passwd",
                 "/dicom-web/studies/..%2F..%2Fetc%2Fpasswd",
                 "/dicom-web/studies/..",
                 f"/dicom-web/studies/{sent.studies['A']}/series/..%5C..%5Cx/instances",
                 "/dicom-web/studies/1.2.3.4%00"):
        status, _headers, _body = raw_get(sent, path)
        assert status == 400, path
    assert "DICOMweb: 400 for GET /dicom-web/studies/../../../etc/passwd" in log_text(sent)


def test_no_credentials_is_401_with_a_basic_challenge(sent: Sent) -> None:
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{sent.studies['A']}"):
        status, headers, _body = raw_get(sent, path, auth=False)
        assert status == 401 and headers["www-authenticate"].startswith("Basic "), path
    wrong = requests.get(f"{sent.base}/studies", auth=("admin", "wrong"), timeout=10)
    assert wrong.status_code == 401 and "Basic" in wrong.headers["WWW-Authenticate"]


def test_the_browser_session_reads_but_does_not_write(sent: Sent) -> None:
    port = sent.server.config.http_port
    session = requests.Session()
    login = session.post(f"http://127.0.0.1:{port}/api/login", timeout=10,
                         json={"user": "admin", "password": PASSWORD})
    assert login.status_code == 200
    assert session.get(f"{sent.base}/studies", timeout=10).status_code == 200
    token = login.json()["csrf_token"]
    refused = session.post(f"{sent.base}/studies", timeout=10, data=b"",
                           headers={"X-CSRF-Token": token})
    assert refused.status_code == 401


def test_cors_is_off_by_default(sent: Sent) -> None:
    """No dicomweb_cors_origin: a preflight is refused and no answer allows any origin
    (test_viewer covers the key set)."""
    origin = "http://viewer.example.org"
    response = requests.options(f"{sent.base}/studies", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    answer = requests.get(f"{sent.base}/studies", timeout=10, auth=("admin", PASSWORD),
                          headers={"Origin": origin})
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers
    assert "CORS is off" in log_text(sent)


# -- side by side with Orthanc and its DICOMweb plugin ---------------------------------------


@pytest.fixture(scope="module")
def orthanc(sent: Sent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Orthanc with its DICOMweb plugin, holding the same objects (sent by storescu)."""
    root = tmp_path_factory.mktemp("orthanc")
    http, dicom = free_port(), free_port()
    settings = {
        "Name": "dicomweb-test", "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"), "DicomAet": "ORTHANC", "DicomPort": dicom,
        "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "SaveJobs": False, "Plugins": ["/usr/share/orthanc/plugins"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(settings))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(["/usr/sbin/Orthanc", str(root / "orthanc.json")], cwd=root,
                               env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/system", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    (root / "orthanc.log").read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        for path, flag in sent.files:
            storescu(dicom, [path], flag)
        yield base
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def both(sent: Sent, orthanc: str, query: str) -> tuple[list[dict], list[dict]]:
    """The answers of echoes and Orthanc to one QIDO-RS path and query string, sent as
    written (Orthanc's plugin does not percent-decode: ``*`` and ``^`` go as they are)."""
    answers = []
    for port, auth in ((sent.server.config.http_port, True),
                       (int(orthanc.rsplit(":", 1)[1]), False)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Accept": "application/dicom+json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"admin:{PASSWORD}".encode()).decode()
        try:
            connection.request("GET", query, headers=headers)
            reply = connection.getresponse()
            body = reply.read()
        finally:
            connection.close()
        assert reply.status in (200, 204), (port, query, reply.status, body[:300])
        answers.append(json.loads(body) if body.strip() else [])
    return answers[0], answers[1]


def unique(answers: list[dict]) -> set[tuple[str, ...]]:
    keys = (STUDY_UID, SERIES_UID, SOP_UID)
    return {tuple(a[k]["Value"][0] for k in keys if k in a) for a in answers}


def comparisons(sent: Sent) -> list[str]:
    a, c = sent.studies["A"], sent.studies["C"]
    ct = sent.series["A-CT"]
    return [
        "/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
        "/dicom-web/studies?PatientName=DOE*", "/dicom-web/studies?PatientName=doe^j*",
        "/dicom-web/studies?PatientName=*ANNA", "/dicom-web/studies?PatientID=PB",
        "/dicom-web/studies?StudyDate=20260201-20260331",
        "/dicom-web/studies?StudyDate=-20260131", "/dicom-web/studies?StudyDate=20270101-",
        f"/dicom-web/studies?StudyInstanceUID={a}", "/dicom-web/studies?AccessionNumber=ACCP?",
        "/dicom-web/studies?ModalitiesInStudy=MR",
        f"/dicom-web/studies/{a}/series", "/dicom-web/series?Modality=CT",
        f"/dicom-web/studies/{c}/series?Modality=CT", f"/dicom-web/studies/{a}/instances",
        f"/dicom-web/studies/{a}/series/{ct}/instances",
        f"/dicom-web/studies/{a}/series/{ct}/instances?InstanceNumber=2",
        "/dicom-web/instances?PatientID=PA", "/dicom-web/studies?PatientName=NOBODY",
        f"/dicom-web/studies?StudyInstanceUID={a},{c}",
        "/dicom-web/studies?PatientName=D?E^J*", "/dicom-web/studies?StudyDate=20260110",
    ]


def test_the_same_qido_answers_as_orthanc(sent: Sent, orthanc: str) -> None:
    differ = {}
    for query in comparisons(sent):
        ours, theirs = both(sent, orthanc, query)
        if unique(ours) != unique(theirs):
            differ[query] = (sorted(unique(ours)), sorted(unique(theirs)))
    assert not differ, differ


def test_limit_and_offset_count_as_orthanc(sent: Sent, orthanc: str) -> None:
    for query in ("/dicom-web/instances?limit=4", "/dicom-web/instances?offset=6",
                  "/dicom-web/studies?limit=2&offset=1"):
        ours, theirs = both(sent, orthanc, query)
        assert len(ours) == len(theirs), query
