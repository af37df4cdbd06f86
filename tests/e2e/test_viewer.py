"""The Browser's image viewer (dwv in viewer.html) in headless Chromium, and CORS on /dicom-web.

One echoes for the module, with ``dicomweb_cors_origin`` set; dcmtk's
storescu sends a CT series (four slices with a known pattern, geometry as a
scanner writes it) and a multi-frame MR (pydicom's emri_small, ten frames)
in one study.  The tests follow a reader: open the study, open the viewer,
scroll the CT, read a pixel value under the mouse (checked against the
stored pixels), change window/level by dragging and by preset (the picture
changes: screenshots compared), zoom, play the MR's frames; then check that
the browser fetched nothing from anywhere but 127.0.0.1 (its network log).
The CORS tests talk HTTP directly (and from a page of another origin).

Chromium and chromedriver are Debian's (bin/test installs them), driven as
in test_browser.  Screenshots go to ``$ECHOES_SCREENSHOTS`` when set
(tools/viewer-screenshots uses this to refresh docs/screenshots).
"""

from __future__ import annotations

import base64
import email
import http.client
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from helpers import (
    TEST_FILES,
    Server,
    free_port,
    make_dataset,
    start_server,
    stop_server,
    write_part10,
)
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_browser import (  # noqa: F401  (prerequisites: an autouse fixture)
    SELENIUM_MISSING,
    by_testid,
    by_testid_all,
    headless_chromium,
    log_in,
    prerequisites,
    storescu,
    until,
    url,
)
from test_forward import wait_for
from werkzeug.security import generate_password_hash

if not SELENIUM_MISSING:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select

PASSWORD = "viewer-secret"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
SLICES = 4
SIZE = 64
CORS_PORT = free_port()
CORS_ORIGIN = f"http://localhost:{CORS_PORT}"


def ct_series(folder: Path, study: str) -> dict[str, pydicom.Dataset]:
    """Four axial CT slices, 5 mm apart: a left-to-right ramp plus a disc growing per slice."""
    series, frame_of_reference = generate_uid(), generate_uid()
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    sent = {}
    for number in range(1, SLICES + 1):
        ds = make_dataset("1.2.840.10008.5.1.4.1.1.2", study=study, series=series, rows=SIZE,
                          patient_id="V100", modality="CT")
        ds.PatientName, ds.StudyDescription = "VIEWER^VERA", "Chest CT"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, number, "Axial 5 mm"
        ds.ImagePositionPatient = [-32.0, -32.0, 5.0 * number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.SliceLocation = [1.0, 1.0], 5.0, 5.0 * number
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        disc = ((y - 32) ** 2 + (x - 32) ** 2 < (6 + 5 * number) ** 2) * 600
        pixels = (700 + x * 9 + y + disc).astype("<u2")
        pixels[0, 0], pixels[-1, -1] = 0, 3000  # air and metal: dwv keeps windows in range
        ds.PixelData = pixels.tobytes()
        ds.FrameOfReferenceUID = frame_of_reference
        sent[ds.SOPInstanceUID] = ds
        write_part10(ds, folder / f"ct{number}.dcm")
    return sent


def cr_series(folder: Path, study: str) -> dict[str, pydicom.Dataset]:
    """Three CR images of two sizes and no geometry (as radiographs are): dwv cannot make
    one volume of them, so the viewer shows them as a stack."""
    series = generate_uid()
    sent = {}
    for number, rows in enumerate((48, 32, 40), start=1):
        ds = make_dataset("1.2.840.10008.5.1.4.1.1.1", study=study, series=series, rows=rows,
                          patient_id="V100", modality="CR")
        ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "VIEWER^VERA", 3, number
        ds.SeriesDescription = "Chest PA/LAT"
        y, x = np.mgrid[0:rows, 0:rows]
        ds.PixelData = (x * 50 + y * 3 + number * 500).astype("<u2").tobytes()
        sent[ds.SOPInstanceUID] = ds
        write_part10(ds, folder / f"cr{number}.dcm")
    return sent


@pytest.fixture(scope="module")
def echoes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("viewer") / "home"
    running = start_server(home, http_password_hash=FAST_HASH, dicomweb_cors_origin=CORS_ORIGIN)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def study(echoes_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("viewer-data")
    uid = generate_uid()
    cts = ct_series(folder, uid)
    crs = cr_series(folder, uid)
    mr = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    mr.StudyInstanceUID, mr.SeriesInstanceUID = uid, generate_uid()
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mr.PatientName, mr.PatientID, mr.SeriesNumber = "VIEWER^VERA", "V100", 2
    mr.save_as(folder / "mr.dcm", enforce_file_format=True)
    rle = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")  # stored compressed (RLE)
    rle.StudyInstanceUID, rle.SeriesInstanceUID = uid, generate_uid()
    rle.SOPInstanceUID = rle.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rle.PatientName, rle.PatientID, rle.SeriesNumber = "VIEWER^VERA", "V100", 4
    rle.save_as(folder / "rle.dcm", enforce_file_format=True)
    storescu(echoes_server.port, sorted(folder.glob("*.dcm")))
    # JPEG Extended 12-bit: neither echoes (pylibjpeg, Pillow) nor dwv decodes it.
    lossy = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    lossy.StudyInstanceUID, lossy.SeriesInstanceUID = uid, generate_uid()
    lossy.SOPInstanceUID = lossy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    lossy.PatientName, lossy.PatientID, lossy.SeriesNumber = "VIEWER^VERA", "V100", 5
    session = requests.Session()
    session.auth = ("admin", PASSWORD)
    web = DICOMwebClient(url=url(echoes_server, "/dicom-web"), session=session)
    web.store_instances([lossy])
    echoes_server.wait_ingested(SLICES + 1 + len(crs) + 1 + 1)
    ct_series_uid = next(iter(cts.values())).SeriesInstanceUID
    return {"uid": uid, "ct": cts, "ct_series": ct_series_uid, "mr": mr,
            "mr_series": mr.SeriesInstanceUID, "cr": crs,
            "cr_series": next(iter(crs.values())).SeriesInstanceUID, "rle": rle,
            "lossy": lossy, "web": web}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium with its network log on (what the page fetched, and from where)."""
    driver = headless_chromium(window="1400,1000", logs=True)
    driver.requested = []  # every URL the browser asked for, gathered from the log
    yield driver
    driver.quit()


def requested_urls(driver: WebDriver) -> list[str]:
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requested.append(message["params"]["request"]["url"])
    return driver.requested


def canvas_png(driver: WebDriver) -> np.ndarray:
    """What the viewer's canvas shows now (grey levels)."""
    png = by_testid(driver, "viewer-canvas").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def loaded(driver: WebDriver) -> None:
    until(driver, lambda d: by_testid(d, "viewer").get_attribute("data-state") in (
        "loaded", "error"), "the viewer did not finish loading")
    state = by_testid(driver, "viewer").get_attribute("data-state")
    assert state == "loaded", by_testid(driver, "viewer-loading").text


def position(driver: WebDriver) -> tuple[int, int, str]:
    shown = by_testid(driver, "viewer-position")
    return (int(shown.get_attribute("data-index") or 0), int(shown.get_attribute("data-count")
            or 0), shown.get_attribute("data-sop-instance-uid") or "")


# --- the visit, in order -----------------------------------------------------------------


def test_the_study_page_opens_the_viewer_on_the_ct_series(
        browser: WebDriver, echoes_server: Server, study: dict, shots: Path) -> None:
    browser.get(url(echoes_server, "/login"))
    log_in(browser, echoes_server, PASSWORD)
    until(browser, lambda d: "/login" not in d.current_url, "login did not leave the login page")
    browser.get(url(echoes_server, f"/studies/{study['uid']}"))
    card = next(c for c in by_testid_all(browser, "series-card")
                if c.get_attribute("data-series-uid") == study["ct_series"])
    card.find_element("css selector", '[data-testid="series-open"]').click()
    until(browser, lambda d: "/viewer" in d.current_url, "the thumbnail did not open the viewer")
    loaded(browser)
    index, count, sop = position(browser)
    assert (index, count) == (1, SLICES)
    assert sop in study["ct"]
    tags = {dd.get_attribute("data-tag"): dd.text for dd in
            browser.find_elements("css selector", '[data-testid="viewer-tags"] dd')}
    shown = study["ct"][sop]
    assert tags["00100010"] == "VIEWER^VERA"
    assert tags["00200013"] == str(shown.InstanceNumber)
    assert tags["00080018"] == sop
    picture = canvas_png(browser)
    assert len(np.unique(picture)) > 20, "the canvas shows no image"
    browser.save_screenshot(str(shots / "09-viewer-ct.png"))


def test_scrolling_shows_the_next_slice(browser: WebDriver, study: dict) -> None:
    before = canvas_png(browser)
    first = position(browser)
    canvas = by_testid(browser, "viewer-canvas")
    # Wheel up: the next image (dwv's way; down goes back).
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -120).perform()
    until(browser, lambda d: position(d)[0] == first[0] + 1, "the mouse wheel did not scroll")
    after_wheel = position(browser)
    assert after_wheel[2] in study["ct"] and after_wheel[2] != first[2]
    until(browser, lambda d: np.abs(canvas_png(d) - before).max() > 10,
          "the picture did not change with the slice")
    # The keyboard too, and the tags follow the slice shown.
    canvas.send_keys(Keys.ARROW_DOWN if after_wheel[0] < SLICES else Keys.ARROW_UP)
    until(browser, lambda d: position(d)[0] not in (first[0], after_wheel[0]),
          "the arrow key did not scroll")
    sop = position(browser)[2]
    until(browser, lambda d: any(dd.get_attribute("data-tag") == "00080018" and dd.text == sop
                                 for dd in d.find_elements(
                                     "css selector", '[data-testid="viewer-tags"] dd')),
          "the tags do not follow the slice")


def pixel_under(browser: WebDriver, dx: int, dy: int) -> dict[str, str]:
    canvas = by_testid(browser, "viewer-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, dx, dy).perform()
    pixel = until(browser, lambda d: by_testid(d, "viewer-pixel").get_attribute("data-value")
                  and by_testid(d, "viewer-pixel"), "no pixel value under the mouse")
    return {key: pixel.get_attribute(f"data-{key}") for key in (
        "column", "row", "value", "sop-instance-uid")}


def test_the_pixel_under_the_mouse_shows_its_stored_value(
        browser: WebDriver, study: dict) -> None:
    for dx, dy in ((0, 0), (40, -25), (-60, 70)):
        seen = pixel_under(browser, dx, dy)
        ds = study["ct"][seen["sop-instance-uid"]]
        row, column = int(seen["row"]), int(seen["column"])
        stored = int(ds.pixel_array[row, column]) * ds.RescaleSlope + ds.RescaleIntercept
        assert float(seen["value"]) == stored, (dx, dy, seen)
        if (dx, dy) == (0, 0):  # the middle of the canvas is the middle of the image
            assert abs(column - SIZE // 2) <= 1 and abs(row - SIZE // 2) <= 1, seen
    # Further right is further along the ramp: the index follows the mouse.
    left, right = pixel_under(browser, -80, 0), pixel_under(browser, 80, 0)
    assert int(right["column"]) > int(left["column"])


def test_window_level_by_dragging_and_by_preset_changes_the_picture(
        browser: WebDriver, shots: Path) -> None:
    by_testid(browser, "tool-windowlevel").click()
    assert by_testid(browser, "viewer").get_attribute("data-tool") == "WindowLevel"
    wl = by_testid(browser, "viewer-wl")
    before, before_wl = canvas_png(browser), (wl.get_attribute("data-width"),
                                              wl.get_attribute("data-center"))
    canvas = by_testid(browser, "viewer-canvas")
    (ActionChains(browser).move_to_element(canvas).click_and_hold()
     .move_by_offset(90, 40).release().perform())
    until(browser, lambda d: (by_testid(d, "viewer-wl").get_attribute("data-width"),
                              by_testid(d, "viewer-wl").get_attribute("data-center"))
          != before_wl, "dragging did not change the window")
    dragged = canvas_png(browser)
    assert np.abs(dragged - before).mean() > 2, "the dragged window did not change the picture"
    presets = Select(by_testid(browser, "viewer-preset"))
    names = [o.get_attribute("value") for o in presets.options]
    assert "lung" in names, names  # dwv's CT presets
    presets.select_by_value("lung")
    until(browser, lambda d: by_testid(d, "viewer-wl").text == "W 1500 / L -500",
          "the lung preset did not set its window")
    assert np.abs(canvas_png(browser) - dragged).mean() > 2
    browser.save_screenshot(str(shots / "10-viewer-lung-window.png"))


def test_zoom_and_reset(browser: WebDriver) -> None:
    by_testid(browser, "tool-zoompan").click()
    zoom = by_testid(browser, "viewer-zoom").text
    canvas = by_testid(browser, "viewer-canvas")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -300).perform()
    until(browser, lambda d: by_testid(d, "viewer-zoom").text != zoom, "the wheel did not zoom")
    by_testid(browser, "viewer-reset").click()
    until(browser, lambda d: by_testid(d, "viewer-zoom").text == zoom, "reset did not unzoom")
    # ...and the window is the image's own again (the previous test left it at lung).
    until(browser, lambda d: by_testid(d, "viewer-wl").text == "W 400 / L 40",
          "reset did not restore the image's window")


def test_multiframe_playback(browser: WebDriver, study: dict, shots: Path) -> None:
    link = next(a for a in by_testid_all(browser, "viewer-series")
                if a.get_attribute("data-series-uid") == study["mr_series"])
    link.click()
    until(browser, lambda d: study["mr_series"] in d.current_url, "no MR viewer")
    loaded(browser)
    frames = int(study["mr"].NumberOfFrames)
    assert position(browser)[:2] == (1, frames)
    by_testid(browser, "viewer-play").click()
    seen = set()
    until(browser, lambda d: seen.add(position(d)[0]) or len(seen) >= 3,
          "playing did not move through the frames")
    by_testid(browser, "viewer-play").click()
    assert by_testid(browser, "viewer").get_attribute("data-playing") == "false"
    browser.save_screenshot(str(shots / "11-viewer-mr.png"))


def test_images_without_geometry_are_a_stack(browser: WebDriver, study: dict) -> None:
    """Radiographs of two sizes: one image at a time, the wheel and keys step through them."""
    link = next(a for a in by_testid_all(browser, "viewer-series")
                if a.get_attribute("data-series-uid") == study["cr_series"])
    link.click()
    until(browser, lambda d: study["cr_series"] in d.current_url, "no CR viewer")
    loaded(browser)
    assert by_testid(browser, "viewer").get_attribute("data-mode") == "stack"
    by_number = {ds.InstanceNumber: uid for uid, ds in study["cr"].items()}
    assert position(browser) == (1, 3, by_number[1])
    canvas = by_testid(browser, "viewer-canvas")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -120).perform()
    until(browser, lambda d: position(d) == (2, 3, by_number[2]), "the wheel did not step")
    loaded(browser)
    canvas.send_keys(Keys.ARROW_DOWN)
    until(browser, lambda d: position(d) == (3, 3, by_number[3]), "the key did not step")
    loaded(browser)
    seen = pixel_under(browser, 30, -20)
    assert seen["sop-instance-uid"] == by_number[3]
    ds = study["cr"][by_number[3]]
    assert float(seen["value"]) == ds.pixel_array[int(seen["row"]), int(seen["column"])]


def test_a_compressed_object_shows_its_decoded_pixels(browser: WebDriver, study: dict) -> None:
    """RLE in the archive: echoes sends it as Explicit VR Little Endian, the values match."""
    rle = study["rle"]
    link = next(a for a in by_testid_all(browser, "viewer-series")
                if a.get_attribute("data-series-uid") == rle.SeriesInstanceUID)
    link.click()
    until(browser, lambda d: rle.SeriesInstanceUID in d.current_url, "no RLE viewer")
    loaded(browser)
    assert position(browser) == (1, 1, rle.SOPInstanceUID)
    for dx, dy in ((0, 0), (-100, 50)):
        seen = pixel_under(browser, dx, dy)
        stored = rle.pixel_array[int(seen["row"]), int(seen["column"])]
        assert float(seen["value"]) == float(stored) * float(rle.get("RescaleSlope", 1)) \
            + float(rle.get("RescaleIntercept", 0)), seen


def test_what_cannot_be_decoded_says_so(
        browser: WebDriver, echoes_server: Server, study: dict) -> None:
    """JPEG Extended 12-bit: echoes cannot convert it, so the retrieve the viewer asks for
    (Explicit VR LE, else as stored) sends it as stored, whole; dwv cannot decode it
    either, and the page says so (it does not stay on 'Loading')."""
    lossy = study["lossy"]
    dicom = 'multipart/related; type="application/dicom"; transfer-syntax='
    answer = requests.get(
        url(echoes_server, f"/dicom-web/studies/{lossy.StudyInstanceUID}/series/"
                           f"{lossy.SeriesInstanceUID}"), auth=("admin", PASSWORD), timeout=30,
        headers={"Accept": f"{dicom}1.2.840.10008.1.2.1, {dicom}*"})
    assert answer.status_code == 200
    message = email.message_from_bytes(
        f"Content-Type: {answer.headers['Content-Type']}\r\n\r\n".encode() + answer.content)
    parts = message.get_payload()
    stored = lossy.file_meta.TransferSyntaxUID
    assert [part["Content-Type"] for part in parts] == [
        f"application/dicom; transfer-syntax={stored}"]
    got = pydicom.dcmread(io.BytesIO(parts[0].get_payload(decode=True)))
    assert got.file_meta.TransferSyntaxUID == stored and got.PixelData == lossy.PixelData
    assert "sent as stored" in echoes_server.config.log_file.read_text(errors="replace")
    link = next(a for a in by_testid_all(browser, "viewer-series")
                if a.get_attribute("data-series-uid") == lossy.SeriesInstanceUID)
    link.click()
    until(browser, lambda d: by_testid(d, "viewer").get_attribute("data-state") == "error",
          "no error shown for an image nobody can decode")
    assert "could not be shown" in by_testid(browser, "viewer-loading").text
    browser.get_log("browser")  # its failed load is expected: not the next test's business


def test_nothing_was_fetched_from_outside_127_0_0_1(
        browser: WebDriver, echoes_server: Server) -> None:
    urls = requested_urls(browser)
    paths = [urlsplit(u).path for u in urls]
    assert any(p.endswith("/vendor/dwv/dwv.min.js") for p in paths), paths
    assert any(p.startswith("/dicom-web/studies/") for p in paths), paths
    outside = [u for u in urls if urlsplit(u).scheme not in ("data", "blob")
               and urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, outside
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not problems, problems  # no CSP refusal, no failed module, no script error


# --- CORS ----------------------------------------------------------------------------------


def raw(server: Server, method: str, path: str, headers: dict[str, str]
         ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.config.http_port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


BASIC = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def test_cors_preflight_and_answers_for_the_named_origin_only(
        echoes_server: Server, study: dict) -> None:
    asked = {"Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization, accept"}
    status, headers, _ = raw(echoes_server, "OPTIONS", "/dicom-web/studies",
                              {"Origin": CORS_ORIGIN, **asked})
    assert status == 204
    assert headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in headers
    status, headers, body = raw(echoes_server, "GET", "/dicom-web/studies",
                                 {"Origin": CORS_ORIGIN, "Authorization": BASIC})
    assert status == 200 and headers["access-control-allow-origin"] == CORS_ORIGIN
    assert study["uid"] in body.decode()
    # Another origin: the preflight is refused, and no answer names it.
    other = "http://evil.example"
    status, headers, _ = raw(echoes_server, "OPTIONS", "/dicom-web/studies",
                              {"Origin": other, **asked})
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers, _ = raw(echoes_server, "GET", "/dicom-web/studies",
                              {"Origin": other, "Authorization": BASIC})
    assert status == 200 and "access-control-allow-origin" not in headers
    # Only /dicom-web: the Browser's own API stays same-origin.
    status, headers, _ = raw(echoes_server, "OPTIONS", "/api/studies",
                              {"Origin": CORS_ORIGIN, **asked})
    assert "access-control-allow-origin" not in headers
    assert "CORS preflight" in echoes_server.config.log_file.read_text(errors="replace")


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>another viewer</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


#: From a page of another origin: QIDO with Basic credentials, as a viewer there would.
_CROSS_ORIGIN_FETCH = """
const [base, auth, done] = arguments;
const headers = {Authorization: auth, Accept: "application/dicom+json"};
fetch(base + "/dicom-web/studies", {headers})
  .then(r => r.json()).then(j => done("ok " + j.length), e => done("refused " + e));
"""


def test_a_page_of_the_named_origin_can_query_and_another_cannot(
        browser: WebDriver, echoes_server: Server, study: dict) -> None:
    servers = [http.server.ThreadingHTTPServer((host, port), _Page)
               for host, port in (("127.0.0.1", CORS_PORT), ("127.0.0.1", free_port()))]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = url(echoes_server, "")
        browser.get(f"http://localhost:{CORS_PORT}/")  # the named origin
        assert browser.execute_async_script(_CROSS_ORIGIN_FETCH, base, BASIC) == "ok 1"
        browser.get(f"http://localhost:{servers[1].server_port}/")  # another port: another origin
        assert browser.execute_async_script(_CROSS_ORIGIN_FETCH, base, BASIC).startswith(
            "refused")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_changed_cors_origin_applies_without_a_restart(echoes_server: Server) -> None:
    """Last: it rewrites the module's config file (the web process re-reads it)."""
    asked = {"Access-Control-Request-Method": "GET"}
    moved = "https://ohif.example.org:3000"
    path = echoes_server.config.path
    path.write_text(path.read_text().replace(CORS_ORIGIN, moved))
    wait_for(lambda: raw(echoes_server, "OPTIONS", "/dicom-web/studies",
                         {"Origin": moved, **asked})[0] == 204, 30,
             "the new dicomweb_cors_origin was not applied")
    status, headers, _ = raw(echoes_server, "OPTIONS", "/dicom-web/studies",
                             {"Origin": CORS_ORIGIN, **asked})
    assert status == 403 and "access-control-allow-origin" not in headers
