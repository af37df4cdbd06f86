"""DICOMweb rows 9a-9d of compare.py: QIDO-RS, WADO-RS and STOW-RS timed over HTTP.

The same client code for echoes (``/dicom-web``, HTTP Basic as the Browser's
admin) and Orthanc with Debian's DICOMweb plugin (``/dicom-web``, no
authentication): one keep-alive ``http.client`` connection, the body read in
1 MiB pieces and thrown away (a viewer would decode it; the server's share is
what is compared).  Query strings go as written: Orthanc's plugin does not
percent-decode, so ``*`` stays ``*``.
"""

from __future__ import annotations

import base64
import http.client
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: What a WADO-RS study retrieve asks for: DICOM parts in the stored syntax where
#: the server keeps it (both bench corpora are stored as Explicit VR Little Endian).
WADO_ACCEPT = 'multipart/related; type="application/dicom"'
#: Objects in one STOW-RS request (a modality or a script uploading a study in pieces).
STOW_PER_REQUEST = 100


@dataclass(frozen=True)
class Endpoint:
    """A DICOMweb base: ``http://127.0.0.1:<port><root>`` and its credentials."""

    port: int
    root: str = "/dicom-web"
    user: str = ""
    password: str = ""

    def headers(self, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.user:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return headers

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)


def qido_query(keys: tuple[str, ...]) -> str:
    """A findscu key list as a QIDO-RS query string: ``Key=value`` matches, a bare
    ``Key`` is asked for with ``includefield`` (QueryRetrieveLevel is the path)."""
    parts = []
    for key in keys:
        name, has_value, value = key.partition("=")
        if name == "QueryRetrieveLevel":
            continue
        parts.append(f"{name}={value}" if has_value else f"includefield={name}")
    return "&".join(parts)


def _get(connection: http.client.HTTPConnection, endpoint: Endpoint, path: str,
         accept: str) -> tuple[int, bytes]:
    connection.request("GET", endpoint.root + path, headers=endpoint.headers(Accept=accept))
    reply = connection.getresponse()
    return reply.status, reply.read()


def qido_per_request(endpoint: Endpoint, path: str, runs: int) -> tuple[float, int]:
    """(median seconds of one QIDO-RS request over ``runs`` on one connection, the
    number of matches of the first answer)."""
    connection = endpoint.connect()
    try:
        status, body = _get(connection, endpoint, path, "application/dicom+json")
        if status not in (200, 204):
            raise RuntimeError(f"QIDO {path}: HTTP {status} {body[:200]!r}")
        matches = len(json.loads(body)) if status == 200 else 0
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            status, _body = _get(connection, endpoint, path, "application/dicom+json")
            times.append(time.perf_counter() - started)
            if status not in (200, 204):
                raise RuntimeError(f"QIDO {path}: HTTP {status}")
        return statistics.median(times), matches
    finally:
        connection.close()


def wado_study(endpoint: Endpoint, study: str) -> tuple[float, int, int]:
    """WADO-RS retrieve of a whole study: (seconds until the last byte, parts, bytes)."""
    connection = endpoint.connect()
    try:
        started = time.perf_counter()
        connection.request("GET", f"{endpoint.root}/studies/{study}",
                           headers=endpoint.headers(Accept=WADO_ACCEPT))
        reply = connection.getresponse()
        if reply.status != 200:
            raise RuntimeError(f"WADO-RS: HTTP {reply.status} {reply.read()[:200]!r}")
        boundary = _boundary(reply.getheader("Content-Type", ""))
        marker = b"\r\n--" + boundary
        parts, size, tail = 0, 0, b"\r\n"  # the first delimiter has no CRLF before it
        while chunk := reply.read(1 << 20):
            size += len(chunk)
            window = tail + chunk
            parts += window.count(marker)
            tail = window[-(len(marker) - 1):]
        seconds = time.perf_counter() - started
        # Every part is preceded by a delimiter; the close delimiter ("--" after it) is not a part.
        return seconds, parts - 1 if parts else 0, size
    finally:
        connection.close()


def _boundary(content_type: str) -> bytes:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode()
    raise RuntimeError(f"no boundary in {content_type!r}")


def _stow_body(files: list[Path], boundary: str) -> tuple[list[bytes | Path], int]:
    """The pieces of one multipart/related body (file contents read while sending)."""
    pieces: list[bytes | Path] = []
    length = 0
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    for path in files:
        pieces += [head, path, b"\r\n"]
        length += len(head) + path.stat().st_size + 2
    closing = f"--{boundary}--\r\n".encode()
    pieces.append(closing)
    return pieces, length + len(closing)


def _stream(pieces: list[bytes | Path]) -> Iterator[bytes]:
    for piece in pieces:
        yield piece if isinstance(piece, bytes) else piece.read_bytes()


def stow(endpoint: Endpoint, files: list[Path]) -> tuple[float, int]:
    """STOW-RS of ``files`` in requests of STOW_PER_REQUEST on one connection:
    (seconds until the last answer, requests answered 200)."""
    connection = endpoint.connect()
    accepted = 0
    try:
        started = time.perf_counter()
        for start in range(0, len(files), STOW_PER_REQUEST):
            boundary = uuid.uuid4().hex
            pieces, length = _stow_body(files[start:start + STOW_PER_REQUEST], boundary)
            connection.request("POST", f"{endpoint.root}/studies", body=_stream(pieces),
                               headers=endpoint.headers(**{
                                   "Content-Type": f'multipart/related; type="application/dicom"; '
                                                   f"boundary={boundary}",
                                   "Content-Length": str(length),
                                   "Accept": "application/dicom+json"}))
            reply = connection.getresponse()
            body = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"STOW-RS: HTTP {reply.status} {body[:300]!r}")
            accepted += 1
        return time.perf_counter() - started, accepted
    finally:
        connection.close()
