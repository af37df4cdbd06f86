"""Unit tests for the pure helpers of echoes.services.outbound (no sockets, no processes)."""

from __future__ import annotations

import struct
from collections import Counter
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)
from pynetdicom.dsutils import decode, encode

from echoes.dicom import part10, pdu
from echoes.processes import sender
from echoes.queue import jobs
from echoes.services import outbound
from echoes.services.outbound import DELIVERED, PERMANENT, TRANSIENT, Route

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def make_job(sop_class: str = CT, syntax: str = ExplicitVRLittleEndian,
             sop: str = "1.2.3.4") -> jobs.Job:
    record = {
        "SOPInstanceUID": sop,
        "StudyInstanceUID": "1.2.3",
        "SOPClassUID": sop_class,
        "TransferSyntaxUID": syntax,
        "path": f"{sop}.dcm",
    }
    return jobs.new_job("PACS", record, "forward", 1000.0)


# -- outcome_of ------------------------------------------------------------------


@pytest.mark.parametrize("status, outcome", [
    (0x0000, DELIVERED),
    (0xB000, DELIVERED),
    (0xB007, DELIVERED),
    (0xB006, DELIVERED),
    (0x0001, DELIVERED),
    (0x0107, DELIVERED),
    (0x0116, DELIVERED),
    (0xA700, TRANSIENT),
    (0xA7FF, TRANSIENT),
    (0x0213, TRANSIENT),
    (0x0110, TRANSIENT),
    (0xA900, PERMANENT),
    (0xA9FF, PERMANENT),
    (0xC000, PERMANENT),
    (0xCFFF, PERMANENT),
    (0x0122, PERMANENT),
    (0x0124, PERMANENT),
    (0x0117, PERMANENT),
    (0x0111, PERMANENT),
    (0xD000, TRANSIENT),
    (0xFFFE, TRANSIENT),
    (0xA800, TRANSIENT),
])
def test_outcome_of(status, outcome):
    assert outbound.outcome_of(status)[0] == outcome


def test_outcome_of_success_has_no_words():
    assert outbound.outcome_of(0x0000) == (DELIVERED, "")


@pytest.mark.parametrize("status", [0xB000, 0xB007, 0x0001])
def test_outcome_of_warnings_say_warning(status):
    outcome, words = outbound.outcome_of(status)
    assert outcome == DELIVERED
    assert "warning" in words


def test_outcome_of_words():
    assert outbound.outcome_of(0xA700) == (TRANSIENT, "out of resources")
    assert outbound.outcome_of(0xA7FF) == (TRANSIENT, "out of resources")
    assert outbound.outcome_of(0x0110) == (TRANSIENT, "processing failure")
    assert outbound.outcome_of(0xA900) == (PERMANENT, "data set does not match SOP class")
    assert outbound.outcome_of(0xC000) == (PERMANENT, "cannot understand")
    assert outbound.outcome_of(0xCFFF) == (PERMANENT, "cannot understand")
    assert outbound.outcome_of(0x0122) == (PERMANENT, "SOP class not supported")


def test_outcome_of_unknown_failure_is_transient():
    assert outbound.outcome_of(0xD000) == (TRANSIENT, "failure")


# -- syntaxes_for ----------------------------------------------------------------


@pytest.mark.parametrize("stored", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_syntaxes_for_little_endian_gets_a_context_of_its_own(stored):
    # Not left to the peer's pick among the three: dcmtk's picks Explicit VR
    # Little Endian, and an object stored Implicit VR went out re-encoded.
    assert outbound.syntaxes_for(stored) == [[stored], UNCOMPRESSED]


def test_syntaxes_for_big_endian_gets_a_context_of_its_own():
    assert outbound.syntaxes_for(ExplicitVRBigEndian) == [[ExplicitVRBigEndian], UNCOMPRESSED]


def test_syntaxes_for_jpeg_lossless_sv1():
    assert outbound.syntaxes_for(JPEGLosslessSV1) == [
        [JPEGLosslessSV1], [JPEGLossless], UNCOMPRESSED]


def test_syntaxes_for_jpeg_lossless_process14():
    assert outbound.syntaxes_for(JPEGLossless) == [[JPEGLossless], UNCOMPRESSED]


@pytest.mark.parametrize("stored", [JPEG2000, JPEG2000Lossless])
def test_syntaxes_for_jpeg2000(stored):
    assert outbound.syntaxes_for(stored) == [[stored], UNCOMPRESSED]


def test_syntaxes_for_deflate():
    assert outbound.syntaxes_for(DeflatedExplicitVRLittleEndian) == [
        [DeflatedExplicitVRLittleEndian], UNCOMPRESSED]


def test_syntaxes_for_unknown_stored_syntax():
    assert outbound.syntaxes_for("") == [UNCOMPRESSED]


def test_syntaxes_for_returns_fresh_lists():
    first = outbound.syntaxes_for(ExplicitVRLittleEndian)
    first[-1].append("mutated")
    assert outbound.syntaxes_for(ExplicitVRLittleEndian) == [[ExplicitVRLittleEndian],
                                                           UNCOMPRESSED]


# -- plan_batch ------------------------------------------------------------------


def test_plan_batch_empty():
    assert outbound.plan_batch([]) == ([], [])


def test_plan_batch_shares_contexts_for_same_class_and_syntax():
    due = [make_job(CT, ExplicitVRLittleEndian, sop=f"1.{n}") for n in range(5)]
    batch, contexts = outbound.plan_batch(due)
    assert batch == due
    assert contexts == [(CT, [ExplicitVRLittleEndian]), (CT, UNCOMPRESSED)]


def test_plan_batch_distinct_classes_and_syntaxes():
    due = [
        make_job(CT, ExplicitVRLittleEndian, sop="1.1"),
        make_job(CT, ImplicitVRLittleEndian, sop="1.2"),  # shares the uncompressed context
        make_job(MR, ExplicitVRLittleEndian, sop="1.3"),
        make_job(CT, JPEG2000, sop="1.4"),
        make_job(SC, JPEGLosslessSV1, sop="1.5"),
        make_job(SC, JPEGLosslessSV1, sop="1.6"),
    ]
    batch, contexts = outbound.plan_batch(due)
    assert batch == due
    assert contexts == [
        (CT, [ExplicitVRLittleEndian]),
        (CT, UNCOMPRESSED),
        (CT, [ImplicitVRLittleEndian]),
        (MR, [ExplicitVRLittleEndian]),
        (MR, UNCOMPRESSED),
        (CT, [JPEG2000]),
        (SC, [JPEGLosslessSV1]),
        (SC, [JPEGLossless]),
        (SC, UNCOMPRESSED),
    ]
    assert len({(cls, tuple(ts)) for cls, ts in contexts}) == len(contexts)


def test_plan_batch_stops_at_max_contexts(monkeypatch):
    monkeypatch.setattr(outbound, "MAX_CONTEXTS", 4)
    due = [
        make_job(CT, ExplicitVRLittleEndian, sop="1.1"),  # 2 contexts
        make_job(MR, JPEG2000, sop="1.2"),  # 2 more: 4
        make_job(CT, ExplicitVRLittleEndian, sop="1.3"),  # none new: fits
        make_job(SC, ExplicitVRLittleEndian, sop="1.4"),  # 2 more: 6 > 4, stop
        make_job(CT, ExplicitVRLittleEndian, sop="1.5"),  # after the stop: not taken
    ]
    batch, contexts = outbound.plan_batch(due)
    assert batch == due[:3]
    assert len(contexts) == 4
    assert (SC, UNCOMPRESSED) not in contexts


def test_plan_batch_never_splits_a_jobs_contexts(monkeypatch):
    monkeypatch.setattr(outbound, "MAX_CONTEXTS", 4)
    due = [make_job(CT, ExplicitVRLittleEndian, sop="1.1"),
           make_job(SC, JPEGLosslessSV1, sop="1.2")]  # needs 3 contexts
    batch, contexts = outbound.plan_batch(due)
    assert batch == due[:1]
    assert contexts == [(CT, [ExplicitVRLittleEndian]), (CT, UNCOMPRESSED)]


def test_plan_batch_stops_at_batch_max(monkeypatch):
    monkeypatch.setattr(outbound, "BATCH_MAX", 3)
    due = [make_job(CT, ExplicitVRLittleEndian, sop=f"1.{n}") for n in range(7)]
    batch, contexts = outbound.plan_batch(due)
    assert batch == due[:3]
    assert contexts == [(CT, [ExplicitVRLittleEndian]), (CT, UNCOMPRESSED)]


def test_plan_batch_contexts_cover_every_job_in_batch(monkeypatch):
    monkeypatch.setattr(outbound, "MAX_CONTEXTS", 5)
    due = [make_job(cls, ts, sop=f"1.{n}") for n, (cls, ts) in enumerate([
        (CT, JPEGLosslessSV1), (CT, ExplicitVRLittleEndian), (MR, JPEG2000),
        (SC, ExplicitVRLittleEndian)])]
    batch, contexts = outbound.plan_batch(due)
    proposed = {(cls, tuple(ts)) for cls, ts in contexts}
    assert len(contexts) <= 5
    assert all(outbound.fits(job, proposed) for job in batch)
    assert batch == due[:2]


# -- choose_route ----------------------------------------------------------------


def test_route_file_when_stored_syntax_accepted():
    accepted = {(CT, ExplicitVRLittleEndian)}
    assert outbound.choose_route(CT, ExplicitVRLittleEndian, accepted) == Route("file")


def test_route_file_for_compressed_accepted_as_stored():
    accepted = {(CT, JPEG2000), (CT, ExplicitVRLittleEndian)}
    assert outbound.choose_route(CT, JPEG2000, accepted).kind == "file"


def test_route_file_for_sv1_accepted_as_stored():
    accepted = {(SC, JPEGLosslessSV1), (SC, JPEGLossless)}
    assert outbound.choose_route(SC, JPEGLosslessSV1, accepted).kind == "file"


def test_route_relabel_sv1_as_process14():
    accepted = {(SC, JPEGLossless)}
    assert outbound.choose_route(SC, JPEGLosslessSV1, accepted) == Route("relabel")


def test_route_relabel_preferred_over_decompress():
    accepted = {(SC, JPEGLossless), (SC, ExplicitVRLittleEndian)}
    assert outbound.choose_route(SC, JPEGLosslessSV1, accepted).kind == "relabel"


@pytest.mark.parametrize("stored", [JPEG2000, JPEGLosslessSV1, JPEGBaseline8Bit, JPEGLossless])
def test_route_decompress_when_only_uncompressed_accepted(stored):
    accepted = {(CT, ExplicitVRLittleEndian)}
    assert outbound.choose_route(CT, stored, accepted) == Route(
        "decompress", target=ExplicitVRLittleEndian)


def test_route_decompress_prefers_little_endian():
    accepted = {(CT, ExplicitVRBigEndian), (CT, ImplicitVRLittleEndian)}
    assert outbound.choose_route(CT, JPEG2000, accepted).target == ImplicitVRLittleEndian


def test_route_reencode_implicit_to_explicit():
    accepted = {(CT, ExplicitVRLittleEndian)}
    assert outbound.choose_route(CT, ImplicitVRLittleEndian, accepted).kind == "reencode"


def test_route_reencode_explicit_to_implicit():
    accepted = {(CT, ImplicitVRLittleEndian)}
    assert outbound.choose_route(CT, ExplicitVRLittleEndian, accepted).kind == "reencode"


def test_route_reencode_deflate_to_uncompressed():
    accepted = {(CT, ExplicitVRLittleEndian)}
    route = outbound.choose_route(CT, DeflatedExplicitVRLittleEndian, accepted)
    assert route .kind == "reencode"


def test_route_other_class_accepted_does_not_count():
    accepted = {(MR, ExplicitVRLittleEndian), (MR, JPEG2000)}
    route = outbound.choose_route(CT, JPEG2000, accepted)
    assert route.kind == "refuse"


def test_route_refuse_when_class_rejected():
    accepted = {(MR, ExplicitVRLittleEndian)}
    route = outbound.choose_route(CT, ExplicitVRLittleEndian, accepted)
    assert route.kind == "refuse"
    assert CT in route.reason
    assert "SOP class" in route.reason


def test_route_refuse_when_nothing_accepted():
    route = outbound.choose_route(CT, ExplicitVRLittleEndian, set())
    assert route.kind == "refuse"
    assert CT in route.reason


def test_route_refuse_when_only_unusable_compressed_syntax_accepted():
    accepted = {(CT, JPEGBaseline8Bit)}
    route = outbound.choose_route(CT, JPEG2000, accepted)
    assert route.kind == "refuse"
    assert JPEG2000 in route.reason
    assert CT in route.reason
    assert "no usable transfer syntax" in route.reason


def test_route_refuse_process14_not_relabelled_to_sv1():
    # .57 is not a valid SV1 stream in general: no relabelling that way.
    route = outbound.choose_route(SC, JPEGLossless, {(SC, JPEGLosslessSV1)})
    assert route.kind == "refuse"
    assert JPEGLossless in route.reason


# -- prepare ---------------------------------------------------------------------


RTDOSE = TEST_FILES / "rtdose.dcm"  # Implicit VR Little Endian
JPEG_SV1 = TEST_FILES / "SC_rgb_jpeg_gdcm.dcm"  # JPEG lossless SV1 (.70)


def test_test_files_are_what_we_expect():
    assert dcmread(RTDOSE).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert dcmread(JPEG_SV1).file_meta.TransferSyntaxUID == JPEGLosslessSV1


def test_prepare_file_returns_the_path():
    assert outbound.prepare(JPEG_SV1, Route("file")) == JPEG_SV1
    assert outbound.prepare(RTDOSE, Route("file")) is RTDOSE


def test_prepare_file_does_not_read():
    missing = Path("/nonexistent/echoes/object.dcm")
    assert outbound.prepare(missing, Route("file")) == missing


def test_prepare_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        outbound.prepare(tmp_path / "gone.dcm", Route("reencode"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # an invalid UI value in rtdose.dcm
def test_prepare_reencode_implicit():
    ds = outbound.prepare(RTDOSE, Route("reencode"))
    assert isinstance(ds, Dataset)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.SOPInstanceUID == dcmread(RTDOSE).SOPInstanceUID
    data = encode(ds, False, True)
    assert isinstance(data, bytes)
    assert len(data) > 0


def test_prepare_relabel_sv1_as_process14():
    original = dcmread(JPEG_SV1)
    ds = outbound.prepare(JPEG_SV1, Route("relabel"))
    assert isinstance(ds, Dataset)
    assert ds.file_meta.TransferSyntaxUID == JPEGLossless
    assert ds.PixelData == original.PixelData
    assert ds.SOPInstanceUID == original.SOPInstanceUID


def test_prepare_decompress_sv1():
    original = dcmread(JPEG_SV1)
    expected = original.pixel_array
    ds = outbound.prepare(JPEG_SV1, Route("decompress"))
    assert isinstance(ds, Dataset)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, expected)
    assert len(ds.PixelData) == expected.nbytes


@pytest.mark.parametrize("syntax", UNCOMPRESSED)
def test_decompress_route_without_pixel_data_reencodes(syntax, tmp_path):
    """A compressed syntax on an object without Pixel Data (a key object, a
    presentation state labelled so by its sender): nothing to decompress,
    the data set goes out re-encoded (before: "cannot prepare for sending
    (decompress): ... no (7FE0,0010)", the job failed for good).
    """
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.PatientName = "Doe^Jane"
    dataset.ContentSequence = [Dataset()]
    dataset.ContentSequence[0].RelationshipType = "CONTAINS"
    dataset.ContentSequence[0].ReferencedFrameNumber = [1, 2]
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    path = tmp_path / "ko.dcm"
    dataset.save_as(path, enforce_file_format=True)
    job = make_job(dataset.SOPClassUID, JPEG2000Lossless, dataset.SOPInstanceUID)
    accepted = {(job.sop_class_uid, syntax)}
    route = outbound.choose_route(job.sop_class_uid, JPEG2000Lossless, accepted)
    assert route == Route("decompress", target=syntax)
    sent_in, data = outbound.payload(job, route, outbound.prepare(path, route), accepted)
    uid = pydicom.uid.UID(syntax)
    arrived = decode(data, uid.is_implicit_VR, uid.is_little_endian)
    assert sent_in == syntax
    assert arrived.SOPInstanceUID == "1.2.3.4.5"
    assert arrived.PatientName == "Doe^Jane"
    assert arrived.ContentSequence[0].ReferencedFrameNumber == [1, 2]


def reencoded_pixels(source: Path, syntax: str) -> np.ndarray:
    """Pixels of ``source`` as a peer gets them over a context of ``syntax`` (route reencode).

    pynetdicom's send_c_store encodes a Dataset with dsutils.encode in the
    accepted uncompressed syntax; decode those bytes as the peer would.
    """
    prepared = outbound.prepare(source, Route("reencode", target=syntax))
    uid = pydicom.uid.UID(syntax)
    data = encode(prepared, uid.is_implicit_VR, uid.is_little_endian)
    assert data
    received = decode(BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
    received.file_meta = FileMetaDataset()
    received.file_meta.TransferSyntaxUID = uid
    return received.pixel_array


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_prepare_reencode_implicit_keeps_pixels(syntax):
    expected = dcmread(RTDOSE).pixel_array
    assert np.array_equal(reencoded_pixels(RTDOSE, syntax), expected)


DEFLATED = TEST_FILES / "image_dfl.dcm"  # Deflated Explicit VR Little Endian


def test_prepare_reencode_deflate():
    original = dcmread(DEFLATED)
    assert original.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    ds = outbound.prepare(DEFLATED, Route("reencode"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(reencoded_pixels(DEFLATED, ExplicitVRLittleEndian),
                          original.pixel_array)


BIG_ENDIAN = TEST_FILES / "rtdose_expb.dcm"  # Explicit VR Big Endian, 32-bit OW pixels


def test_prepare_reencode_big_endian_is_labelled_big_endian():
    assert dcmread(BIG_ENDIAN).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    ds = outbound.prepare(BIG_ENDIAN, Route("reencode"))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian


def test_big_endian_stored_is_reencoded_when_peer_picks_little_endian():
    # syntaxes_for proposes the three uncompressed syntaxes in one context;
    # a peer that picks Explicit VR Little Endian gets route "reencode".
    sop_class = str(dcmread(BIG_ENDIAN).SOPClassUID)
    accepted = {(sop_class, ExplicitVRLittleEndian)}
    assert outbound.choose_route(sop_class, ExplicitVRBigEndian, accepted).kind == "reencode"


MR_BIG_ENDIAN = TEST_FILES / "MR_small_bigendian.dcm"  # Explicit VR Big Endian, 16-bit OW
MR_LITTLE_ENDIAN = TEST_FILES / "MR_small.dcm"  # the same image, Explicit VR Little Endian


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_prepare_reencode_big_endian_keeps_pixels(syntax):
    expected = dcmread(MR_LITTLE_ENDIAN).pixel_array
    assert np.array_equal(reencoded_pixels(MR_BIG_ENDIAN, syntax), expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("source", [RTDOSE, MR_LITTLE_ENDIAN, TEST_FILES / "SC_rgb_small_odd.dcm"])
def test_reencode_to_big_endian_and_back_is_lossless(source, tmp_path):
    """Little endian -> big endian -> little endian gives the original pixel bytes back.

    (A byte-order neutral check for 32-bit OW too, where pydicom and dcmtk
    read big endian differently; test_conversion holds the sender to dcmtk's.)
    """
    prepared = outbound.prepare(source, Route("reencode", target=ExplicitVRBigEndian))
    there = decode(BytesIO(encode(prepared, False, False)), False, False)
    there.file_meta = FileMetaDataset()
    there.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    there.file_meta.MediaStorageSOPClassUID = there.SOPClassUID
    there.file_meta.MediaStorageSOPInstanceUID = there.SOPInstanceUID
    path = tmp_path / "big.dcm"
    there.save_as(path, enforce_file_format=True)
    back = outbound.prepare(path, Route("reencode", target=ExplicitVRLittleEndian))
    data = encode(back, False, True)
    assert decode(BytesIO(data), False, True).PixelData == dcmread(source).PixelData


def _data_pdvs(stream: bytes) -> list[bytes]:
    """The data set fragments of P-DATA-TF PDUs as echoes frames them."""
    from echoes.dicom import pdu

    fragments, offset = [], 0
    while offset < len(stream):
        (length,) = struct.unpack_from(">I", stream, offset + 2)
        body = memoryview(stream)[offset + 6:offset + 6 + length]
        fragments += [bytes(data) for _cid, control, data in pdu.iter_pdvs(body)
                      if not control & pdu.COMMAND_BIT]
        offset += 6 + length
    return fragments


@pytest.mark.parametrize("length", [3, 15, 17, 31, 33, 63, 65, 4303])
def test_odd_deflated_data_set_goes_out_as_even_fragments(length, tmp_path):
    """One 0x00 pad byte after an odd deflate stream, inside the last fragment
    (never a one-byte fragment of its own), whatever the fragment and read sizes.
    """
    path = tmp_path / "deflated.dcm"
    data = bytes(range(256)) * (length // 256 + 1)
    path.write_bytes(part10.part10_header(CT, "1.2.3.4", DeflatedExplicitVRLittleEndian,
                                            "1.2.3", "TEST") + data[:length])
    job = make_job(CT, DeflatedExplicitVRLittleEndian)
    syntax, data_set = outbound.payload(job, Route("file"), path, set())
    assert syntax == DeflatedExplicitVRLittleEndian
    with data_set:
        stream = b"".join(pdu.p_data_stream(1, b"cmd!", data_set, 22, group_bytes=32))
    fragments = _data_pdvs(stream)
    assert all(len(fragment) % 2 == 0 for fragment in fragments), [len(f) for f in fragments]
    assert b"".join(fragments) == data[:length] + b"\x00"


def test_even_deflated_data_set_is_not_padded(tmp_path):
    path = tmp_path / "deflated.dcm"
    path.write_bytes(part10.part10_header(CT, "1.2.3.4", DeflatedExplicitVRLittleEndian,
                                            "1.2.3", "TEST") + b"ab" * 40)
    syntax, data_set = outbound.payload(make_job(CT, DeflatedExplicitVRLittleEndian),
                                      Route("file"), path, set())
    with data_set:
        assert data_set.read() == b"ab" * 40


def test_done_jobs_are_pruned_after_keep_done_hours(tmp_path):
    import time

    from helpers import write_offline_config

    from echoes import config as config_module
    from echoes.queue import jobs

    config = config_module.load(write_offline_config(tmp_path / "home", keep_done_hours=1))
    worker = sender.Sender(config)
    now = time.time()
    record = {"SOPInstanceUID": "1.2.3", "StudyInstanceUID": "1.2", "SOPClassUID": CT,
              "TransferSyntaxUID": ExplicitVRLittleEndian, "path": "a/b/c.dcm"}
    old = jobs.delivered(jobs.new_job("PACS", record, "forward", now - 7200), now - 7200)
    fresh = jobs.delivered(jobs.new_job("VIEWER", record, "forward", now), now)
    waiting = jobs.new_job("OTHER", record, "forward", now - 7200)
    for job in (old, fresh, waiting):
        worker.store.write(job)
    worker._prune(config, now)
    assert {job.destination for job in worker.all_jobs()} == {"VIEWER", "OTHER"}


def test_studies_sent_names_each_study_and_count() -> None:
    assert outbound.studies_sent(Counter()) == ""
    assert outbound.studies_sent(Counter({"1.2.3": 20, "1.2.4": 1})) == (
        "; studies 1.2.3 (20), 1.2.4 (1)")
    many = Counter({f"1.2.{n}": 100 - n for n in range(outbound.STUDIES_LOGGED + 3)})
    line = outbound.studies_sent(many)
    assert line.startswith("; studies 1.2.0 (100), 1.2.1 (99)")
    assert line.count("(") == outbound.STUDIES_LOGGED
    assert line.endswith(" and 3 more")
