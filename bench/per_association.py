"""A modality that opens one association per object: pynetdicom, store one, release.

Usage: ``per_association.py PORT CALLED_AE [--nagle] FILE...`` (or ``-`` and
the files one per line on stdin).  Each object gets its own association,
proposing only the object's SOP class in its own transfer syntax and
Implicit VR Little Endian (what a modality proposes), sent from the file
(pynetdicom streams it, no decoding).  The socket gets ``TCP_NODELAY``
unless ``--nagle`` (an ``EVT_CONN_OPEN`` handler: pynetdicom opens it
with Nagle's algorithm on and has no option for it).  Exit status 0 when
every object was acknowledged with Success, else 1 with one line per failure
on stderr.  The same client for every server (``bench/compare.py`` row 1d).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # noqa: F401  (registers the UIDs)

IMPLICIT = "1.2.840.10008.1.2"


def _nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("called")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle's algorithm on")
    parser.add_argument("--all-contexts", action="store_true",
                        help="propose pynetdicom's 120 storage contexts (4 syntaxes each), "
                             "as a generic client does, not only the object's")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    files = ([line.strip() for line in sys.stdin if line.strip()] if args.files == ["-"]
             else args.files)
    ae = AE(ae_title="BENCHMOD")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    handlers = [] if args.nagle else [(evt.EVT_CONN_OPEN, _nodelay)]
    failures = 0
    for path in files:
        # The header only (a real modality knows what it sends).
        header = dcmread(path, stop_before_pixels=True)
        sop_class = header.file_meta.MediaStorageSOPClassUID
        syntax = header.file_meta.TransferSyntaxUID
        if args.all_contexts:
            if not ae.requested_contexts:
                ae.requested_contexts = StoragePresentationContexts
        else:
            ae.requested_contexts = []
            ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, IMPLICIT])))
        assoc = ae.associate("127.0.0.1", args.port, ae_title=args.called,
                             evt_handlers=handlers)
        if not assoc.is_established:
            print(f"{path}: association not established", file=sys.stderr)
            failures += 1
            continue
        try:
            status = assoc.send_c_store(Path(path))
            if not status or status.Status != 0:
                print(f"{path}: status {getattr(status, 'Status', None)}", file=sys.stderr)
                failures += 1
        finally:
            assoc.release()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
