"""C-MOVE/C-GET decisions without a peer: identifier -> unique keys, counts, statuses,
the Pending cadence, and the one-object step shared with the sender (streamed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pytest
from helpers import make_dataset, write_part10
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1

from echoes.dicom import dimse
from echoes.services import delivery
from echoes.services.outbound import DELIVERED, PERMANENT, TRANSIENT
from echoes.services.retrieve import result_of
from echoes.services.retrieve_plan import (
    COMPLETED,
    FAILED,
    PATIENT,
    STUDY,
    WARNING,
    BadIdentifier,
    Item,
    SubOperations,
    failed_uid_list,
    items_of,
    select,
)

# -- identifier -> what to retrieve ---------------------------------------------------------


@pytest.mark.parametrize(("model", "keys", "level", "filters"), [
    (PATIENT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, "PATIENT",
     {"PatientID": "P1"}),
    (PATIENT, {"QueryRetrieveLevel": "STUDY", "PatientID": "P1", "StudyInstanceUID": "1.2"},
     "STUDY", {"PatientID": "P1", "StudyInstanceUID": "1.2"}),
    # PatientID above STUDY may be left out: the study UID finds the objects
    (PATIENT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2\\1.3"}, "STUDY",
     {"StudyInstanceUID": "1.2\\1.3"}),
    (STUDY, {"QueryRetrieveLevel": "study ", "StudyInstanceUID": " 1.2 "}, "STUDY",
     {"StudyInstanceUID": "1.2"}),
    (STUDY, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2",
             "SeriesInstanceUID": "1.2.1\\1.2.2"}, "SERIES",
     {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.1\\1.2.2"}),
    (STUDY, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2",
             "SOPInstanceUID": "1.2.1.1\\1.2.1.2"}, "IMAGE",
     {"StudyInstanceUID": "1.2", "SOPInstanceUID": "1.2.1.1\\1.2.1.2"}),
    # keys below the level are not part of a retrieve
    (STUDY, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2",
             "SOPInstanceUID": "9.9"}, "STUDY", {"StudyInstanceUID": "1.2"}),
])
def test_select(model: str, keys: dict, level: str, filters: dict) -> None:
    selection = select(keys, model)
    assert (selection.level, selection.filters) == (level, filters)


@pytest.mark.parametrize(("model", "keys", "words"), [
    (STUDY, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, "not one of STUDY"),
    (PATIENT, {"PatientID": "P1"}, "'missing'"),
    (PATIENT, {"QueryRetrieveLevel": "FRAME"}, "'FRAME'"),
    (STUDY, {"QueryRetrieveLevel": "STUDY"}, "StudyInstanceUID is required"),
    (STUDY, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.1"},
     "StudyInstanceUID is required at SERIES"),
    (STUDY, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "1.2.1.1"},
     "StudyInstanceUID is required at IMAGE"),
    (STUDY, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2*"}, "wildcards"),
    (PATIENT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P?"}, "wildcards"),
    (PATIENT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1\\P2"}, "single value"),
    (STUDY, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3",
             "SeriesInstanceUID": "1.2.1"}, "single value"),
    (STUDY, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2\\"}, "empty"),
])
def test_select_refuses(model: str, keys: dict, words: str) -> None:
    with pytest.raises(BadIdentifier, match=words.replace("?", r"\?")):
        select(keys, model)


def test_items_in_series_and_instance_order_each_once() -> None:
    def doc(series: str, number: str, sop: str) -> dict:
        return {"StudyInstanceUID": "1", "SeriesInstanceUID": series, "InstanceNumber": number,
                "SOPInstanceUID": sop, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "TransferSyntaxUID": ExplicitVRLittleEndian, "path": f"1/{series}/{sop}.dcm"}

    items = items_of([doc("2", "1", "2.1"), doc("1", "10", "1.10"), doc("1", "2", "1.2"),
                      doc("1", "", "1.x"), doc("1", "2", "1.2")])
    assert [item.sop_instance_uid for item in items] == ["1.x", "1.2", "1.10", "2.1"]
    assert items[1] == Item("1.2", "1.2.840.10008.5.1.4.1.1.2", "1.2", ExplicitVRLittleEndian,
                            "1/1/1.2.dcm")


# -- counts and statuses --------------------------------------------------------------------


def test_all_completed_is_success_without_remaining() -> None:
    counts = SubOperations(2)
    counts.record("a", COMPLETED)
    counts.record("b", COMPLETED)
    status, elements = counts.final(cancelled=False)
    assert status == dimse.SUCCESS
    assert elements == {dimse.COMPLETED_SUBOPERATIONS: 2, dimse.FAILED_SUBOPERATIONS: 0,
                        dimse.WARNING_SUBOPERATIONS: 0}


@pytest.mark.parametrize(("results", "status"), [
    ((COMPLETED, FAILED), dimse.SUBOPERATIONS_WARNING),
    ((COMPLETED, WARNING), dimse.SUBOPERATIONS_WARNING),
    ((WARNING, FAILED), dimse.SUBOPERATIONS_WARNING),
    ((FAILED, FAILED), dimse.UNABLE_TO_PERFORM_SUBOPERATIONS),
    ((), dimse.SUCCESS),  # nothing archived matched: as dcmqrscp answers
])
def test_final_status(results: tuple[str, ...], status: int) -> None:
    counts = SubOperations(len(results))
    for n, result in enumerate(results):
        counts.record(f"1.{n}", result)
    assert counts.final_status(cancelled=False) == status
    assert counts.failed_uids == [f"1.{n}" for n, r in enumerate(results) if r == FAILED]


def test_cancel_keeps_the_remaining_count() -> None:
    counts = SubOperations(10)
    counts.record("a", COMPLETED)
    counts.fail_rest(["b", "c"])
    status, elements = counts.final(cancelled=True)
    assert status == dimse.CANCEL
    assert elements[dimse.REMAINING_SUBOPERATIONS] == 7
    assert elements[dimse.FAILED_SUBOPERATIONS] == 2


def test_pending_after_the_first_then_every_50_or_each_second() -> None:
    counts = SubOperations(200, started=100.0)
    assert not counts.pending_due(100.0)  # nothing done yet
    counts.record("1", COMPLETED)
    assert counts.pending_due(100.0)  # the first one: the requester sees it started
    assert counts.pending(100.0)[dimse.REMAINING_SUBOPERATIONS] == 199
    sent = []
    for n in range(2, 102):
        counts.record(str(n), COMPLETED)
        if counts.pending_due(100.5):  # fast objects: the count decides
            sent.append(counts.pending(100.5)[dimse.COMPLETED_SUBOPERATIONS])
    assert sent == [51, 101]
    counts.record("102", COMPLETED)
    assert not counts.pending_due(101.4)
    assert counts.pending_due(101.5)  # slow objects: the clock decides


def test_heartbeat_each_second_without_progress() -> None:
    """A C-MOVE's heartbeat: a Pending response a second after the last one even when
    no sub-operation ended (a large object, a slow connect), none once all are done."""
    counts = SubOperations(2, started=10.0)
    assert not counts.heartbeat_due(10.9)
    assert counts.heartbeat_due(11.0)  # still connecting: completed 0, remaining 2
    assert counts.pending(11.0)[dimse.REMAINING_SUBOPERATIONS] == 2
    assert not counts.heartbeat_due(11.5)
    assert counts.heartbeat_due(12.0)
    counts.record("1", COMPLETED)
    counts.record("2", COMPLETED)
    assert not counts.heartbeat_due(20.0)  # the final response follows


def test_no_pending_for_the_last_object() -> None:
    counts = SubOperations(1)
    counts.record("1", COMPLETED)
    assert not counts.pending_due(50.0)  # the final response says it


def test_failed_uid_list_fits_an_explicit_vr_length() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{n:040d}" for n in range(2000)]
    value, named = failed_uid_list(uids)
    assert len(value) <= 0xFFFE
    assert 0 < named < 2000
    assert value.split("\\") == uids[:named]
    assert failed_uid_list(["1.2", "1.3"]) == ("1.2\\1.3", 2)


@pytest.mark.parametrize(("outcome", "detail", "result"), [
    (DELIVERED, "", COMPLETED), (DELIVERED, "0xB000 warning", WARNING),
    (TRANSIENT, "", FAILED), (PERMANENT, "0xA900 ...", FAILED)])
def test_result_of(outcome: str, detail: str, result: str) -> None:
    assert result_of(outcome, detail) == result


# -- the one-object step the sender and the retrieves share --------------------------------


def _archived(tmp_path: Path, syntax: str = ExplicitVRLittleEndian) -> tuple[Item, Path]:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "object.dcm", syntax)
    return Item(ds.SOPInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID, syntax, "key"), path


def test_store_one_streams_the_stored_file(tmp_path: Path) -> None:
    """As stored when accepted: the data set is read from the open file (never a copy in
    memory), after its File Meta."""
    item, path = _archived(tmp_path)
    seen: list = []

    def send(sop_class: str, syntax: str, sop: str, data: BinaryIO) -> tuple[int, str]:
        seen.append((sop_class, syntax, sop, type(data), data.read()))
        return 0x0000, ""

    attempt = delivery.store_one(item, path, {(item.sop_class_uid, ExplicitVRLittleEndian)},
                                 send)
    assert (attempt.outcome, attempt.stage, attempt.route) == (DELIVERED, delivery.SENT, "file")
    [(sop_class, syntax, sop, kind, data)] = seen
    assert (sop_class, syntax, sop) == (item.sop_class_uid, ExplicitVRLittleEndian,
                                        item.sop_instance_uid)
    assert kind is io.BufferedReader
    assert path.read_bytes().endswith(data)


def test_store_one_reencodes_for_an_accepted_uncompressed_syntax(tmp_path: Path) -> None:
    item, path = _archived(tmp_path)
    seen: list = []
    attempt = delivery.store_one(
        item, path, {(item.sop_class_uid, ImplicitVRLittleEndian)},
        lambda cls, syntax, sop, data: seen.append(syntax) or (0x0000, ""))
    assert (attempt.outcome, attempt.route, seen) == (DELIVERED, "reencode",
                                                      [ImplicitVRLittleEndian])


@pytest.mark.parametrize(("accepted", "response", "outcome", "stage"), [
    (set(), (0x0000, ""), PERMANENT, delivery.ROUTE),  # the class was not accepted
    (None, None, TRANSIENT, delivery.SENT),  # no response: the association ended
    (None, (0xA700, "full"), TRANSIENT, delivery.SENT),
    (None, (0xC000, ""), PERMANENT, delivery.SENT),
])
def test_store_one_outcomes(tmp_path: Path, accepted: set | None, response: tuple | None,
                            outcome: str, stage: str) -> None:
    item, path = _archived(tmp_path)
    if accepted is None:
        accepted = {(item.sop_class_uid, ExplicitVRLittleEndian)}
    attempt = delivery.store_one(item, path, accepted, lambda *args: response)
    assert (attempt.outcome, attempt.stage) == (outcome, stage)


def test_store_one_missing_file(tmp_path: Path) -> None:
    item, path = _archived(tmp_path)
    path.unlink()
    attempt = delivery.store_one(item, path, {(item.sop_class_uid, ExplicitVRLittleEndian)},
                                 lambda *args: (0, ""))
    assert attempt.stage == delivery.MISSING


def test_store_one_relabels_jpeg_lossless_sv1(tmp_path: Path) -> None:
    """Not decodable here, so nothing reads the pixels: .70 goes as .57 when only that
    is accepted (the sender's rule, shared)."""
    from pydicom.uid import JPEGLossless

    item, path = _archived(tmp_path)
    item = Item(item.id, item.sop_class_uid, item.sop_instance_uid, JPEGLosslessSV1, "key")
    seen: list = []
    attempt = delivery.store_one(item, path, {(item.sop_class_uid, JPEGLossless)},
                                 lambda cls, syntax, sop, data: seen.append(syntax) or (0, ""))
    assert (attempt.route, seen) == ("relabel", [JPEGLossless])


# -- Role Selection on the store port (C-GET) ----------------------------------------------


def test_store_port_lets_a_requester_take_the_scp_role_of_storage_classes_only() -> None:
    """A C-GET requester proposes CT Image Storage as SCP (not SCU): granted; the same
    asked of a Q/R class leaves it no role: that context is a user rejection."""
    from echoes.dicom import pdu
    from echoes.dicom.service import Port
    from echoes.services.retrieve import RetrieveService
    from echoes.services.retrieve_plan import STUDY_ROOT_GET

    ct = "1.2.840.10008.5.1.4.1.1.2"
    port = Port(RetrieveService(None, index=object()))  # type: ignore[arg-type]
    results = [pdu.ContextResult(1, pdu.ACCEPTANCE, ct, ExplicitVRLittleEndian),
               pdu.ContextResult(3, pdu.ACCEPTANCE, STUDY_ROOT_GET, ExplicitVRLittleEndian)]
    answered, roles = pdu.negotiate_roles(
        results, {ct: (False, True), STUDY_ROOT_GET: (False, True)}, port.roles)
    assert roles == {ct: (False, True)}
    assert [r.result for r in answered] == [pdu.ACCEPTANCE, pdu.USER_REJECTION]
    # a port of services without roles: the requestor stays SCU only
    assert Port().roles == {}
