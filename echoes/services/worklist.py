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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from echoes.config import Config
from echoes.dicom import acceptor as association
from echoes.dicom import dataset, dimse, pdu, sopclasses, syntax

# Statuses (PS3.4 B.2.3, C.4.1.1.4, K.4.1.1.4), kept importable from here.
from echoes.dicom.dimse import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,  # noqa: F401
    SUCCESS,
)

# The C-FIND plumbing shared with Query/Retrieve, kept importable from here.
from echoes.services.find import (
    CANCEL_CHECK_EVERY,
    MAX_IDENTIFIER,
    FindRequest,
    PendingWriter,  # noqa: F401
    value_text,
)
from echoes.worklist import files as worklist
from echoes.worklist import performed
from echoes.worklist.match import QueryKey, Tree, compile_query

log = logging.getLogger("echoes.mwl")


#: Largest PDU we announce: queries are small.
RECEIVE_MAX_PDU = 65536

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
            keys[tag] = QueryKey(element.VR, value_text(element.value))
    return keys


def query_vrs(keys: dict[int, QueryKey]) -> dict[int, Any]:
    """Tag -> VR (``("SQ", nested)`` for sequences), to answer in the query's VRs."""
    return {
        tag: ("SQ", query_vrs(key.value[0] if key.value else {})) if key.vr == "SQ" else key.vr
        for tag, key in keys.items()
    }


def response_tree(tree: dict[int, Any], asked_charset: bool) -> tuple[dict[int, Any], str]:
    """The identifier tree to send and the codec for its text.

    Says ISO_IR 192 when any value is not ASCII or when the query asked for
    Specific Character Set (worklist files are UTF-8, so that is the truth;
    an empty value instead made dcmtk's findscu spend ~0.15 ms more per
    response: day+modality, 88 matches, 47 ms -> 37 ms).
    """
    tree = dict(tree)
    tree.pop(SPECIFIC_CHARACTER_SET, None)
    if not worklist.tree_is_ascii(tree):
        tree[SPECIFIC_CHARACTER_SET] = UTF8
        return tree, "utf-8"
    if asked_charset:
        tree[SPECIFIC_CHARACTER_SET] = UTF8
    return tree, "ascii"


class ResponseCache:
    """Encoded identifiers by query shape and item version.

    Modalities ask the same keys again and again (every few seconds, the
    same shape with another date); encoding an item's answer is most of a
    query's server time (cProfile, 88 matches: encode 40%, select 12%).
    An entry is keyed by the item's name and file signature, so a changed
    file is encoded afresh, and holds the tree it was encoded from: a file
    rewritten without moving its signature (same inode, size and mtime, read
    again when its writer closed it) has a new tree, so the entry is not used.
    The whole cache is dropped past ``MAX_BYTES``.
    """

    MAX_BYTES = 32 << 20

    def __init__(self) -> None:
        self.shapes: dict[Any, dict[tuple[str, worklist.Signature],
                                    tuple[Tree, bytes]]] = {}
        self.size = 0
        self.lock = threading.Lock()

    def get(self, shape: Any, item: worklist.WorklistItem) -> bytes | None:
        """The cached identifier for ``item`` under ``shape``, if any."""
        entries = self.shapes.get(shape)
        entry = entries.get((item.name, item.signature)) if entries else None
        return entry[1] if entry is not None and entry[0] is item.tree else None

    def put(self, shape: Any, item: worklist.WorklistItem, identifier: bytes) -> None:
        """Remember an identifier (everything is dropped when the cache is full)."""
        with self.lock:
            if self.size + len(identifier) > self.MAX_BYTES:
                self.shapes.clear()
                self.size = 0
            self.shapes.setdefault(shape, {})[(item.name, item.signature)] = (
                item.tree, identifier)
            self.size += len(identifier)


def answer_shape(keys: dict[int, QueryKey], with_values: bool = False) -> tuple:
    """What an item's answer depends on besides the item: the asked tags and
    VRs, and inside sequences also the values (Query.select keeps only the
    sequence items that match them).  Top-level values only decide whether
    an item matches, not what its answer holds.
    """
    shape = []
    for tag, key in sorted(keys.items()):
        if key.vr == "SQ":
            shape.append((tag, "SQ", tuple(answer_shape(item, True) for item in key.value or [])))
        else:
            shape.append((tag, key.vr, key.value if with_values else None))
    return tuple(shape)


@dataclass
class Tally:
    """One association's queries and responses, for its closing log line."""

    queries: int = 0
    responses: int = 0


class WorklistService:
    """The MWL port's service (see association.Service), bound to one ``WorklistDirectory``."""

    def __init__(self, directory: worklist.WorklistDirectory,
                 performed_steps: Callable[[], performed.Performed] | None = None) -> None:
        self.directory = directory
        #: The steps COMPLETED/DISCONTINUED MPPS performed (worklist_hide_performed),
        #: asked once per query; None: every item is offered.
        self.performed_steps = performed_steps
        self.cache = ResponseCache()
        self.accepted = {
            sopclasses.MODALITY_WORKLIST_FIND: frozenset(syntax.UNCOMPRESSED),
        }
        #: Per open association (each on its own thread: one key each).
        self.tallies: dict[association.Association, Tally] = {}

    def receiver(self, association_: association.Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> FindRequest | None:
        """A C-FIND-RQ collector (None for anything else: answered "unrecognized")."""
        if (dimse.command_us(command, dimse.COMMAND_FIELD) != dimse.C_FIND_RQ
                or not dimse.has_data_set(command)):
            return None
        return FindRequest(self, association_, context, command)

    def closed(self, association_: association.Association, how: str) -> None:
        """One log line per association."""
        tally = self.tallies.pop(association_, None) or Tally()
        log.info("association from %s (%s:%s) to %s %s: %d queries, %d responses, %.2f s",
                 association_.calling_ae, association_.address, association_.port,
                 association_.called_ae, how, tally.queries, tally.responses,
                 time.monotonic() - association_.started)

    def answer(self, request: FindRequest) -> tuple[int, str]:
        """Send one Pending response per matching item; return the final status."""
        started = time.monotonic()
        association_ = request.association
        caller = association_.calling_ae
        tally = self.tallies.setdefault(association_, Tally())
        tally.queries += 1
        if request.too_long:
            log.warning("query from %s refused: identifier over %d bytes", caller,
                        MAX_IDENTIFIER)
            return IDENTIFIER_DOES_NOT_MATCH, "Identifier too long"
        try:
            implicit, little = syntax.encoding_of(request.context.transfer_syntax)
            identifier = dataset.decode_dataset(bytes(request.identifier), implicit, little)
            keys = query_keys(identifier)
            query = compile_query(keys)
        except Exception as exc:  # an identifier pydicom cannot decode
            log.warning("query from %s refused: cannot decode identifier: %s", caller, exc)
            return IDENTIFIER_DOES_NOT_MATCH, "Cannot decode the identifier"
        vrs = query_vrs(keys)
        asked_charset = SPECIFIC_CHARACTER_SET in keys
        writer = PendingWriter(association_, request.context, request.sop_class,
                               request.message_id)
        shape = (writer.syntax, asked_charset, answer_shape(keys))
        matched = 0
        outcome = "done"
        hidden = self.performed_steps() if self.performed_steps is not None else frozenset()
        for item in self.directory.snapshot().matching(query):
            if matched % CANCEL_CHECK_EVERY == 0 and association_.cancel_requested():
                outcome = "cancelled"
                break
            if hidden and performed.is_performed(item.tree, hidden):
                continue
            identifier = self.cache.get(shape, item)
            if identifier is None:
                tree, charset = response_tree(query.select(item.tree), asked_charset)
                try:
                    identifier = dataset.encode_tree(tree, vrs, writer.syntax, charset)
                except (ValueError, UnicodeError, struct.error) as exc:
                    # One unencodable item must not end the query.
                    log.error("worklist item %s cannot be sent: %s", item.name, exc)
                    continue
                self.cache.put(shape, item, identifier)
            writer.pending(identifier)
            matched += 1
        writer.flush()
        tally.responses += matched
        log.info(
            "query from %s on %s: %d matched of %d, %s in %.3f s",
            caller,
            ",".join(_keyword(tag) for tag in keys if keys[tag].value) or "universal",
            matched,
            len(self.directory),
            outcome,
            time.monotonic() - started,
        )
        return (CANCEL, "") if outcome == "cancelled" else (SUCCESS, "")


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


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
