"""Several slow DICOMweb downloads at once must not stall the Browser (issue 19).

A WADO-RS answer holds one of the web process's request threads for as long
as it streams: the thread writes until waitress's buffer for that client is
full, then waits for the client to read.  A viewer on a slow link, or a
script that opened downloads and went away, must not take every thread: the
Browser's pages and API keep answering beside them.
"""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import (
    DCMTK_ENV,
    Server,
    make_dataset,
    start_server,
    stop_server,
    write_part10,
)
from pydicom.uid import generate_uid
from werkzeug.security import generate_password_hash

from echoes.web import THREADS

PASSWORD = "busy-secret"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
#: 24 objects of 2 MiB: an answer (48 MiB) far larger than what the socket buffers and
#: waitress's own buffer for one client hold, so a client that does not read keeps its
#: request thread writing.
OBJECTS, ROWS = 24, 1024
#: More stuck downloads than the web process had request threads before this test.
STUCK = 6


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, dcmtk: None) -> Iterator[tuple[Server, str]]:
    root = tmp_path_factory.mktemp("busy")
    server = start_server(root / "home", http_password_hash=FAST_HASH)
    try:
        study, series = generate_uid(), generate_uid()
        files = []
        for n in range(OBJECTS):
            ds = make_dataset(study=study, series=series, rows=ROWS)
            ds.InstanceNumber = n + 1
            files.append(write_part10(ds, root / f"{n:03d}.dcm"))
        done = subprocess.run(["storescu", "-aec", "ECHOES", "127.0.0.1", str(server.port),
                               *map(str, files)], env=DCMTK_ENV, capture_output=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        server.wait_ingested(OBJECTS)
        yield server, study
    finally:
        stop_server(server)


def stuck_download(port: int, study: str) -> socket.socket:
    """A WADO-RS study retrieve whose client never reads the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    sock.sendall((f"GET /dicom-web/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Basic {token}\r\n"
                  'Accept: multipart/related; type="application/dicom"\r\n\r\n').encode())
    return sock


def test_the_browser_answers_beside_downloads_that_do_not_read(busy) -> None:
    server, study = busy
    port = server.config.http_port
    assert STUCK > 4 and STUCK < THREADS  # more than the 4 threads of before; room left
    stuck = [stuck_download(port, study) for _ in range(STUCK)]
    try:
        # Each stuck download has begun: its answer's head arrived (its thread is writing).
        for sock in stuck:
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
        session = requests.Session()
        session.auth = ("admin", PASSWORD)
        base = f"http://127.0.0.1:{port}"
        page = session.get(f"{base}/api/studies", timeout=20)
        assert page.status_code == 200 and page.json()["total"] == 1
        found = session.get(f"{base}/dicom-web/studies", timeout=20,
                            headers={"Accept": "application/dicom+json"})
        assert found.status_code == 200 and len(found.json()) == 1
    finally:
        for sock in stuck:
            sock.close()


def test_a_download_after_the_stuck_ones_went_away_is_whole(busy, tmp_path: Path) -> None:
    server, study = busy
    base = f"http://127.0.0.1:{server.config.http_port}/dicom-web"
    got = requests.get(f"{base}/studies/{study}", auth=("admin", PASSWORD), timeout=60,
                       headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert got.status_code == 200
    assert got.content.count(b"Content-Type: application/dicom") == OBJECTS
