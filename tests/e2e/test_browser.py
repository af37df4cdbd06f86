"""The Browser end to end: headless Chromium against a running echoes, dcmtk at both ends.

One echoes server (every process, under its supervisor) and two dcmtk
storescp destinations run for the whole module; the tests follow one
person's visit in order: log in, find a study that dcmtk's storescu sent,
open it and see its thumbnails, push it to a storescp and see it arrive,
add an AE to the forwarding list and see the next study forwarded there,
then look at the queue, worklist and health pages.

Chromium and its WebDriver are Debian's ``chromium`` and ``chromium-driver``
(``bin/test`` installs them).  A screenshot of every page is written to
``$ECHOES_SCREENSHOTS`` when set (docs/screenshots holds the ones from the
last run we looked at), else into the test's temporary folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import DCMTK_ENV, TEST_FILES, Server, make_dataset, stop_server, write_part10
from pydicom.uid import RLELossless, generate_uid
from test_forward import Destination, ae_sections, destination, start_with, wait_for

from echoes import config as config_module
from echoes.queue import jobs, open_job_store

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as missing:
    # Not a skip: a suite that passes without running these proves nothing about the pages.
    SELENIUM_MISSING: str | None = (
        f"selenium is not installed ({missing}): run bin/test (or bin/setup --test), "
        "which installs it into .venv")
else:
    SELENIUM_MISSING = None

PASSWORD = "correct horse battery"
#: How long a page may take to show what a test waits for (loaded CI machine).
PATIENCE = 30


def chromium_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or fail saying how to get them."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("chromium and chromium-driver are not installed: run bin/test, "
                    "which installs them")
    return browser, driver


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    """selenium, chromium and chromedriver, checked before any server starts: without one,
    every test here fails naming what to install (never skips)."""
    if SELENIUM_MISSING:
        pytest.fail(SELENIUM_MISSING)
    chromium_paths()


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Destination]]:
    """PUSHDEST (configured, not forwarding) and LATER (added from the Browser)."""
    folder = tmp_path_factory.mktemp("destinations")
    started = {title: destination(folder, title).start() for title in ("PUSHDEST", "LATER")}
    yield started
    for running in started.values():
        running.stop()


@pytest.fixture(scope="module")
def echoes_server(tmp_path_factory: pytest.TempPathFactory,
                  destinations: dict[str, Destination]) -> Iterator[Server]:
    """echoes with PUSHDEST in its AE map, a Browser password, a worklist for today."""
    home = tmp_path_factory.mktemp("browser") / "home"
    sections = ("\n; the RIS team's PACS test node: keep this comment\n"
                + ae_sections(destinations["PUSHDEST"], forward=False))
    running = start_with(home, sections)
    set_password = subprocess.run(
        [sys.executable, "-m", "echoes", "--config", str(running.config.path), "passwd"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert set_password.returncode == 0, set_password.stderr
    write_worklist(running.config.worklist_dir)
    wait_for(lambda: bool(running.children("web")), PATIENCE, "no web process")
    yield running
    stop_server(running)


def write_worklist(folder: Path) -> None:
    """Two steps scheduled today on two stations, and one broken file."""
    today = date.today().strftime("%Y%m%d")
    for number, (station, name) in enumerate((("CT01", "WORK^ANNA"), ("MR01", "WORK^BEN"))):
        step = {"PatientName": name, "PatientID": f"W{number}", "AccessionNumber": f"ACC{number}",
                "RequestedProcedureDescription": "Chest",
                "ScheduledProcedureStepSequence": [{
                    "Modality": station[:2], "ScheduledStationAETitle": station,
                    "ScheduledProcedureStepStartDate": today,
                    "ScheduledProcedureStepStartTime": f"{9 + number:02d}0000",
                    "ScheduledProcedureStepDescription": "Chest"}]}
        (folder / f"step{number}.json").write_text(json.dumps(step))
    (folder / "broken.json").write_text('{"PatientName": "HALF^WRITTEN", ')


def ct_study(folder: Path, patient: str, patient_id: str, images: int = 3) -> list[Path]:
    """A CT series with a visible pattern plus an RLE MR series, as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    series = generate_uid()
    files = []
    y, x = np.mgrid[0:128, 0:128]
    for number in range(images):
        ds = make_dataset("1.2.840.10008.5.1.4.1.1.2", study=study, series=series, rows=128,
                          patient_id=patient_id, modality="CT")
        ds.PatientName = patient
        ds.AccessionNumber = f"A{patient_id}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number + 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        disc = ((y - 64) ** 2 + (x - 64) ** 2 < (20 + 10 * number) ** 2) * 1000
        ds.PixelData = (np.uint16(1024) + (x * 4).astype(np.uint16)
                        + disc.astype(np.uint16)).astype("<u2").tobytes()
        files.append(write_part10(ds, folder / f"ct{number}.dcm"))
    mr = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")
    mr.StudyInstanceUID, mr.SeriesInstanceUID = study, generate_uid()
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mr.PatientName, mr.PatientID, mr.SeriesNumber = patient, patient_id, 2
    mr.AccessionNumber = f"A{patient_id}"
    mr.save_as(folder / "mr.dcm", enforce_file_format=True)
    files.append(folder / "mr.dcm")
    return files


def storescu(port: int, files: list[Path]) -> None:
    """dcmtk storescu: the uncompressed files over one association, RLE ones (-xr) over another."""
    rle = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True)
           .file_meta.TransferSyntaxUID == RLELossless]
    for group, flags in (([f for f in files if f not in rle], []), (rle, ["-xr"])):
        if not group:
            continue
        done = subprocess.run(["storescu", "-R", *flags, "-aec", "ECHOES", "127.0.0.1",
                               str(port), *map(str, group)], env=DCMTK_ENV,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def first_study(echoes_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Study 1 (four objects) sent with storescu and indexed."""
    files = ct_study(tmp_path_factory.mktemp("study1"), "BROWSER^ALICE", "B100")
    storescu(echoes_server.port, files)
    echoes_server.wait_ingested(len(files))
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    return {"uid": uid, "count": len(files)}


def headless_chromium(window: str = "1280,1000", logs: bool = False) -> WebDriver:
    """Headless Chromium through Debian's chromedriver (no network, no download);
    ``logs``: its network and console logs on (what the page fetched, and from where)."""
    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={window}", "--disable-gpu"):
        options.add_argument(argument)
    if logs:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    return driver


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = headless_chromium()
    yield driver
    driver.quit()


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.config.http_port}{path}"


#: What Chromium says, as a plain WebDriverException, when an element found a
#: moment ago was replaced by the page's next render: stale, try again.
DETACHED = "does not belong to the document"


def until(driver: WebDriver, condition, message: str, timeout: float = PATIENCE):
    """Wait for ``condition(driver)`` to be truthy; fail with ``message`` and the page text.

    An element replaced between finding it and reading it (stale, or Chromium's
    "Node ... does not belong to the document" after a re-render: seen once in
    a full suite run, test_browser_retention) is looked for again, not a failure.
    """
    def settled(current: WebDriver):
        try:
            return condition(current)
        except WebDriverException as exc:
            if DETACHED in str(exc):
                return False
            raise

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,
                                                 NoSuchElementException)).until(settled)
    except Exception as exc:  # selenium's TimeoutException: say what was on the page
        text = driver.find_element(By.TAG_NAME, "body").text[:1500]
        raise AssertionError(f"{message}\n--- page text ---\n{text}") from exc


def by_testid(driver: WebDriver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def by_testid_all(driver: WebDriver, name: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def shoot(driver: WebDriver, shots: Path, name: str) -> None:
    """Screenshot of the whole page (height fitted to the content)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 2400)))
    driver.save_screenshot(str(shots / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def log_in(driver: WebDriver, server: Server, password: str) -> None:
    by_testid(driver, "login-user").clear()
    by_testid(driver, "login-user").send_keys("admin")
    by_testid(driver, "login-password").clear()
    by_testid(driver, "login-password").send_keys(password)
    by_testid(driver, "login-submit").click()


# --- the visit, in order ---------------------------------------------------------------


def test_every_page_needs_a_login_and_a_wrong_password_is_refused(
        browser: WebDriver, echoes_server: Server, shots: Path) -> None:
    browser.get(url(echoes_server, "/queue"))
    until(browser, lambda d: "/login" in d.current_url, "no redirect to the login page")
    shoot(browser, shots, "01-login")
    log_in(browser, echoes_server, "not the password")
    until(browser, lambda d: by_testid_all(d, "login-message")
          and by_testid(d, "login-message").text, "no message after a wrong password")
    assert "/login" in browser.current_url


def test_log_in_and_find_the_study_by_wildcard_name(
        browser: WebDriver, echoes_server: Server, first_study: dict, shots: Path) -> None:
    browser.get(url(echoes_server, "/login"))
    log_in(browser, echoes_server, PASSWORD)
    until(browser, lambda d: "/login" not in d.current_url, "login did not leave the login page")
    browser.get(url(echoes_server, "/"))
    by_testid(browser, "search-patient-name").send_keys("browser^al*")
    by_testid(browser, "search-submit").click()
    found = until(browser, lambda d: "patient_name=" in d.current_url and [
        row.get_attribute("data-study-uid") for row in by_testid_all(d, "study-row")],
        "no study found by name")
    assert found == [first_study["uid"]]
    shoot(browser, shots, "02-studies")


def test_open_the_study_and_see_a_thumbnail_per_series(
        browser: WebDriver, echoes_server: Server, first_study: dict, shots: Path) -> None:
    by_testid(browser, "study-link").click()
    until(browser, lambda d: by_testid_all(d, "series-card"), "study page without series")
    cards = by_testid_all(browser, "series-card")
    assert len(cards) == 2
    counts = sorted(card.find_element(By.CSS_SELECTOR, '[data-testid="series-count"]').text
                    for card in cards)
    assert counts == ["1 image", "3 images"]
    # Each thumbnail loaded and shows an image, not a flat placeholder: many grey levels.
    levels = until(browser, lambda d: d.execute_script(_THUMBNAIL_LEVELS),
                   "thumbnails did not load")
    assert len(levels) == 2 and min(levels) > 20, levels
    shoot(browser, shots, "03-study")


#: For every thumbnail <img>: how many distinct grey levels it shows (null until loaded).
_THUMBNAIL_LEVELS = """
const images = [...document.querySelectorAll('[data-testid="series-thumbnail"]')];
if (!images.length || images.some(i => !i.complete || i.naturalWidth === 0)) return null;
return images.map(image => {
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4) seen.add(data[i]);
  return seen.size;
});
"""


def test_push_the_study_and_see_it_arrive(
        browser: WebDriver, echoes_server: Server, first_study: dict,
        destinations: dict[str, Destination], shots: Path) -> None:
    Select(by_testid(browser, "push-ae")).select_by_value("PUSHDEST")
    by_testid(browser, "push-button").click()
    def progress(driver: WebDriver) -> tuple[str, str] | None:
        row = next((r for r in by_testid_all(driver, "progress-row")
                    if r.get_attribute("data-destination") == "PUSHDEST"), None)
        if row is None:
            return None
        cell = row.find_element
        return (cell(By.CSS_SELECTOR, '[data-testid="progress-state"]').text,
                cell(By.CSS_SELECTOR, '[data-testid="progress-done"]').text)

    until(browser, progress, "no push progress shown")
    until(browser, lambda d: progress(d) == ("done", str(first_study["count"])),
          "push progress never said done")
    wait_for(lambda: len(destinations["PUSHDEST"].received()) == first_study["count"],
             PATIENCE, "pushed objects did not arrive at storescp")
    shoot(browser, shots, "04-study-pushed")


def test_add_an_ae_to_the_forwarding_list_and_the_next_study_goes_there(
        browser: WebDriver, echoes_server: Server, first_study: dict,
        destinations: dict[str, Destination], shots: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    later = destinations["LATER"]
    browser.get(url(echoes_server, "/aes"))
    by_testid(browser, "ae-form-title").send_keys("LATER")
    by_testid(browser, "ae-form-host").send_keys("127.0.0.1")
    port = by_testid(browser, "ae-form-port")
    port.clear()
    port.send_keys(str(later.port))
    by_testid(browser, "ae-form-forward").click()
    by_testid(browser, "ae-save").click()

    def later_row(driver: WebDriver):
        return next((r for r in by_testid_all(driver, "ae-row")
                     if r.get_attribute("data-title") == "LATER"), None)

    row = until(browser, later_row, "the new AE is not listed")
    assert row.get_attribute("data-forward") == "true"
    until(browser, lambda d: later_row(d).find_element(
        By.CSS_SELECTOR, '[data-testid="ae-echo"]').click() or True, "cannot press C-ECHO")
    until(browser, lambda d: "ok" in later_row(d).find_element(
        By.CSS_SELECTOR, '[data-testid="ae-echo-result"]').text.lower(),
          "C-ECHO to the new AE did not say ok")
    shoot(browser, shots, "05-forwarding")

    text = echoes_server.config.path.read_text()
    assert "; the RIS team's PACS test node: keep this comment" in text
    assert config_module.load(echoes_server.config.path).remote_aes["LATER"].forward

    files = ct_study(tmp_path_factory.mktemp("study2"), "BROWSER^BOB", "B200", images=2)
    storescu(echoes_server.port, files)
    wait_for(lambda: len(later.received()) == len(files), PATIENCE,
             "the next study was not forwarded to the AE added in the Browser")
    assert len(destinations["PUSHDEST"].received()) == first_study["count"]  # forward = no


def test_queue_page_shows_a_stuck_push_with_retry_and_cancel(
        browser: WebDriver, echoes_server: Server, first_study: dict,
        destinations: dict[str, Destination], shots: Path) -> None:
    pushdest = destinations["PUSHDEST"]
    pushdest.stop()
    associations = pushdest.associations()
    browser.get(url(echoes_server, f"/studies/{first_study['uid']}"))
    Select(by_testid(browser, "push-ae")).select_by_value("PUSHDEST")
    by_testid(browser, "push-button").click()
    until(browser, lambda d: "Queued" in by_testid(d, "message").text, "push not queued")

    browser.get(url(echoes_server, "/queue"))

    def job_rows(driver: WebDriver, state: str) -> list:
        return [row for row in by_testid_all(driver, "job-row")
                if row.get_attribute("data-state") == state]

    stuck = until(browser, lambda d: len(job_rows(d, "retrying")) == first_study["count"]
                  and job_rows(d, "retrying"), "the stuck jobs are not listed as retrying")
    assert "refused" in stuck[0].text.lower()  # the last error says why
    shoot(browser, shots, "06-queue")

    cancelled_id = stuck[0].get_attribute("data-job-id")
    stuck[0].find_element(By.CSS_SELECTOR, '[data-testid="job-cancel"]').click()
    until(browser, lambda d: cancelled_id not in {
        r.get_attribute("data-job-id") for r in job_rows(d, "retrying")}, "cancel did not work")
    Select(by_testid(browser, "queue-state")).select_by_value("cancelled")
    row = until(browser, lambda d: job_rows(d, "cancelled"), "no cancelled job listed")[0]
    assert row.get_attribute("data-job-id") == cancelled_id
    row.find_element(By.CSS_SELECTOR, '[data-testid="job-retry"]').click()
    until(browser, lambda d: not job_rows(d, "cancelled"), "retry did not requeue the job")

    pushdest.start()
    Select(by_testid(browser, "queue-state")).select_by_value("")

    def open_counts(driver: WebDriver) -> dict[str, str]:
        row = next(r for r in by_testid_all(driver, "queue-destination-row")
                   if r.get_attribute("data-destination") == "PUSHDEST")
        return {cell.get_attribute("data-state"): cell.text
                for cell in row.find_elements(By.CSS_SELECTOR, "[data-state]")}

    until(browser, lambda d: (c := open_counts(d)).get("done") == str(first_study["count"])
          and all(c.get(s) == "0" for s in ("pending", "retrying", "failed", "cancelled")),
          "the push did not complete once the destination was back", timeout=60)
    assert pushdest.associations() > associations


def test_study_list_shows_arrival_and_sorts_by_it(
        browser: WebDriver, echoes_server: Server, first_study: dict) -> None:
    """BOB's study (the forwarding test's) arrived after ALICE's: listed first by default."""
    browser.get(url(echoes_server, "/"))

    def names(driver: WebDriver) -> list[str]:
        return [row.find_element(By.CSS_SELECTOR, '[data-testid="study-link"]').text
                for row in by_testid_all(driver, "study-row")]

    assert names(browser) == ["BROWSER, BOB", "BROWSER, ALICE"]
    received = [cell.text for cell in by_testid_all(browser, "study-received")]
    assert all(len(text) == len("2026-11-29 10:00") for text in received), received
    by_testid(browser, "sort-received").click()
    until(browser, lambda d: "order=asc" in d.current_url
          and names(d) == ["BROWSER, ALICE", "BROWSER, BOB"], "the arrival sort did not turn")


def test_queue_retries_all_failed_and_shows_deliveries(
        browser: WebDriver, echoes_server: Server, first_study: dict,
        destinations: dict[str, Destination]) -> None:
    """Failed jobs of study 1 for PUSHDEST (running again): one click sends them all."""
    store = open_job_store(echoes_server.config)
    sent = [job for job in store.all() if job.destination == "PUSHDEST"
            and job.study_instance_uid == first_study["uid"]]
    assert len(sent) == first_study["count"] and {job.state for job in sent} == {"done"}
    requests = destinations["PUSHDEST"].store_requests()
    store.write_many(jobs.refused(job, "0xA900 data set does not match (made by the test)",
                                  job.updated) for job in sent)
    browser.get(url(echoes_server, "/queue?state=failed"))
    assert Select(by_testid(browser, "queue-state")).first_selected_option.text == "failed"

    def job_rows(driver: WebDriver, state: str) -> list:
        return [row for row in by_testid_all(driver, "job-row")
                if row.get_attribute("data-state") == state]

    failed = until(browser, lambda d: len(job_rows(d, "failed")) == first_study["count"]
                   and job_rows(d, "failed"), "the failed jobs are not listed")
    assert {row.get_attribute("data-state") for row in by_testid_all(browser, "job-row")} == {
        "failed"}
    study = failed[0].find_element(By.CSS_SELECTOR, '[data-testid="job-study"]')
    assert study.text == "BROWSER, ALICE"
    details = failed[0].find_element(By.CSS_SELECTOR, '[data-testid="job-study-details"]').text
    assert details == "ID B100 · Acc. AB100"
    button = until(browser, lambda d: by_testid(d, "queue-retry-failed").is_enabled()
                   and by_testid(d, "queue-retry-failed"), "Retry all failed is not enabled")
    assert button.text == f"Retry {first_study['count']} failed"
    button.click()
    until(browser, lambda d: "queued again" in by_testid(d, "message").text,
          "retry all failed said nothing")
    wait_for(lambda: all(store.read(job.id).state == "done" for job in sent)
             and destinations["PUSHDEST"].store_requests() >= requests + len(sent),
             PATIENCE, "the retried jobs were not sent again")
    Select(by_testid(browser, "queue-state")).select_by_value("done")
    until(browser, lambda d: d.current_url.endswith("/queue?state=done"),
          "the URL does not follow the filter")
    done = until(browser, lambda d: len(job_rows(d, "done")) >= first_study["count"]
                 and job_rows(d, "done"), "no done jobs listed")
    times = [row.find_element(By.CSS_SELECTOR, '[data-testid="job-time"]').text for row in done]
    assert all(text.startswith("delivered ") and len(text) > len("delivered –")
               for text in times), times
    assert not by_testid(browser, "queue-retry-failed").is_enabled()


def test_worklist_page_shows_today_by_station_and_the_broken_file(
        browser: WebDriver, echoes_server: Server, shots: Path) -> None:
    browser.get(url(echoes_server, "/worklist"))
    until(browser, lambda d: len(by_testid_all(d, "worklist-step")) == 2, "today's steps not shown")
    stations = " ".join(s.text for s in by_testid_all(browser, "worklist-station"))
    assert "CT01" in stations and "MR01" in stations
    invalid = by_testid_all(browser, "invalid-file")
    assert len(invalid) == 1 and "broken.json" in invalid[0].text
    shoot(browser, shots, "07-worklist")


def test_health_page_shows_every_process_running(
        browser: WebDriver, echoes_server: Server, shots: Path) -> None:
    browser.get(url(echoes_server, "/health"))
    processes = until(browser, lambda d: by_testid_all(d, "health-process"), "no processes listed")
    text = " ".join(p.text for p in processes)
    for role in ("supervisor", "store", "mwl", "ingester", "sender", "web"):
        assert role in text
    assert by_testid(browser, "health-studies").text.strip() == "2"
    shoot(browser, shots, "08-health")


def test_log_out_ends_the_session(browser: WebDriver, echoes_server: Server) -> None:
    by_testid(browser, "logout-button").click()
    until(browser, lambda d: "/login" in d.current_url, "log out did not show the login page")
    browser.get(url(echoes_server, "/"))
    until(browser, lambda d: "/login" in d.current_url, "a page was served after log out")
