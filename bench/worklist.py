"""Worklist query latency, echoes beside dcmtk's wlmscpfs, in one run.

Writes the same N scheduled procedure steps (default 10,000) as echoes JSON
files and as dcmtk ``.wl`` files (``<dir>/<AE>/*.wl`` plus ``lockfile``),
starts both servers, and times dcmtk ``findscu -W`` (TCP_NODELAY=1) against
each: the median wall time of one whole findscu run (process start,
association, query, all responses, release) for

- selective: one PatientID;
- day+modality: one scheduled start date and one modality;
- name wildcard: PatientName ``SMI*``;
- universal: every key empty (returns every item).

Both servers must return the same number of matches (checked first, with
one counted run each).  Prints the medians and wlmscpfs/echoes ratios;
the targets are >= 10x on selective and day+modality, >= 1x everywhere (issue 7).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ENV, OUT, free_port, tool, wait_echo  # bench/common.py
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echoes.worklist import files as worklist

WLM_AE = "WLMSCPFS"
MWL_FIND = "1.2.840.10008.5.1.4.31"
FAMILY = ["SMITH", "JONES", "MÜLLER", "GARCIA", "NGUYEN", "KOWALSKI", "DUPONT", "ROSSI",
          "SILVA", "IVANOV", "HANSEN", "MORI", "LEE", "BROWN", "MARTIN", "FISCHER"]
GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "LENA", "OMAR", "SARA", "TOM"]
STATIONS = [("CT", "CT01"), ("CT", "CT02"), ("MR", "MR01"), ("US", "US01"),
            ("CR", "CR01"), ("DX", "DX01"), ("MG", "MG01"), ("NM", "NM01")]
DAYS = 30
FIRST_DAY = 20261201

#: Return keys of a typical modality query, plus the query's own values.
RETURN_KEYS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "ReferringPhysicianName", "RequestedProcedureID", "RequestedProcedureDescription",
    "RequestedProcedurePriority", "StudyInstanceUID",
]
STEP_KEYS = [
    "Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
]


def item(number: int, rng: random.Random) -> dict:
    """One scheduled step in the keyword form."""
    modality, station = rng.choice(STATIONS)
    day = FIRST_DAY + rng.randrange(DAYS)  # December 1..30
    return {
        "PatientName": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
        "PatientID": f"P{number:06d}",
        "PatientBirthDate": f"19{rng.randrange(30, 99)}0{rng.randrange(1, 9)}1{rng.randrange(9)}",
        "PatientSex": rng.choice("MF"),
        "AccessionNumber": f"A{number:07d}",
        "ReferringPhysicianName": "REF^DOCTOR",
        "RequestedProcedureID": f"RP{number:06d}",
        "RequestedProcedureDescription": f"{modality} EXAM",
        "RequestedProcedurePriority": "ROUTINE",
        "StudyInstanceUID": generate_uid(entropy_srcs=[str(number)]),
        "ScheduledProcedureStepSequence": [{
            "Modality": modality,
            "ScheduledStationAETitle": station,
            "ScheduledProcedureStepStartDate": str(day),
            "ScheduledProcedureStepStartTime": f"{rng.randrange(7, 19):02d}{rng.choice('0134')}0",
            "ScheduledPerformingPhysicianName": "RAD^ONE",
            "ScheduledProcedureStepDescription": f"{modality} STEP",
            "ScheduledProcedureStepID": f"S{number:06d}",
        }],
    }


def write_corpus(count: int) -> tuple[Path, Path]:
    """JSON folder for echoes and .wl folder for wlmscpfs (cached in bench/out)."""
    json_dir, wlm_dir = OUT / f"worklist{count}", OUT / f"wlm{count}"
    if (json_dir / ".done").exists() and (wlm_dir / ".done").exists():
        return json_dir, wlm_dir
    for folder in (json_dir, wlm_dir):
        shutil.rmtree(folder, ignore_errors=True)
    (wlm_dir / WLM_AE).mkdir(parents=True)
    json_dir.mkdir(parents=True)
    (wlm_dir / WLM_AE / "lockfile").touch()
    rng = random.Random(7)
    for number in range(count):
        document = item(number, rng)
        data = json.dumps(document, ensure_ascii=False).encode()
        (json_dir / f"{number:06d}.json").write_bytes(data)
        dataset = worklist.to_dataset(worklist.parse_bytes(data))
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta.MediaStorageSOPClassUID = MWL_FIND
        dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.save_as(wlm_dir / WLM_AE / f"{number:06d}.wl", enforce_file_format=True)
    (json_dir / ".done").touch()
    (wlm_dir / ".done").touch()
    return json_dir, wlm_dir


def queries(count: int) -> dict[str, list[str]]:
    """Query name -> findscu -k arguments (matching keys first, then return keys)."""
    rng = random.Random(7)
    first = item(0, rng)
    step = first["ScheduledProcedureStepSequence"][0]
    wanted = {
        "selective": {"PatientID": f"P{count // 2:06d}"},
        "day+modality": {"ScheduledProcedureStepStartDate": step["ScheduledProcedureStepStartDate"],
                         "Modality": "CT"},
        "name wildcard": {"PatientName": "SMI*"},
        "universal": {},
    }
    result = {}
    for name, keys in wanted.items():
        args = ["-k", "SpecificCharacterSet=ISO_IR 192"]
        for key in RETURN_KEYS:
            args += ["-k", f"{key}={keys.get(key, '')}"]
        for key in STEP_KEYS:
            args += ["-k", f"ScheduledProcedureStepSequence[0].{key}={keys.get(key, '')}"]
        result[name] = args
    return result


def findscu(port: int, called: str, args: list[str], count: bool = False) -> tuple[float, int]:
    """Wall time of one findscu run and (when counting) the number of matches."""
    argv = [tool("findscu"), "-W", "-aec", called, *(["-v"] if count else []), *args,
            "127.0.0.1", str(port)]
    started = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"findscu failed: {done.stderr.decode(errors='replace')[-400:]}")
    matches = done.stderr.count(b"(Pending)") + done.stdout.count(b"(Pending)")
    return elapsed, matches


def start_echoes(json_dir: Path, home: Path) -> tuple[subprocess.Popen, int]:
    port, store_port = free_port(), free_port()
    (home / "etc").mkdir(parents=True)
    (home / "etc" / "echoes.ini").write_text(
        f"[echoes]\nbind = 127.0.0.1\nstore_port = {store_port}\nmwl_port = {port}\n"
        f"http_port = {free_port()}\n"
        f"store_workers = 1\nworklist_dir = {json_dir}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "echoes", "--config", str(home / "etc" / "echoes.ini"), "start"],
        stdout=subprocess.DEVNULL, stderr=open(home / "echoes.out", "wb"))
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per query")
    parser.add_argument("--universal-runs", type=int, default=5)
    args = parser.parse_args()

    json_dir, wlm_dir = write_corpus(args.items)
    home = Path(tempfile.mkdtemp(prefix="echoes-bench-wl-"))
    echoes, echoes_port = start_echoes(json_dir, home)
    wlm_port = free_port()
    wlm = subprocess.Popen([tool("wlmscpfs"), "-dfp", str(wlm_dir), str(wlm_port)], env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = {"wlmscpfs": (wlm_port, WLM_AE), "echoes": (echoes_port, "ECHOES")}
    try:
        for port, called in servers.values():
            wait_echo(port, called)
        print(f"{args.items} scheduled steps; median of {args.runs} findscu runs "
              f"({args.universal_runs} for universal)")
        print(f"{'query':<14} {'matches':>8} {'wlmscpfs':>10} {'echoes':>10} {'ratio':>7}")
        verdicts = []
        for name, keys in queries(args.items).items():
            counts = {server: findscu(*servers[server], keys, count=True)[1] for server in servers}
            if counts["wlmscpfs"] != counts["echoes"]:
                raise SystemExit(f"{name}: wlmscpfs found {counts['wlmscpfs']}, "
                                 f"echoes {counts['echoes']}")
            runs = args.universal_runs if name == "universal" else args.runs
            medians = {}
            for server in servers:
                medians[server] = statistics.median(
                    findscu(*servers[server], keys)[0] for _ in range(runs))
            ratio = medians["wlmscpfs"] / medians["echoes"]
            target = 10.0 if name in ("selective", "day+modality") else 1.0
            verdicts.append(ratio >= target)
            print(f"{name:<14} {counts['echoes']:>8} {medians['wlmscpfs'] * 1000:>8.1f}ms "
                  f"{medians['echoes'] * 1000:>8.1f}ms {ratio:>6.1f}x  "
                  f"{'PASS' if ratio >= target else 'FAIL'} (target >= {target:.0f}x)")
        return 0 if all(verdicts) else 1
    finally:
        wlm.terminate()
        echoes.send_signal(signal.SIGTERM)
        echoes.wait(60)
        wlm.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
