"""The modality workflow end to end (issue 20 part 1): MPPS on the MWL port and
Storage Commitment on the store port, with pynetdicom as the modality and dcmtk
``findscu -W`` as the worklist client.

One server for the module.  MPPS: a modality creates a step IN PROGRESS, sets
it COMPLETED, and the worklist item it performed is no longer offered;
refusals (missing attributes, unknown or final instance, second create)
answer the standard's status and leave the files as they were.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from helpers import DCMTK_ENV, Server, start_server, stop_server
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

MPPS = "1.2.840.10008.3.1.2.3.3"
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
    running = start_server(home, store_workers=1)
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
    """A pynetdicom association to the MWL port proposing MPPS."""

    def __init__(self, server: Server) -> None:
        ae = AE(ae_title="CT01")
        ae.add_requested_context(MPPS)
        #: The command sets of the responses (pynetdicom's status lacks the UID).
        self.responses: list[Dataset] = []
        self.assoc = ae.associate("127.0.0.1", server.config.mwl_port, ae_title="ECHOES",
                                  evt_handlers=[(evt.EVT_DIMSE_RECV, self._received)])
        assert self.assoc.is_established

    def _received(self, event: evt.Event) -> None:
        self.responses.append(event.message.command_set)

    def create(self, ds: Dataset, uid: str | None) -> tuple[int, str]:
        """N-CREATE: (status, the Affected SOP Instance UID of the response)."""
        status, _attrs = self.assoc.send_n_create(ds, MPPS, uid)
        answered = self.responses[-1] if self.responses else Dataset()
        return int(status.Status), str(answered.get("AffectedSOPInstanceUID", ""))

    def set(self, ds: Dataset, uid: str) -> int:
        status, _attrs = self.assoc.send_n_set(ds, MPPS, uid)
        return int(status.Status)

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
