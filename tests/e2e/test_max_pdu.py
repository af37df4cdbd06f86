"""A real peer offering a maximum PDU length of 0, 1, 7 and 16384 bytes (issue 14 item 9):
C-ECHO, C-STORE and MWL C-FIND answers all arrive, every PDU within the limit."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from helpers import Server, free_port, make_dataset, start_server, stop_server
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from echoes.dicom import pdu, requestor

# -- the same, end to end: a real peer offering 0, 1, 7 and 16384 bytes -----------------


VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
WORKLIST = {f"Q{n}": {"PatientID": f"Q{n}", "PatientName": f"SMALL^PDU{n}",
                      "AccessionNumber": f"ACC{n}", "ScheduledProcedureStepSequence": [
                          {"Modality": "CT", "ScheduledStationAETitle": "CT01",
                           "ScheduledProcedureStepStartDate": "20261130",
                           "ScheduledProcedureStepStartTime": f"{8 + n:02d}00"}]}
            for n in range(3)}


@pytest.fixture(scope="module")
def small_pdu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("small-pdu") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    for name, document in WORKLIST.items():
        (folder / f"{name}.json").write_text(json.dumps(document))
    server = start_server(home, store_workers=1)
    yield server
    stop_server(server)


@pytest.mark.parametrize("offered", [0, 1, 7, 16384])
def test_peer_offering_a_small_maximum_pdu(small_pdu_server: Server, offered: int) -> None:
    """C-ECHO, C-STORE and an MWL C-FIND with answers, to pynetdicom offering ``offered``;
    every P-DATA-TF it receives from us is within the send limit for that offer.
    """
    server = small_pdu_server
    dataset = make_dataset()
    archived = len(server.indexed_sops())
    received: list[P_DATA_TF] = []

    def on_pdu(event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            received.append(event.pdu)

    # associate()'s max_pdu is what goes into the request (AE.maximum_pdu_size is
    # only what pynetdicom offers as an acceptor).
    ae = AE(ae_title="SMALLPDU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
    stored = ae.associate("127.0.0.1", server.config.store_port, ae_title="ECHOES",
                          max_pdu=offered, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    assert stored.is_established
    assert stored.send_c_echo().Status == 0
    assert stored.send_c_store(dataset).Status == 0
    stored.release()

    finder = AE(ae_title="SMALLPDU")
    finder.acse_timeout = finder.dimse_timeout = finder.network_timeout = 30
    finder.add_requested_context(MWL_FIND, ExplicitVRLittleEndian)
    found = finder.associate("127.0.0.1", server.config.mwl_port, ae_title="ECHOES",
                             max_pdu=offered, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    assert found.is_established
    query = Dataset()
    query.PatientID = ""
    query.PatientName = ""
    query.AccessionNumber = ""
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledProcedureStepStartTime = ""
    query.ScheduledProcedureStepSequence = [step]
    answers = {}
    final = None
    for status, identifier in found.send_c_find(query, MWL_FIND):
        assert status is not None, "no answer from the worklist port"
        if status.Status == 0xFF00:
            answers[str(identifier.PatientID)] = str(identifier.PatientName)
        else:
            final = status.Status
    found.release()
    assert final == 0
    assert answers == {name: document["PatientName"] for name, document in WORKLIST.items()}

    server.wait_ingested(archived + 1)
    assert dataset.SOPInstanceUID in server.archived_sops()
    limit = pdu.send_limit(offered)
    assert received
    assert max(pdu_.pdu_length for pdu_ in received) <= limit
    if offered == 1:
        assert ("SMALLPDU (127.0.0.1:" in server.config.log_file.read_text()
                and "offered a maximum PDU length of 1, too small for any PDV"
                in server.config.log_file.read_text())


@pytest.mark.parametrize("offered", [0, 1, 7, 16384])
def test_destination_accepting_with_a_small_maximum_pdu(offered: int) -> None:
    """The sender's side: C-ECHO and C-STORE through echoes' requestor to a pynetdicom
    SCP that accepts with ``offered``; it gets the object whole, in PDUs within the limit.
    """
    dataset = make_dataset(rows=32)
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    received: list[P_DATA_TF] = []
    stored: list[Dataset] = []

    def on_pdu(event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            received.append(event.pdu)

    def on_store(event) -> int:
        stored.append(event.dataset)
        return 0x0000

    scp = AE(ae_title="DEST")
    scp.maximum_pdu_size = offered
    scp.add_supported_context(VERIFICATION)
    scp.add_supported_context(dataset.SOPClassUID, syntax)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_PDU_RECV, on_pdu), (evt.EVT_C_STORE, on_store)])
    try:
        assoc = requestor.Requestor.connect(
            "127.0.0.1", port, "ECHOES", "DEST",
            [(VERIFICATION, [syntax]), (str(dataset.SOPClassUID), [syntax])], 49152, 10, 10)
        assert assoc.peer_maximum_length == offered
        assert assoc.send_c_echo() == 0
        context = assoc.context_for(str(dataset.SOPClassUID), syntax)
        data = encode(dataset, False, True)
        result = assoc.send_c_store(context, dataset.SOPInstanceUID, io.BytesIO(data))
        assert result is not None and result.status == 0
        assoc.release()
    finally:
        server.shutdown()
    assert [ds.SOPInstanceUID for ds in stored] == [dataset.SOPInstanceUID]
    assert stored[0].PixelData == dataset.PixelData
    assert max(pdu_.pdu_length for pdu_ in received) <= pdu.send_limit(offered)
