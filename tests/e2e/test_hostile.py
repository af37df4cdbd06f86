"""Hostile input end to end: malformed data sets over C-STORE, hostile worklist files.

One real ``echoes start`` (module scope, one store worker) takes:

- data sets whose bytes are hostile, sent raw: a Part 10 file with a valid
  File Meta and hostile data set bytes, sent by pynetdicom with
  ``STORE_SEND_CHUNKED_DATASET`` (the bytes after the meta go out unchanged).
  Each must get a failure status that says why, and leave the server whole:
  the same child processes, both ports answering, nothing archived, indexed,
  spooled or written anywhere else;
- files with missing or wrong File Meta sent by dcmtk ``storescu`` (which
  re-encodes what it could parse, or gives up before sending);
- hostile worklist files dropped into the running server's worklist folder:
  each is skipped, logged once and reported by ``echoes worklist --check``,
  while the MWL process keeps serving the valid items without a restart.

Run with ``-s`` to read the outcome of every case at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from helpers import DCMTK_ENV, Server, echo_ok, make_dataset, start_server, stop_server
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from echoes.worklist.files import MAX_FILE_BYTES, MAX_SEQUENCE_DEPTH

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MWL_FIND = "1.2.840.10008.5.1.4.31"
ROLES = ("store", "mwl", "ingester", "sender", "web")
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH_SOP_CLASS = 0xA900

#: Hostile UIDs are meant: pydicom's warnings about them are noise here.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

#: case id -> outcome, printed at the end of the module (read with -s).
OUTCOMES: dict[str, dict[str, str]] = {"data set": {}, "storescu": {}, "worklist": {}}


# -- the server ----------------------------------------------------------------------

#: The valid worklist items served all along: PatientID -> keyword-form item.
VALID_ITEMS = {
    "VALID-1": {"PatientName": "DOE^JANE", "AccessionNumber": "A1",
                "ScheduledProcedureStepSequence": [{
                    "Modality": "CT", "ScheduledStationAETitle": "CT01",
                    "ScheduledProcedureStepStartDate": "20261130"}]},
    "VALID-2": {"PatientName": "ROE^RICHARD", "AccessionNumber": "A2",
                "ScheduledProcedureStepSequence": [{
                    "Modality": "MR", "ScheduledStationAETitle": "MR01",
                    "ScheduledProcedureStepStartDate": "20261201"}]},
}


def drop_file(folder: Path, name: str, data: bytes) -> Path:
    """Write as a RIS should: a dot-name first, then rename into place."""
    temporary = folder / f".{name}.tmp"
    temporary.write_bytes(data)
    os.rename(temporary, folder / name)
    return folder / name


def processes(server: Server) -> dict[str, list[int]]:
    return {role: sorted(server.children(role)) for role in ROLES}


@dataclass
class Hostile:
    """The server of this module and what it looked like when it came up."""

    server: Server
    children: dict[str, list[int]]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    home = tmp_path_factory.mktemp("hostile") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    for patient_id, item in VALID_ITEMS.items():
        drop_file(folder, f"{patient_id}.json",
                  json.dumps({"PatientID": patient_id, **item}).encode())
    server = start_server(home, store_workers=1)
    assert server.config.worklist_dir == folder
    children = processes(server)
    assert all(children[role] for role in ROLES), children
    try:
        yield Hostile(server, children)
    finally:
        stop_server(server)
        print_summary()


def print_summary() -> None:
    counts = ", ".join(f"{len(cases)} {kind} cases" for kind, cases in OUTCOMES.items())
    print(f"\nhostile: {counts}; outcomes:")
    for kind, cases in OUTCOMES.items():
        for case, outcome in cases.items():
            print(f"  {kind:9} {case:38} {outcome}")


def assert_server_whole(hostile: Hostile) -> None:
    """No child died or was restarted, and both ports still answer C-ECHO."""
    server = hostile.server
    assert server.process.poll() is None, "supervisor exited"
    assert processes(server) == hostile.children, "a child process died or was restarted"
    assert echo_ok(server.config.store_port), "store port does not answer C-ECHO"
    assert echo_ok(server.config.mwl_port), "worklist port does not answer C-ECHO"


# -- raw encoding ----------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
PATIENT_COMMENTS = 0x00104000
STUDY_UID = 0x0020000D
PIXEL_DATA = 0x7FE00010
DIGITAL_SIGNATURES = 0xFFFAFFFA


def element(tag: int, vr: bytes, value: bytes = b"", length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` may lie about ``value``."""
    size = len(value) if length is None else length
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, size) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, size) + value


def item(value: bytes = b"", length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return struct.pack("<HHL", 0xFFFE, 0xE000, size) + value


def uid_bytes(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + b"\x00" * (len(raw) % 2)


def file_meta(sop_class: str, sop_instance: str, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """Preamble, DICM and a File Meta group written by hand (any UID goes)."""
    group = (element(0x00020001, b"OB", b"\x00\x01")
             + element(0x00020002, b"UI", uid_bytes(sop_class))
             + element(0x00020003, b"UI", uid_bytes(sop_instance))
             + element(0x00020010, b"UI", uid_bytes(syntax))
             + element(0x00020012, b"UI", uid_bytes("1.2.826.0.1.3680043.10.999")))
    return (b"\x00" * 128 + b"DICM" + element(0x00020000, b"UL", struct.pack("<L", len(group)))
            + group)


def encode(ds: Dataset) -> bytes:
    """A data set's explicit VR little endian bytes, no File Meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def offset_of(data: bytes, tag: int) -> int:
    return data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF))


# -- hostile data sets -----------------------------------------------------------------


@dataclass
class Raw:
    """What goes on the wire: the command's UIDs (from the File Meta) and the data set."""

    sop_class: str
    sop_instance: str
    data: bytes


def _valid(**changes: object) -> tuple[Dataset, bytes]:
    ds = make_dataset()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds, encode(ds)


def _insert_before(tag: int, extra: bytes) -> Callable[[], Raw]:
    def build() -> Raw:
        ds, data = _valid()
        at = offset_of(data, tag)
        return Raw(ds.SOPClassUID, ds.SOPInstanceUID, data[:at] + extra + data[at:])
    return build


def _append(extra: bytes, without_pixels: bool = False) -> Callable[[], Raw]:
    def build() -> Raw:
        ds, data = _valid(PixelData=None) if without_pixels else _valid()
        return Raw(ds.SOPClassUID, ds.SOPInstanceUID, data + extra)
    return build


def _truncated_mid_element() -> Raw:
    ds, data = _valid()
    cut = offset_of(data, STUDY_UID) + 6  # StudyInstanceUID's tag and VR, no length
    return Raw(ds.SOPClassUID, ds.SOPInstanceUID, data[:cut])


def _junk() -> Raw:
    return Raw(SC_IMAGE, generate_uid(), random.Random(20261129).randbytes(4096))


def _without(keyword: str) -> Callable[[], Raw]:
    def build() -> Raw:
        ds = make_dataset()
        sop_class, sop_instance = ds.SOPClassUID, ds.SOPInstanceUID
        delattr(ds, keyword)
        return Raw(sop_class, sop_instance, encode(ds))
    return build


def _hostile_uid(keyword: str, uid: str) -> Callable[[], Raw]:
    """``uid`` in the data set; for the SOP Instance UID in the command as well."""
    def build() -> Raw:
        ds = make_dataset()
        ds[keyword].value = uid  # no pydicom validation on the way in
        instance = uid if keyword == "SOPInstanceUID" else ds.SOPInstanceUID
        return Raw(ds.SOPClassUID, instance, encode(ds))
    return build


def _other_in_command(which: str) -> Callable[[], Raw]:
    def build() -> Raw:
        ds, data = _valid()
        if which == "instance":
            return Raw(ds.SOPClassUID, generate_uid(), data)
        return Raw(CT_IMAGE, ds.SOPInstanceUID, data)
    return build



#: (id, builder, expected status, words the ErrorComment holds, xfail reason or None)
DATA_SET_CASES: list[tuple[str, Callable[[], Raw], int, str, str | None]] = [
    ("invalid-vr-ZZ", _insert_before(STUDY_UID, element(PATIENT_COMMENTS, b"ZZ", b"ABCD")),
     CANNOT_UNDERSTAND, "bad VR", None),
    ("invalid-vr-binary", _insert_before(STUDY_UID, element(PATIENT_COMMENTS, b"\x01\x02",
                                                            b"ABCD")),
     CANNOT_UNDERSTAND, "bad VR", None),
    ("sequence-never-closes",
     _append(element(DIGITAL_SIGNATURES, b"SQ", length=UNDEFINED)
             + item(element(0x00400441, b"UL", b"\x01\x00\x00\x00"))),
     CANNOT_UNDERSTAND, "truncated", None),
    ("item-never-closes",
     _append(element(DIGITAL_SIGNATURES, b"SQ", length=UNDEFINED) + item(length=UNDEFINED)
             + element(0x00400441, b"UL", b"\x01\x00\x00\x00")),
     CANNOT_UNDERSTAND, "truncated", None),
    ("huge-length-0xFFFFFFF0",
     _append(element(PIXEL_DATA, b"OB", b"\x00" * 16, length=0xFFFFFFF0), without_pixels=True),
     CANNOT_UNDERSTAND, "declares 4294967280 bytes", None),
    ("odd-length-dangling-byte",
     _append(element(PIXEL_DATA, b"OW", b"\x01\x00" * 16, length=31), without_pixels=True),
     CANNOT_UNDERSTAND, "truncated", None),
    ("truncated-mid-element", _truncated_mid_element, CANNOT_UNDERSTAND, "truncated", None),
    ("random-junk-4096", _junk, CANNOT_UNDERSTAND, "Cannot understand", None),
    ("missing-SOPInstanceUID", _without("SOPInstanceUID"), DOES_NOT_MATCH_SOP_CLASS,
     "SOPInstanceUID missing", None),
    ("missing-SOPClassUID", _without("SOPClassUID"), DOES_NOT_MATCH_SOP_CLASS,
     "SOPClassUID missing", None),
    ("uid-dotdot", _hostile_uid("SOPInstanceUID", "../../etc"), DOES_NOT_MATCH_SOP_CLASS,
     "SOPInstanceUID not a valid UID", None),
    ("uid-slash", _hostile_uid("SOPInstanceUID", "1.2/3"), DOES_NOT_MATCH_SOP_CLASS,
     "SOPInstanceUID not a valid UID", None),
    ("uid-nul", _hostile_uid("SOPInstanceUID", "1.2\x00.3"), DOES_NOT_MATCH_SOP_CLASS,
     "SOPInstanceUID not a valid UID", None),
    ("study-uid-dotdot", _hostile_uid("StudyInstanceUID", "../../../tmp"),
     DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID not a valid UID", None),
    ("sop-instance-differs-from-command", _other_in_command("instance"),
     DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs", None),
    ("sop-class-differs-from-command", _other_in_command("class"),
     DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs", None),
]


def send_raw(port: int, path: Path, sop_class: str) -> Dataset:
    """C-STORE the bytes after ``path``'s File Meta unchanged; the response status."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOES")
    assert assoc.is_established
    saved = _config.STORE_SEND_CHUNKED_DATASET, _config.ENFORCE_UID_CONFORMANCE
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.ENFORCE_UID_CONFORMANCE = False  # let hostile UIDs into the command
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET, _config.ENFORCE_UID_CONFORMANCE = saved
        assoc.release()
    assert status, "no response (association aborted or timed out)"
    return status


def home_files(server: Server) -> set[Path]:
    """Every file in the home but the spool and the log, and the index's own
    files (catalog, shards, journals), which the ingester writes or compacts
    on its own schedule after earlier, legitimate objects; all are checked on
    their own (indexed_sops, archived_sops, receive_leftovers).
    """
    skip = (server.config.spool_dir, server.config.log_file.parent)
    index_name = server.config.index_path.name
    return {p for p in server.home.rglob("*")
            if not p.is_dir() and not any(s in p.parents for s in skip)
            and not p.name.startswith(index_name) and p.parent.name != f"{index_name}.d"}


def receive_leftovers(server: Server) -> list[Path]:
    """Receive files of the store workers, after a short grace for the handler.

    Empty files are the workers' spares (store.SpareFiles); a receive file
    always holds at least its File Meta.
    """
    deadline = time.monotonic() + 2
    while True:
        left = list((server.config.spool_dir / "tmp").rglob("*"))
        left = [p for p in left if not p.is_dir() and p.stat().st_size > 0]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wait_settled(server: Server, sop: str, timeout: float = 15) -> bool:
    """Wait for a (wrongly) acknowledged object to be ingested; True once it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        incoming = list((server.config.spool_dir / "incoming").iterdir())
        if sop in server.indexed_sops() and not incoming:
            return True
        time.sleep(0.1)
    return False


def _params() -> list:
    params = []
    for case_id, build, status, words, bug in DATA_SET_CASES:
        marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
        params.append(pytest.param(case_id, build, status, words, id=case_id, marks=marks))
    return params


@pytest.mark.parametrize("case_id, build, expected, words", _params())
def test_hostile_data_set_is_refused(hostile: Hostile, tmp_path: Path, case_id: str,
                                     build: Callable[[], Raw], expected: int,
                                     words: str) -> None:
    server = hostile.server
    raw = build()
    path = tmp_path / "hostile.dcm"
    path.write_bytes(file_meta(raw.sop_class, raw.sop_instance) + raw.data)
    files_before = home_files(server)
    archived_before = sorted(server.archived_sops())
    indexed_before = sorted(server.indexed_sops())

    status = send_raw(server.port, path, raw.sop_class)
    comment = str(status.get("ErrorComment", ""))
    OUTCOMES["data set"][case_id] = f"0x{status.Status:04X} {comment}".rstrip()
    if status.Status == SUCCESS:
        settled = wait_settled(server, raw.sop_instance)  # so later cases start clean
        fate = "archived and indexed" if settled else "not ingested in 15 s"
        OUTCOMES["data set"][case_id] = f"0x0000 Success (BUG: {fate})"
        pytest.fail(f"{case_id}: Success for a hostile object ({fate})")

    assert status.Status == expected, comment
    assert words in comment
    assert_server_whole(hostile)
    assert not receive_leftovers(server), "receive file left in spool/tmp"
    assert not list((server.config.spool_dir / "incoming").iterdir())
    assert not list((server.config.spool_dir / "rejected").iterdir())
    assert sorted(server.archived_sops()) == archived_before
    assert sorted(server.indexed_sops()) == indexed_before
    assert home_files(server) == files_before, "a file appeared in the home"
    assert not server.files_outside()


def test_odd_length_that_fits_is_refused_or_stored_whole(hostile: Hostile,
                                                         tmp_path: Path) -> None:
    """An odd value length whose bytes are all there (PS3.5 7.1.1 wants even).

    Sloppy modalities write these and dcmtk and pydicom read them, so a
    careful archive may tolerate one; what it must not do is store it half.
    """
    server = hostile.server
    raw = _insert_before(STUDY_UID, element(PATIENT_COMMENTS, b"LT", b"ABC"))()
    path = tmp_path / "odd.dcm"
    path.write_bytes(file_meta(raw.sop_class, raw.sop_instance) + raw.data)
    status = send_raw(server.port, path, raw.sop_class)
    if status.Status == SUCCESS:
        assert wait_settled(server, raw.sop_instance), "acknowledged but not ingested"
        stored = pydicom.dcmread(next(server.config.archive_dir.rglob(f"{raw.sop_instance}.dcm")))
        assert stored.PatientComments == "ABC"
        assert stored.PixelData == make_dataset().PixelData
        outcome = "0x0000 tolerated: archived whole"
    else:
        assert status.Status & 0xF000 == CANNOT_UNDERSTAND, status
        assert raw.sop_instance not in server.archived_sops()
        outcome = f"0x{status.Status:04X} {status.get('ErrorComment', '')}"
    OUTCOMES["data set"]["odd-length-that-fits"] = outcome
    assert_server_whole(hostile)
    assert not receive_leftovers(server)
    assert not server.files_outside()


# -- storescu and broken File Meta ---------------------------------------------------------


def _no_meta(implicit: bool) -> Callable[[Path], str]:
    def build(path: Path) -> str:
        ds = make_dataset()
        del ds.file_meta
        ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
        return ds.SOPInstanceUID
    return build


def _meta_says_implicit(path: Path) -> str:
    ds = make_dataset()
    path.write_bytes(file_meta(SC_IMAGE, ds.SOPInstanceUID, ImplicitVRLittleEndian) + encode(ds))
    return ds.SOPInstanceUID


def _meta_other_uids(path: Path) -> str:
    ds = make_dataset()
    path.write_bytes(file_meta(CT_IMAGE, generate_uid()) + encode(ds))
    return ds.SOPInstanceUID


def _junk_meta(path: Path) -> str:
    ds = make_dataset()
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\xff\xff" + b"junk" * 10
                     + encode(ds))
    return ds.SOPInstanceUID


def _preamble_only(path: Path) -> str:
    ds = make_dataset()
    path.write_bytes(b"\x00" * 128 + b"DICM" + encode(ds))
    return ds.SOPInstanceUID


STORESCU_CASES = {
    "no-meta-implicit-data-set": _no_meta(implicit=True),
    "no-meta-explicit-data-set": _no_meta(implicit=False),
    "DICM-prefix-but-no-meta-group": _preamble_only,
    "meta-says-implicit-data-set-explicit": _meta_says_implicit,
    "meta-uids-differ-from-data-set": _meta_other_uids,
    "meta-group-is-junk": _junk_meta,
}


@pytest.mark.parametrize("case_id", list(STORESCU_CASES))
def test_storescu_with_missing_or_wrong_file_meta(hostile: Hostile, tmp_path: Path,
                                                  dcmtk: None, case_id: str) -> None:
    """storescu re-encodes what it parsed: the server gets a whole object or nothing.

    Either storescu gives up before sending (nothing stored), or the object
    is stored whole under the data set's own SOP Instance UID.
    """
    server = hostile.server
    path = tmp_path / "file.dcm"
    sop = STORESCU_CASES[case_id](path)
    done = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "ECHOES", "-R", "-v",
                           "127.0.0.1", str(server.port), str(path)], env=DCMTK_ENV,
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    response = re.search(r"Received Store Response \(([^)]*)\)", output)
    if response:
        outcome = f"sent, response {response.group(1)}"
    else:
        errors = [line for line in output.splitlines() if line.startswith("E:")]
        outcome = f"not sent by storescu (exit {done.returncode}): " + (
            errors[0][3:].strip() if errors else "no error line")
    if response and response.group(1) == "Success":
        assert wait_settled(server, sop), "acknowledged but not ingested"
        stored = pydicom.dcmread(next(server.config.archive_dir.rglob(f"{sop}.dcm")))
        original = make_dataset()  # same pixel values as every made data set
        assert stored.SOPInstanceUID == sop
        assert stored.PixelData == original.PixelData
        outcome += ", archived whole under the data set's SOP Instance UID"
    else:
        assert sop not in server.archived_sops()
    OUTCOMES["storescu"][case_id] = outcome
    assert_server_whole(hostile)
    assert not receive_leftovers(server)
    assert not list((server.config.spool_dir / "rejected").iterdir())
    assert not server.files_outside()


# -- hostile worklist files ------------------------------------------------------------------


def _nested_sequences(depth: int) -> bytes:
    step: dict = {"Modality": "CT"}
    for _ in range(depth):
        step = {"ScheduledProcedureStepSequence": [step]}
    return json.dumps({"PatientID": "HOSTILE-DEEP", **step}).encode()


def _item(**values: object) -> bytes:
    return json.dumps({"PatientID": "HOSTILE", "PatientName": "EVIL^EVE", **values}).encode()


@dataclass
class WorklistCase:
    """One hostile entry in the worklist folder and how echoes should see it."""

    name: str
    make: Callable[[Path], None]
    reason: str | None  # regex of the --check reason; None: not a file, ignored


def _file(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        drop_file(path.parent, path.name, data)
    return make


WORKLIST_CASES = [
    WorklistCase("deep-sequences.json", _file(_nested_sequences(MAX_SEQUENCE_DEPTH + 2)),
                 rf"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"),
    WorklistCase("json-100000-deep.json",
                 _file(b'{"PatientName": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                 r"nested too deeply"),
    WorklistCase("five-megabytes.json",
                 _file(_item(PatientComments="x" * 5_000_000)),
                 rf"larger than {MAX_FILE_BYTES} bytes"),
    WorklistCase("huge-string.json", _file(_item(PatientComments="x" * 900_000)),
                 r"PatientComments: The value length \(900000\) exceeds the maximum length"),
    WorklistCase("name-is-a-list.json", _file(_item(PatientName=["DOE^JANE", "ROE^RICHARD"])),
                 r"PatientName: 2 values where at most 1 allowed"),
    WorklistCase("id-is-an-object.json", _file(_item(PatientID={"value": "HOSTILE"})),
                 r"PatientID: expected a LO value, not an object"),
    WorklistCase("modality-is-a-number.json",
                 _file(_item(ScheduledProcedureStepSequence=[{"Modality": 42}])),
                 r"ScheduledProcedureStepSequence\[0\]\.Modality: CS wants a string, "
                 r"not a number"),
    WorklistCase("binary-junk.json",
                 _file(b"\xff\xfe" + random.Random(4001).randbytes(4096)), r"not UTF-8"),
    WorklistCase("empty.json", _file(b""), r"not JSON"),
    WorklistCase("y.json", lambda path: os.symlink("/etc/passwd", path),
                 r"not JSON|cannot read"),
    WorklistCase("x.json", lambda path: path.mkdir(), None),
    WorklistCase("fifo.json", lambda path: os.mkfifo(path), None),
]


def skipped_lines(server: Server, since: int, name: str) -> list[str]:
    with open(server.config.log_file, "rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if f"worklist file {name} skipped:" in line]


@dataclass
class DroppedWorklist:
    log_offset: int
    check: subprocess.CompletedProcess
    listed: dict[str, str]


def worklist_check(server: Server) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(server.config.path),
                           "worklist", "--check"], capture_output=True, text=True, timeout=60)


def remove_worklist_cases(folder: Path) -> None:
    for case in WORKLIST_CASES:
        path = folder / case.name
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def dropped(hostile: Hostile) -> Iterator[DroppedWorklist]:
    """Every hostile worklist entry dropped into the running server's folder at once."""
    server = hostile.server
    folder = server.config.worklist_dir
    offset = server.config.log_file.stat().st_size
    for case in WORKLIST_CASES:
        case.make(folder / case.name)
    reported = [c.name for c in WORKLIST_CASES if c.reason]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
            skipped_lines(server, offset, name) for name in reported):
        time.sleep(0.1)
    check = worklist_check(server)
    listed = dict(line.split(": ", 1) for line in check.stdout.splitlines() if ": " in line)
    try:
        yield DroppedWorklist(offset, check, listed)
    finally:
        remove_worklist_cases(folder)


@pytest.mark.parametrize("case", WORKLIST_CASES, ids=[c.name for c in WORKLIST_CASES])
def test_hostile_worklist_file_is_skipped_and_reported(hostile: Hostile,
                                                       dropped: DroppedWorklist,
                                                       case: WorklistCase) -> None:
    server = hostile.server
    assert dropped.check.returncode == 1, dropped.check.stderr
    logged = skipped_lines(server, dropped.log_offset, case.name)
    if case.reason is None:
        # Not a regular file: never opened (a FIFO would block the reader), never listed.
        OUTCOMES["worklist"][case.name] = "ignored: not a regular file (not listed, not logged)"
        assert case.name not in dropped.listed
        assert not logged
        return
    reason = dropped.listed.get(case.name)
    OUTCOMES["worklist"][case.name] = f"skipped: {reason}"[:160]
    assert reason is not None, f"{case.name} not listed by worklist --check"
    assert re.search(case.reason, reason), reason
    assert len(logged) == 1, logged


def c_find_patient_ids(port: int) -> list[str]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MWL_FIND, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOES")
    assert assoc.is_established
    query = Dataset()
    query.PatientID = ""
    query.PatientName = ""
    query.PatientComments = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [step]
    found, final = [], None
    try:
        for status, identifier in assoc.send_c_find(query, MWL_FIND):
            assert status, "no response"
            if status.Status in (0xFF00, 0xFF01):
                found.append(str(identifier.PatientID))
                assert "root:" not in str(identifier.get("PatientComments", ""))
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final == SUCCESS
    return found


def test_mwl_serves_only_the_valid_items_and_did_not_restart(hostile: Hostile,
                                                             dropped: DroppedWorklist) -> None:
    server = hostile.server
    mwl_pid = hostile.children["mwl"]
    assert sorted(c_find_patient_ids(server.config.mwl_port)) == sorted(VALID_ITEMS)
    assert_server_whole(hostile)
    assert server.children("mwl") == mwl_pid
    reported = {c.name for c in WORKLIST_CASES if c.reason}
    assert set(dropped.listed) == reported
    assert f"{len(VALID_ITEMS)} valid, {len(reported)} invalid" in dropped.check.stdout


def test_removing_the_hostile_files_leaves_a_clean_worklist(hostile: Hostile,
                                                            dropped: DroppedWorklist) -> None:
    server = hostile.server
    remove_worklist_cases(server.config.worklist_dir)
    check = worklist_check(server)
    assert check.returncode == 0, check.stdout
    deadline = time.monotonic() + 10
    while sorted(c_find_patient_ids(server.config.mwl_port)) != sorted(VALID_ITEMS):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert_server_whole(hostile)
    log = server.config.log_file.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log
    assert not server.files_outside()
