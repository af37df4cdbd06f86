"""Routing rules end to end (issue 20): dcmtk storescu senders with their own calling AEs,
dcmtk storescp destinations with rules, counted where storescp writes and in its log.

One echoes for the module: each test sends studies of its own, so the counts
of one test do not see another's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DCMTK_ENV, echoes_cli, make_dataset, stop_server, wait_for, write_part10
from pydicom.uid import generate_uid
from test_forward import Destination, _start_existing, destination, start_with
from test_web import FAST_HASH, Client

STABLE = 3


@pytest.fixture(scope="module")
def routed(tmp_path_factory, dcmtk) -> Iterator[tuple]:
    base = tmp_path_factory.mktemp("routing")
    ctws, fromct1, whole = (destination(base, "CTWS"), destination(base, "FROMCT1"),
                            destination(base, "WHOLE"))
    for dest in (ctws, fromct1, whole):
        dest.start("+xa")
    sections = "".join([
        f"\n[ae:CTWS]\nhost = 127.0.0.1\nport = {ctws.port}\nforward = yes\n"
        "forward_modalities = CT\n",
        f"\n[ae:FROMCT1]\nhost = 127.0.0.1\nport = {fromct1.port}\nforward = yes\n"
        "forward_calling_aes = CT1\n",
        f"\n[ae:WHOLE]\nhost = 127.0.0.1\nport = {whole.port}\nforward = yes\n"
        f"forward_when = study\nstable_study_seconds = {STABLE}\n",
    ])
    server = start_with(base / "home", sections, http_password_hash=FAST_HASH)
    state = {"server": server}
    yield state, ctws, fromct1, whole, base
    stop_server(state["server"])
    for dest in (ctws, fromct1, whole):
        dest.stop()


def files(folder: Path, study: str, modality: str, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    return [write_part10(make_dataset(study=study, series=series, modality=modality),
                         folder / f"{modality}-{generate_uid()}.dcm") for _ in range(count)]


def send(server, calling: str, paths: list[Path]) -> None:
    done = subprocess.run(["storescu", "-aet", calling, "127.0.0.1",
                           str(server.config.store_port), *map(str, paths)],
                          env=DCMTK_ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def of_study(dest: Destination, study: str) -> int:
    """Objects of ``study`` storescp wrote (it names files by SOP Instance UID; the
    study is read from each file)."""
    import pydicom

    return sum(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == study
               for p in dest.received())


def test_modality_and_calling_ae_rules(routed) -> None:
    state, ctws, fromct1, whole, base = routed
    server = state["server"]
    first, second = generate_uid(), generate_uid()
    send(server, "CT1", files(base / "in1", first, "CT", 3) + files(base / "in1", first, "MR", 2))
    send(server, "OTHER", files(base / "in2", second, "CT", 2) + files(base / "in2", second,
                                                                        "US", 1))
    wait_for(lambda: of_study(whole, first) == 5 and of_study(whole, second) == 3, 30,
             "the study destination did not get both studies")
    # Only CT to the CT destination, whoever sent it.
    assert (of_study(ctws, first), of_study(ctws, second)) == (3, 2)
    # Only what CT1 sent to the calling-AE destination, whatever the modality.
    assert (of_study(fromct1, first), of_study(fromct1, second)) == (5, 0)
    listing = json.loads(echoes_cli(server, "queue", "--json").stdout)
    assert listing["CTWS"]["done"] == 5 and listing["FROMCT1"]["done"] == 5


def test_study_goes_in_one_association_once_stable(routed) -> None:
    state, _ctws, _fromct1, whole, base = routed
    server = state["server"]
    wait_for(lambda: not any(j["state"] in ("held", "pending") for j in _jobs(server, "WHOLE")),
             30, "earlier jobs still open")
    before = whole.associations()
    study = generate_uid()
    # Two associations of the sender, 1.5 s apart (longer than the sender's
    # linger: forwarded per instance, these would be two associations out).
    send(server, "CT1", files(base / "in3", study, "CT", 4))
    wait_for(lambda: sum(j["state"] == "held" for j in _jobs(server, "WHOLE")) == 4, 10,
             "the first objects were not held")
    time.sleep(1.5)
    assert of_study(whole, study) == 0  # held, not sent as they came
    send(server, "CT1", files(base / "in3", study, "CT", 3))
    wait_for(lambda: of_study(whole, study) == 7, STABLE + 20, "the study did not arrive")
    assert whole.associations() - before == 1
    # A later arrival of the same study goes the same way: held, then alone.
    send(server, "CT1", files(base / "in4", study, "CT", 1))
    wait_for(lambda: of_study(whole, study) == 8, STABLE + 20, "the late object did not arrive")
    assert whole.associations() - before == 2


def test_held_study_survives_a_restart(routed) -> None:
    state, _ctws, _fromct1, whole, base = routed
    server = state["server"]
    study = generate_uid()
    before = whole.associations()
    send(server, "CT1", files(base / "in5", study, "CT", 3))
    wait_for(lambda: sum(j["state"] == "held" and j["study_instance_uid"] == study
                         for j in _jobs(server, "WHOLE")) == 3, 10, "not held")
    stop_server(server)  # SIGTERM before the study is stable
    assert of_study(whole, study) == 0
    state["server"] = server = _start_existing(server.home)
    wait_for(lambda: of_study(whole, study) == 3, STABLE + 30, "held jobs lost in the restart")
    assert whole.associations() - before == 1


def _jobs(server, title: str) -> list[dict]:
    """The jobs of one destination as the job files say (every state)."""
    outgoing = server.config.spool_dir / "outgoing"
    found = []
    for path in [*outgoing.glob("*.json"), *(outgoing / "done").glob("*.json")]:
        try:
            job = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if job["destination"] == title:
            found.append(job if path.parent == outgoing else {**job, "state": "done"})
    return found


def test_rules_shown_and_edited_in_the_browser(routed) -> None:
    """The forwarding page and its API show the rules, change them in the file (checked
    as the file's keys are), and the running ingester uses them."""
    state, ctws, _fromct1, _whole, base = routed
    server = state["server"]
    wait_for(lambda: _web_up(server), 20, "the Browser did not answer")
    client = Client(server.config.http_port)
    assert client.login().status == 200
    listed = {ae["title"]: ae for ae in client.get("/api/aes").json()["aes"]}
    assert listed["CTWS"]["forward_modalities"] == ["CT"]
    assert listed["FROMCT1"]["forward_calling_aes"] == ["CT1"]
    assert (listed["WHOLE"]["forward_when"], listed["WHOLE"]["stable_study_seconds"]) == (
        "study", STABLE)
    page = client.get("/aes").text
    assert "whole studies, 3 s quiet" in page and 'data-modalities="CT"' in page
    config_text = server.config.path.read_text()
    refused = client.put("/api/aes/CTWS", {"forward_modalities": "CT MRI"})
    assert refused.status == 400 and "forward_modalities" in refused.error \
        and "'MRI'" in refused.error
    assert server.config.path.read_text() == config_text
    changed = client.put("/api/aes/CTWS", {"forward_modalities": ["MR"]})
    assert changed.status == 200, changed.body
    assert "forward_modalities = MR\n" in server.config.path.read_text()
    added = client.post("/api/aes", {"title": "NEWWS", "host": "127.0.0.1", "port": 104,
                                      "forward_when": "study", "stable_study_seconds": 30})
    assert added.status == 201, added.body
    section = server.config.path.read_text().split("[ae:NEWWS]")[1]
    assert "forward_when = study" in section and "stable_study_seconds = 30" in section
    assert "forward_modalities" not in section  # defaults are not written
    assert client.delete("/api/aes/NEWWS").status == 200
    # The ingester now sends only MR to CTWS (it re-reads the file within 2 s).
    time.sleep(2.5)
    study = generate_uid()
    send(server, "CT1", files(base / "in6", study, "CT", 1) + files(base / "in6", study, "MR", 2))
    wait_for(lambda: of_study(ctws, study) == 2, 30, "MR did not reach CTWS")
    time.sleep(1)
    assert of_study(ctws, study) == 2


def _web_up(server) -> bool:
    from helpers import web_ok

    return web_ok(server.config.http_port)
