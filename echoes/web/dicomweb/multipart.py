"""multipart/related framing (RFC 2387, PS3.18 8.6.1.2) that streams.

Why a generator: a WADO-RS answer may be a whole study of thousands of
objects, or one object of a gigabyte.  The framing yields each boundary,
each part's headers and each chunk of its body as they come, so the web
process holds one chunk at a time and waitress sends the answer chunked
while it is made.  A part's body is any iterable of bytes (see
:func:`file_chunks` for a range of a file, read lazily).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

#: Bytes read from a file per chunk: large enough for few system calls,
#: small enough that several downloads at once stay far below the memory limit.
CHUNK = 256 * 1024

Part = tuple[Mapping[str, str], Iterable[bytes]]


def new_boundary() -> str:
    """A boundary no part can contain by accident (128 random bits)."""
    return f"echoes-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The answer's Content-Type for parts of ``part_type``."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body: each part's delimiter, headers and body chunks, then the close delimiter.

    ``parts`` is consumed lazily: a part (and the file behind it) is only
    opened when the one before it has been sent.
    """
    delimiter = f"--{boundary}\r\n".encode("ascii")
    for headers, body in parts:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        yield delimiter + head.encode("latin-1") + b"\r\n"
        for chunk in body:
            if chunk:
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def file_chunks(opener: Callable[[], BinaryIO], start: int = 0, length: int | None = None,
                chunk: int = CHUNK) -> Iterator[bytes]:
    """``length`` bytes (None: to the end) of the file ``opener()`` gives, from ``start``.

    The file is opened at the first chunk asked for and closed at the last
    (or when the consumer stops early: the generator's close).  A file that
    ends before ``length`` is an OSError: a part cut short must not look whole.
    """
    with opener() as handle:
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
