"""The modality workflow end to end (issue 20 part 1): MPPS on the MWL port and
Storage Commitment on the store port, with pynetdicom as the modality and dcmtk
``findscu -W`` as the worklist client.

One server for the module.  MPPS: a modality creates a step IN PROGRESS, sets
it COMPLETED, and the worklist item it performed is no longer offered;
refusals (missing attributes, unknown or final instance, second create)
answer the standard's status and leave the files as they were.

Storage Commitment: the modality stores, asks for commitment (N-ACTION) and
gets the N-EVENT-REPORT on its own association (its EVT_N_EVENT_REPORT
handler), or, when it released first, on a new association echoes opens to
its [ae:] (a pynetdicom SCP accepting echoes in the SCP role), retried until
that SCP is up.  UIDs never received and a wrong SOP class are failed items
(0x0112); an unknown requester that left is logged as undeliverable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from helpers import DCMTK_ENV, Server, free_port, make_dataset, start_server, stop_server
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from werkzeug.security import generate_password_hash

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PASSWORD = "workflow"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
#: The modality's own SCP for reports on a new association ([ae:CTSCP]).
MODALITY_SCP_PORT = free_port()
STUDY_1 = "1.2.826.0.1.3680043.10.20.1"
STUDY_2 = "1.2.826.0.1.3680043.10.20.2"


def worklist_item(patient_id: str, study: str, accession: str, step_id: str) -> dict:
    return {"PatientID": patient_id, "PatientName": f"TEST^{patient_id}",
            "StudyInstanceUID": study, "AccessionNumber": accession,
            "ScheduledProcedureStepSequence": [{
                "Modality": "CT", "ScheduledStationAETitle": "CT01",
                "ScheduledProcedureStepStartDate": "20261204",
                "ScheduledProcedureStepID": step_id}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("workflow") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    for item in (worklist_item("W1", STUDY_1, "ACC1", "SPS1"),
                 worklist_item("W2", STUDY_2, "ACC2", "SPS2"),
                 worklist_item("W3", "1.2.826.0.1.3680043.10.20.3", "ACC3", "SPS3")):
        (folder / f"{item['PatientID']}.json").write_text(json.dumps(item))
    sections = f"[ae:CTSCP]\nhost = 127.0.0.1\nport = {MODALITY_SCP_PORT}\n"
    running = start_server(home, sections, store_workers=2, retry_interval=1,
                           http_password_hash=FAST_HASH)
    yield running
    stop_server(running)


def findscu_patients(server: Server, out: Path) -> set[str]:
    """The PatientIDs ``findscu -W`` is offered (a universal query)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    argv = ["findscu", "-W", "-X", "-od", str(out), "-k", "PatientID",
            "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
            "127.0.0.1", str(server.config.mwl_port)]
    done = subprocess.run(argv, env=DCMTK_ENV, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return {str(pydicom.dcmread(path).PatientID) for path in out.glob("rsp*.dcm")}


def mpps_create(study: str = STUDY_1, accession: str = "ACC1", step_id: str = "SPS1",
                status: str | None = "IN PROGRESS") -> Dataset:
    """An N-CREATE attribute list as a modality sends it (PS3.4 Table F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    step = Dataset()
    step.StudyInstanceUID = study
    step.AccessionNumber = accession
    step.ScheduledProcedureStepID = step_id
    step.RequestedProcedureID = "RP1"
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = "TEST^W1"
    ds.PatientID = "W1"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PerformedProcedureStepID = "PPS-" + step_id
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261204"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.Modality = "CT"
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    ds.PerformedSeriesSequence = []
    return ds


def mpps_final(status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261204"
    ds.PerformedProcedureStepEndTime = "103000"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.20.99"
    series.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


class Modality:
    """A pynetdicom association to the MWL port proposing MPPS.

    Statuses are read from the responses as received (EVT_DIMSE_RECV), not
    from what ``send_n_*`` returns: pynetdicom's reactor thread can take a
    response off its queue before ``send_n_*`` looks (it reads its own pause
    flag stale: set before it waits, cleared after), logs "Received unexpected
    N-SET service message" and drops it, and ``send_n_*`` then waits out the
    DIMSE timeout with no status (a CI run at 99044b7; echoes had answered).
    The response was received all the same, and fired the event.
    """

    #: How long ``send_n_*`` waits when pynetdicom's reactor took the response.
    DIMSE_TIMEOUT = 5

    def __init__(self, server: Server) -> None:
        ae = AE(ae_title="CT01")
        ae.add_requested_context(MPPS)
        ae.dimse_timeout = self.DIMSE_TIMEOUT
        #: The command sets of the responses, in order.
        self.responses: list[Dataset] = []
        self.assoc = ae.associate("127.0.0.1", server.config.mwl_port, ae_title="ECHOES",
                                  evt_handlers=[(evt.EVT_DIMSE_RECV, self._received)])
        assert self.assoc.is_established

    def _received(self, event: evt.Event) -> None:
        self.responses.append(event.message.command_set)

    def _response(self, before: int) -> Dataset:
        """The one response received since ``before`` responses."""
        assert len(self.responses) == before + 1, "no response (or more than one)"
        return self.responses[before]

    def create(self, ds: Dataset, uid: str | None) -> tuple[int, str]:
        """N-CREATE: (status, the Affected SOP Instance UID of the response)."""
        before = len(self.responses)
        self.assoc.send_n_create(ds, MPPS, uid)
        answered = self._response(before)
        return int(answered.Status), str(answered.get("AffectedSOPInstanceUID", ""))

    def set(self, ds: Dataset, uid: str) -> int:
        before = len(self.responses)
        self.assoc.send_n_set(ds, MPPS, uid)
        return int(self._response(before).Status)

    def close(self) -> None:
        self.assoc.release()


def files(server: Server) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in server.config.mpps_dir.glob("*.json")}


def test_mpps_completed_hides_the_worklist_item(server: Server, tmp_path: Path,
                                               dcmtk: None) -> None:
    assert findscu_patients(server, tmp_path / "before") >= {"W1", "W2", "W3"}
    modality = Modality(server)
    uid = generate_uid()
    try:
        assert modality.create(mpps_create(), uid) == (0, uid)
        stored = json.loads((server.config.mpps_dir / f"{uid}.json").read_text())
        assert stored["00400252"]["Value"] == ["IN PROGRESS"]
        assert stored["00400270"]["Value"][0]["00400009"]["Value"] == ["SPS1"]
        # in progress: still offered
        assert "W1" in findscu_patients(server, tmp_path / "during")
        assert modality.set(mpps_final(), uid) == 0
    finally:
        modality.close()
    stored = json.loads((server.config.mpps_dir / f"{uid}.json").read_text())
    assert stored["00400252"]["Value"] == ["COMPLETED"]
    assert stored["00400251"]["Value"] == ["103000"]  # End Time merged in
    assert stored["00400244"]["Value"] == ["20261204"]  # the N-CREATE's attributes kept
    assert stored["00400340"]["Value"][0]["0020000E"]["Value"] == [
        "1.2.826.0.1.3680043.10.20.99"]
    assert stored["00080018"]["Value"] == [uid]
    after = findscu_patients(server, tmp_path / "after")
    assert "W1" not in after
    assert {"W2", "W3"} <= after
    # the Browser still lists the step, with its MPPS state
    browser = requests.Session()
    base = f"http://127.0.0.1:{server.config.http_port}"
    assert browser.post(f"{base}/api/login", json={"user": "admin", "password": PASSWORD},
                        timeout=10).ok
    day = browser.get(f"{base}/api/worklist", params={"date": "20261204"}, timeout=10).json()
    states = {step["patient_id"]: step["mpps"] for station in day["stations"]
              for step in station["steps"]}
    assert states["W1"] == "COMPLETED"
    assert states["W3"] == ""
    page = browser.get(f"{base}/worklist", params={"date": "2026-12-04"}, timeout=10).text
    assert 'data-testid="worklist-mpps">COMPLETED<' in page


def test_worklist_hide_performed_no_offers_performed_steps_again(
        server: Server, tmp_path: Path, dcmtk: None) -> None:
    """Runs after the test above (W1 performed): a SIGHUP with the key off offers it."""
    path = server.config.path
    original = path.read_text()

    def offered_within(expected: bool, out: Path) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if ("W1" in findscu_patients(server, out)) == expected:
                return True
            time.sleep(0.3)
        return False

    try:
        assert "W1" not in findscu_patients(server, tmp_path / "a")
        path.write_text(original.replace("[echoes]\n", "[echoes]\nworklist_hide_performed = no\n"))
        server.process.send_signal(signal.SIGHUP)
        assert offered_within(True, tmp_path / "b")
    finally:
        path.write_text(original)
        server.process.send_signal(signal.SIGHUP)
    assert offered_within(False, tmp_path / "c")


def test_mpps_scp_chooses_the_uid_and_discontinued_hides_by_accession(
        server: Server, tmp_path: Path, dcmtk: None) -> None:
    modality = Modality(server)
    try:
        # no Affected SOP Instance UID: the SCP chooses one and names it
        status, uid = modality.create(mpps_create(study="9.9.9", accession="ACC2",
                                                  step_id="SPS2"), None)
        assert status == 0 and uid
        assert (server.config.mpps_dir / f"{uid}.json").exists()
        assert modality.set(mpps_final("DISCONTINUED"), uid) == 0
    finally:
        modality.close()
    assert "W2" not in findscu_patients(server, tmp_path / "after")


def test_a_removed_mpps_file_unhides_its_step_on_sighup(server: Server, tmp_path: Path,
                                                       dcmtk: None) -> None:
    """Runs after the test above (W2 discontinued): the RIS removes the file."""
    assert "W2" not in findscu_patients(server, tmp_path / "before")
    [performed_w2] = [path for path in server.config.mpps_dir.glob("*.json")
                      if '"SPS2"' in path.read_text()]
    performed_w2.unlink()
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "W2" not in findscu_patients(server, tmp_path / "after"):
        assert time.monotonic() < deadline, "W2 still hidden after SIGHUP"
        time.sleep(0.3)


def test_unscheduled_mpps_hides_nothing(server: Server, tmp_path: Path, dcmtk: None) -> None:
    modality = Modality(server)
    uid = generate_uid()
    try:
        assert modality.create(mpps_create(study="1.2.826.0.1.3680043.10.20.3",
                                           accession="", step_id=""), uid)[0] == 0
        assert modality.set(mpps_final(), uid) == 0
    finally:
        modality.close()
    assert "W3" in findscu_patients(server, tmp_path / "after")


def test_mpps_refusals_change_no_file(server: Server) -> None:
    modality = Modality(server)
    try:
        uid = generate_uid()
        assert modality.create(mpps_create(step_id="X1"), uid)[0] == 0
        before = files(server)
        missing = mpps_create(step_id="X2")
        del missing.Modality
        assert modality.create(missing, generate_uid())[0] == 0x0120
        assert modality.create(mpps_create(step_id="X3", status=None), generate_uid())[0] == 0x0120
        assert modality.create(mpps_create(step_id="X4", status="COMPLETED"),
                               generate_uid())[0] == 0x0106
        assert modality.create(mpps_create(step_id="X1"), uid)[0] == 0x0111
        assert modality.set(mpps_final(), generate_uid()) == 0x0112
        assert files(server) == before
        assert modality.set(mpps_final("DISCONTINUED"), uid) == 0
        final = files(server)
        assert modality.set(mpps_final("COMPLETED"), uid) == 0x0110
        in_progress = Dataset()
        in_progress.PerformedProcedureStepStatus = "IN PROGRESS"
        assert modality.set(in_progress, uid) == 0x0110
        assert files(server) == final
    finally:
        modality.close()


# -- Storage Commitment --------------------------------------------------------------


def store(server: Server, calling_ae: str, count: int, sop_class: str = CT) -> list[Dataset]:
    """C-STORE ``count`` small objects; they are acknowledged, not yet indexed."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")
    assert assoc.is_established
    sent = []
    for _ in range(count):
        ds = make_dataset(sop_class, modality="CT")
        assert assoc.send_c_store(ds).Status == 0
        sent.append(ds)
    assoc.release()
    return sent


def action_data(transaction: str, items: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    refs = []
    for sop_class, uid in items:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    ds.ReferencedSOPSequence = refs
    return ds


class Reports:
    """N-EVENT-REPORTs a pynetdicom handler received: (event type, event information)."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Dataset, str]] = []
        self.arrived = threading.Event()

    def handler(self, event: evt.Event) -> tuple[int, None]:
        info = event.event_information  # decoded by pynetdicom
        self.got.append((int(event.event_type), info, event.assoc.requestor.ae_title
                         if event.assoc.is_acceptor else "same association"))
        self.arrived.set()
        return 0x0000, None

    def wait(self, timeout: float = 30) -> tuple[int, Dataset, str]:
        assert self.arrived.wait(timeout), "no N-EVENT-REPORT"
        return self.got[-1]


def wait_gone(path: Path, timeout: float = 10) -> bool:
    """Whether ``path`` is removed within ``timeout`` (a delivered report's request:
    removed once the modality's N-EVENT-REPORT-RSP came back)."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def uids(sequence: object) -> set[tuple[str, str]]:
    return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in sequence or []}  # type: ignore[attr-defined]


def ask_commitment(server: Server, calling_ae: str, items: list[tuple[str, str]],
                   reports: Reports | None, transaction: str | None = None
                   ) -> tuple[int, object]:
    """N-ACTION; with ``reports`` the association stays open until the report came."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(COMMITMENT)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)] if reports else []
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES", evt_handlers=handlers)
    assert assoc.is_established
    status, _reply = assoc.send_n_action(action_data(transaction or generate_uid(), items),
                                         1, COMMITMENT, COMMITMENT_INSTANCE)
    if reports is not None and int(status.Status) == 0:
        reports.wait()
    assoc.release()
    return int(status.Status), status


def test_commitment_report_on_the_same_association(server: Server) -> None:
    sent = store(server, "CTSCU", 3)
    stored_mr = store(server, "CTSCU", 1)[0]  # stored as CT, asked for as MR below
    never = generate_uid()
    items = [(CT, ds.SOPInstanceUID) for ds in sent] + [
        (CT, never), (MR, stored_mr.SOPInstanceUID)]
    transaction = generate_uid()
    reports = Reports()
    status, _ = ask_commitment(server, "CTSCU", items, reports, transaction)
    assert status == 0
    event_type, info, where = reports.wait()
    assert where == "same association"
    assert event_type == 2
    assert str(info.TransactionUID) == transaction
    assert uids(info.ReferencedSOPSequence) == {(CT, ds.SOPInstanceUID) for ds in sent}
    assert uids(info.FailedSOPSequence) == {(CT, never), (MR, stored_mr.SOPInstanceUID)}
    assert {int(i.FailureReason) for i in info.FailedSOPSequence} == {0x0112}
    # the promise: every committed instance is indexed and archived
    indexed = set(server.indexed_sops())
    assert {ds.SOPInstanceUID for ds in sent} <= indexed
    assert {ds.SOPInstanceUID for ds in sent} <= set(server.archived_sops())
    assert wait_gone(server.config.commitment_dir / f"{transaction}.json")


def test_commitment_waits_for_the_ingester(server: Server) -> None:
    """Objects acknowledged but not yet indexed are waited for, not failed."""
    [ingester] = server.children("ingester")
    os.kill(ingester, signal.SIGSTOP)
    try:
        sent = store(server, "CTSCU", 2)
        reports = Reports()
        ae = AE(ae_title="CTSCU")
        ae.add_requested_context(COMMITMENT)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES",
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
        assert assoc.is_established
        status, _ = assoc.send_n_action(
            action_data(generate_uid(), [(CT, ds.SOPInstanceUID) for ds in sent]),
            1, COMMITMENT, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0
        assert not reports.arrived.wait(1.5)  # nothing decided while the ingester sleeps
    finally:
        os.kill(ingester, signal.SIGCONT)
    try:
        event_type, info, _where = reports.wait()
    finally:
        assoc.release()
    assert event_type == 1
    assert uids(info.ReferencedSOPSequence) == {(CT, ds.SOPInstanceUID) for ds in sent}


def test_commitment_all_committed_is_event_1(server: Server) -> None:
    sent = store(server, "CTSCU", 2)
    reports = Reports()
    assert ask_commitment(server, "CTSCU", [(CT, ds.SOPInstanceUID) for ds in sent],
                          reports)[0] == 0
    event_type, info, _where = reports.wait()
    assert event_type == 1
    assert "FailedSOPSequence" not in info
    assert uids(info.ReferencedSOPSequence) == {(CT, ds.SOPInstanceUID) for ds in sent}


def test_commitment_report_on_a_new_association_retried(server: Server) -> None:
    """The modality releases at once; its SCP is down for the first try(s)."""
    sent = store(server, "CTSCP", 2)
    transaction = generate_uid()
    status, _ = ask_commitment(server, "CTSCP", [(CT, ds.SOPInstanceUID) for ds in sent],
                               None, transaction)
    assert status == 0
    pending = server.config.commitment_dir / f"{transaction}.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a failed attempt is written down
        if pending.exists() and json.loads(pending.read_text())["attempts"] >= 1:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no attempt recorded")
    reports = Reports()
    scp = AE(ae_title="CTSCP")
    scp.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    listener = scp.start_server(("127.0.0.1", MODALITY_SCP_PORT), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        event_type, info, calling = reports.wait()
    finally:
        listener.shutdown()
    assert calling == "ECHOES"
    assert event_type == 1
    assert str(info.TransactionUID) == transaction
    assert uids(info.ReferencedSOPSequence) == {(CT, ds.SOPInstanceUID) for ds in sent}
    assert wait_gone(pending)


def test_commitment_survives_a_killed_worker(server: Server) -> None:
    """kill -9 of the store worker holding a request (its association drops): another
    worker (or the one the supervisor starts again) adopts it and reports on a new
    association once the ingester has the objects."""
    import psutil

    [ingester] = server.children("ingester")
    os.kill(ingester, signal.SIGSTOP)
    try:
        sent = store(server, "CTSCP", 2)
        transaction = generate_uid()
        ae = AE(ae_title="CTSCP")
        ae.add_requested_context(COMMITMENT)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")
        assert assoc.is_established
        status, _ = assoc.send_n_action(
            action_data(transaction, [(CT, ds.SOPInstanceUID) for ds in sent]),
            1, COMMITMENT, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0
        local = assoc.dul.socket.socket.getsockname()[1]
        holder = [pid for pid in server.children("store")
                  if any(c.raddr and c.raddr.port == local
                         for c in psutil.Process(pid).net_connections("tcp"))]
        assert len(holder) == 1
        os.kill(holder[0], signal.SIGKILL)
    finally:
        os.kill(ingester, signal.SIGCONT)
    reports = Reports()
    scp = AE(ae_title="CTSCP")
    scp.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    listener = scp.start_server(("127.0.0.1", MODALITY_SCP_PORT), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        event_type, info, calling = reports.wait(60)
    finally:
        listener.shutdown()
        assoc.abort()
    assert calling == "ECHOES"
    assert event_type == 1
    assert str(info.TransactionUID) == transaction
    assert wait_gone(server.config.commitment_dir / f"{transaction}.json")
    deadline = time.monotonic() + 30  # the supervisor starts the killed worker again
    while len(server.children("store")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)


def test_commitment_refused_on_the_association_goes_to_the_requesters_scp(
        server: Server) -> None:
    """A modality that keeps its association open but does not take the report there
    (pynetdicom without a handler answers it with a failure) gets it at its own SCP."""
    sent = store(server, "CTSCP", 1)
    transaction = generate_uid()
    reports = Reports()
    scp = AE(ae_title="CTSCP")
    scp.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    listener = scp.start_server(("127.0.0.1", MODALITY_SCP_PORT), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    ae = AE(ae_title="CTSCP")
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")  # no report handler
    try:
        assert assoc.is_established
        status, _ = assoc.send_n_action(action_data(transaction, [(CT, sent[0].SOPInstanceUID)]),
                                        1, COMMITMENT, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0
        event_type, info, calling = reports.wait()
    finally:
        assoc.release()
        listener.shutdown()
    assert (event_type, str(info.TransactionUID), calling) == (1, transaction, "ECHOES")


def test_commitment_unknown_requester_is_logged_undeliverable(server: Server) -> None:
    transaction = generate_uid()
    assert ask_commitment(server, "NOBODY", [(CT, generate_uid())], None, transaction)[0] == 0
    failed = server.config.commitment_dir / "failed" / f"{transaction}.json"
    deadline = time.monotonic() + 30
    while not failed.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert failed.exists()
    log = server.config.log_file.read_text()
    assert f"storage commitment {transaction} undeliverable" in log
    assert "NOBODY" in log


def test_commitment_bad_requests(server: Server) -> None:
    ae = AE(ae_title="CTSCU")
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="ECHOES")
    assert assoc.is_established
    try:
        no_transaction = action_data(generate_uid(), [(CT, generate_uid())])
        del no_transaction.TransactionUID
        status, _ = assoc.send_n_action(no_transaction, 1, COMMITMENT, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0x0120
        status, _ = assoc.send_n_action(action_data(generate_uid(), []), 1, COMMITMENT,
                                        COMMITMENT_INSTANCE)
        assert int(status.Status) == 0x0120
        status, _ = assoc.send_n_action(action_data(generate_uid(), [(CT, generate_uid())]),
                                        2, COMMITMENT, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0x0123
    finally:
        assoc.release()
    assert not list(server.config.commitment_dir.glob("*.json"))


def test_commitment_pending_across_a_restart(tmp_path: Path) -> None:
    """A report that could not be delivered before a stop is delivered after the start."""
    scp_port = free_port()
    sections = f"[ae:CTSCP2]\nhost = 127.0.0.1\nport = {scp_port}\n"
    home = tmp_path / "home"
    first = start_server(home, sections, store_workers=1, retry_interval=1)
    try:
        sent = store(first, "CTSCP2", 1)
        transaction = generate_uid()
        assert ask_commitment(first, "CTSCP2", [(CT, sent[0].SOPInstanceUID)], None,
                              transaction)[0] == 0
        pending = first.config.commitment_dir / f"{transaction}.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pending.exists() and json.loads(pending.read_text())["attempts"] >= 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no attempt recorded")
    finally:
        stop_server(first)
    assert pending.exists()
    reports = Reports()
    scp = AE(ae_title="CTSCP2")
    scp.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    listener = scp.start_server(("127.0.0.1", scp_port), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    second = start_server(home, sections, store_workers=1, retry_interval=1)
    try:
        event_type, info, _calling = reports.wait()
        assert event_type == 1
        assert str(info.TransactionUID) == transaction
        assert wait_gone(pending)
    finally:
        listener.shutdown()
        stop_server(second)


# -- side by side with Orthanc (Storage Commitment SCP since 1.6) -----------------------


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[int]:
    """Orthanc's DICOM port; it knows the modality CTSCP at MODALITY_SCP_PORT."""
    root = tmp_path / "orthanc"
    root.mkdir()
    http, dicom = free_port(), free_port()
    settings = {
        "Name": "commitment-test", "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"), "DicomAet": "ORTHANC", "DicomPort": dicom,
        "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "SaveJobs": False, "DicomModalities": {"CTSCP": ["CTSCP", "127.0.0.1",
                                                          MODALITY_SCP_PORT]},
    }
    (root / "orthanc.json").write_text(json.dumps(settings))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(["/usr/sbin/Orthanc", str(root / "orthanc.json")], cwd=root,
                               env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{http}/system", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    (root / "orthanc.log").read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        yield dicom
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def test_commitment_answers_agree_with_orthanc(server: Server, orthanc: int) -> None:
    """The same objects sent to both, the same request asked of both: the same
    committed and failed instances.  Failure reasons: echoes says 0x0112 for every
    failed item (SPEC); Orthanc says 0x0112 for an instance it never received."""
    sent = [make_dataset(CT, modality="CT") for _ in range(3)]
    for port in (server.port, orthanc):
        ae = AE(ae_title="CTSCP")
        ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        for ds in sent:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    never = generate_uid()
    items = [(CT, ds.SOPInstanceUID) for ds in sent] + [(CT, never),
                                                         (MR, sent[0].SOPInstanceUID)]
    got: dict[str, tuple[int, Dataset]] = {}
    both = threading.Event()

    def handler(event: evt.Event) -> tuple[int, None]:
        info = event.event_information
        got[str(info.TransactionUID)] = (int(event.event_type), info)
        if len(got) == 2:
            both.set()
        return 0x0000, None

    scp = AE(ae_title="CTSCP")
    scp.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
    listener = scp.start_server(("127.0.0.1", MODALITY_SCP_PORT), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, handler)])
    try:
        ours, theirs = generate_uid(), generate_uid()
        for port, transaction in ((server.port, ours), (orthanc, theirs)):
            ae = AE(ae_title="CTSCP")
            ae.add_requested_context(COMMITMENT)
            assoc = ae.associate("127.0.0.1", port)
            assert assoc.is_established
            status, _ = assoc.send_n_action(action_data(transaction, items), 1, COMMITMENT,
                                            COMMITMENT_INSTANCE)
            assert int(status.Status) == 0
            assoc.release()
        arrived = both.wait(60)
    finally:
        listener.shutdown()
    lines = [line for line in server.config.log_file.read_text().splitlines()
             if ours in line or "CTSCP" in line]
    assert arrived and ours in got and theirs in got, (
        f"reports: {list(got)}, ours {ours}, Orthanc's {theirs}; echoes said:\n"
        + "\n".join(lines[-20:]))
    (our_type, our_info), (their_type, their_info) = got[ours], got[theirs]
    assert our_type == their_type == 2
    assert uids(our_info.ReferencedSOPSequence) == uids(their_info.ReferencedSOPSequence)
    assert uids(our_info.FailedSOPSequence) == uids(their_info.FailedSOPSequence)
    reasons = {str(i.ReferencedSOPInstanceUID) + "/" + str(i.ReferencedSOPClassUID):
               int(i.FailureReason) for i in their_info.FailedSOPSequence}
    assert reasons[f"{never}/{CT}"] == 0x0112
    print("Orthanc's failure reasons:", {k: hex(v) for k, v in reasons.items()})
    assert {int(i.FailureReason) for i in our_info.FailedSOPSequence} == {0x0112}
