"""STOW-RS, rendered images and WADO-URI against a real echoes.

One echoes per module.  dicomweb-client (the independent DICOMweb client)
stores objects over HTTP; they must then be found as any object received
over DICOM is: by QIDO-RS, by ``echoes studies --json`` and by dcmtk's
findscu C-FIND, and come back byte-equal in their values.  Bad bodies are
sent through ``requests`` as raw bytes so nothing repairs them on the way.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from helpers import DCMTK_ENV, Server, stop_server, write_part10
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from test_forward import Destination, ae_sections, destination, start_with, wait_for
from werkzeug.security import generate_password_hash

from echoes import IMPLEMENTATION_CLASS_UID

PASSWORD = "stow-secret"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
AUTH = ("admin", PASSWORD)
CT = "1.2.840.10008.5.1.4.1.1.2"
REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"


def ct_image(study: str, series: str, number: int, *, rows: int = 16,
             name: str = "STOW^PATIENT") -> Dataset:
    """A CT whose stored values are known: slope 2, intercept -1000, window 0/400."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate = name, "PSTOW", "20260505"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 0, 400
    ds.PixelData = (np.arange(rows * rows, dtype=np.uint16) * 16 % 1024).tobytes()
    return ds


def part10_bytes(ds: Dataset, folder: Path) -> bytes:
    return write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm").read_bytes()


def as_read(ds: Dataset, folder: Path) -> Dataset:
    """The data set as a client holds it after reading a file (file_meta set)."""
    return pydicom.dcmread(write_part10(ds, folder / f"{ds.SOPInstanceUID}.dcm"))


@dataclass
class Archive:
    server: Server
    base: str
    client: DICOMwebClient
    folder: Path
    study: str
    series: str
    stored: list[Dataset]
    forward: Destination  # a storescp every object is forwarded to


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("stow")
    forward = destination(root, "FORWARDED").start()
    server = start_with(root / "home", ae_sections(forward), http_password_hash=FAST_HASH)
    try:
        base = f"http://127.0.0.1:{server.config.http_port}/dicom-web"
        session = requests.Session()
        session.auth = AUTH
        client = DICOMwebClient(url=base, session=session)
        study, series = generate_uid(), generate_uid()
        datasets = [as_read(ct_image(study, series, n), root) for n in (1, 2, 3)]
        answer = client.store_instances(datasets)
        referenced = answer.ReferencedSOPSequence
        assert [item.ReferencedSOPInstanceUID for item in referenced] == [
            ds.SOPInstanceUID for ds in datasets]
        assert "FailedSOPSequence" not in answer
        server.wait_ingested(3)
        yield Archive(server, base, client, root, study, series, datasets, forward)
        [web] = server.children("web")
        receive_folder = server.config.spool_dir / "tmp" / str(web)
        assert receive_folder.is_dir()  # STOW-RS's, in the web process
    finally:
        stop_server(server)
        forward.stop()
    # The web process removes its receive folder (and its spare files) when it stops.
    assert not receive_folder.exists()


def post(archive: Archive, body: bytes | Iterator[bytes], content_type: str, path: str = "/studies",
         auth: tuple[str, str] | None = AUTH) -> requests.Response:
    return requests.post(archive.base + path, data=body, auth=auth, timeout=60,
                         headers={"Content-Type": content_type,
                                  "Accept": "application/dicom+json"})


def related(parts: list[bytes], boundary: str = "xYz-boundary",
            part_type: str = "application/dicom") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part
                    + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def spool_is_empty(server: Server) -> bool:
    spool = server.config.spool_dir
    return not list((spool / "incoming").glob("*.dcm")) and not [
        p for p in (spool / "tmp").rglob("*.part") if p.stat().st_size]


# -- STOW-RS -------------------------------------------------------------------------------


def test_stored_objects_are_found_by_qido(archive: Archive) -> None:
    found = archive.client.search_for_instances(archive.study)
    assert {x["00080018"]["Value"][0] for x in found} == {
        ds.SOPInstanceUID for ds in archive.stored}
    [study] = archive.client.search_for_studies(search_filters={"PatientID": "PSTOW"})
    assert study["0020000D"]["Value"][0] == archive.study


def test_stored_objects_are_listed_by_echoes_studies(archive: Archive) -> None:
    listing = subprocess.run([sys.executable, "-m", "echoes", "--config",
                              str(archive.server.config.path), "studies", "--json"],
                             capture_output=True, text=True, timeout=60, check=True)
    studies = {s["StudyInstanceUID"]: s for s in json.loads(listing.stdout)}
    assert studies[archive.study]["NumberOfInstances"] == 3


def test_stored_objects_are_found_by_findscu(archive: Archive, tmp_path: Path,
                                             dcmtk: None) -> None:
    done = subprocess.run(
        ["findscu", "-S", "-X", "-od", str(tmp_path), "-aec", "ECHOES",
         "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={archive.study}",
         "-k", f"SeriesInstanceUID={archive.series}", "-k", "SOPInstanceUID",
         "127.0.0.1", str(archive.server.port)],
        env=DCMTK_ENV, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    found = {pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.glob("rsp*.dcm")}
    assert found == {ds.SOPInstanceUID for ds in archive.stored}


def test_stored_files_carry_our_file_meta_like_c_store_ones(archive: Archive) -> None:
    """The part's File Meta is replaced by ours, as a C-STORE data set gets ours: the
    Source AE Title says it came over STOW-RS."""
    sent = archive.stored[0]
    stored = pydicom.dcmread(archive.server.config.archive_dir / archive.study / archive.series
                             / f"{sent.SOPInstanceUID}.dcm")
    assert stored.file_meta.SourceApplicationEntityTitle == "STOW-RS"
    assert stored.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert sent.file_meta.ImplementationClassUID != IMPLEMENTATION_CLASS_UID  # pydicom's


def test_stored_objects_are_forwarded(archive: Archive) -> None:
    """An object stored over HTTP takes the ingester's way: a forward job per
    ``forward = yes`` AE, sent by the sender (here to a dcmtk storescp)."""
    wanted = {ds.SOPInstanceUID: ds for ds in archive.stored}

    def arrived() -> dict[str, Dataset]:
        found = {}
        for path in archive.forward.folder.iterdir():
            ds = pydicom.dcmread(path)
            found[ds.SOPInstanceUID] = ds
        return found

    wait_for(lambda: set(wanted) <= set(arrived()), 60, "STOW-RS objects not forwarded")
    got = arrived()
    assert all(got[uid].PixelData == wanted[uid].PixelData for uid in wanted)


def test_stored_objects_come_back_equal(archive: Archive) -> None:
    for sent in archive.stored:
        back = archive.client.retrieve_instance(archive.study, archive.series,
                                                sent.SOPInstanceUID)
        assert back.PixelData == sent.PixelData
        assert back.PatientName == sent.PatientName
        assert back.RescaleIntercept == sent.RescaleIntercept


def test_a_body_larger_than_the_browsers_64_kb_cap_is_stored(archive: Archive) -> None:
    """The Browser's routes take 64 KB bodies; STOW-RS must not (2 MB, sent chunked)."""
    big = [as_read(ct_image(archive.study, archive.series, n, rows=512), archive.folder)
           for n in (30, 31, 32, 33)]
    body, content_type = related([part10_bytes(ds, archive.folder) for ds in big])
    answer = post(archive, iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                  content_type, f"/studies/{archive.study}")
    assert answer.status_code == 200, answer.text
    assert len(answer.json()[REFERENCED]["Value"]) == 4


def test_an_instance_of_another_study_than_the_urls_fails(archive: Archive) -> None:
    other = ct_image(generate_uid(), generate_uid(), 1)
    body, content_type = related([part10_bytes(other, archive.folder)])
    answer = post(archive, body, content_type, f"/studies/{archive.study}")
    assert answer.status_code == 409, answer.text
    failed = answer.json()[FAILED]["Value"]
    assert failed[0]["00081155"]["Value"] == [other.SOPInstanceUID]
    assert failed[0][FAILURE_REASON] == {"vr": "US", "Value": [0xA900]}
    assert other.SOPInstanceUID not in archive.server.indexed_sops()


def test_some_stored_some_failed_is_202_with_a_reason_per_part(archive: Archive) -> None:
    good = ct_image(archive.study, archive.series, 7)
    broken = part10_bytes(ct_image(archive.study, archive.series, 8), archive.folder)[:-100]
    body, content_type = related([part10_bytes(good, archive.folder), b"not dicom", broken])
    answer = post(archive, body, content_type, f"/studies/{archive.study}")
    assert answer.status_code == 202, answer.text
    content = answer.json()
    [stored] = content[REFERENCED]["Value"]
    assert stored["00081155"]["Value"] == [good.SOPInstanceUID]
    assert stored["00081190"]["Value"][0].endswith(
        f"/studies/{archive.study}/series/{archive.series}/instances/{good.SOPInstanceUID}")
    reasons = [item[FAILURE_REASON]["Value"][0] for item in content[FAILED]["Value"]]
    assert reasons == [0xC000, 0xC000]
    archive.server.wait_ingested(4)
    assert good.SOPInstanceUID in archive.server.indexed_sops()


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"plain bytes", "application/dicom", 415),
    (b"plain bytes", 'multipart/related; type="application/dicom+xml"; boundary=a', 415),
    (b"plain bytes, no delimiter", 'multipart/related; type="application/dicom"; boundary=a',
     400),
    (b"--a\r\nContent-Type: application/dicom\r\n\r\n", 'multipart/related; boundary=a', 400),
    (b"", 'multipart/related; type="application/dicom"; boundary=a', 400),
    (b"--a--\r\n", 'multipart/related; type="application/dicom"', 400),
])
def test_a_body_that_is_not_multipart_stores_nothing(archive: Archive, body: bytes,
                                                     content_type: str, status: int) -> None:
    before = sorted(archive.server.indexed_sops())
    answer = post(archive, body, content_type)
    assert answer.status_code == status, answer.text
    assert spool_is_empty(archive.server)
    assert sorted(archive.server.indexed_sops()) == before


def test_a_cut_body_stores_not_even_its_whole_parts(archive: Archive) -> None:
    whole = ct_image(archive.study, archive.series, 9)
    body, content_type = related([part10_bytes(whole, archive.folder)] * 2)
    answer = post(archive, body[:-len(b"\r\n--xYz-boundary--\r\n") - 10], content_type)
    assert answer.status_code == 400, answer.text
    assert spool_is_empty(archive.server)
    assert whole.SOPInstanceUID not in archive.server.indexed_sops()


def test_post_needs_basic_credentials(archive: Archive) -> None:
    body, content_type = related([part10_bytes(ct_image(archive.study, archive.series, 10),
                                               archive.folder)])
    answer = post(archive, body, content_type, auth=None)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert spool_is_empty(archive.server)


# -- rendered and thumbnail ----------------------------------------------------------------


def expected_grey(ds: Dataset, center: float, width: float, frame: int = 0) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (linear) on the rescaled values, written out here on its own."""
    stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(-1, ds.Rows, ds.Columns)
    x = stored[frame].astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = np.where(x <= low, 0.0, np.where(x > high, 255.0,
                                          ((x - (center - 0.5)) / (width - 1) + 0.5) * 255))
    return y


def get_image(archive: Archive, path: str, accept: str = "image/png", **params: str
              ) -> Image.Image:
    answer = requests.get(archive.base + path, params=params, auth=AUTH, timeout=60,
                          headers={"Accept": accept})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == accept
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[accept]
    return image


def instance_path(archive: Archive, ds: Dataset) -> str:
    return f"/studies/{archive.study}/series/{archive.series}/instances/{ds.SOPInstanceUID}"


def test_rendered_uses_the_images_own_window_by_default(archive: Archive) -> None:
    ds = archive.stored[0]
    image = get_image(archive, instance_path(archive, ds) + "/rendered")
    assert image.size == (16, 16) and image.mode == "L"
    got = np.asarray(image).astype(int)
    assert np.abs(got - expected_grey(ds, 0, 400)).max() <= 1
    assert 0 < got.mean() < 255 and len(np.unique(got)) > 5  # a window, not a threshold


def test_rendered_window_is_in_rescaled_units(archive: Archive) -> None:
    ds = archive.stored[1]
    got = np.asarray(get_image(archive, instance_path(archive, ds) + "/rendered",
                               window="-500,1000,linear")).astype(int)
    assert np.abs(got - expected_grey(ds, -500, 1000)).max() <= 1
    # the same window in stored units would be another image
    assert np.abs(got - expected_grey(ds, 250, 500)).max() > 20


def test_rendered_jpeg_decodes_close_to_the_png(archive: Archive) -> None:
    ds = archive.stored[0]
    jpeg = np.asarray(get_image(archive, instance_path(archive, ds) + "/rendered",
                                accept="image/jpeg")).astype(int)
    assert np.abs(jpeg - expected_grey(ds, 0, 400)).mean() < 6


def test_rendered_frame_of_a_multiframe_object(archive: Archive) -> None:
    ds = ct_image(archive.study, archive.series, 20, rows=8)
    ds.NumberOfFrames = 3
    ds.PixelData = (np.arange(8 * 8 * 3, dtype=np.uint16) * 5).tobytes()
    archive.client.store_instances([as_read(ds, archive.folder)])
    archive.server.wait_ingested(len(archive.server.indexed_sops()) + 1)
    got = np.asarray(get_image(archive, instance_path(archive, ds) + "/frames/3/rendered",
                               window="-700,400")).astype(int)
    assert np.abs(got - expected_grey(ds, -700, 400, frame=2)).max() <= 1
    beyond = requests.get(archive.base + instance_path(archive, ds) + "/frames/4/rendered",
                          auth=AUTH, timeout=60)
    assert beyond.status_code == 404 and "3 frame(s)" in beyond.text


@pytest.mark.parametrize("window", ["40", "40,0", "40,400,cubic"])
def test_a_bad_window_is_400(archive: Archive, window: str) -> None:
    answer = requests.get(archive.base + instance_path(archive, archive.stored[0])
                          + "/rendered", params={"window": window}, auth=AUTH, timeout=60)
    assert answer.status_code == 400


def test_rendered_refuses_what_it_cannot_produce(archive: Archive) -> None:
    answer = requests.get(archive.base + instance_path(archive, archive.stored[0])
                          + "/rendered", auth=AUTH, timeout=60,
                          headers={"Accept": "image/gif"})
    assert answer.status_code == 406


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_thumbnails_at_every_level(archive: Archive, level: str) -> None:
    path = {"study": f"/studies/{archive.study}",
            "series": f"/studies/{archive.study}/series/{archive.series}",
            "instance": instance_path(archive, archive.stored[0])}[level] + "/thumbnail"
    for accept in ("image/png", "image/jpeg"):
        image = get_image(archive, path, accept=accept)
        assert max(image.size) <= 128 and image.mode == "L"


# -- WADO-URI ------------------------------------------------------------------------------


def wado(archive: Archive, ds: Dataset, **extra: str) -> requests.Response:
    params = {"requestType": "WADO", "studyUID": archive.study, "seriesUID": archive.series,
              "objectUID": ds.SOPInstanceUID, **extra}
    return requests.get(archive.base + "/wado", params=params, auth=AUTH, timeout=60)


def test_wado_uri_gives_the_object(archive: Archive) -> None:
    ds = archive.stored[2]
    answer = wado(archive, ds, contentType="application/dicom")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/dicom"
    back = pydicom.dcmread(io.BytesIO(answer.content))
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_wado_uri_renders_jpeg_by_default_and_png_on_request(archive: Archive) -> None:
    ds = archive.stored[2]
    jpeg = wado(archive, ds)
    assert jpeg.status_code == 200 and jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (16, 16)
    png = wado(archive, ds, contentType="image/png", windowCenter="-500", windowWidth="1000")
    got = np.asarray(Image.open(io.BytesIO(png.content))).astype(int)
    assert np.abs(got - expected_grey(ds, -500, 1000)).max() <= 1


@pytest.mark.parametrize(("extra", "status"), [
    ({"requestType": "WADOX"}, 400), ({"objectUID": "1.2.3.999"}, 404),
    ({"objectUID": "../../etc"}, 400), ({"contentType": "text/html"}, 406),
])
def test_wado_uri_refusals(archive: Archive, extra: dict, status: int) -> None:
    assert wado(archive, archive.stored[0], **extra).status_code == status


def test_the_browser_session_cannot_store(archive: Archive) -> None:
    """The session cookie (and its CSRF token) reads DICOMweb, never writes: a page of
    another site must not be able to make a logged-in browser upload."""
    session = requests.Session()
    login = session.post(archive.base.replace("/dicom-web", "/api/login"), timeout=10,
                         json={"user": "admin", "password": PASSWORD})
    assert login.status_code == 200
    ds = ct_image(archive.study, archive.series, 40)
    body, content_type = related([part10_bytes(ds, archive.folder)])
    answer = session.post(archive.base + "/studies", data=body, timeout=60, headers={
        "Content-Type": content_type, "X-CSRF-Token": login.json()["csrf_token"]})
    assert answer.status_code == 401
    assert spool_is_empty(archive.server)
    assert ds.SOPInstanceUID not in archive.server.indexed_sops()


def test_below_the_free_space_floor_every_part_fails_out_of_resources(archive: Archive) -> None:
    """min_free_mb holds for STOW-RS as for C-STORE (read again from the file while the
    web process runs): 409, each part 0xA700."""
    path = archive.server.config.path
    original = path.read_text()
    path.write_text(original.replace("min_free_mb = 10", "min_free_mb = 999999999"))
    try:
        ds = ct_image(archive.study, archive.series, 50)
        body, content_type = related([part10_bytes(ds, archive.folder)])
        deadline = time.monotonic() + 20
        while True:  # the web process notices the changed file within its reload interval
            answer = post(archive, body, content_type)
            if answer.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer.status_code == 409, answer.text
        [failed] = answer.json()[FAILED]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [0xA700]
    finally:
        path.write_text(original)
