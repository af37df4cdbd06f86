"""The durable acknowledgement's floor on this file system: today's spool publish
against preallocated spool slots.

Usage::

    .venv/bin/python bench/durable_write.py [--count N] [--size BYTES]

Why.  On tiny objects over one association (row 1b) echoes and Orthanc both
spend about 0.7 ms an object over storescp, most of it making the object
durable before answering.  echoes publishes a received object as
:func:`echoes.storage.spool.publish_incoming` does: a new file, renamed into
``incoming/``, then fsync of the file and of the folder (one file-system
commit), the file itself made ahead by a thread of the worker.  A slot is
an empty file a store worker would create and make durable, folder entry
included, ahead of time: writing an object into it and ``fdatasync`` writes
the data and the inode's size, and no folder.
This prints both costs per object, three rounds, in a folder under /tmp
(the file system the benches use).  It measures the idea before anyone
builds it (a slot needs a length and a checksum with the data, so that a
restart can tell an acknowledged object from one cut short): at 1,200
bytes, 2026-12-04 18:20 UTC, 0.29-0.36 ms today against 0.14-0.21 ms a
slot: about 0.15 ms an object, 0.3 s of row 1b's 2.96 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROUNDS = 3

def publish_today(root: Path, count: int, data: bytes) -> float:
    """Seconds per object as the store worker does it: a spare file made ahead (not
    timed: :class:`echoes.services.storage.SpareFiles` makes them on a thread of
    its own), written, renamed into incoming/, fsync of the file and the folder."""
    tmp, incoming = root / "tmp", root / "incoming"
    tmp.mkdir()
    incoming.mkdir()
    folder = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY)
    spares = []
    for n in range(count):
        path = tmp / f"{n:09d}.part"
        spares.append((path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)))
    started = time.perf_counter()
    for n, (path, fd) in enumerate(spares):
        os.write(fd, data)
        os.replace(path, incoming / f"{n:08d}.dcm")
        os.fsync(fd)
        os.fsync(folder)
    seconds = (time.perf_counter() - started) / count
    for _path, fd in spares:
        os.close(fd)
    os.close(folder)
    return seconds


def write_slots(root: Path, count: int, data: bytes) -> float:
    """Seconds per object: length + data written into an empty slot whose folder entry
    was made durable ahead, fdatasync (the size grows: one inode write, no folder)."""
    slots = root / "slots"
    slots.mkdir()
    folder = os.open(slots, os.O_RDONLY | os.O_DIRECTORY)
    fds = []
    for n in range(count):  # ahead of time, in a worker's idle moments: not timed
        fds.append(os.open(slots / f"s{n}", os.O_RDWR | os.O_CREAT, 0o644))
    for fd in fds:
        os.fsync(fd)
    os.fsync(folder)
    os.close(folder)
    record = len(data).to_bytes(8, "little") + data
    started = time.perf_counter()
    for fd in fds:
        os.pwrite(fd, record, 0)
        os.fdatasync(fd)
    seconds = (time.perf_counter() - started) / count
    for fd in fds:
        os.close(fd)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="objects a round (2000)")
    parser.add_argument("--size", type=int, default=1200, help="bytes an object (1200: row 1b's)")
    args = parser.parse_args()
    if args.size < 1:
        parser.error("--size must be at least 1")
    data = os.urandom(args.size)
    for round_ in range(1, ROUNDS + 1):
        with (tempfile.TemporaryDirectory(dir="/tmp") as first,
              tempfile.TemporaryDirectory(dir="/tmp") as second):
            today = publish_today(Path(first), args.count, data)
            slot = write_slots(Path(second), args.count, data)
        print(f"round {round_}: today {1000 * today:.3f} ms an object, durable slot "
              f"{1000 * slot:.3f} ms ({args.size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
