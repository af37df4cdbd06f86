"""multipart/related framing (RFC 2387, PS3.18 8.6.1.2) that streams.

Why a generator: a WADO-RS answer may be a whole study of thousands of
objects, or one object of a gigabyte.  The framing yields each boundary,
each part's headers and each chunk of its body as they come, so the web
process holds one chunk at a time and waitress sends the answer chunked
while it is made.  A part's body is any iterable of bytes (see
:func:`file_chunks` for a range of a file, read lazily).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

#: Bytes read from a file per chunk: large enough for few system calls and
#: Python steps per byte (WADO-RS of 1,000 CT against Orthanc, 7-9 alternating
#: runs: 256 KiB 1.06x, 1 MiB 0.87-0.95x), small enough that several downloads
#: at once stay far below the memory limit (one chunk each beside waitress's
#: buffer, echoes.web.OUTBUF_HIGH_WATERMARK).
CHUNK = 1024 * 1024

Part = tuple[Mapping[str, str], Iterable[bytes]]


def new_boundary() -> str:
    """A boundary no part can contain by accident (128 random bits)."""
    return f"echoes-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The answer's Content-Type for parts of ``part_type``."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def _part_head(boundary: str, headers: Mapping[str, str]) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"--{boundary}\r\n".encode("ascii") + head.encode("latin-1") + b"\r\n"


def _close(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body: each part's delimiter, headers and body chunks, then the close delimiter.

    ``parts`` is consumed lazily: a part (and the file behind it) is only
    opened when the one before it has been sent.
    """
    for headers, body in parts:
        yield _part_head(boundary, headers)
        for chunk in body:
            if chunk:
                yield chunk
        yield b"\r\n"
    yield _close(boundary)


def body_length(parts: Iterable[tuple[Mapping[str, str], int]], boundary: str) -> int:
    """The length of :func:`stream`'s body for parts of these headers and body sizes.

    Why: an answer whose length is known goes with Content-Length instead of
    chunked, which spares waitress a copy of every chunk to frame it and the
    client the chunk decoding (WADO-RS of whole studies, half a gigabyte).
    """
    return sum(len(_part_head(boundary, headers)) + size + 2
               for headers, size in parts) + len(_close(boundary))


def file_chunks(opener: Callable[[], BinaryIO], start: int = 0, length: int | None = None,
                chunk: int = CHUNK, whole: int | None = None) -> Iterator[bytes]:
    """``length`` bytes (None: to the end) of the file ``opener()`` gives, from ``start``.

    The file is opened at the first chunk asked for and closed at the last
    (or when the consumer stops early: the generator's close).  A file that
    ends before ``length`` is an OSError: a part cut short must not look whole.
    ``whole``: the size the file had when the answer's length was counted; a
    file of another size now (replaced by a new copy of the object since) is
    an OSError before its first byte, so the answer breaks off instead of
    carrying a part that is neither the old object nor the new one.
    """
    with opener() as handle:
        if whole is not None and os.fstat(handle.fileno()).st_size != whole:
            raise OSError(f"file changed size since the answer began ({whole} bytes then)")
        if start:
            handle.seek(start)
        left = length
        while left is None or left > 0:
            data = handle.read(chunk if left is None else min(chunk, left))
            if not data:
                if left:
                    raise OSError(f"file ended {left} bytes early")
                return
            if left is not None:
                left -= len(data)
            yield data


# -- reading a multipart/related body (STOW-RS) ------------------------------------------

#: A part's header block longer than this is refused: headers are a few lines.
MAX_HEADER_BYTES = 16 * 1024


class BadMultipart(ValueError):
    """The body is not the multipart/related its Content-Type announced."""


def media_parameters(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type value -> (lower-case media type, parameters with quotes removed)."""
    kind, *pieces = value.split(";")
    parameters = {}
    for piece in pieces:
        name, _, raw = piece.partition("=")
        if name.strip():
            parameters[name.strip().lower()] = raw.strip().strip('"')
    return kind.strip().lower(), parameters


def split(chunks: Iterable[bytes], boundary: str) -> Iterator[tuple[dict[str, str],
                                                                     Iterator[bytes]]]:
    """The parts of a multipart body arriving as ``chunks``: (headers, body chunks) each.

    Streams: a part's body is handed on chunk by chunk as it arrives, the
    reader holds at most one chunk plus a delimiter's length, so a 2 GB part
    costs no more memory than a small one.  Each part's body iterator must
    be consumed (or dropped) before the next part is asked for.  Header
    names come lower-case.  A body with no first delimiter, a part without
    the blank line after its headers, or a body that ends before the close
    delimiter is a :class:`BadMultipart`, raised where it is found: the
    caller must treat the parts seen so far as unconfirmed.
    """
    if not boundary or len(boundary) > 70:
        raise BadMultipart("the boundary parameter is missing or longer than 70 characters")
    reader = _Reader(iter(chunks))
    delimiter = b"--" + boundary.encode("latin-1")
    # The first delimiter may follow a preamble; it starts a line.
    reader.skip_to(delimiter, at_start=True)
    while True:
        if reader.after_delimiter_is_close():
            return
        headers = reader.headers()
        body = reader.body(b"\r\n" + delimiter)
        yield headers, body
        for _ in body:  # what the caller left unread, up to the next delimiter
            pass


class _Reader:
    """A byte buffer over an iterator of chunks, for :func:`split`."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""
        self.ended = False

    def _more(self) -> bool:
        for chunk in self.chunks:
            if chunk:
                self.buffer += chunk
                return True
        self.ended = True
        return False

    def _need(self, count: int) -> bool:
        while len(self.buffer) < count:
            if not self._more():
                return False
        return True

    def skip_to(self, delimiter: bytes, at_start: bool) -> None:
        """Drop everything up to and including the first delimiter that starts a line."""
        marker = b"\r\n" + delimiter
        if at_start and self._need(len(delimiter)) and self.buffer.startswith(delimiter):
            self.buffer = self.buffer[len(delimiter):]
            return
        while True:
            found = self.buffer.find(marker)
            if found >= 0:
                self.buffer = self.buffer[found + len(marker):]
                return
            self.buffer = self.buffer[-len(marker):]  # a delimiter may straddle chunks
            if not self._more():
                raise BadMultipart("no multipart delimiter in the body")

    def after_delimiter_is_close(self) -> bool:
        """After a delimiter: ``--`` closes the body; else padding and CRLF start a part."""
        if not self._need(2):
            raise BadMultipart("the body ends right after a delimiter")
        if self.buffer.startswith(b"--"):
            return True
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                if self.buffer[:end].strip(b" \t"):
                    raise BadMultipart("text after a delimiter on its line")
                self.buffer = self.buffer[end + 2:]
                return False
            if len(self.buffer) > MAX_HEADER_BYTES or not self._more():
                raise BadMultipart("a delimiter line never ends")

    def headers(self) -> dict[str, str]:
        """A part's header lines up to the blank line (none: the blank line at once)."""
        if self._need(2) and self.buffer.startswith(b"\r\n"):
            self.buffer = self.buffer[2:]
            return {}
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                block, self.buffer = self.buffer[:end], self.buffer[end + 4:]
                break
            if len(self.buffer) > MAX_HEADER_BYTES or not self._more():
                raise BadMultipart("a part's headers never end with a blank line")
        headers = {}
        for line in block.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise BadMultipart(f"not a header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        return headers

    def body(self, marker: bytes) -> Iterator[bytes]:
        """The part's bytes up to ``marker`` (CRLF and the next delimiter), chunk by chunk."""
        keep = len(marker) - 1
        while True:
            found = self.buffer.find(marker)
            if found >= 0:
                data, self.buffer = self.buffer[:found], self.buffer[found + len(marker):]
                if data:
                    yield data
                return
            if len(self.buffer) > keep:
                data, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
                yield data
            if not self._more():
                raise BadMultipart("the body ends inside a part (no close delimiter)")
