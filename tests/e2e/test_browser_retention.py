"""The Browser in Chromium (issue 20): the Delete button asks first, and the forwarding
page's form edits an AE's routing rules.  Helpers and the Chromium fixture are
test_browser's."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DCMTK_ENV, Server, make_dataset, stop_server, write_part10
from pydicom.uid import generate_uid
from test_browser import browser, by_testid, log_in, prerequisites, until, url  # noqa: F401
from test_forward import start_with, wait_for
from test_web import FAST_HASH, PASSWORD

from echoes import config as config_module


@pytest.fixture(scope="module")
def server(tmp_path_factory, dcmtk) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("browser-retention") / "home"
    running = start_with(home, "\n[ae:PACS]\nhost = 127.0.0.1\nport = 104\nforward = no\n",
                         http_password_hash=FAST_HASH)
    wait_for(lambda: bool(running.children("web")), 30, "no web process")
    yield running
    stop_server(running)


def test_delete_asks_first_then_deletes(browser, server: Server, tmp_path: Path) -> None:  # noqa: F811
    study = generate_uid()
    path = write_part10(make_dataset(study=study, modality="CT"), tmp_path / "a.dcm")
    subprocess.run(["storescu", "127.0.0.1", str(server.port), str(path)], env=DCMTK_ENV,
                   check=True, capture_output=True)
    server.wait_ingested(1)
    browser.get(url(server, "/login"))
    log_in(browser, server, PASSWORD)
    until(browser, lambda d: "/login" not in d.current_url, "login failed")
    browser.get(url(server, f"/studies/{study}"))
    by_testid(browser, "delete-study").click()
    until(browser, lambda d: d.switch_to.alert, "no confirmation asked").dismiss()
    time.sleep(1)
    assert study in {s["StudyInstanceUID"] for s in server.studies()}  # said no: kept
    by_testid(browser, "delete-study").click()
    until(browser, lambda d: d.switch_to.alert, "no confirmation asked").accept()
    until(browser, lambda d: "/studies/" not in d.current_url, "not back on the study list")
    assert study not in {s["StudyInstanceUID"] for s in server.studies()}
    assert not (server.config.archive_dir / study).exists()


def test_forwarding_form_edits_the_rules(browser, server: Server) -> None:  # noqa: F811
    browser.get(url(server, "/aes"))
    until(browser, lambda d: by_testid(d, "ae-edit"), "no AE row").click()
    by_testid(browser, "ae-form-modalities").send_keys("CT MR")
    by_testid(browser, "ae-form-calling").send_keys("CT1")
    by_testid(browser, "ae-form-study").click()
    stable = by_testid(browser, "ae-form-stable")
    stable.clear()
    stable.send_keys("120")
    by_testid(browser, "ae-save").click()
    until(browser, lambda d: "whole studies, 120 s quiet" in by_testid(d, "ae-rules").text,
          "the rules are not shown after saving")
    remote = config_module.load(server.config.path).remote_aes["PACS"]
    assert (remote.forward_modalities, remote.forward_calling_aes, remote.forward_when,
            remote.stable_study_seconds) == (("CT", "MR"), ("CT1",), "study", 120)
