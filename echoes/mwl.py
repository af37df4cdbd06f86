"""MWL SCP process: answers Modality Worklist C-FIND from the in-memory worklist.

A query's path through this module::

    C-FIND identifier -> query_keys()            (decoded with the query's
                                                  Specific Character Set)
                      -> mwl_match.compile_query()
                      -> every item of WorklistDirectory.items() that matches
                      -> response_dataset()      (exactly the asked keys;
                                                  ISO_IR 192 when not ASCII)
                      -> Pending 0xFF00 ... then Success (or Cancel 0xFE00)

The worklist itself is read at start and kept current by
``worklist.WorklistWatcher``; a query never reads a file.  SIGHUP re-reads the
whole folder.  Patient data never goes to the log: one line per query says
who asked, which keys (not values), how many matched and how long it took.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt

from echoes import encoding, listener, logs, sopclasses, worklist
from echoes.config import Config
from echoes.mwl_match import QueryKey, compile_query

log = logging.getLogger("echoes.mwl")

#: C-FIND statuses (PS3.4 C.4.1.1.4 and K.4.1.1.4).
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC001

UTF8 = "ISO_IR 192"
SPECIFIC_CHARACTER_SET = 0x00080005


def query_keys(identifier: Dataset) -> dict[int, QueryKey]:
    """The query tree of a C-FIND identifier, text decoded to ``str``."""
    keys: dict[int, QueryKey] = {}
    for element in identifier:
        tag = int(element.tag)
        if element.tag.group == 0x0002 or element.tag.element == 0:
            continue  # file meta or group length: not keys
        if element.VR == "SQ":
            keys[tag] = QueryKey("SQ", [query_keys(item) for item in element.value or []])
        else:
            keys[tag] = QueryKey(element.VR, _text(element.value))
    return keys


def _text(value: Any) -> str:
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(part) for part in value)
    return str(value)


def query_vrs(keys: dict[int, QueryKey]) -> dict[int, Any]:
    """Tag -> VR (``("SQ", nested)`` for sequences), to answer in the query's VRs."""
    return {
        tag: ("SQ", query_vrs(key.value[0] if key.value else {})) if key.vr == "SQ" else key.vr
        for tag, key in keys.items()
    }


def response_tree(tree: dict[int, Any], asked_charset: bool) -> tuple[dict[int, Any], str]:
    """The identifier tree to send and the codec for its text.

    Says ISO_IR 192 when any value is not ASCII; when the query asked for
    Specific Character Set and everything is ASCII, it comes back empty.
    """
    tree = dict(tree)
    tree.pop(SPECIFIC_CHARACTER_SET, None)
    if not worklist.tree_is_ascii(tree):
        tree[SPECIFIC_CHARACTER_SET] = UTF8
        return tree, "utf-8"
    if asked_charset:
        tree[SPECIFIC_CHARACTER_SET] = ""
    return tree, "ascii"


class PendingWriter:
    """Writes Pending C-FIND responses straight to the association's socket.

    See ``encoding`` for why pynetdicom's own per-message path is bypassed.
    Only Pending responses go this way, and only while pynetdicom is inside
    our handler (it sends nothing else meanwhile); the final status is
    yielded back to pynetdicom, so its state machine sees an ordinary
    exchange.  Responses are buffered up to ``FLUSH_BYTES`` per write.
    """

    FLUSH_BYTES = 1 << 16

    def __init__(self, event: evt.Event) -> None:
        context = event.context
        self.syntax = str(context.transfer_syntax)
        self.context_id = context.context_id
        self.max_pdu = event.assoc.requestor.maximum_length or 0
        self.command = encoding.find_response_command(
            str(event.request.AffectedSOPClassUID), event.request.MessageID, PENDING, True)
        self.socket = event.assoc.dul.socket.socket
        self.buffer: list[bytes] = []
        self.buffered = 0

    def pending(self, tree: dict[int, Any], vrs: dict[int, Any], charset: str) -> None:
        """Queue one Pending response; writes when the buffer is full."""
        identifier = encoding.encode_tree(tree, vrs, self.syntax, charset)
        pdus = encoding.p_data_pdus(self.context_id, self.command, identifier, self.max_pdu)
        self.buffer.append(pdus)
        self.buffered += len(pdus)
        if self.buffered >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (blocking until the peer has taken it)."""
        if self.buffer:
            data = b"".join(self.buffer)
            self.buffer.clear()
            self.buffered = 0
            self.socket.sendall(data)


class WorklistService:
    """The C-FIND handler, bound to one ``WorklistDirectory``."""

    def __init__(self, directory: worklist.WorklistDirectory) -> None:
        self.directory = directory
        #: id(association) -> [queries, responses, started]
        self.counts: dict[int, list] = {}

    def handle_closed(self, event: evt.Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: one log line per association."""
        queries, responses, started = self.counts.pop(id(event.assoc), [0, 0, time.monotonic()])
        requestor = event.assoc.requestor
        log.info("association from %s (%s:%s) to %s %s: %d queries, %d responses, %.2f s",
                 requestor.ae_title, requestor.address, requestor.port,
                 event.assoc.acceptor.ae_title,
                 "released" if event.event is evt.EVT_RELEASED else "aborted",
                 queries, responses, time.monotonic() - started)

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        """EVT_C_FIND: yield one Pending response per matching item."""
        started = time.monotonic()
        caller = event.assoc.requestor.ae_title
        counts = self.counts.setdefault(id(event.assoc), [0, 0, started])
        counts[0] += 1
        try:
            keys = query_keys(event.identifier)
            query = compile_query(keys)
        except Exception as exc:  # an identifier pydicom cannot decode
            log.warning("query from %s refused: cannot decode identifier: %s", caller, exc)
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        vrs = query_vrs(keys)
        asked_charset = SPECIFIC_CHARACTER_SET in keys
        writer = PendingWriter(event)
        matched = 0
        outcome = "done"
        try:
            for item in self.directory.snapshot().matching(query):
                if event.is_cancelled:
                    outcome = "cancelled"
                    break
                tree, charset = response_tree(query.select(item.tree), asked_charset)
                try:
                    writer.pending(tree, vrs, charset)
                except (ValueError, UnicodeError, struct.error) as exc:
                    # One unencodable item must not end the query.
                    log.error("worklist item %s cannot be sent: %s", item.name, exc)
                    continue
                matched += 1
            writer.flush()
        except OSError as exc:
            log.warning("query from %s: connection lost after %d responses: %s",
                        caller, matched, exc)
            event.assoc.abort()
            return
        counts[1] += matched
        log.info(
            "query from %s on %s: %d matched of %d, %s in %.3f s",
            caller,
            ",".join(_keyword(tag) for tag in keys if keys[tag].value) or "universal",
            matched,
            len(self.directory),
            outcome,
            time.monotonic() - started,
        )
        if outcome == "cancelled":
            yield CANCEL, None


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def build_ae(config: Config) -> AE:
    """The worklist AE: Verification and MWL FIND, uncompressed syntaxes."""
    ae = listener.acceptor_ae(config, "mwl")
    ae.add_supported_context(sopclasses.VERIFICATION, sopclasses.UNCOMPRESSED)
    ae.add_supported_context(sopclasses.MODALITY_WORKLIST_FIND, sopclasses.UNCOMPRESSED)
    return ae


def load_directory(config: Config) -> worklist.WorklistDirectory:
    """Read the worklist folder once, logging what it holds."""
    started = time.monotonic()
    config.worklist_dir.mkdir(parents=True, exist_ok=True)
    directory = worklist.WorklistDirectory(config.worklist_dir)
    directory.load()
    log.info("worklist %s: %d items, %d invalid files, read in %.2f s",
             config.worklist_dir, len(directory), len(directory.invalid()),
             time.monotonic() - started)
    return directory


def run(config: Config, listen_fd: int) -> int:
    """Serve Modality Worklist on ``listen_fd`` until SIGTERM."""
    directory = load_directory(config)
    watcher = worklist.WorklistWatcher(directory)
    watcher.start()
    service = WorklistService(directory)

    def reload() -> None:
        logs.reload(config, "mwl")
        directory.load()
        log.info("worklist re-read on SIGHUP: %d items", len(directory))

    try:
        handlers = [(evt.EVT_C_FIND, service.handle_find),
                    (evt.EVT_RELEASED, service.handle_closed),
                    (evt.EVT_ABORTED, service.handle_closed)]
        listener.serve(build_ae(config), handlers, listen_fd,
                       config.dimse_timeout, on_hangup=reload, config=config, role="mwl")
    finally:
        watcher.stop()
    return 0
