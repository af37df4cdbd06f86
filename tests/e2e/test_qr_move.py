"""C-MOVE and C-GET end to end: dcmtk movescu/getscu, pynetdicom and Orthanc pull from echoes.

One echoes server per module (module fixtures: the default suite stays short)
holds a study of STUDY_SIZE small objects in two series and, each in a study of
its own, a JPEG lossless and an RLE object.  Its ``[ae:*]`` sections name the
destinations: a storescp that takes only uncompressed syntaxes (dcmtk's
default), a port where nothing listens, a slow pynetdicom SCP (for C-CANCEL)
and Orthanc.  ``qr_allowed_calling_aes`` lists the callers the tests use, so
one other title shows the refusal.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import (
    DCMTK_ENV,
    TEST_FILES,
    Server,
    echo_ok,
    free_port,
    make_dataset,
    stop_server,
    wait_for,
    write_config,
    write_part10,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from echoes import config as config_module

STUDY_SIZE = 60  # over 50: the move sends Pending responses on the object count too
PATIENT = "PMOVE17"
CALLERS = "MOVESCU, GETSCU, PYSCU, ORTHANC"
ECHOES_AE = "ECHOES"


@dataclass
class StoreSCP:
    """dcmtk storescp (uncompressed syntaxes only, its default) writing into ``folder``."""

    title: str
    port: int
    folder: Path
    process: subprocess.Popen

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def clear(self) -> None:
        for path in self.received():
            path.unlink()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_storescp(folder: Path, title: str) -> StoreSCP:
    folder.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(["storescp", "-aet", title, "-od", str(folder), str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port), 10, "storescp did not start")
    except BaseException:
        process.kill()
        raise
    return StoreSCP(title, port, folder, process)


class SlowSCP:
    """A pynetdicom storage SCP that takes ``delay`` seconds per object (C-CANCEL test);
    with ``trouble``, it aborts the association at its 3rd object and refuses the 10th
    with 0xC000 (the reconnect and 0xB000 test)."""

    def __init__(self, delay: float, trouble: bool = False) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.delay = delay
        self.trouble = trouble
        self.calls = 0
        ae = AE(ae_title="FLAKY" if trouble else "SLOW")
        ae.add_supported_context(SecondaryCaptureImageStorage,
                                 [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.store)])

    def store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        self.calls += 1
        if self.trouble and self.calls == 3:
            event.assoc.abort()
            return 0xC000
        if self.trouble and self.calls == 10:
            return 0xC000
        self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Archive:
    """The module's echoes and what it holds."""

    server: Server
    plain: StoreSCP
    slow: SlowSCP
    flaky: SlowSCP
    down_port: int
    study: str
    series: list[str]
    sops: list[str]
    jpeg_study: str
    rle_study: str
    orthanc_port: int
    work: Path

    def log(self) -> str:
        return self.server.config.log_file.read_text(errors="replace")


def _start(home: Path) -> Server:
    """echoes on the config already in ``home``, up when its store port answers."""
    config = config_module.load(home / "etc" / "echoes.ini")
    out = open(home.with_name(home.name + ".out"), "ab")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config.path),
                                "start"], stdout=out, stderr=subprocess.STDOUT)
    server = Server(home, config, process)
    try:
        wait_for(lambda: bool(server.children("store")) and echo_ok(config.store_port), 30,
                 "echoes did not start")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return server


def _storescu(port: int, files: list[Path], *options: str) -> None:
    done = subprocess.run(["storescu", *options, "127.0.0.1", str(port), *map(str, files)],
                          env=DCMTK_ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    if not shutil.which("movescu"):
        pytest.fail("dcmtk is not installed: run bin/test, which installs it")
    work = tmp_path_factory.mktemp("qrmove")
    with contextlib.ExitStack() as cleanup:  # whatever started is stopped, setup failing too
        plain = start_storescp(work / "plain", "PLAIN")
        cleanup.callback(plain.stop)
        slow = SlowSCP(0.15)
        cleanup.callback(slow.stop)
        flaky = SlowSCP(0.0, trouble=True)
        cleanup.callback(flaky.stop)
        down_port = free_port()  # nothing listens there
        orthanc_port = free_port()
        home = work / "home"
        path = write_config(home, store_workers=1, qr_allowed_calling_aes=CALLERS,
                            network_timeout=5)
        sections = "".join(f"\n[ae:{title}]\nhost = 127.0.0.1\nport = {port}\nforward = no\n"
                           for title, port in (("PLAIN", plain.port), ("DOWN", down_port),
                                               ("SLOW", slow.port), ("FLAKY", flaky.port),
                                               ("ORTHANC", orthanc_port)))
        path.write_text(path.read_text() + sections)
        server = _start(home)
        cleanup.callback(stop_server, server)
        study, series = generate_uid(), [generate_uid(), generate_uid()]
        files = []
        source = work / "source"
        source.mkdir()
        for n in range(STUDY_SIZE):
            ds = make_dataset(study=study, series=series[n % 2], patient_id=PATIENT)
            ds.InstanceNumber = n + 1
            files.append(write_part10(ds, source / f"{n}.dcm"))
        _storescu(server.port, files)
        sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
        jpeg = TEST_FILES / "SC_rgb_jpeg_gdcm.dcm"
        rle = TEST_FILES / "MR_small_RLE.dcm"
        _storescu(server.port, [jpeg], "-xs", "-R")
        _storescu(server.port, [rle], "-xr", "-R")
        server.wait_ingested(STUDY_SIZE + 2)
        yield Archive(server, plain, slow, flaky, down_port, study, series, sops,
                      str(pydicom.dcmread(jpeg, stop_before_pixels=True).StudyInstanceUID),
                      str(pydicom.dcmread(rle, stop_before_pixels=True).StudyInstanceUID),
                      orthanc_port, work)


@pytest.fixture
def plain(archive: Archive) -> StoreSCP:
    archive.plain.clear()
    return archive.plain


# -- pynetdicom as the second SCU -----------------------------------------------------


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def py_move(archive: Archive, destination: str, identifier: Dataset,
            model: str = StudyRootQueryRetrieveInformationModelMove,
            calling: str = "PYSCU", cancel_after_pending: bool = False,
            ) -> tuple[list[Dataset], Dataset | None]:
    """C-MOVE with pynetdicom: every response's status data set, the last identifier."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    ae.dimse_timeout = 60
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=ECHOES_AE)
    assert assoc.is_established
    statuses: list[Dataset] = []
    last = None
    try:
        responses = assoc.send_c_move(identifier, destination, model, msg_id=7)
        for status, found in responses:
            statuses.append(status)
            last = found
            if cancel_after_pending and status.Status == 0xFF00 and len(statuses) == 1:
                context = assoc._get_valid_context(model, "", "scu")
                assoc.send_c_cancel(7, context.context_id)
    finally:
        assoc.release()
    return statuses, last


def test_movescu_study_root_study_to_storescp(archive: Archive, plain: StoreSCP) -> None:
    done = subprocess.run(
        ["movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", ECHOES_AE, "-aem", "PLAIN",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study}",
         "127.0.0.1", str(archive.server.port)], env=DCMTK_ENV, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "(Pending)" in output, output  # Pending responses with the counts
    assert len(plain.received()) == STUDY_SIZE
    arrived = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
               for p in plain.received()}
    assert arrived == set(archive.sops)
    line = [x for x in archive.log().splitlines() if "C-MOVE to PLAIN from MOVESCU" in x][-1]
    assert f"at STUDY level: {STUDY_SIZE} sub-operations, {STUDY_SIZE} completed, 0 failed" \
        in line
    assert PATIENT not in line


def test_movescu_patient_root_patient_level(archive: Archive, plain: StoreSCP) -> None:
    done = subprocess.run(
        ["movescu", "-P", "-aet", "MOVESCU", "-aec", ECHOES_AE, "-aem", "PLAIN",
         "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={PATIENT}",
         "127.0.0.1", str(archive.server.port)], env=DCMTK_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(plain.received()) == STUDY_SIZE


def test_getscu_study(archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    done = subprocess.run(
        ["getscu", "-v", "-S", "-aet", "GETSCU", "-aec", ECHOES_AE, "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study}",
         "127.0.0.1", str(archive.server.port)], env=DCMTK_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.iterdir()}
    assert got == set(archive.sops)
    assert f"C-GET from GETSCU at STUDY level: {STUDY_SIZE} sub-operations, " \
        f"{STUDY_SIZE} completed" in archive.log()


def test_pynetdicom_series_and_image_levels(archive: Archive, plain: StoreSCP) -> None:
    statuses, _ = py_move(archive, "PLAIN", _identifier(
        "SERIES", StudyInstanceUID=archive.study, SeriesInstanceUID=archive.series[0]))
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == STUDY_SIZE // 2
    assert any(s.Status == 0xFF00 for s in statuses[:-1])
    plain.clear()
    wanted = archive.sops[0::2][:3]  # series[0] holds the even ones
    statuses, _ = py_move(archive, "PLAIN", _identifier(
        "IMAGE", StudyInstanceUID=archive.study, SeriesInstanceUID=archive.series[0],
        SOPInstanceUID=wanted))
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 3
    assert {pydicom.dcmread(p).SOPInstanceUID for p in plain.received()} == set(wanted)


def test_compressed_objects_arrive_uncompressed_with_equal_pixels(archive: Archive,
                                                                  plain: StoreSCP) -> None:
    """storescp (uncompressed syntaxes only) gets the JPEG lossless and the RLE object
    decompressed: the same pixels as the originals."""
    for study, original in ((archive.jpeg_study, "SC_rgb_jpeg_gdcm.dcm"),
                            (archive.rle_study, "MR_small_RLE.dcm")):
        plain.clear()
        statuses, _ = py_move(archive, "PLAIN", _identifier("STUDY", StudyInstanceUID=study))
        assert statuses[-1].Status == 0x0000, statuses[-1]
        [path] = plain.received()
        arrived, source = pydicom.dcmread(path), pydicom.dcmread(TEST_FILES / original)
        assert arrived.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2",
                                                       "1.2.840.10008.1.2.1",
                                                       "1.2.840.10008.1.2.2")
        assert arrived.SOPInstanceUID == source.SOPInstanceUID
        assert np.array_equal(arrived.pixel_array, source.pixel_array)


def test_c_get_with_pynetdicom_uncompressed_only(archive: Archive) -> None:
    """pynetdicom's C-GET taking the SCP role for MR Image Storage in Explicit VR
    Little Endian only: the RLE object arrives decompressed over the same association."""
    got: list[Dataset] = []

    def store(event: evt.Event) -> int:
        got.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=ECHOES_AE,
                         ext_neg=[build_role(MRImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, store)])
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(_identifier("STUDY", StudyInstanceUID=archive.rle_study),
                                          StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 1
    source = pydicom.dcmread(TEST_FILES / "MR_small_RLE.dcm")
    [arrived] = got
    arrived.file_meta = pydicom.dataset.FileMetaDataset()
    arrived.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert np.array_equal(arrived.pixel_array, source.pixel_array)


def test_c_get_of_a_class_without_scp_role_fails_that_sub_operation(archive: Archive) -> None:
    """The requester took the SCP role for MR only: the SC object of the JPEG study
    cannot go, a failed sub-operation (0xA702: none could), its UID in the list."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=ECHOES_AE,
                         ext_neg=[build_role(MRImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        responses = list(assoc.send_c_get(
            _identifier("STUDY", StudyInstanceUID=archive.jpeg_study),
            StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    source = pydicom.dcmread(TEST_FILES / "SC_rgb_jpeg_gdcm.dcm", stop_before_pixels=True)
    assert identifier.FailedSOPInstanceUIDList == source.SOPInstanceUID


def test_unknown_move_destination(archive: Archive) -> None:
    statuses, _ = py_move(archive, "NOWHERE", _identifier("STUDY",
                                                          StudyInstanceUID=archive.study))
    assert [s.Status for s in statuses] == [0xA801]
    assert "C-MOVE to NOWHERE from PYSCU refused: 0xA801" in archive.log()


def test_destination_down_is_failures_not_a_hang(archive: Archive) -> None:
    statuses, identifier = py_move(archive, "DOWN", _identifier(
        "SERIES", StudyInstanceUID=archive.study, SeriesInstanceUID=archive.series[1]))
    final = statuses[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == STUDY_SIZE // 2
    assert final.NumberOfCompletedSuboperations == 0
    assert identifier is not None
    assert set(identifier.FailedSOPInstanceUIDList) == set(archive.sops[1::2])


def test_some_failed_is_b000_with_their_uids(archive: Archive) -> None:
    """The destination aborts under the 3rd object and refuses the 10th: the move goes on
    over a new association, 0xB000 names exactly those two."""
    statuses, identifier = py_move(archive, "FLAKY", _identifier(
        "SERIES", StudyInstanceUID=archive.study, SeriesInstanceUID=archive.series[0]))
    final = statuses[-1]
    assert final.Status == 0xB000, final
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (
        STUDY_SIZE // 2 - 2, 2)
    series = archive.sops[0::2]  # in instance order, as they were sent
    assert identifier is not None
    assert list(identifier.FailedSOPInstanceUIDList) == [series[2], series[9]]
    assert set(archive.flaky.received) == set(series) - {series[2], series[9]}


def test_silent_destination_fails_within_network_timeout(archive: Archive) -> None:
    """A destination that takes the TCP connection but never answers the A-ASSOCIATE-RQ
    (a listening socket nobody accepts on): the objects are failures once
    network_timeout (5 s here) has passed, the move does not hang."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        home = archive.server.config.path
        text = home.read_text()
        home.write_text(text + f"\n[ae:SILENT]\nhost = 127.0.0.1\nport = {port}\nforward = no\n")
        try:
            reload = subprocess.run([sys.executable, "-m", "echoes", "--config", str(home),
                                     "reload"], capture_output=True, text=True)
            assert reload.returncode == 0, reload.stderr

            def known() -> bool:  # a move of nothing: 0xA801 until the worker reloaded
                nothing = _identifier("STUDY", StudyInstanceUID=generate_uid())
                return py_move(archive, "SILENT", nothing)[0][-1].Status == 0x0000

            wait_for(known, 10, "the store worker did not take the new [ae:SILENT]")
            statuses, _ = py_move(archive, "SILENT", _identifier(
                "IMAGE", StudyInstanceUID=archive.study, SOPInstanceUID=archive.sops[:2]))
        finally:
            home.write_text(text)
    final = statuses[-1]
    assert final.Status == 0xA702, final
    assert final.NumberOfFailedSuboperations == 2
    assert "no association to SILENT" in archive.log()
    # while echoes waited for the destination, Pending responses each second (a
    # requester with a DIMSE timeout shorter than network_timeout keeps waiting)
    waiting = [s for s in statuses[:-1] if s.Status == 0xFF00]
    assert len(waiting) >= 2
    assert all(s.NumberOfRemainingSuboperations == 2 for s in waiting)


def test_c_cancel_stops_a_get(archive: Archive) -> None:
    """C-CANCEL while echoes sends C-GET sub-operations over the requester's association
    (the requester takes a while per object): 0xFE00 with the remaining count."""
    got: list[str] = []

    def store(event: evt.Event) -> int:
        time.sleep(0.1)
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=ECHOES_AE,
                         ext_neg=[build_role(SecondaryCaptureImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, store)])
    assert assoc.is_established
    statuses = []
    try:
        for status, _found in assoc.send_c_get(
                _identifier("STUDY", StudyInstanceUID=archive.study),
                StudyRootQueryRetrieveInformationModelGet, msg_id=9):
            statuses.append(status)
            if status.Status == 0xFF00 and len(statuses) == 1:
                context = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelGet,
                                                   "", "scu")
                assoc.send_c_cancel(9, context.context_id)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00, final
    assert final.NumberOfRemainingSuboperations > 0
    assert len(got) < STUDY_SIZE
    assert "C-GET from PYSCU at STUDY level" in archive.log()


def test_large_object_is_streamed_not_read_whole(archive: Archive, tmp_path: Path) -> None:
    """C-GET of a 64 MiB object: the store worker's peak memory grows by far less than
    the object (it is sent from the file in pieces, as the sender sends)."""
    import psutil

    ds = make_dataset(rows=5800, patient_id="PBIG")  # 5800 x 5800 x 2 bytes = 64 MiB
    ds.PixelData = np.random.default_rng(5).integers(0, 65535, 5800 * 5800,
                                                     dtype="<u2").tobytes()
    big = write_part10(ds, tmp_path / "big.dcm")
    del ds
    before = sum(1 for _ in archive.server.indexed_sops())
    _storescu(archive.server.port, [big])
    archive.server.wait_ingested(before + 1, timeout=60)
    [worker] = archive.server.children("store")

    def peak() -> int:
        for line in Path(f"/proc/{worker}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    start = peak()
    out = tmp_path / "got"
    out.mkdir()
    done = subprocess.run(
        ["getscu", "-S", "-aet", "GETSCU", "-aec", ECHOES_AE, "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k",
         f"StudyInstanceUID={pydicom.dcmread(big, stop_before_pixels=True).StudyInstanceUID}",
         "127.0.0.1", str(archive.server.port)], env=DCMTK_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    [arrived] = list(out.iterdir())
    assert arrived.stat().st_size >= 5800 * 5800 * 2
    assert peak() - start < 16 << 20, psutil.Process(worker).memory_info()


def test_c_cancel_stops_a_move(archive: Archive) -> None:
    archive.slow.received.clear()
    statuses, _ = py_move(archive, "SLOW", _identifier("STUDY", StudyInstanceUID=archive.study),
                          cancel_after_pending=True)
    final = statuses[-1]
    assert final.Status == 0xFE00, final
    assert final.NumberOfRemainingSuboperations > 0
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations \
        == STUDY_SIZE
    assert len(archive.slow.received) < STUDY_SIZE
    assert "cancelled with" in archive.log()


def test_move_of_a_uid_not_archived(archive: Archive) -> None:
    """0x0000 with no sub-operation, as dcmqrscp answers (Orthanc: 0xC000), and a log
    line."""
    statuses, _ = py_move(archive, "PLAIN", _identifier("STUDY",
                                                        StudyInstanceUID=generate_uid()))
    assert [s.Status for s in statuses] == [0x0000]
    assert statuses[0].NumberOfCompletedSuboperations == 0
    assert "nothing archived matches (StudyInstanceUID): 0 sub-operations" in archive.log()


def test_bad_identifiers_get_failure_statuses(archive: Archive) -> None:
    for identifier, model in (
            (_identifier("PATIENT", PatientID=PATIENT),  # PATIENT level in Study Root
             StudyRootQueryRetrieveInformationModelMove),
            (_identifier("SERIES", SeriesInstanceUID=archive.series[0]),  # no study UID
             StudyRootQueryRetrieveInformationModelMove),
            (_identifier("STUDY", StudyInstanceUID="1.2.3\\1.2.*"),
             StudyRootQueryRetrieveInformationModelMove),
            (_identifier("FRAME", PatientID=PATIENT),
             PatientRootQueryRetrieveInformationModelMove)):
        statuses, _ = py_move(archive, "PLAIN", identifier, model)
        assert [s.Status for s in statuses] == [0xA900], identifier
    # and the server goes on
    statuses, _ = py_move(archive, "PLAIN", _identifier("IMAGE", StudyInstanceUID=archive.study,
                                                        SOPInstanceUID=archive.sops[0]))
    assert statuses[-1].Status == 0x0000


def test_caller_not_in_qr_allowed_calling_aes(archive: Archive) -> None:
    statuses, _ = py_move(archive, "PLAIN", _identifier("STUDY", StudyInstanceUID=archive.study),
                          calling="STRANGER")
    assert [s.Status for s in statuses] == [0xC124]
    assert "C-MOVE to PLAIN from STRANGER refused: 0xC124" in archive.log()


# -- Orthanc retrieves from echoes into itself ------------------------------------------


def test_orthanc_retrieves_a_study_into_itself(archive: Archive) -> None:
    """Orthanc has echoes as a modality and asks it (REST /modalities/echoes/move) to
    send a study to Orthanc's own AE, configured in echoes as [ae:ORTHANC]."""
    orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    work = archive.work / "orthanc"
    work.mkdir()
    http = free_port()
    settings = {
        "Name": "qr-test", "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC",
        "DicomPort": archive.orthanc_port, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False, "SaveJobs": False,
        "DicomModalities": {"echoes": [ECHOES_AE, "127.0.0.1", archive.server.port]},
    }
    (work / "orthanc.json").write_text(json.dumps(settings))
    process = subprocess.Popen([orthanc, str(work / "orthanc.json")], cwd=work, env=DCMTK_ENV,
                               stdout=open(work / "orthanc.log", "wb"),  # noqa: SIM115
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"

    def get(path: str) -> object:
        with urllib.request.urlopen(base + path, timeout=30) as reply:
            return json.load(reply)

    def up() -> bool:
        try:
            get("/system")
            return True
        except OSError:
            return False

    try:
        wait_for(up, 60, "Orthanc did not start")
        body = json.dumps({"Level": "Study", "Resources": [{"StudyInstanceUID": archive.study}],
                           "TargetAet": "ORTHANC", "Timeout": 60}).encode()
        request = urllib.request.Request(base + "/modalities/echoes/move", data=body,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert reply.status == 200
        statistics = get("/statistics")
        assert statistics["CountInstances"] == STUDY_SIZE  # type: ignore[index]
        [study] = get("/studies?expand")  # type: ignore[misc]
        assert study["MainDicomTags"]["StudyInstanceUID"] == archive.study
    finally:
        process.terminate()
        process.wait(60)
    assert "C-MOVE to ORTHANC from ORTHANC at STUDY level" in archive.log()


def test_pending_responses_while_moving(archive: Archive) -> None:
    """A 60-object move to the slow SCP (0.15 s an object, 9 s) sends Pending responses
    at least each second: more than the first one and the one at object 51."""
    archive.slow.received.clear()
    statuses, _ = py_move(archive, "SLOW", _identifier("SERIES", StudyInstanceUID=archive.study,
                                                       SeriesInstanceUID=archive.series[0]))
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert statuses[-1].Status == 0x0000
    assert len(pending) >= 3
    remaining = [s.NumberOfRemainingSuboperations for s in pending]
    assert remaining == sorted(remaining, reverse=True)
