"""The MWL SCP end to end: dcmtk findscu -W and a pynetdicom client against echoes.

One server (module scope) serves a small worklist written in both JSON forms;
each matching key, wildcard, range and sequence rule is asked over the wire
and the answering PatientIDs compared.  Other tests drop files in and take
them out while the server runs, cancel a long answer, and ask in ISO_IR 100,
ISO_IR 192 and all three transfer syntaxes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from helpers import DCMTK_ENV, Server, start_server, stop_server
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

MWL_FIND = "1.2.840.10008.5.1.4.31"
SPS = "ScheduledProcedureStepSequence"


def step(modality: str, station: str, date: str, time_: str, performer: str, **extra) -> dict:
    return {"Modality": modality, "ScheduledStationAETitle": station,
            "ScheduledProcedureStepStartDate": date, "ScheduledProcedureStepStartTime": time_,
            "ScheduledPerformingPhysicianName": performer, **extra}


#: The worklist every test of the module starts from: PatientID -> keyword-form item.
ITEMS: dict[str, dict] = {
    "P1": {"PatientName": "DOE^JANE", "PatientSex": "F", "PatientBirthDate": "19700101",
           "AccessionNumber": "A1001", "ReferringPhysicianName": "WHO^DR",
           "RequestingPhysician": "REQ^ONE", "AdmissionID": "ADM1",
           "RequestedProcedureID": "RP1001", "RequestedProcedurePriority": "ROUTINE",
           "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.1",
           "RequestedProcedureDescription": "CT HEAD",
           SPS: [step("CT", "CT01", "20261130", "0930", "RAD^ONE",
                      ScheduledProcedureStepID="S1",
                      ScheduledProcedureStepDescription="CT HEAD PLAIN")]},
    "P2": {"PatientName": "Müller^Hans", "PatientSex": "M", "PatientBirthDate": "19800202",
           "AccessionNumber": "A1002", "ReferringPhysicianName": "OTHER^DR",
           "RequestingPhysician": "REQ^TWO", "AdmissionID": "ADM2",
           "RequestedProcedureID": "RP1002", "RequestedProcedurePriority": "HIGH",
           "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.2",
           SPS: [step("MR", "MR01", "20261130", "1400", "RAD^TWO")]},
    "P3": {"PatientName": "SMITH^JOHN", "PatientSex": "M", "PatientBirthDate": "19601231",
           "AccessionNumber": "A1003", "ReferringPhysicianName": "WHO^DR",
           "RequestingPhysician": "REQ^ONE", "AdmissionID": "ADM3",
           "RequestedProcedureID": "RP1003", "RequestedProcedurePriority": "ROUTINE",
           "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.3",
           SPS: [step("CT", "CT02", "20261201", "0800", "RAD^ONE")]},
    "P4": {"PatientName": "SMYTHE^ANNA", "PatientSex": "F", "PatientBirthDate": "19900515",
           "AccessionNumber": "A1004", "ReferringPhysicianName": "WHO^DR",
           "RequestingPhysician": "REQ^THREE", "AdmissionID": "ADM4",
           "RequestedProcedureID": "RP1004", "RequestedProcedurePriority": "STAT",
           "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.4",
           SPS: [step("US", "US01", "20261202", "2330", "RAD^THREE")]},
}

#: P5 is written in the DICOM JSON model (PS3.18 Annex F).
P5_JSON_MODEL = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
    "00100020": {"vr": "LO", "Value": ["P5"]},
    "00100040": {"vr": "CS", "Value": ["M"]},
    "00080050": {"vr": "SH", "Value": ["A1005"]},
    "00401001": {"vr": "SH", "Value": ["RP1005"]},
    "00400100": {"vr": "SQ", "Value": [{
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00400001": {"vr": "AE", "Value": ["CT01"]},
        "00400002": {"vr": "DA", "Value": ["20261201"]},
        "00400003": {"vr": "TM", "Value": ["0200"]},
        "00400006": {"vr": "PN", "Value": [{"Alphabetic": "RAD^ONE"}]},
    }]},
}

ALL = {"P1", "P2", "P3", "P4", "P5"}


def write_item(folder: Path, name: str, document: dict) -> Path:
    """Write as a RIS should: a dot-name first, then rename into place."""
    temporary = folder / f".{name}.tmp"
    temporary.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    os.rename(temporary, folder / name)
    return folder / name


@pytest.fixture(scope="module")
def mwl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("mwl") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    for patient_id, document in ITEMS.items():
        write_item(folder, f"{patient_id}.json", {"PatientID": patient_id, **document})
    write_item(folder, "P5.json", P5_JSON_MODEL)
    (folder / "broken.json").write_text('{"PatientName": "X^Y",')
    (folder / "notes.txt").write_text("not a worklist file")
    running = start_server(home, store_workers=1)
    yield running
    stop_server(running)


def findscu(server: Server, keys: list[str], out: Path, *extra: str) -> list[Dataset]:
    """Run ``findscu -W`` with ``-k`` keys; the responses as data sets."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    argv = ["findscu", "-W", "-X", "-od", str(out), *extra]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(server.config.mwl_port)]
    done = subprocess.run(argv, env=DCMTK_ENV, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def patient_ids(responses: list[Dataset]) -> set[str]:
    return {str(ds.PatientID) for ds in responses}


#: (matching keys, PatientIDs expected).  PatientID is always asked as a return key.
MATCHING_CASES = [
    pytest.param([], ALL, id="universal"),
    pytest.param(["AccessionNumber=A1003"], {"P3"}, id="AccessionNumber"),
    pytest.param(["ReferringPhysicianName=WHO^DR"], {"P1", "P3", "P4"},
                 id="ReferringPhysicianName"),
    pytest.param(["PatientName=DOE^JANE"], {"P1"}, id="PatientName"),
    pytest.param(["PatientName=doe^jane"], {"P1"}, id="PatientName-case-insensitive"),
    pytest.param(["PatientName=SM*"], {"P3", "P4"}, id="PatientName-star"),
    pytest.param(["PatientName=DOE^J?NE"], {"P1"}, id="PatientName-question-mark"),
    pytest.param(["PatientName=*"], ALL, id="PatientName-star-alone"),
    pytest.param(["PatientID=P2"], {"P2"}, id="PatientID"),
    pytest.param(["PatientBirthDate=19700101"], {"P1"}, id="PatientBirthDate"),
    pytest.param(["PatientBirthDate=19750101-19951231"], {"P2", "P4"},
                 id="PatientBirthDate-range"),
    pytest.param(["PatientSex=F"], {"P1", "P4"}, id="PatientSex"),
    pytest.param(["RequestingPhysician=REQ^ONE"], {"P1", "P3"}, id="RequestingPhysician"),
    pytest.param(["AdmissionID=ADM4"], {"P4"}, id="AdmissionID"),
    pytest.param(["RequestedProcedureID=RP1005"], {"P5"}, id="RequestedProcedureID"),
    pytest.param(["RequestedProcedurePriority=STAT"], {"P4"}, id="RequestedProcedurePriority"),
    pytest.param(["StudyInstanceUID=1.2.826.0.1.3680043.10.1.1\\1.2.826.0.1.3680043.10.1.4"],
                 {"P1", "P4"}, id="StudyInstanceUID-list"),
    pytest.param([f"{SPS}[0].Modality=CT"], {"P1", "P3", "P5"}, id="Modality"),
    pytest.param([f"{SPS}[0].ScheduledStationAETitle=CT01"], {"P1", "P5"},
                 id="ScheduledStationAETitle"),
    pytest.param([f"{SPS}[0].ScheduledStationAETitle=CT*"], {"P1", "P3", "P5"},
                 id="ScheduledStationAETitle-star"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartDate=20261130"], {"P1", "P2"},
                 id="StartDate"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartDate=20261201-20261202"],
                 {"P3", "P4", "P5"}, id="StartDate-range"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartDate=-20261130"], {"P1", "P2"},
                 id="StartDate-until"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartDate=20261202-"], {"P4"},
                 id="StartDate-from"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartTime=0800-1000"], {"P1", "P3"},
                 id="StartTime-range"),
    pytest.param([f"{SPS}[0].ScheduledProcedureStepStartDate=20261130-20261201",
                  f"{SPS}[0].ScheduledProcedureStepStartTime=1200-0600"], {"P2", "P5"},
                 id="StartDateTime-combined"),
    pytest.param([f"{SPS}[0].ScheduledPerformingPhysicianName=RAD^ONE"], {"P1", "P3", "P5"},
                 id="ScheduledPerformingPhysicianName"),
    pytest.param([f"{SPS}[0].Modality=CT", f"{SPS}[0].ScheduledStationAETitle=CT02"], {"P3"},
                 id="sequence-two-keys"),
    pytest.param([f"{SPS}[0].Modality=CT", f"{SPS}[0].ScheduledProcedureStepStartDate=20261201",
                  "PatientName=DOE*"], {"P5"}, id="day-modality-name"),
    pytest.param(["PatientID=NOBODY"], set(), id="no-match"),
]


@pytest.mark.parametrize(("keys", "expected"), MATCHING_CASES)
def test_findscu_matching(mwl: Server, tmp_path: Path, dcmtk: None, keys: list[str],
                          expected: set[str]) -> None:
    wanted = keys + ([] if any(k.startswith("PatientID=") for k in keys) else ["PatientID"])
    assert patient_ids(findscu(mwl, wanted, tmp_path)) == expected


def test_response_holds_exactly_the_asked_keys(mwl: Server, tmp_path: Path, dcmtk: None) -> None:
    keys = ["PatientID=P1", "PatientName", "StudyInstanceUID", "PatientWeight",
            f"{SPS}[0].Modality", f"{SPS}[0].ScheduledProcedureStepDescription",
            f"{SPS}[0].ScheduledProcedureStepID", f"{SPS}[0].ScheduledProcedureStepLocation"]
    [response] = findscu(mwl, keys, tmp_path)
    assert {e.keyword for e in response} == {"PatientID", "PatientName", "StudyInstanceUID",
                                             "PatientWeight", SPS}
    assert response.PatientName == "DOE^JANE"
    assert response.StudyInstanceUID == ITEMS["P1"]["StudyInstanceUID"]
    assert response.PatientWeight is None  # asked, not in the file: empty
    [item] = response[SPS].value
    assert {e.keyword for e in item} == {"Modality", "ScheduledProcedureStepDescription",
                                         "ScheduledProcedureStepID",
                                         "ScheduledProcedureStepLocation"}
    assert (item.Modality, item.ScheduledProcedureStepID) == ("CT", "S1")
    assert item.ScheduledProcedureStepDescription == "CT HEAD PLAIN"


def test_non_ascii_answer_says_iso_ir_192(mwl: Server, tmp_path: Path, dcmtk: None) -> None:
    [response] = findscu(mwl, ["PatientID=P2", "PatientName", "SpecificCharacterSet"], tmp_path)
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert str(response.PatientName) == "Müller^Hans"
    [plain] = findscu(mwl, ["PatientID=P1", "PatientName"], tmp_path)
    assert "SpecificCharacterSet" not in plain


def test_file_dropped_in_and_removed_while_running(mwl: Server, tmp_path: Path,
                                                   dcmtk: None) -> None:
    folder = mwl.config.worklist_dir
    keys = ["PatientID=P9", "PatientName"]
    assert findscu(mwl, keys, tmp_path) == []
    document = {"PatientID": "P9", "PatientName": "NEW^ARRIVAL",
                SPS: [step("CR", "CR01", "20261130", "1000", "RAD^ONE")]}
    write_item(folder, "P9.json", document)
    deadline = time.monotonic() + 1.0
    found: list[Dataset] = []
    while time.monotonic() < deadline and not found:
        found = findscu(mwl, keys, tmp_path)
    assert [str(ds.PatientName) for ds in found] == ["NEW^ARRIVAL"]

    write_item(folder, "P9.json", {**document, "PatientName": "CHANGED^NAME"})
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        found = findscu(mwl, keys, tmp_path)
        if [str(ds.PatientName) for ds in found] == ["CHANGED^NAME"]:
            break
    assert [str(ds.PatientName) for ds in found] == ["CHANGED^NAME"]

    (folder / "P9.json").unlink()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and found:
        found = findscu(mwl, keys, tmp_path)
    assert found == []


def test_invalid_file_is_reported_not_served(mwl: Server, dcmtk: None) -> None:
    base = [sys.executable, "-m", "echoes", "--config", str(mwl.config.path)]
    check = subprocess.run([*base, "worklist", "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert check.stdout.startswith("broken.json: not JSON")
    listing = subprocess.run([*base, "worklist"], capture_output=True, text=True)
    assert listing.returncode == 0
    assert "Müller^Hans" in listing.stdout and "5 items; 1 invalid" in listing.stdout
    health = subprocess.run([*base, "check"], capture_output=True, text=True)
    assert "worklist file broken.json skipped: not JSON" in health.stdout
    log = mwl.config.log_file.read_text()
    assert log.count("broken.json skipped") == 1  # logged once, not per query


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of a process, all its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def served_within(server: Server, patient_id: str, seconds: float) -> bool:
    """Ask for ``patient_id`` over and over until it is answered or time is up."""
    query = Dataset()
    query.PatientID = patient_id
    deadline = time.monotonic() + seconds
    while True:
        if any(status == 0xFF00 for status, _ in pynetdicom_find(server, query)):
            return True
        if time.monotonic() >= deadline:
            return False


def test_idle_after_reads_and_an_invalid_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Reading worklist files made the MWL process refresh on its own open/close
    events forever (60-100 % of a core) and serve new files late; now it idles."""
    home = tmp_path_factory.mktemp("mwlidle") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    for patient_id, document in ITEMS.items():
        write_item(folder, f"{patient_id}.json", {"PatientID": patient_id, **document})
    server = start_server(home, store_workers=1)
    try:
        [mwl_pid] = server.children("mwl")
        base = [sys.executable, "-m", "echoes", "--config", str(server.config.path)]
        for path in sorted(folder.iterdir()):
            subprocess.run(["cat", str(path)], capture_output=True, check=True)
        subprocess.run([*base, "worklist"], capture_output=True, check=True)
        subprocess.run([*base, "check"], capture_output=True)
        # (Almost) no CPU: the poll thread's stat once a second costs well under
        # a tick; the loop took 100-220 ticks (1-2.2 s of CPU) per 2 s.
        most = os.sysconf("SC_CLK_TCK") // 10
        before = cpu_ticks(mwl_pid)
        time.sleep(2)
        assert cpu_ticks(mwl_pid) - before <= most, "ticks after reads"
        write_item(folder, "N1.json", {"PatientID": "N1", "PatientName": "NEW^ONE"})
        assert served_within(server, "N1", 1.0)

        write_item(folder, "bad.json", {"PatientName": "X^Y", "PatientsSex": "F"})
        before = cpu_ticks(mwl_pid)
        time.sleep(2)
        assert cpu_ticks(mwl_pid) - before <= most, "ticks after an invalid file"
        write_item(folder, "N2.json", {"PatientID": "N2", "PatientName": "NEW^TWO"})
        assert served_within(server, "N2", 1.0)
        log = server.config.log_file.read_text()
        assert log.count("bad.json skipped") == 1
    finally:
        stop_server(server)


def test_echoscu_on_worklist_port(mwl: Server, dcmtk: None) -> None:
    done = subprocess.run(["echoscu", "127.0.0.1", str(mwl.config.mwl_port)], env=DCMTK_ENV,
                          capture_output=True)
    assert done.returncode == 0, done.stderr


# -- pynetdicom client -------------------------------------------------------------------


def pynetdicom_find(server: Server, query: Dataset, syntax: str = ExplicitVRLittleEndian
                    ) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MWL_FIND, [syntax])
    assoc = ae.associate("127.0.0.1", server.config.mwl_port)
    assert assoc.is_established
    try:
        return [(status.Status, identifier)
                for status, identifier in assoc.send_c_find(query, MWL_FIND)]
    finally:
        assoc.release()


def name_query(name: str, charset: str) -> Dataset:
    query = Dataset()
    query.SpecificCharacterSet = charset
    query.PatientName = name
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    query.ScheduledProcedureStepSequence[0].Modality = ""
    return query


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_query_in_latin1_and_utf8(mwl: Server, charset: str) -> None:
    results = pynetdicom_find(mwl, name_query("MÜLLER*", charset))
    assert [status for status, _ in results] == [0xFF00, 0x0000]
    identifier = results[0][1]
    assert identifier.SpecificCharacterSet == "ISO_IR 192"
    assert str(identifier.PatientName) == "Müller^Hans"
    assert identifier.ScheduledProcedureStepSequence[0].Modality == "MR"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_every_uncompressed_syntax(mwl: Server, syntax: str) -> None:
    query = name_query("*", "ISO_IR 192")
    query.PatientBirthDate = ""
    query.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "20261130"
    results = pynetdicom_find(mwl, query, syntax)
    pending = {str(ds.PatientID): ds for status, ds in results if status == 0xFF00}
    assert set(pending) == {"P1", "P2"}
    assert pending["P1"].PatientBirthDate == "19700101"
    assert str(pending["P2"].PatientName) == "Müller^Hans"
    assert results[-1][0] == 0x0000


@pytest.fixture(scope="module")
def big_mwl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A worklist whose full answer (about 30 MB) cannot fit in socket buffers."""
    home = tmp_path_factory.mktemp("bigmwl") / "home"
    folder = home / "var" / "worklist"
    folder.mkdir(parents=True)
    comment = "x" * 10000
    for number in range(3000):
        (folder / f"{number:05d}.json").write_text(json.dumps(
            {"PatientID": f"B{number:05d}", "PatientName": "BULK^PATIENT",
             "PatientComments": comment}))
    running = start_server(home, store_workers=1)
    yield running
    stop_server(running)


def test_c_cancel_from_pynetdicom(big_mwl: Server) -> None:
    query = Dataset()
    query.PatientID = ""
    query.PatientComments = ""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MWL_FIND, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", big_mwl.config.mwl_port)
    assert assoc.is_established
    statuses = []
    try:
        responses = assoc.send_c_find(query, MWL_FIND, msg_id=7)
        for status, _identifier in responses:
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=MWL_FIND)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert 1 <= statuses.count(0xFF00) < 3000


def test_c_cancel_from_findscu(big_mwl: Server, tmp_path: Path, dcmtk: None) -> None:
    argv = ["findscu", "-W", "-v", "--cancel", "1", "-k", "PatientID", "-k", "PatientComments",
            "127.0.0.1", str(big_mwl.config.mwl_port)]
    done = subprocess.run(argv, env=DCMTK_ENV, capture_output=True, timeout=60)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert "Received Final Find Response (Cancel" in output, output[-300:]
    assert output.count("(Pending)") < 3000


def test_several_associations_at_once(mwl: Server, tmp_path: Path, dcmtk: None) -> None:
    argv = ["findscu", "-W", "-v", "-k", "PatientID", "-k", "PatientName",
            "127.0.0.1", str(mwl.config.mwl_port)]
    clients = [subprocess.Popen(argv, env=DCMTK_ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT) for _ in range(8)]
    outputs = [client.communicate(timeout=60)[0].decode() for client in clients]
    assert [client.returncode for client in clients] == [0] * 8
    assert [output.count("(Pending)") for output in outputs] == [5] * 8


def test_answer_shape_keeps_sequence_values_not_top_level_values() -> None:
    """The response cache key: sequence values select sub-items, top-level ones do not."""
    from echoes.services.worklist import answer_shape
    from echoes.worklist.match import QueryKey

    def query(patient: str, modality: str) -> dict:
        return {0x00100020: QueryKey("LO", patient),
                0x00400100: QueryKey("SQ", [{0x00080060: QueryKey("CS", modality)}])}

    assert answer_shape(query("P1", "CT")) == answer_shape(query("P2", "CT"))
    assert answer_shape(query("P1", "CT")) != answer_shape(query("P1", "MR"))


def test_response_cache_not_used_for_a_rewrite_with_the_same_signature(tmp_path: Path) -> None:
    """A rewrite of the same length within the timestamp granularity keeps inode,
    size and mtime; the watcher re-reads it on close, and the answer must follow."""
    from echoes.services.worklist import ResponseCache
    from echoes.worklist.files import WorklistDirectory

    path = tmp_path / "a.json"
    path.write_text(json.dumps({"PatientID": "P1", "PatientName": "OLD^NAME"}))
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    cache = ResponseCache()
    [old] = directory.items()
    cache.put("shape", old, b"old answer")
    directory.refresh("a.json", force=True)  # read again, unchanged
    assert directory.items()[0] is old
    assert cache.get("shape", old) == b"old answer"

    stat = os.stat(path)
    path.write_text(json.dumps({"PatientID": "P1", "PatientName": "NEW^NAME"}))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    directory.refresh("a.json", force=True)
    [new] = directory.items()
    assert new.signature == old.signature and new.tree[0x00100010] == "NEW^NAME"
    assert cache.get("shape", new) is None
