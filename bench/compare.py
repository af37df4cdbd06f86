"""Issues 7 and 16's targets, echoes side by side with dcmtk and Orthanc, in one run.

Why one command: the machine is small and noisy, so only ratios taken minutes
apart in the same run mean anything.  Each row starts every system in turn
(never two at once) on loopback, with a fresh empty store, idle before its
clock starts, sends the same corpus with dcmtk's ``storescu``
(``TCP_NODELAY=1`` unless the row is about Nagle) or, for one association per
object, ``per_association.py`` (pynetdicom), checks that every object arrived
(files on disk for storescp, Orthanc's REST ``/statistics``, files in echoes'
archive folder), and turns the figures into PASS/FAIL against the targets.
Each row runs ``--rounds`` times (3), the systems alternating; figures are
medians with their spread.  One table goes to stdout and to
``bench/out/compare-<timestamp>.txt``.

Rows (``--only`` takes these names): ingest, nagle, worklist, scale,
memory, forward, startup, qr (issue 17: Q/R C-FIND, also against dcmtk's dcmqrscp),
retrieve (issue 17: 8c C-MOVE, 8d C-GET).  Opt-in, run only when named:
postgres (issue 18: bench/postgres_rows.py, the index on PostgreSQL at 1,000,000
instances, and Orthanc with its PostgreSQL plugin; needs orthanc-postgresql
and postgresql).
``--quick`` runs smaller counts for a smoke test; its verdicts are not the issue's.

Needs dcmtk and orthanc from Debian (it installs nothing) and the project's
venv python (``.venv/bin/python bench/compare.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.cookiejar
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dicomweb as bench_dicomweb
import numpy as np
import psutil
import qr
from common import (
    ENV,
    OUT,
    MissingTool,
    echo,
    free_port,
    nagle_env,
    quiet_disk,
    start_dcmtk_server,
    stop_process,
    storescu_acknowledged,
    tool,
    vm_hwm,
    wait_idle,
)
from common import wait_echo as _wait_echo
from ingest import big_object, corpus, image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from werkzeug.security import generate_password_hash
from worklist import WLM_AE, item, queries, write_corpus

from echoes import config as config_module
from echoes.index.embedded import ArchiveIndex, InstanceRecord, read_studies
from echoes.storage import objects

ROWS = ("ingest", "nagle", "worklist", "scale", "memory", "forward", "startup", "qr",
        "retrieve", "dicomweb")
#: Rows run only when ``--only`` names them (long, or needing more than dcmtk and Orthanc).
OPT_IN_ROWS = ("postgres",)
SYSTEMS = ("dcmtk", "orthanc", "echoes")
ORTHANC_WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
#: Debian's orthanc-dicomweb (rows 9a-9d).
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CT = "1.2.840.10008.5.1.4.1.1.2"
#: How long a receiver may take, after the sender returned, to hold every object.
SETTLE_SECONDS = 300.0
#: ... and gives up sooner when its count stands still this long.
STALL_SECONDS = 30.0
T0 = time.monotonic()
#: The Browser's password in the start-up row.
BROWSER_PASSWORD = "bench"
#: The [echoes] line that lets the bench log in to the Browser and /dicom-web as admin.
WEB_PASSWORD_LINE = f"http_password_hash = {generate_password_hash(BROWSER_PASSWORD)}\n"
#: --keep: leave every server's folder (logs, stores) in bench/out for a look.
KEEP = False
#: The round being run (0, 1, ...): odd rounds run the systems in reverse order.
ROUND = 0


def order() -> tuple[str, ...]:
    """The systems in this round's order: rounds alternate it, so no system is always
    the one measured right after another's run (page cache, writeback, CPU clock)."""
    return SYSTEMS if ROUND % 2 == 0 else SYSTEMS[::-1]


@dataclass(frozen=True)
class Sizes:
    """Object and item counts of one run (full: the issue's; quick: a smoke test)."""

    ct: int = 1000
    tiny: int = 2000
    concurrent: int = 1000
    associations: int = 4
    nagle: int = 500
    per_association: int = 500
    nagle_per_association: int = 100
    mwl_items: int = 10000
    runs: int = 7
    universal_runs: int = 3
    scale_batch: int = 1000
    scale_total: int = 100_000
    big_frames: int = 2000
    mwl_memory_items: int = 50_000
    forward: int = 1000
    qr_studies: int = 1000
    qr_per_study: int = 100
    #: CT objects in the study moved and got in the retrieve row (8c, 8d).
    retrieve: int = 1000


FULL = Sizes()
QUICK = Sizes(ct=200, tiny=400, concurrent=200, nagle=50, per_association=50,
              nagle_per_association=20, mwl_items=2000, runs=3,
              universal_runs=1, scale_batch=200, scale_total=10_000, big_frames=200,
              mwl_memory_items=5000, forward=200, qr_studies=60, qr_per_study=5,
              retrieve=50)


def progress(message: str) -> None:
    """One line on stderr with the elapsed time, so a long run shows where it is."""
    print(f"[{time.monotonic() - T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def wait_echo(port: int, called: str = "ANY-SCP", timeout: float = 60.0,
              process: subprocess.Popen | None = None) -> None:
    """common.wait_echo, for servers this module starts."""
    _wait_echo(port, called, timeout, process)


# --- corpora (pydicom, cached in bench/out) ------------------------------------------


def tiny_corpus(count: int) -> list[Path]:
    """``count`` 16x16 CT objects, 100 per study in 2 series (as many small studies)."""
    folder = OUT / f"tiny{count}"
    if (folder / ".done").exists():
        return sorted(folder.glob("*.dcm"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(2).integers(0, 4096, (16, 16)).astype("<u2").tobytes()
    study = series = ""
    for n in range(count):
        if n % 100 == 0:
            study, patient = generate_uid(), f"TINY{n // 100:04d}"
            series_uids = [generate_uid(), generate_uid()]
        series = series_uids[n % 2]
        ds = image(study, series, n % 100 + 1)
        ds.PatientID, ds.PatientName = patient, f"TINY^{patient}"
        ds.Rows = ds.Columns = 16
        ds.PixelData = pixels
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    (folder / ".done").touch()
    return sorted(folder.glob("*.dcm"))


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _studies(name: str, count: int, per_study: int, pixels: bytes,
             shape: Callable[[Dataset], None]) -> list[Path]:
    """``count`` objects in studies of ``per_study``, one series each, made once and
    kept in ``OUT/name`` (``shape`` turns the CT ``image`` into the corpus' kind)."""
    folder = OUT / name
    if (folder / ".done").exists():
        return sorted(folder.glob("*.dcm"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    prefix = name[:2].upper()
    study = series = patient = ""
    for n in range(count):
        if n % per_study == 0:
            study, series, patient = generate_uid(), generate_uid(), f"{prefix}{n // per_study:04d}"
        ds = image(study, series, n % per_study + 1)
        shape(ds)
        ds.PatientID, ds.PatientName = patient, f"{prefix}^{patient}"
        ds.PixelData = pixels
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    (folder / ".done").touch()
    return sorted(folder.glob("*.dcm"))


def ct_studies(count: int, per_study: int = 100) -> list[Path]:
    """``count`` CT 512x512 16-bit objects in studies of ``per_study``, one series each.

    Issue 16's independent harness sent these: an archive files each study
    in a folder of its own and indexes per study, so one study of 1,000
    (``ingest.corpus``) is the easier case.
    """
    pixels = np.random.default_rng(1).integers(0, 4096, (512, 512)).astype("<u2").tobytes()
    return _studies(f"ct{count}-studies{per_study}", count, per_study, pixels, lambda ds: None)


def _secondary_capture(ds: Dataset) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.Modality, ds.ConversionType = "OT", "WSD"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7


def sc_corpus(count: int, per_study: int = 100) -> list[Path]:
    """``count`` secondary-capture objects, 16x16 8-bit, studies of ``per_study``, one series
    each: issue 16's tiny corpus (the tiny CT corpus above is 16-bit, two series a study)."""
    pixels = np.random.default_rng(3).integers(0, 256, (16, 16)).astype("u1").tobytes()
    return _studies(f"sc{count}-studies{per_study}", count, per_study, pixels,
                    _secondary_capture)


def worklist_json(count: int) -> Path:
    """``count`` worklist items as echoes JSON only (the memory row needs no .wl)."""
    folder = OUT / f"worklist-json{count}"
    if (folder / ".done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(7)
    for number in range(count):
        data = json.dumps(item(number, rng), ensure_ascii=False).encode()
        (folder / f"{number:06d}.json").write_bytes(data)
    (folder / ".done").touch()
    return folder


def warm(files: list[Path]) -> None:
    """Read a corpus once so the first system measured does not pay for the disk."""
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass


# --- receivers ---------------------------------------------------------------------


class Receiver:
    """A storage server under test: start, count what arrived, stop."""

    name = ""
    called = "ANY-SCP"
    port = 0

    @property
    def query_port(self) -> int:
        """Port of the worklist service (the same one for the peers)."""
        return self.port

    def problems(self) -> str:
        """What the server's log says went wrong, for the table's notes."""
        return ""

    def count(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class StoreSCP(Receiver):
    """dcmtk storescp writing into a folder (``--fork`` for concurrent associations)."""

    name = "storescp"

    def __init__(self, work: Path, fork: bool = False, log: Path | None = None,
                 ignore: bool = False) -> None:
        """``ignore``: answer Success and store nothing (row 1d0's null server)."""
        self.folder = work / "storescp"
        self.folder.mkdir(parents=True)
        self.port = free_port()
        argv = [tool("storescp"), *(["--fork"] if fork else []), *(["-v"] if log else []),
                *(["--ignore"] if ignore else []),
                "-od", str(self.folder), str(self.port)]
        output = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.process = start_dcmtk_server(argv, self.port, stdout=output,
                                          stderr=subprocess.STDOUT)

    def count(self) -> int:
        return sum(1 for entry in os.scandir(self.folder) if entry.is_file())

    def stop(self) -> None:
        stop_process(self.process, 10)


class Orthanc(Receiver):
    """Orthanc with a generated config: fresh storage and index, loopback clients.

    It runs with TCP_NODELAY=1, like storescp (its DICOM side is dcmtk).
    Orthanc 1.10 has no DICOM bind address: it listens on every interface,
    but only loopback clients talk to it here, and its HTTP API refuses
    remote clients (RemoteAccessAllowed false).  Unknown AEs may store by
    default but not query the worklist, hence DicomAlwaysAllowFindWorklist
    (without it the association is aborted and findscu still exits 0).
    """

    name = "Orthanc"
    called = "ORTHANC"

    def __init__(self, work: Path, worklists: Path | None = None,
                 forward_to: int | None = None,
                 extra: dict[str, object] | None = None, dicomweb: bool = False) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port, self.http = free_port(), free_port()
        settings: dict[str, object] = {
            "Name": "bench", "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"), "DicomAet": self.called,
            "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "SaveJobs": False,
        }
        if worklists is not None:
            settings.update({
                "Plugins": [str(ORTHANC_WORKLIST_PLUGIN)],
                "Worklists": {"Enable": True, "Database": str(worklists)},
                "DicomAlwaysAllowFindWorklist": True,
            })
        if dicomweb:
            # Debian's orthanc-dicomweb at its default root, /dicom-web/.
            settings.update({"Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
                             "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
        if forward_to is not None:
            # Orthanc's documented auto-routing: a Lua OnStoredInstance that
            # sends each stored instance on (what users would run instead of echoes).
            script = work / "forward.lua"
            script.write_text("function OnStoredInstance(instanceId, tags, metadata, origin)\n"
                              "  SendToModality(instanceId, 'dest')\nend\n")
            settings.update({"LuaScripts": [str(script)],
                             "DicomModalities": {"dest": ["DEST", "127.0.0.1", forward_to]}})
        settings.update(extra or {})
        config = work / "orthanc.json"
        config.write_text(json.dumps(settings, indent=1))
        # Orthanc's DICOM side is dcmtk: without TCP_NODELAY=1 in its environment
        # each response waits for a delayed ACK (400 tiny objects: 18 s against 0.9 s).
        self.process = subprocess.Popen([tool("Orthanc"), str(config)], cwd=work, env=ENV,
                                        stdout=open(work / "orthanc.log", "wb"),  # noqa: SIM115
                                        stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.count()
                    break
                except OSError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("Orthanc did not start; see its log "
                                           f"{work / 'orthanc.log'}") from None
                    time.sleep(0.1)
            wait_echo(self.port, self.called, process=self.process)
            wait_idle(self.process.pid, timeout=60, window=1.0, busy=0.02)
        except BaseException:
            self.stop()
            raise

    def count(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics",
                                    timeout=10) as reply:
            return int(json.load(reply)["CountInstances"])

    def stop(self) -> None:
        # Orthanc holds its SQLite index until it has exited: wait for that.
        stop_process(self.process, 60)


class Echoes(Receiver):
    """echoes from this checkout (``python -m echoes start``), ``store_workers = 2``
    (the default, written out) and otherwise default settings.

    ``count`` is what the archive folder holds (``*.dcm`` below ``archive_dir``):
    the ingester moves an object there after indexing it, so that is the
    later moment, the one issue 16's harness stopped its clock at.  With
    ``counting="index"`` it is the index's count instead (the scale row: a
    walk of 100,000 files per poll would measure the walk).
    """

    name = "echoes"
    called = "ECHOES"

    def __init__(self, home: Path, worklist_dir: Path | None = None, extra: str = "",
                 counting: str = "archive", start: bool = True) -> None:
        (home / "etc").mkdir(parents=True)
        self.home = home
        self.counting = counting
        self.ini = home / "etc" / "echoes.ini"
        lines = ["[echoes]", "bind = 127.0.0.1", f"store_port = {free_port()}",
                 f"mwl_port = {free_port()}", f"http_port = {free_port()}", "min_free_mb = 100",
                 "store_workers = 2"]
        if worklist_dir is not None:
            lines.append(f"worklist_dir = {worklist_dir}")
        self.ini.write_text("\n".join(lines) + "\n" + extra)
        self.config = config_module.load(self.ini)
        self.port = self.config.store_port
        self.with_worklist = worklist_dir is not None
        self.starts = 0
        self.process: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start and wait until the store port answers and the ingester watches."""
        self.starts += 1
        self.process = subprocess.Popen(
            [sys.executable, "-m", "echoes", "--config", str(self.ini), "start"],
            stdout=open(self.home / "echoes.out", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_echo(self.port, process=self.process, timeout=120)
            if self.with_worklist:
                # The MWL worker serves only after reading the whole folder.
                wait_echo(self.config.mwl_port, self.called, timeout=600, process=self.process)
            deadline = time.monotonic() + 300
            while self.log().count("ingester watching") < self.starts:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("echoes' ingester did not start")
                time.sleep(0.05)
            # Every process idle (the sender, the web process and the rest done starting).
            wait_idle(self.process.pid, timeout=60, window=1.0, busy=0.02)
        except BaseException:
            self.stop()
            raise

    @property
    def query_port(self) -> int:
        return self.config.mwl_port

    def log(self) -> str:
        try:
            return self.config.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def problems(self) -> str:
        lines = [line for line in self.log().splitlines()
                 if " ERROR " in line or " CRITICAL " in line or " WARNING " in line]
        try:
            output = (self.home / "echoes.out").read_text(errors="replace").strip()
        except OSError:
            output = ""
        if output:
            lines.append("stdout/stderr: " + output.splitlines()[-1])
        return " | ".join(lines[-3:])

    def count(self) -> int:
        if self.counting == "index":
            return sum(s["NumberOfInstances"] for s in read_studies(self.config.index_path))
        return sum(1 for _root, _dirs, names in os.walk(self.config.archive_dir)
                   for name in names if name.endswith(".dcm"))

    def pids(self, role: str) -> list[int]:
        """Processes named ``echoes: ROLE`` under this supervisor."""
        if self.process is None:
            return []
        found = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.cmdline() and child.cmdline()[0].strip() == f"echoes: {role}":
                    found.append(child.pid)
        return found

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                # Its own session: the group is this supervisor and its workers.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class WlmScpFs(Receiver):
    """dcmtk wlmscpfs serving ``<folder>/<AE>/*.wl``."""

    name = "wlmscpfs"
    called = WLM_AE

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process = start_dcmtk_server(
            [tool("wlmscpfs"), "-dfp", str(folder), str(self.port)], self.port, self.called,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        stop_process(self.process, 10)


@contextlib.contextmanager
def scratch(work: Path, name: str) -> Iterator[Path]:
    """A fresh folder for one server run, deleted afterwards (disk space)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    try:
        yield folder
    finally:
        if not KEEP:
            shutil.rmtree(folder, ignore_errors=True)


def receiver(system: str, folder: Path, fork: bool = False) -> Receiver:
    """A fresh, empty storage server of ``system`` using ``folder``."""
    if system == "dcmtk":
        return StoreSCP(folder, fork=fork)
    if system == "orthanc":
        return Orthanc(folder)
    return Echoes(folder / "home")


# --- measuring -------------------------------------------------------------------


@dataclass
class Cell:
    """One system's figure: the value, whether it is valid, and why not."""

    value: float | None = None
    ok: bool = True
    note: str = ""
    #: Every round's value (the median is ``value``); the table shows min-max.
    runs: list[float] = field(default_factory=list)


def failed(exc: BaseException) -> Cell:
    return Cell(None, False, f"{type(exc).__name__}: {exc}")


def send(port: int, files: list[Path], associations: int = 1, nagle: bool = False,
         called: str = "ANY-SCP") -> tuple[float, str]:
    """Seconds until every storescu (one per association) returned; their errors."""
    env = nagle_env() if nagle else ENV
    chunks = [files[i::associations] for i in range(associations)]
    logs = [tempfile.TemporaryFile() for _ in chunks]
    started = time.perf_counter()
    processes = [subprocess.Popen([tool("storescu"), "-xe", "-aec", called, "127.0.0.1",
                                   str(port), *map(str, chunk)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
                 for chunk, log in zip(chunks, logs, strict=True)]
    codes = [process.wait() for process in processes]
    seconds = time.perf_counter() - started
    errors = []
    for code, log in zip(codes, logs, strict=True):
        log.seek(0)
        text = log.read().decode(errors="replace").strip()
        log.close()
        if code != 0 or text:
            errors.append(f"storescu exit {code}: {text[-200:]}")
    return seconds, "; ".join(errors)


PER_ASSOCIATION = Path(__file__).resolve().parent / "per_association.py"


def send_per_association(port: int, files: list[Path], nagle: bool = False,
                         called: str = "ANY-SCP") -> tuple[float, str]:
    """One association per object (bench/per_association.py, pynetdicom, TCP_NODELAY
    unless ``nagle``): seconds until it returned; its errors."""
    argv = [sys.executable, str(PER_ASSOCIATION), *(["--nagle"] if nagle else []), str(port),
            called, "-"]
    started = time.perf_counter()
    done = subprocess.run(argv, input="\n".join(map(str, files)), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    text = (done.stdout + done.stderr).strip()
    return seconds, (f"client exit {done.returncode}: {text[-200:]}"
                     if done.returncode or text else "")


def settle(target: Receiver, expected: int, timeout: float = SETTLE_SECONDS,
           stall: float = STALL_SECONDS) -> int:
    """Poll the receiver's own count until ``expected``; the last count.

    Gives up after ``timeout``, or sooner when the count has not moved for
    ``stall`` seconds (a broken receiver must not eat the run's time budget).
    """
    deadline = time.monotonic() + timeout
    last, moved = -2, time.monotonic()
    while True:
        try:
            found = target.count()
        except (OSError, ValueError):
            found = -1
        now = time.monotonic()
        if found != last:
            last, moved = found, now
        if found >= expected or now > deadline or now - moved > stall:
            return found
        time.sleep(0.02)


def ingest(target: Receiver, files: list[Path], associations: int = 1, nagle: bool = False,
           already: int = 0, per_association: bool = False) -> Cell:
    """Seconds from the first client start until the receiver holds every object
    (storescu, or one pynetdicom association per object with ``per_association``)."""
    quiet_disk()
    started = time.perf_counter()
    if per_association:
        _sent, errors = send_per_association(target.port, files, nagle, target.called)
    else:
        _sent, errors = send(target.port, files, associations, nagle, target.called)
    found = settle(target, already + len(files))
    seconds = time.perf_counter() - started
    arrived = found - already
    if arrived != len(files):
        why = "; ".join(filter(None, [errors, target.problems()]))
        return Cell(seconds, False, f"{arrived} of {len(files)} arrived; {why}")
    return Cell(seconds, True, errors)


def measure(label: str, action: Callable[[], Cell]) -> Cell:
    """Run one measurement; an exception becomes a failed cell, not a crashed run."""
    progress(label)
    try:
        cell = action()
    except MissingTool:
        raise
    except Exception as exc:  # report it in the table, go on with the other rows
        cell = failed(exc)
    if cell.note:
        progress(f"  {cell.note}")
    return cell


# --- the table -------------------------------------------------------------------


@dataclass
class Check:
    """One target: the ratio as measured, the target, the verdict."""

    ratio: str
    target: str
    passed: bool


@dataclass
class Figure:
    """One row of the table: a measured figure for each system and its targets."""

    key: str
    label: str
    unit: str
    cells: dict[str, Cell]
    checks: list[Check] = field(default_factory=list)
    how: str = ""
    #: The targets, applied to the merged cells once every round ran (:func:`judge`).
    targets: list[Callable[[Figure, dict[str, Figure]], None]] = field(default_factory=list)


PEER_NAMES = {"dcmtk": "storescp", "orthanc": "Orthanc"}


def cell_of(fig: Figure, system: str) -> Cell:
    """The system's cell, or an invalid one when it was not measured."""
    return fig.cells.get(system, Cell(None, False))


def at_most(fig: Figure, peer: str, limit: float, peer_name: str = "") -> None:
    """Target: echoes' value is at most ``limit`` times the peer's (time, lower is better)."""
    fig.targets.append(lambda f, _all: _at_most(f, peer, limit, peer_name))


def faster_by(fig: Figure, peer: str, factor: float, peer_name: str = "") -> None:
    """Target: echoes is at least ``factor`` times faster than the peer."""
    fig.targets.append(lambda f, _all: _faster_by(f, peer, factor, peer_name))


def below(fig: Figure, limit: float, unit: str) -> None:
    """Target: echoes' own figure under an absolute limit."""
    fig.targets.append(lambda f, _all: _below(f, limit, unit))


def judge(fig: Figure, figures: dict[str, Figure]) -> None:
    """Turn the figure's targets into checks (on the medians of every round)."""
    fig.checks = []
    for target in fig.targets:
        target(fig, figures)


def _at_most(fig: Figure, peer: str, limit: float, peer_name: str = "") -> None:
    name = peer_name or PEER_NAMES[peer]
    mine, theirs = cell_of(fig, "echoes"), cell_of(fig, peer)
    if mine.value is None or theirs.value is None or theirs.value <= 0:
        fig.checks.append(Check("n/a", f"echoes <= {limit:g}x {name}", False))
        return
    ratio = mine.value / theirs.value
    fig.checks.append(Check(f"{ratio:.2f}x {name}", f"<= {limit:g}x {name}",
                            mine.ok and theirs.ok and ratio <= limit))


def _faster_by(fig: Figure, peer: str, factor: float, peer_name: str = "") -> None:
    name = peer_name or PEER_NAMES[peer]
    mine, theirs = cell_of(fig, "echoes"), cell_of(fig, peer)
    if mine.value is None or theirs.value is None or mine.value <= 0:
        fig.checks.append(Check("n/a", f"{factor:g}x faster than {name}", False))
        return
    ratio = theirs.value / mine.value
    fig.checks.append(Check(f"{ratio:.2f}x faster than {name}",
                            f">= {factor:g}x faster than {name}",
                            mine.ok and theirs.ok and ratio >= factor))


def _below(fig: Figure, limit: float, unit: str) -> None:
    mine = cell_of(fig, "echoes")
    if mine.value is None:
        fig.checks.append(Check("n/a", f"< {limit:g} {unit}", False))
        return
    fig.checks.append(Check(f"{mine.value:.3g} {unit}", f"< {limit:g} {unit}",
                            mine.ok and mine.value < limit))


def fmt(cell: Cell | None, unit: str) -> str:
    if cell is None:
        return "-"
    if cell.value is None:
        return "error"

    def number(value: float) -> str:
        if unit in ("ms", "MiB"):  # milliseconds under 10 (a C-FIND) keep a decimal
            return f"{value:.1f}" if unit == "ms" and abs(value) < 10 else f"{value:.0f}"
        return f"{value:.2f}"

    text = number(cell.value)
    if len(cell.runs) > 1:
        text += f" ({number(min(cell.runs))}-{number(max(cell.runs))})"
    return text if cell.ok else text + "!"


def merge(rounds: list[list[Figure]]) -> list[Figure]:
    """One figure per key from every round's: each cell the median of its rounds,
    with every round's value kept for the spread; valid only if every round was."""
    merged = []
    for first in rounds[0]:
        same = [fig for figures in rounds for fig in figures if fig.key == first.key]
        cells = {}
        for system in first.cells:
            taken = [fig.cells[system] for fig in same if system in fig.cells]
            values = [cell.value for cell in taken if cell.value is not None]
            notes = list(dict.fromkeys(cell.note for cell in taken if cell.note))
            if len(taken) > 1 and values:
                notes = [f"rounds: {', '.join(f'{v:.3g}' for v in values)}", *notes]
            cells[system] = Cell(statistics.median(values) if values else None,
                                 all(cell.ok for cell in taken) and len(values) == len(same),
                                 "; ".join(notes[:4]), values)
        merged.append(Figure(first.key, first.label, first.unit, cells, how=first.how,
                             targets=first.targets))
    by_key = {fig.key: fig for fig in merged}
    for fig in merged:
        judge(fig, by_key)
    return merged


def render(figures: list[Figure], header: list[str], wall: float, quick: bool) -> str:
    """The table, its footnotes and a summary line."""
    heads = ["figure", "storescp/wlmscpfs/dcmqrscp", "Orthanc", "echoes", "ratio", "target",
             "result"]
    rows: list[list[str]] = []
    for fig in figures:
        values = [fmt(fig.cells.get(system), fig.unit) for system in SYSTEMS]
        label = f"{fig.key} {fig.label} ({fig.unit})"
        if not fig.checks:
            rows.append([label, *values, "", "", ""])
        for n, check in enumerate(fig.checks):
            verdict = "PASS" if check.passed else "FAIL"
            rows.append([label, *values, check.ratio, check.target, verdict] if n == 0
                        else ["", "", "", "", check.ratio, check.target, verdict])
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    right = {1, 2, 3}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [*header, "", line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    notes = []
    for fig in figures:
        if fig.how:
            notes.append(f"{fig.key}: {fig.how}")
        for system, cell in fig.cells.items():
            if cell.note:
                marker = "!" if not cell.ok else ""
                notes.append(f"{fig.key} {system}{marker}: {cell.note}")
    if notes:
        out += ["", "How measured / notes (! = figure not valid: not every object "
                    "arrived, or an error):"]
        out += [f"  {n}" for n in notes]
    checks = [c for fig in figures for c in fig.checks]
    passed = sum(c.passed for c in checks)
    caveat = " (--quick: reduced counts, not the issue's conditions)" if quick else ""
    out += ["", f"SUMMARY: {passed} of {len(checks)} targets PASS, {len(checks) - passed} FAIL; "
                f"wall time {wall:.0f} s; load average at the end {os.getloadavg()[0]:.2f}"
                f"{caveat}"]
    return "\n".join(out)


# --- rows --------------------------------------------------------------------------


def row_ingest(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 16 target 1 and 2: four ingest workloads, storescp, Orthanc, echoes in turn."""
    ct, tiny, ct4 = (ct_studies(sizes.ct), sc_corpus(sizes.tiny),
                     ct_studies(sizes.concurrent))
    one_each = sc_corpus(sizes.tiny)[:sizes.per_association]
    workloads = [
        ("1a", f"ingest {sizes.ct:,} CT 512x512 16-bit, 1 association", ct, 1, False),
        ("1b", f"ingest {sizes.tiny:,} tiny 16x16 8-bit, 1 association", tiny, 1, False),
        ("1c", f"ingest {sizes.concurrent:,} CT, {sizes.associations} concurrent associations",
         ct4, sizes.associations, False),
        ("1d", f"ingest {len(one_each):,} tiny, one association per object", one_each, 1, True),
    ]
    figures = []
    for key, label, files, associations, each in workloads:
        warm(files)
        cells = {}
        for system in order():
            def run(system: str = system, files: list[Path] = files,
                    associations: int = associations, each: bool = each) -> Cell:
                with scratch(work, system) as folder, \
                        receiver(system, folder, fork=associations > 1 or each) as target:
                    return ingest(target, files, associations, per_association=each)
            cells[system] = measure(f"{key} {system}: {label}", run)
        fig = Figure(key, label, "s", cells)
        at_most(fig, "orthanc", 0.8)
        if key == "1a":
            at_most(fig, "dcmtk", 2.0)
            fig.how = ("seconds from the first client's start until every object is on "
                       "storescp's disk / counted by Orthanc's /statistics / a file in echoes' "
                       "archive folder (moved there after indexing); storescu -xe -aec <AE> "
                       "with TCP_NODELAY=1, the files on its command line (1c: one storescu per "
                       "association, each every Nth file; storescp --fork); CT in studies of "
                       "100, one series each; tiny = secondary capture 16x16 8-bit, the same; "
                       "echoes store_workers = 2, Orthanc without plugins, "
                       "DicomCheckCalledAet false")
        if key == "1d":
            at_most(fig, "dcmtk", 1.0)
            fig.how = ("bench/per_association.py: pynetdicom opens an association, stores one "
                       "object (proposing its SOP class in its syntax and implicit VR), "
                       "releases, for each object; TCP_NODELAY on its socket; storescp --fork")
        figures.append(fig)
        if key == "1d":
            figures.append(null_server_floor(files, work))
    return figures


def null_server_floor(files: list[Path], work: Path) -> Figure:
    """Row 1d's client against a server that stores nothing (``storescp --ignore``, one
    process): what the client alone costs, the floor for every server on 1d.

    Why it is in the table: 1d's target (0.8x Orthanc's time) is out of reach if
    this floor is above it; measuring it in the same run says so with a figure.
    """
    def run() -> Cell:
        with scratch(work, "null") as folder:
            target = StoreSCP(folder, ignore=True)
            try:
                seconds, errors = send_per_association(target.port, files, False, target.called)
            finally:
                target.stop()
        return Cell(seconds, not errors, errors)

    fig = Figure("1d0", "the 1d client against storescp --ignore (stores nothing): the "
                 "floor for any server", "s", {"dcmtk": measure("1d0 null server", run)})
    fig.how = ("1d's client and files; storescp --ignore answers Success without writing, "
               "one process; seconds until the client returned; no target: it shows how much "
               "of 1d no server can take away")
    return fig


def row_nagle(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 7 target 2 and issue 16's: senders that leave Nagle's algorithm on."""
    files = sc_corpus(sizes.tiny)[:sizes.nagle]
    each = sc_corpus(sizes.tiny)[:sizes.nagle_per_association]
    warm(files)
    figures = []
    for key, label, chosen, per_association in (
            ("2a", f"Nagle-on storescu, {len(files):,} tiny, 1 association", files, False),
            ("2b", f"Nagle-on pynetdicom, {len(each):,} tiny, one association per object",
             each, True)):
        cells = {}
        for system in order():
            def run(system: str = system, chosen: list[Path] = chosen,
                    per_association: bool = per_association) -> Cell:
                with scratch(work, system) as folder, \
                        receiver(system, folder, fork=per_association) as target:
                    return ingest(target, chosen, nagle=True, per_association=per_association)
            cells[system] = measure(f"{key} {system}: {label}", run)
        fig = Figure(key, label, "s", cells)
        if per_association:
            fig.how = ("the 1d client without TCP_NODELAY on its socket (pynetdicom's "
                       "default), storescp --fork with TCP_NODELAY=1")
            faster_by(fig, "dcmtk", 2.0)
            faster_by(fig, "orthanc", 2.0)
        else:
            fig.how = (f"{len(files)} of the tiny objects (fewer than 1b: a Nagle-on sender "
                       "stalls ~40-90 ms per object on a peer without quick ACKs); storescu's "
                       "environment has no TCP_NODELAY, storescp keeps TCP_NODELAY=1")
            faster_by(fig, "dcmtk", 5.0)
            faster_by(fig, "orthanc", 5.0)
        figures.append(fig)
    return figures


def findscu(port: int, called: str, args: list[str], count: bool = False) -> tuple[float, int]:
    """Wall time of one whole findscu -W run and (when counting) its matches.

    Timed runs pass -q: without it findscu formats a dump of every response
    (~0.25 ms each, 190 KB of text for 88 matches), client work that is the
    same for every server and no modality does; the counted run uses -v.
    """
    argv = [tool("findscu"), "-W", "-aec", called, "-v" if count else "-q", *args,
            "127.0.0.1", str(port)]
    started = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, timeout=300)
    elapsed = time.perf_counter() - started
    text = done.stdout + done.stderr
    if done.returncode != 0 or b"Association Request Failed" in text:
        raise RuntimeError(f"findscu failed: {text.decode(errors='replace')[-300:]}")
    if count and b"Peer Aborted" in text:
        raise RuntimeError("the server aborted the query (refused the calling AE?)")
    return elapsed, text.count(b"(Pending)")


def row_worklist(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 7 target 3: MWL queries, wlmscpfs, Orthanc's worklist plugin, echoes."""
    json_dir, wlm_dir = write_corpus(sizes.mwl_items)
    wanted = ("selective", "day+modality", "universal")
    keys = {name: args for name, args in queries(sizes.mwl_items).items() if name in wanted}
    medians: dict[str, dict[str, Cell]] = {name: {} for name in wanted}
    matches: dict[str, dict[str, int]] = {name: {} for name in wanted}

    def servers(system: str, folder: Path) -> Receiver:
        if system == "dcmtk":
            return WlmScpFs(wlm_dir)
        if system == "orthanc":
            return Orthanc(folder, worklists=wlm_dir / WLM_AE)
        return Echoes(folder / "home", worklist_dir=json_dir)

    for system in order():
        progress(f"3 {system}: {sizes.mwl_items:,} worklist items")
        try:
            with scratch(work, system) as folder, servers(system, folder) as server:
                for name, args in keys.items():
                    try:
                        port = server.query_port
                        _seconds, matches[name][system] = findscu(port, server.called, args,
                                                                  count=True)
                        runs = sizes.universal_runs if name == "universal" else sizes.runs
                        medians[name][system] = Cell(1000 * statistics.median(
                            findscu(port, server.called, args)[0] for _ in range(runs)))
                    except Exception as exc:  # that query fails, the others go on
                        medians[name][system] = failed(exc)
                        progress(f"  {name}: {exc}")
        except Exception as exc:
            progress(f"  {system} did not start: {exc}")
            for name in wanted:
                medians[name][system] = failed(exc)
    figures = []
    for n, name in enumerate(wanted):
        found = matches[name]
        cells = medians[name]
        if len(set(found.values())) > 1 or not found or 0 in found.values():
            for system in cells:
                cells[system].ok = False
                cells[system].note = (cells[system].note + " " if cells[system].note else "") + \
                    f"matches differ or are none: {found}"
        label = (f"MWL {name}, {sizes.mwl_items:,} items, "
                 f"{max(found.values(), default=0):,} matches")
        fig = Figure(f"3{'abc'[n]}", label, "ms", cells)
        if name == "universal":
            at_most(fig, "dcmtk", 1.0, "wlmscpfs")
        else:
            faster_by(fig, "dcmtk", 10.0, "wlmscpfs")
            faster_by(fig, "orthanc", 10.0)
        figures.append(fig)
    figures[0].how = (f"median wall time of whole findscu -W -q runs (process start to exit; "
                      "-q: no dump of each response), "
                      f"{sizes.runs} runs ({sizes.universal_runs} universal) after one counted "
                      "run; every server must return the same number of matches; Orthanc reads "
                      "the same .wl files as wlmscpfs, echoes the same items as JSON")
    return figures


SCALE_ROOT = "1.2.826.0.1.3680043.99.7"
#: Placeholders of the same length as the values :func:`prefill` puts in their place.
PLACEHOLDERS = {"study": f"{SCALE_ROOT}.1.9999999", "series": f"{SCALE_ROOT}.2.9999999.9",
                "sop": f"{SCALE_ROOT}.3.99999999", "patient": "P9999999"}


def _scale_template() -> bytes:
    """A tiny CT file whose UIDs and PatientID are fixed-length placeholders."""
    ds = image(PLACEHOLDERS["study"], PLACEHOLDERS["series"], 1)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = PLACEHOLDERS["sop"]
    ds.PatientID, ds.PatientName = PLACEHOLDERS["patient"], "SCALE^PATIENT"
    del ds.InstanceNumber
    ds.Rows = ds.Columns = 16
    ds.PixelData = bytes(512)
    ds.file_meta.SourceApplicationEntityTitle = "BENCH"
    path = OUT / ".scale-template.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


def prefill(config: config_module.Config, total: int, per_study: int = 100) -> None:
    """Grow a stopped echoes' archive by ``total`` instances, as the ingester would.

    Records go through echoes' own index writer (ArchiveIndex.apply in
    ingester-sized batches, then close); each gets a real file at the path
    the ingester would use, whose header says what the record says, so
    ``echoes fsck`` finds index and archive agreeing.
    """
    template = _scale_template()
    for key in ("study", "series", "sop"):
        assert template.count(PLACEHOLDERS[key].encode()) >= 1, key
    index = ArchiveIndex(config.index_path)
    batch: list[InstanceRecord] = []
    base = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    try:
        for n in range(total):
            study_n, within = divmod(n, per_study)
            study = f"{SCALE_ROOT}.1.{1_000_000 + study_n}"
            series = f"{SCALE_ROOT}.2.{1_000_000 + study_n}.{within % 4 + 1}"
            sop = f"{SCALE_ROOT}.3.{10_000_000 + n}"
            patient = f"P{1_000_000 + study_n % 5000}"
            relative = objects.object_key(study, series, sop)
            target = config.archive_dir / relative
            if within < 4:
                target.parent.mkdir(parents=True, exist_ok=True)
            data = (template.replace(PLACEHOLDERS["study"].encode(), study.encode())
                    .replace(PLACEHOLDERS["series"].encode(), series.encode())
                    .replace(PLACEHOLDERS["sop"].encode(), sop.encode())
                    .replace(PLACEHOLDERS["patient"].encode(), patient.encode()))
            target.write_bytes(data)
            batch.append(InstanceRecord(
                SOPInstanceUID=sop, SOPClassUID=CT, SeriesInstanceUID=series,
                StudyInstanceUID=study, PatientID=patient, PatientName="SCALE^PATIENT",
                StudyDate="20261129", Modality="CT",
                TransferSyntaxUID=ExplicitVRLittleEndian, path=str(relative), size=len(data),
                received=(base + dt.timedelta(milliseconds=n)).isoformat(
                    timespec="milliseconds"),
                calling_ae="BENCH"))
            if len(batch) == 500:
                index.apply(batch)
                batch = []
        if batch:
            index.apply(batch)
    finally:
        index.close()


def row_scale(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 7 target 4: ingest cost empty vs full archive; ``echoes studies --json``."""
    batch, total = sizes.scale_batch, sizes.scale_total
    tiny = tiny_corpus(max(sizes.tiny, 2 * batch))
    first, last = tiny[:batch], tiny[batch:2 * batch]
    warm(first + last)
    cells = {"first": Cell(None, False), "last": Cell(None, False), "studies": Cell(None, False)}
    how = ""
    progress(f"4 echoes: {batch:,} tiny into an empty archive, prefill, {batch:,} at {total:,}")
    try:
        with scratch(work, "echoes") as folder, Echoes(folder / "home", counting="index") as target:
            cells["first"] = ingest(target, first)
            target.stop()
            started = time.perf_counter()
            prefill(target.config, total - 2 * batch)
            filled = time.perf_counter() - started
            started = time.perf_counter()
            target.start()
            restarted = time.perf_counter() - started
            cells["last"] = ingest(target, last, already=total - batch)
            how = (f"{batch:,} tiny objects over DICOM into an empty echoes, then echoes "
                   f"stopped and its archive grown to {total - batch:,} instances ("
                   f"{total - 2 * batch:,} records via ArchiveIndex.apply plus their files, "
                   f"{filled:.1f} s; restart {restarted:.1f} s), then the next {batch:,}; "
                   f"ratio last/first")
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "echoes", "--config",
                                       str(target.ini), "studies", "--json"],
                                      capture_output=True, check=True)
                runs.append(time.perf_counter() - started)
                listed = sum(s["NumberOfInstances"] for s in json.loads(done.stdout))
            cells["studies"] = Cell(statistics.median(runs), listed == total,
                                    "" if listed == total else f"lists {listed} instances")
    except Exception as exc:
        progress(f"  {exc}")
        for key, cell in cells.items():
            if cell.value is None:
                cells[key] = failed(exc)
    for cell in cells.values():
        if cell.note:
            progress(f"  {cell.note}")
    first_fig = Figure("4a", f"ingest {batch:,} tiny into an empty echoes", "s",
                       {"echoes": cells["first"]}, how=how)
    last_fig = Figure("4b", f"ingest {batch:,} tiny at {total - batch:,}-{total:,} instances",
                      "s", {"echoes": cells["last"]})

    def grows(fig: Figure, figures: dict[str, Figure]) -> None:
        a, b = cell_of(figures["4a"], "echoes"), cell_of(fig, "echoes")
        if a.value and b.value is not None:
            ratio = b.value / a.value
            fig.checks.append(Check(f"{ratio:.2f}x 4a", "<= 1.5x 4a",
                                    a.ok and b.ok and ratio <= 1.5))
        else:
            fig.checks.append(Check("n/a", "<= 1.5x 4a", False))

    last_fig.targets.append(grows)
    studies_fig = Figure("4c", f"echoes studies --json, {total:,} instances", "s",
                         {"echoes": cells["studies"]},
                         how="wall time of the whole command (python start included), "
                             "median of 3, server running; output checked to list every "
                             "instance")
    below(studies_fig, 1.0, "s")
    return [first_fig, last_fig, studies_fig]


class PeakSampler(threading.Thread):
    """Samples VmHWM of echoes' processes of one role (a worker may exit before we look)."""

    def __init__(self, target: Echoes, role: str) -> None:
        super().__init__(daemon=True)
        self.target, self.role = target, role
        self.peaks: dict[int, float] = {}
        self.halt = threading.Event()

    def sample(self) -> None:
        for pid in self.target.pids(self.role):
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), vm_hwm(pid))

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.sample()

    def finish(self) -> float:
        self.halt.set()
        self.join()
        self.sample()
        return max(self.peaks.values(), default=0.0)


def row_memory(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 7 target 5: peak RSS of a store worker (1 GB object) and of the MWL worker."""
    big = big_object(sizes.big_frames)
    size_mib = big.stat().st_size / 2**20

    def store() -> Cell:
        with scratch(work, "echoes") as folder, Echoes(folder / "home") as target:
            sampler = PeakSampler(target, "store")
            ingester = PeakSampler(target, "ingester")
            sampler.start()
            ingester.start()
            cell = ingest(target, [big])
            peak = sampler.finish()
            return Cell(peak, cell.ok and peak > 0,
                        f"took {cell.value:.1f} s; ingester peak {ingester.finish():.0f} MiB"
                        f"{'; ' + cell.note if cell.note else ''}")

    def mwl() -> Cell:
        folder_json = worklist_json(sizes.mwl_memory_items)
        with scratch(work, "echoes") as folder, \
                Echoes(folder / "home", worklist_dir=folder_json) as target:
            loaded = re.findall(r"read in ([0-9.]+) s", target.log())
            universal = queries(sizes.mwl_items)["universal"]
            seconds, found = findscu(target.config.mwl_port, target.called, universal,
                                     count=True)
            pids = target.pids("mwl")
            peak = max((vm_hwm(pid) for pid in pids), default=0.0)
            ok = found == sizes.mwl_memory_items and peak > 0
            return Cell(peak, ok, f"loaded in {loaded[-1] if loaded else '?'} s, universal "
                                  f"query {seconds:.1f} s, {found:,} matches")

    store_fig = Figure("5a", f"store worker peak RSS, one {size_mib:,.0f} MiB object", "MiB",
                       {"echoes": measure("5a echoes: big object", store)},
                       how="VmHWM of echoes' store workers, sampled every 0.1 s while the "
                           "object is sent (storescu) and indexed; the largest")
    below(store_fig, 200, "MiB")
    mwl_fig = Figure("5b", f"MWL worker peak RSS, {sizes.mwl_memory_items:,} items, "
                           "universal query", "MiB",
                     {"echoes": measure("5b echoes: MWL memory", mwl)},
                     how="VmHWM of the 'echoes: mwl' process after loading the JSON items "
                         "and answering one universal findscu query (all items matched)")
    below(mwl_fig, 300, "MiB")
    return [store_fig, mwl_fig]


def watch_arrivals(folder: Path, expected: int, stop: threading.Event,
                   seen: dict[str, float]) -> None:
    """File name -> first time seen in ``folder`` (polled every 10 ms)."""
    while not stop.is_set() and len(seen) < expected:
        now = time.time()
        for name in os.listdir(folder):
            seen.setdefault(name, now)
        time.sleep(0.01)


def pushed(target: Echoes, study: str, scp: StoreSCP, count: int) -> Cell:
    """``echoes push`` of an archived study to ``scp``: seconds until all arrived.

    The sender on its own (no receiving, no ingesting beside it), against
    storescu reading the same files: where the forwarding time goes.
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "echoes", "--config", str(target.ini), "push",
                           study, "PUSHDEST"], capture_output=True, text=True)
    queued = time.perf_counter() - started
    if done.returncode != 0:
        return Cell(None, False, f"echoes push failed: {done.stderr.strip()[:200]}")
    deadline = time.monotonic() + SETTLE_SECONDS
    while len(os.listdir(scp.folder)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    arrived = len(os.listdir(scp.folder))
    return Cell(time.perf_counter() - started, arrived == count,
                f"{arrived} of {count} arrived; the push command (queueing) took {queued:.2f} s")


FORWARD_DESTINATION = "\n[ae:DEST]\nhost = 127.0.0.1\nport = {port}\nforward = yes\n"


def forwarded_plain(files: list[Path], folder: Path) -> Cell:
    """Row 6a: storescu -> echoes -> storescp, timed exactly as the direct run beside it
    (:func:`ingest`): plain ``storescu``, the destination's own count polled every
    20 ms, nothing else watching.

    Why apart from :func:`forwarded`: 6b's instruments (``storescu -v`` read line
    by line by this process, the destination folder listed every 10 ms, the
    destination logging verbosely) cost CPU on the same two cores, and only
    the echoes side carried them: 6a was 4.4 s with them and 3.0 s without
    them on the same commit (2026-12-04, bench/profile.py 6a).
    """
    with StoreSCP(folder / "destination") as scp:
        with Echoes(folder / "home", extra=FORWARD_DESTINATION.format(port=scp.port)) as target:
            time.sleep(1.0)  # let the sender process settle
            quiet_disk()
            started = time.perf_counter()
            _sent, errors = send(target.port, files, called=target.called)
            arrived = settle(scp, len(files))
            seconds = time.perf_counter() - started
            note = f"{arrived} of {len(files)} arrived"
            return Cell(seconds, arrived == len(files), "; ".join(filter(None, [note, errors])))


def forwarded(files: list[Path], folder: Path) -> tuple[Cell, Cell]:
    """storescu -v -> echoes -> storescp, watched per object: (median latency, push
    alone) cells.  The instruments slow the run; its total is not row 6a's."""
    destination = folder / "destination"
    with (StoreSCP(destination, log=folder / "destination.log") as scp,
          StoreSCP(folder / "pushed") as push_scp):
        extra = (FORWARD_DESTINATION.format(port=scp.port)
                 + f"\n[ae:PUSHDEST]\nhost = 127.0.0.1\nport = {push_scp.port}\n")
        with Echoes(folder / "home", extra=extra) as target:
            time.sleep(1.0)  # let the sender process settle
            sop_of = {str(path): dcmread(path, stop_before_pixels=True).SOPInstanceUID
                      for path in files}
            arrivals: dict[str, float] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch_arrivals,
                                       args=(scp.folder, len(files), stop, arrivals))
            watcher.start()
            responses: dict[str, float] = {}
            try:
                responses.update(storescu_acknowledged(target.port, files, sop_of))
                watcher.join(SETTLE_SECONDS)
            finally:
                stop.set()
                watcher.join()
            study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            push = (pushed(target, study, push_scp, len(files)) if len(arrivals) == len(files)
                    else Cell(None, False, "not measured: forwarding did not complete"))
    associations = (folder / "destination.log").read_text(errors="replace").count(
        "Association Received")
    complete = len(responses) == len(files) and len(arrivals) == len(files)
    note = (f"echoes acknowledged {len(responses)}, {len(arrivals)} of {len(files)} arrived; "
            f"{associations} association(s) to storescp")
    latencies = sorted(arrivals[name] - responses[name.split(".", 1)[1]]
                       for name in arrivals if name.split(".", 1)[1] in responses)
    if not arrivals or not latencies:
        return Cell(None, False, note), push
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    latency = Cell(statistics.median(latencies), complete,
                   f"p95 {p95:.2f} s, max {latencies[-1]:.2f} s; {note}")
    return latency, push


def orthanc_forwarded(files: list[Path], folder: Path) -> Cell:
    """storescu -> Orthanc with a Lua ``OnStoredInstance`` -> storescp: seconds from
    storescu's start until every object is on the storescp's disk."""
    with (StoreSCP(folder / "destination") as scp,
          Orthanc(folder / "orthanc", forward_to=scp.port) as orthanc):
        quiet_disk()
        started = time.perf_counter()
        _sent, errors = send(orthanc.port, files, called=orthanc.called)
        arrived = settle(scp, len(files))
        seconds = time.perf_counter() - started
        if arrived != len(files):
            return Cell(seconds, False, f"{arrived} of {len(files)} arrived; {errors}")
        return Cell(seconds, True, errors)


def row_forward(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 16 target 3: echoes forwarding to storescp vs storescu straight to
    storescp, and Orthanc forwarding with its Lua auto-routing as a guard."""
    files = corpus(sizes.forward)
    warm(files)

    def direct() -> Cell:
        with scratch(work, "dcmtk") as folder, StoreSCP(folder) as scp:
            return ingest(scp, files)

    def lua() -> Cell:
        with scratch(work, "orthanc") as folder:
            return orthanc_forwarded(files, folder)

    direct_cell = measure(f"6 dcmtk: storescu -> storescp, {len(files):,} CT", direct)

    def plain() -> Cell:
        with scratch(work, "echoes") as folder:
            return forwarded_plain(files, folder)

    total = measure(f"6 echoes: storescu -> echoes -> storescp, {len(files):,} CT", plain)
    progress(f"6 echoes, watched per object (6b, 6c): storescu -v -> echoes -> storescp, "
             f"{len(files):,} CT")
    try:
        with scratch(work, "echoes") as folder:
            latency, push = forwarded(files, folder)
    except Exception as exc:
        latency, push = failed(exc), failed(exc)
    lua_cell = measure(f"6 Orthanc: storescu -> Orthanc (Lua SendToModality) -> storescp, "
                       f"{len(files):,} CT", lua)
    total_fig = Figure("6a", f"forward {len(files):,} CT: until all at the destination", "s",
                       {"dcmtk": direct_cell, "echoes": total},
                       how="storescp column: storescu straight to storescp; echoes column: "
                           "storescu start until the last object is on the disk of the "
                           "storescp echoes forwards to; both timed the same way (plain "
                           "storescu, the destination's count polled every 20 ms); 6b's "
                           "per-object instruments run in a separate pass")
    at_most(total_fig, "dcmtk", 1.5, "storescu direct")
    guard_fig = Figure("6d", f"forward {len(files):,} CT, against Orthanc's Lua auto-routing",
                       "s", {"orthanc": lua_cell, "echoes": total},
                       how="Orthanc column: storescu -> Orthanc with an OnStoredInstance Lua "
                           "script calling SendToModality (its documented auto-routing) -> "
                           "storescp, until all are on the storescp's disk; echoes: row 6a")
    at_most(guard_fig, "orthanc", 0.8, "Orthanc + Lua")
    latency_fig = Figure("6b", "forward: median receive-to-arrival latency", "s",
                         {"echoes": latency},
                         how="from storescu reading echoes' C-STORE response to the file "
                             "appearing in the destination folder (polled every 10 ms), "
                             "in a pass of its own after 6a's")
    below(latency_fig, 1.0, "s")
    if push.value is not None and direct_cell.value:
        push = Cell(push.value, push.ok,
                    f"{push.value / direct_cell.value:.2f}x storescu direct; {push.note}")
    push_fig = Figure("6c", f"push {len(files):,} archived CT: until all at the destination",
                      "s", {"dcmtk": direct_cell, "echoes": push},
                      how="no target (where 6a's time goes): the sender alone, `echoes push` "
                          "of the study forwarded in 6a to a second storescp, against "
                          "storescu reading the same files")
    return [total_fig, guard_fig, latency_fig, push_fig]


def started_echoes(target: Echoes, first: Path) -> tuple[Cell, Cell]:
    """``echoes start`` of a stopped echoes: (DICOM ready, Browser's first page) cells.

    DICOM ready: the store port answers C-ECHO, then the worklist port, then
    storescu's first object is acknowledged.  The Browser: logged in (POST
    /api/login) and GET / (the studies page) answered 200, tried every 20 ms
    from a thread of its own from the same start.
    """
    port = target.config.http_port
    page: dict[str, float] = {}
    started = time.perf_counter()
    target.starts += 1
    process = target.process = subprocess.Popen(
        [sys.executable, "-m", "echoes", "--config", str(target.ini), "start"],
        stdout=open(target.home / "echoes.out", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    deadline = started + 60

    def browse() -> None:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        login = json.dumps({"user": "admin", "password": BROWSER_PASSWORD}).encode()
        logged_in = False
        while time.perf_counter() < deadline and process.poll() is None:
            try:
                if not logged_in:
                    with opener.open(urllib.request.Request(
                            f"http://127.0.0.1:{port}/api/login", data=login,
                            headers={"Content-Type": "application/json"}), timeout=10) as reply:
                        logged_in = reply.status == 200
                with opener.open(f"http://127.0.0.1:{port}/", timeout=10) as reply:
                    body = reply.read()
                    if reply.status == 200 and b"/login" not in reply.url.encode():
                        page["seconds"], page["bytes"] = time.perf_counter() - started, len(body)
                        return
            except OSError:
                pass
            time.sleep(0.02)

    browser = threading.Thread(target=browse, daemon=True)
    browser.start()
    steps: list[str] = []
    dicom: Cell | None = None
    for dicom_port, called in ((target.port, target.called),
                               (target.config.mwl_port, target.called), (target.port, "")):
        while dicom is None:
            if called:
                if echo(dicom_port, called):
                    steps.append(f"{'store' if dicom_port == target.port else 'mwl'} port "
                                 f"{time.perf_counter() - started:.2f} s")
                    break
            else:
                _sent, errors = send(dicom_port, [first], called=target.called)
                if not errors:
                    steps.append(f"first object {time.perf_counter() - started:.2f} s")
                    break
            if time.perf_counter() > deadline or process.poll() is not None:
                dicom = Cell(None, False, f"not ready after {time.perf_counter() - started:.0f}"
                                          f" s: {target.problems()}")
            time.sleep(0.02)
    if dicom is None:
        dicom = Cell(time.perf_counter() - started, True, "; ".join(steps))
    browser.join(max(0.0, deadline - time.perf_counter()))
    web = (Cell(page["seconds"], True, f"{page['bytes']:,} bytes") if "seconds" in page
           else Cell(None, False, "GET / never answered 200 after logging in"))
    return dicom, web


def row_startup(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 16 target 4: ``echoes start`` until it serves DICOM and the Browser."""
    first = sc_corpus(sizes.tiny)[:1]
    progress("7 echoes: start until DICOM answers and the Browser's first page")
    try:
        with scratch(work, "echoes") as folder:
            target = Echoes(folder / "home", start=False, extra=WEB_PASSWORD_LINE)
            try:
                dicom, web = started_echoes(target, first[0])
            finally:
                target.stop()
    except Exception as exc:
        dicom, web = failed(exc), failed(exc)
    for cell in (dicom, web):
        if cell.note:
            progress(f"  {cell.note}")
    dicom_fig = Figure("7a", "echoes start: both DICOM ports answer, first object stored", "s",
                       {"echoes": dicom},
                       how="from `python -m echoes start` (an empty home, store_workers = 2) "
                           "until echoscu succeeds on the store port, then on the worklist "
                           "port, then storescu's first object is acknowledged (each polled "
                           "every 20 ms)")
    below(dicom_fig, 2.0, "s")
    web_fig = Figure("7b", "echoes start: the Browser's first page (log in, GET /)", "s",
                     {"echoes": web},
                     how="from the same start until POST /api/login then GET / (the studies "
                         "page) answer 200 on the web port (tried every 20 ms from a thread, "
                         "beside 7a's polling)")
    below(web_fig, 3.0, "s")
    return [dicom_fig, web_fig]


# --- Query/Retrieve C-FIND (issue 17: 8a, 8b) ---------------------------------------

#: Each system's Q/R archive, loaded in the first round and served again in the
#: later ones (loading 100,000 objects into Orthanc takes minutes): system -> state.
_QR_LOADED: dict[str, object] = {}


@contextlib.contextmanager
def qr_server(system: str, files: list[Path], work: Path, per_study: int,
              dicomweb: bool = False) -> Iterator[Receiver | qr.DcmQRSCP]:
    """The system serving the Q/R archive: loaded the first time, restarted later
    (Orthanc with its DICOMweb plugin when ``dicomweb``; echoes serves it always)."""
    folder = work / f"qr-{system}"
    first = system not in _QR_LOADED
    if system == "dcmtk":
        # The corpus is sorted by study: its first studies are what dcmqrscp gets.
        indexed = qr.dcmqrscp_studies(len(files) // per_study, per_study)
        server: Receiver | qr.DcmQRSCP = qr.DcmQRSCP(
            folder, files[:indexed * per_study] if first else None)
        _QR_LOADED[system] = True
    elif system == "orthanc":
        server = Orthanc(folder, extra={"DicomAlwaysAllowFind": True}, dicomweb=dicomweb)
        if first:
            for start in range(0, len(files), 1000):
                send(server.port, files[start:start + 1000], 2, called=server.called)
            found = settle(server, len(files))
            if found != len(files):
                server.stop()
                raise RuntimeError(f"Orthanc holds {found} of {len(files)} objects")
            _QR_LOADED[system] = True
            wait_idle(server.process.pid, timeout=300, window=1.0, busy=0.02)
    else:
        target = _QR_LOADED.get(system)
        if not isinstance(target, Echoes):
            target = Echoes(folder / "home", start=False, extra=WEB_PASSWORD_LINE)
            qr.fill_echoes(target.config, files)
            _QR_LOADED[system] = target
        target.start()
        server = target
    try:
        yield server
    finally:
        server.stop()


def row_qr(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 17 targets 8a, 8b: study-level C-FIND, echoes vs Orthanc vs dcmqrscp."""
    files = qr.corpus(sizes.qr_studies, sizes.qr_per_study)
    wanted = qr.queries(sizes.qr_studies, sizes.qr_per_study)
    medians: dict[str, dict[str, Cell]] = {q.key: {} for q in wanted}
    wholes: dict[str, dict[str, Cell]] = {q.key: {} for q in wanted}
    matches: dict[str, dict[str, int]] = {q.key: {} for q in wanted}
    for system in order():
        progress(f"8 {system}: Q/R C-FIND on {len(files):,} instances"
                 f"{'' if system in _QR_LOADED else ' (loading them first)'}")
        try:
            with qr_server(system, files, work, sizes.qr_per_study) as server:
                for query in wanted:
                    try:
                        # Three queries on one association, counted: each must answer.
                        _seconds, found = qr.findscu(server.port, server.called, query.keys,
                                                     count=True, queries=3)
                        matches[query.key][system] = found // 3 if found % 3 == 0 else -found
                        each, whole = qr.per_query(server.port, server.called, query.keys,
                                                   sizes.runs)
                        medians[query.key][system] = Cell(1000 * each)
                        wholes[query.key][system] = Cell(1000 * whole)
                    except Exception as exc:  # that query fails, the other goes on
                        medians[query.key][system] = wholes[query.key][system] = failed(exc)
                        progress(f"  {query.key}: {exc}")
        except Exception as exc:
            progress(f"  {system} did not serve: {exc}")
            for query in wanted:
                medians[query.key][system] = wholes[query.key][system] = failed(exc)
    figures = []
    for query in wanted:
        cells = medians[query.key]
        for system, found in matches[query.key].items():
            if found != query.matches:
                for table in (cells, wholes[query.key]):
                    table[system].ok = False
                    table[system].note = (table[system].note + " " if table[system].note
                                          else "") + f"{found} matches, expected {query.matches}"
        fig = Figure(query.key, f"{query.label}, {query.matches} matches, per query", "ms",
                     cells)
        faster_by(fig, "orthanc", 5.0)
        faster_by(fig, "dcmtk", 5.0, "dcmqrscp")
        figures.append(fig)
    for query in wanted:  # the whole-run figures, shown beside them (no target)
        figures.append(Figure(f"{query.key}1", "the same, one query: whole findscu run "
                              "(process start to exit)", "ms", wholes[query.key]))
    indexed = qr.dcmqrscp_studies(sizes.qr_studies, sizes.qr_per_study)
    figures[0].how = (
        f"per query: the median wall time of {sizes.runs} findscu -S -q runs sending "
        f"1 + {qr.QUERIES_PER_RUN} copies of the query on one association, less the median "
        f"of {sizes.runs} one-query runs, over {qr.QUERIES_PER_RUN} (findscu's own start and "
        "association, about 20 ms for every server, cancel out; 8a1/8b1 show the whole "
        "one-query runs); before timing, a counted run of 3 queries on one association must "
        "return 3 x the expected matches; archive: "
        f"{sizes.qr_studies:,} studies x "
        f"{sizes.qr_per_study} tiny objects ({len(files):,}); Orthanc received them over "
        "DICOM (storescu), echoes got them through its own header reader and index writer "
        f"(files in its archive, server stopped); dcmqrscp holds the first {indexed:,} studies "
        f"({indexed * sizes.qr_per_study:,} instances, indexed by dcmqridx): at most "
        f"{qr.DCMQRSCP_MAX_STUDIES} studies fit one storage area, and its index takes "
        "quadratic time to build (one 8 KB record per image, scanned whole per insertion: "
        f"{qr.DCMQRSCP_MAX_INSTANCES:,} take minutes, 50,000 would take hours); every match "
        "lies in those studies and every server must return the expected number; archives "
        "loaded in the first round, served again in the later ones")
    return figures


#: The calling AE of movescu and getscu in the retrieve row, and the move destination's.
RETRIEVER, MOVE_DEST = "BENCHSCU", "DEST"


#: Systems whose retrieve archive already holds the CT study (later rounds skip loading).
_RETRIEVE_LOADED: set[str] = set()


@contextlib.contextmanager
def retrieve_server(system: str, files: list[Path], work: Path, folder: Path,
                    destination: int, dicomweb: bool = False) -> Iterator[Receiver]:
    """``system`` holding the CT study of ``files``, started, idle, and knowing the move
    destination (port ``destination``; 0: none) and the caller.

    When the qr row ran before in this run, this is its archive of qr_studies x
    qr_per_study objects with the CT study added (the issue's "same archive"),
    else a fresh one holding the study alone.
    """
    shared = system in _QR_LOADED
    if system == "orthanc":
        modalities = {"bench": [RETRIEVER, "127.0.0.1", 104]}  # a C-GET calls nothing back
        if destination:
            modalities["dest"] = [MOVE_DEST, "127.0.0.1", destination]
        target: Receiver = Orthanc(work / "qr-orthanc" if shared else folder / "orthanc",
                                   extra={"DicomAlwaysAllowFind": True,
                                          "DicomModalities": modalities}, dicomweb=dicomweb)
    else:
        section = (f"\n[ae:{MOVE_DEST}]\nhost = 127.0.0.1\nport = {destination}\n"
                   "forward = no\n" if destination else "")
        existing = _QR_LOADED.get(system)
        if isinstance(existing, Echoes):
            echoes = existing
            text = echoes.ini.read_text()
            echoes.ini.write_text(text.split(f"\n[ae:{MOVE_DEST}]")[0] + section)
            echoes.start()
        else:
            echoes = Echoes(folder / "home", extra=WEB_PASSWORD_LINE + section)
        echoes.counting = "index"  # a walk of a large archive per poll would be the load
        target = echoes
    try:
        key = system if shared else ""
        if key not in _RETRIEVE_LOADED:
            already = target.count()
            loaded = ingest(target, files, already=already)
            if not loaded.ok:
                raise RuntimeError(f"loading the study: {loaded.note}")
            if key:
                _RETRIEVE_LOADED.add(key)
        wait_idle(target.process.pid, timeout=300, window=1.0,  # type: ignore[attr-defined]
                  busy=0.02)
        quiet_disk()  # the study just loaded is not written back during the retrieve
        yield target
    finally:
        target.stop()


def retrieved(system: str, files: list[Path], work: Path, operation: str) -> Cell:
    """One C-MOVE (movescu, to a fresh storescp) or C-GET (getscu) of the study of
    ``files`` from ``system`` holding it (:func:`retrieve_server`): seconds from the
    client's start until it returned, valid when every object arrived."""
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(scratch(work, system))
        scp = stack.enter_context(StoreSCP(folder / "dest")) if operation == "move" else None
        target = stack.enter_context(retrieve_server(system, files, work, folder,
                                                     scp.port if scp is not None else 0))
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        if scp is not None:
            argv = [tool("movescu"), "-S", "-aet", RETRIEVER, "-aec", target.called,
                    "-aem", MOVE_DEST, *keys, "127.0.0.1", str(target.port)]
            arrived = scp.count
        else:
            got = folder / "got"
            got.mkdir()
            argv = [tool("getscu"), "-S", "-aet", RETRIEVER, "-aec", target.called,
                    "-od", str(got), *keys, "127.0.0.1", str(target.port)]

            def arrived() -> int:
                return sum(1 for entry in os.scandir(got) if entry.is_file())
        started = time.perf_counter()
        done = subprocess.run(argv, env=ENV, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        count = arrived()
        output = (done.stdout + done.stderr).strip()
        note = f"{count} of {len(files)} arrived" + (
            f"; {argv[0].rsplit('/', 1)[-1]} exit {done.returncode}: {output[-200:]}"
            if done.returncode or output else "")
        return Cell(seconds, count == len(files) and done.returncode == 0, note)


def row_retrieve(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 17 (c) and (d): C-MOVE of a CT study to a storescp (movescu) and C-GET of it
    (getscu), echoes and Orthanc, against storescu sending the same files to storescp."""
    files = corpus(sizes.retrieve)
    warm(files)

    def direct() -> Cell:
        with scratch(work, "dcmtk") as folder, StoreSCP(folder) as scp:
            return ingest(scp, files)

    cells: dict[str, dict[str, Cell]] = {"move": {}, "get": {}}
    for system in order():
        if system == "dcmtk":
            cells["move"]["dcmtk"] = cells["get"]["dcmtk"] = measure(
                f"8c/8d dcmtk: storescu -> storescp, {len(files):,} CT", direct)
            continue
        for operation in ("move", "get"):
            cells[operation][system] = measure(
                f"8{'c' if operation == 'move' else 'd'} {system}: C-{operation.upper()} of "
                f"{len(files):,} CT", lambda s=system, o=operation: retrieved(s, files, work, o))
    archive = ("the qr row's archive (8a) with the study added by storescu"
               if "echoes" in _QR_LOADED and "orthanc" in _QR_LOADED
               else "the one study, loaded by storescu (run with the qr row for its archive)")
    how = (f"archive: {archive}; each system restarted and idle before the clock, which runs "
           "from the client's start until it returned (the final response: every object "
           "stored); storescp/wlmscpfs column: storescu sending the same files straight to "
           "storescp")
    move = Figure("8c", f"C-MOVE {len(files):,} CT to storescp (movescu)", "s", cells["move"],
                  how=how)
    at_most(move, "orthanc", 1.0)
    at_most(move, "dcmtk", 1.25, "storescu direct")
    get = Figure("8d", f"C-GET {len(files):,} CT (getscu)", "s", cells["get"],
                 how="as 8c; getscu writes what it gets into a folder, as storescp does")
    at_most(get, "orthanc", 1.0)
    at_most(get, "dcmtk", 1.25, "storescu direct")
    return [move, get]


def dicomweb_endpoint(server: Receiver | qr.DcmQRSCP) -> bench_dicomweb.Endpoint:
    """Where ``server`` (echoes or Orthanc) serves DICOMweb, with the bench's login."""
    if isinstance(server, Echoes):
        return bench_dicomweb.Endpoint(server.config.http_port, user="admin",
                                       password=BROWSER_PASSWORD)
    assert isinstance(server, Orthanc)
    return bench_dicomweb.Endpoint(server.http)


def row_dicomweb(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 19: QIDO-RS on the qr row's archive (9a, 9b), WADO-RS of a 1,000-CT study
    (9c) and STOW-RS of 1,000 CT into an empty server (9d), echoes against Orthanc with
    its DICOMweb plugin."""
    if not ORTHANC_DICOMWEB_PLUGIN.exists():
        raise MissingTool(f"{ORTHANC_DICOMWEB_PLUGIN} missing: install the Debian package "
                          "'orthanc-dicomweb'")
    archive = qr.corpus(sizes.qr_studies, sizes.qr_per_study)
    wanted = qr.queries(sizes.qr_studies, sizes.qr_per_study)
    ct = corpus(sizes.retrieve)
    warm(ct)
    study = dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID
    qido: dict[str, dict[str, Cell]] = {q.key: {} for q in wanted}
    wado: dict[str, Cell] = {}
    stowed: dict[str, Cell] = {}
    for system in (s for s in order() if s != "dcmtk"):
        progress(f"9 {system}: QIDO-RS on {len(archive):,} instances"
                 f"{'' if system in _QR_LOADED else ' (loading them first)'}")
        try:
            with qr_server(system, archive, work, sizes.qr_per_study, dicomweb=True) as server:
                endpoint = dicomweb_endpoint(server)
                for query in wanted:
                    path = "/studies?" + bench_dicomweb.qido_query(query.keys)
                    try:
                        seconds, found = bench_dicomweb.qido_per_request(
                            endpoint, path, sizes.runs * 7)
                        qido[query.key][system] = Cell(
                            1000 * seconds, found == query.matches,
                            "" if found == query.matches
                            else f"{found} matches, expected {query.matches}")
                    except Exception as exc:
                        qido[query.key][system] = failed(exc)
        except Exception as exc:
            for query in wanted:
                qido[query.key][system] = failed(exc)

        def retrieve(system: str = system) -> Cell:
            with scratch(work, system) as folder, \
                    retrieve_server(system, ct, work, folder, 0, dicomweb=True) as server:
                seconds, parts, size = bench_dicomweb.wado_study(dicomweb_endpoint(server),
                                                                 study)
                return Cell(seconds, parts == len(ct),
                            f"{parts} of {len(ct)} parts, {size / 2**20:,.0f} MiB")

        def upload(system: str = system) -> Cell:
            with scratch(work, system) as folder:
                server: Receiver = (Orthanc(folder / "orthanc", dicomweb=True)
                                    if system == "orthanc"
                                    else Echoes(folder / "home", extra=WEB_PASSWORD_LINE))
                try:
                    quiet_disk()
                    started = time.perf_counter()
                    _seconds, answered = bench_dicomweb.stow(dicomweb_endpoint(server), ct)
                    found = settle(server, len(ct))
                    seconds = time.perf_counter() - started
                    return Cell(seconds, found == len(ct),
                                f"{answered} requests answered 200; {found} of {len(ct)} "
                                "stored")
                finally:
                    server.stop()

        wado[system] = measure(f"9c {system}: WADO-RS of a {len(ct):,}-CT study", retrieve)
        stowed[system] = measure(f"9d {system}: STOW-RS of {len(ct):,} CT", upload)
    figures = []
    for query in wanted:
        label = query.label.replace("C-FIND", "search")
        fig = Figure(query.key.replace("8", "9"), f"QIDO-RS: {label}, {query.matches} "
                     "matches, per request", "ms", qido[query.key])
        faster_by(fig, "orthanc", 5.0)
        figures.append(fig)
    figures[0].how = (
        f"GET /dicom-web/studies?<the 8a/8b keys as QIDO parameters, the returned keys as "
        f"includefield> on one keep-alive connection: the median of {sizes.runs * 7} requests "
        "after a counted one (each server must return the expected matches); the qr row's "
        f"archive ({len(archive):,} instances); Orthanc with Debian's DICOMweb plugin, no "
        "authentication; echoes as the Browser's admin over HTTP Basic")
    wado_fig = Figure("9c", f"WADO-RS retrieve of a {len(ct):,}-CT study", "s", wado,
                      how=f"GET /dicom-web/studies/<uid>, Accept: {bench_dicomweb.WADO_ACCEPT} "
                          "(stored Explicit VR Little Endian: no conversion); from the request "
                          "to the last byte read (1 MiB pieces, discarded); the study added to "
                          "the qr row's archive when it ran")
    at_most(wado_fig, "orthanc", 1.0)
    stow_fig = Figure("9d", f"STOW-RS of {len(ct):,} CT into an empty server", "s", stowed,
                      how=f"POST /dicom-web/studies, {bench_dicomweb.STOW_PER_REQUEST} objects "
                          "a multipart/related request, one keep-alive connection; until every "
                          "object is counted (echoes: in the archive folder, moved there after "
                          "indexing; Orthanc: /statistics)")
    at_most(stow_fig, "orthanc", 1.0)
    return [*figures, wado_fig, stow_fig]


def row_postgres(sizes: Sizes, work: Path) -> list[Figure]:
    """Issue 18: the index on PostgreSQL (bench/postgres_rows.py; this module is
    passed in: it runs as __main__, and importing it again would copy its globals)."""
    import postgres_rows

    return postgres_rows.rows(sys.modules[__name__], sizes is QUICK, work)


RUNNERS: dict[str, Callable[[Sizes, Path], list[Figure]]] = {
    "ingest": row_ingest, "nagle": row_nagle, "worklist": row_worklist, "scale": row_scale,
    "memory": row_memory, "forward": row_forward, "startup": row_startup, "qr": row_qr,
    "retrieve": row_retrieve, "dicomweb": row_dicomweb, "postgres": row_postgres,
}


def first_line(argv: list[str]) -> str:
    """First line a program prints about its version (for the table header)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=ENV)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def header(sizes: Sizes, quick: bool, work: Path, rounds: int) -> list[str]:
    """Where and with what the figures were taken."""
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "echoes"],
                           capture_output=True, text=True).stdout.strip()
    import pydicom
    import pynetdicom

    return [
        f"echoes vs dcmtk vs Orthanc, {dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}{', --quick' if quick else ''}",
        f"echoes: {commit}{' + uncommitted changes in echoes/' if dirty else ''}; "
        f"python {platform.python_version()}, pynetdicom {pynetdicom.__version__}, "
        f"pydicom {pydicom.__version__}",
        f"dcmtk: {tool('storescu')} etc. ({first_line([tool('storescu'), '--version'])}); "
        f"TCP_NODELAY=1 for every dcmtk process except the Nagle-on sender",
        f"Orthanc: {tool('Orthanc')} ({first_line([tool('Orthanc'), '--version'])}), "
        f"worklist plugin {ORTHANC_WORKLIST_PLUGIN}",
        "each system runs alone with a fresh empty store, started and idle (every process "
        "under 2% of a CPU for 1 s) before its clock starts; "
        + (f"each figure is the median of {rounds} rounds (min-max in brackets), the systems "
           "alternating, ratios and verdicts on the medians" if rounds > 1
           else "figures are one run each")
        + f"; load average at start {os.getloadavg()[0]:.2f}",
        f"stores under {work} (one file system for all)",
    ]


def check_tools() -> None:
    """Exit with the Debian package to install when a peer is missing."""
    for name in ("storescu", "storescp", "findscu", "echoscu", "wlmscpfs", "movescu", "getscu",
                 "Orthanc", "dcmqrscp", "dcmqridx"):
        tool(name)
    if not ORTHANC_WORKLIST_PLUGIN.exists():
        raise MissingTool(f"{ORTHANC_WORKLIST_PLUGIN} missing: install the Debian package "
                          "'orthanc' (apt-get install orthanc)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (smoke test)")
    parser.add_argument("--only", action="append", choices=ROWS + OPT_IN_ROWS, metavar="ROW",
                        help=f"run only this row (repeatable): {', '.join(ROWS)}; opt-in, "
                             f"only when named: {', '.join(OPT_IN_ROWS)}")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="run each row N times, the systems alternating, and report "
                             "medians with the spread (default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the servers' folders (logs, stores) after the run")
    parser.add_argument("--workdir", default=None,
                        help="where every server's store goes (default: the system temp "
                             "folder; the same for every system)")
    args = parser.parse_args()
    global KEEP, ROUND
    KEEP = args.keep
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sizes = QUICK if args.quick else FULL
    rows = [row for row in ROWS + OPT_IN_ROWS  # the table's order
            if (not args.only and row in ROWS) or (args.only and row in args.only)]
    try:
        check_tools()
    except MissingTool as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    # The stores live in the system temp folder, not in the checkout: a
    # checkout may sit on a watched or synced folder (here /work creates a
    # file 10x slower than /tmp), which would measure the folder, not the server.
    work = Path(tempfile.mkdtemp(prefix="echoes-compare-", dir=args.workdir))
    top = header(sizes, args.quick, work, args.rounds)
    started = time.monotonic()
    figures: list[Figure] = []
    try:
        for row in rows:
            rounds = []
            for ROUND in range(args.rounds):
                if args.rounds > 1:
                    progress(f"{row}: round {ROUND + 1} of {args.rounds}")
                rounds.append(RUNNERS[row](sizes, work))
            figures += merge(rounds)
    finally:
        if KEEP:
            print(f"kept every server's folder in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    table = render(figures, top, wall, args.quick)
    print(table)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (OUT / f"compare-{stamp}.txt").write_text(table + "\n")
    print(f"\nwritten to {OUT / f'compare-{stamp}.txt'}", file=sys.stderr)
    return 0 if all(c.passed for fig in figures for c in fig.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
