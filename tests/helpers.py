"""What the tests share: a real echoes server in a temporary home (start, stop, its
children), DICOM files made with pydicom, ports never handed out twice, dcmtk's
environment.  Fixtures built on them are in conftest.py."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import (
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)

from echoes import config as config_module
from echoes.index import embedded as index

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: dcmtk leaves Nagle on unless told: every object would wait for a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


#: Ports this test process has handed out: the kernel may give a just-released port again,
#: and a config with store_port == http_port is refused (a CI run failed on exactly that).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free right now and not handed out before in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def make_dataset(sop_class: str = "1.2.840.10008.5.1.4.1.1.7", study: str | None = None,
                 series: str | None = None, rows: int = 4, patient_id: str = "P1",
                 modality: str = "OT", syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A small valid image of ``sop_class``, ready for pynetdicom to send in ``syntax``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = "TEST^PATIENT"
    ds.PatientID = patient_id
    ds.StudyDate = "20261129"
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x01\x00" * rows * rows
    return ds


def write_part10(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Server:
    """A running ``echoes start`` and where it keeps things."""

    home: Path
    config: config_module.Config
    process: subprocess.Popen

    @property
    def port(self) -> int:
        return self.config.store_port

    def studies(self) -> list[dict]:
        return index.read_studies(self.config.index_path)

    def indexed_sops(self) -> list[str]:
        sops = []
        for study in self.studies():
            detail = index.read_study(self.config.index_path, study["StudyInstanceUID"])
            sops.extend(i["SOPInstanceUID"] for i in detail["instances"])
        return sops

    def catalog_problems(self) -> list[str]:
        """Where the catalog (what the Browser and ``echoes studies`` list) disagrees
        with the study shards (the instances): after any kill it must not."""
        catalog = {s["StudyInstanceUID"]: s for s in self.studies()}
        shards = {uid for uid, _path in index._shard_files(self.config.index_path)}
        problems = [f"study {uid} has a shard, not in the catalog"
                    for uid in sorted(shards - set(catalog))]
        for uid, summary in sorted(catalog.items()):
            detail = index.read_study(self.config.index_path, uid)
            if detail is None or detail["study"] != summary:
                problems.append(f"study {uid}: catalog {summary}, shard "
                                f"{detail and detail['study']}")
        return problems

    def index_starts(self) -> list[str]:
        """How each start of the ingester took the index (its log lines)."""
        try:
            text = self.config.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return re.findall(r"index: started from (.*)", text)

    def archived_sops(self) -> list[str]:
        return [p.stem for p in self.config.archive_dir.rglob("*.dcm")]

    def wait_ingested(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.indexed_sops()) >= count and not list(
                    (self.config.spool_dir / "incoming").glob("*.dcm")):
                return
            time.sleep(0.1)
        raise AssertionError(f"expected {count} indexed, have {len(self.indexed_sops())}")

    def children(self, role: str) -> list[int]:
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if child.cmdline() and child.cmdline()[0].strip() == f"echoes: {role}":
                    found.append(child.pid)
            except psutil.Error:
                continue
        return found

    def files_outside(self) -> list[Path]:
        """Files anywhere in the home that are not archive, spool, index or log."""
        allowed = [self.config.archive_dir, self.config.spool_dir, self.config.index_path.parent,
                   self.config.log_file.parent, self.config.pid_file.parent, self.home / "etc"]
        return [p for p in self.home.rglob("*") if p.is_file()
                and not any(a in p.parents for a in allowed)]


def write_config(home: Path, **extra: object) -> Path:
    """etc/echoes.ini in ``home`` for a server this test will start: free ports."""
    ports = {"store_port": free_port(), "mwl_port": free_port(), "http_port": free_port()}
    return _write_config(home, {**ports, **extra})


def write_offline_config(home: Path, **extra: object) -> Path:
    """etc/echoes.ini in ``home`` for code that reads a configuration and serves
    nothing (unit tests open no socket, so no free port is looked for): the
    ports are placeholders that are never bound.
    """
    return _write_config(home, {"store_port": 11112, "mwl_port": 11113, "http_port": 11114,
                                **extra})


def _write_config(home: Path, extra: dict[str, object]) -> Path:
    (home / "etc").mkdir(parents=True, exist_ok=True)
    values = {"min_free_mb": 10, "bind": "127.0.0.1", **extra}
    path = home / "etc" / "echoes.ini"
    path.write_text("[echoes]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOES")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def web_ok(port: int) -> bool:
    """The Browser answers (its login page): the web process runs and made its secret."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def start_server(home: Path, sections: str = "", own_group: bool = False,
                 **extra: object) -> Server:
    """``echoes start`` on a fresh config (``extra`` keys in [echoes], then ``sections``
    such as ``[ae:TITLE]`` ones), once every port answers (``own_group``: in a process
    group of its own, which a test may kill whole)."""
    config_path = write_config(home, **extra)
    if sections:
        config_path.write_text(config_path.read_text() + sections)
    config = config_module.load(config_path)
    log = open(home.with_name(home.name + ".out"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config_path),
                                "start"], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=own_group)
    server = Server(home, config, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((home.with_name(home.name + ".out")).read_text())
        if (len(server.children("store")) == config.store_workers
                and echo_ok(config.store_port) and echo_ok(config.mwl_port)
                and web_ok(config.http_port)):
            return server
        time.sleep(0.2)
    output = home.with_name(home.name + ".out").read_text()
    raise AssertionError("server did not come up: " + output)


def stop_server(server: Server) -> None:
    """SIGTERM, then check that no process of the server printed a traceback."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(40)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    crashed = tracebacks(server)
    assert not crashed, f"a server process printed a traceback:\n{crashed}"


def tracebacks(server: Server) -> str:
    """What the server's processes printed as tracebacks (stdout/stderr), if anything:
    a worker that crashes prints one there, whatever the test looked at.
    """
    try:
        output = server.home.with_name(server.home.name + ".out").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    start = output.find("Traceback")
    return output[start:start + 3000] if start >= 0 else ""


def echoes_cli(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``echoes ARGS`` against the server's config, as an admin types it (text output)."""
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(server.config.path),
                           *args], capture_output=True, text=True, timeout=timeout)


def studies_json(server: Server) -> list[dict]:
    """What ``echoes studies --json`` lists: the index as every reader sees it."""
    done = echoes_cli(server, "studies", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def api_json(server: Server, path: str, password: str, user: str = "admin") -> object:
    """GET ``path`` of the server's web port with Basic auth, the answer's JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.config.http_port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def wait_for(condition: Callable[[], object], timeout: float,
             message: str | Callable[[], str], interval: float = 0.1) -> None:
    """Until ``condition()`` is true; else fail with ``message`` (called when it is a
    function, so it can show the state the wait ended in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(message() if callable(message) else message)


# -- A-ASSOCIATE-RQ user information items a peer may add (pynetdicom's primitives) --


def extended(sop_class: str) -> SOPClassExtendedNegotiation:
    """A SOP Class Extended Negotiation item (echoes supports none: read past)."""
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_application_information = b"\x01\x00"
    return item


def common(sop_class: str) -> SOPClassCommonExtendedNegotiation:
    item = SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_uid = "1.2.840.10008.4.2"
    return item


def identity() -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"user"
    item.secondary_field = b"secret"
    item.positive_response_requested = True
    return item
