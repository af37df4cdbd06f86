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
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt

from echoes import listener, sopclasses, worklist
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


def response_dataset(tree: dict[int, Any], vrs: dict[int, Any]) -> Dataset:
    """One Pending identifier; says ISO_IR 192 when any value is not ASCII."""
    tree = dict(tree)
    tree.pop(SPECIFIC_CHARACTER_SET, None)
    dataset = worklist.to_dataset(tree, vrs)
    if not worklist.tree_is_ascii(tree):
        dataset.SpecificCharacterSet = UTF8
    elif SPECIFIC_CHARACTER_SET in vrs:
        dataset.SpecificCharacterSet = None  # asked for: empty means default repertoire
    return dataset


class WorklistService:
    """The C-FIND handler, bound to one ``WorklistDirectory``."""

    def __init__(self, directory: worklist.WorklistDirectory) -> None:
        self.directory = directory

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        """EVT_C_FIND: yield one Pending response per matching item."""
        started = time.monotonic()
        caller = event.assoc.requestor.ae_title
        try:
            keys = query_keys(event.identifier)
            query = compile_query(keys)
        except Exception as exc:  # an identifier pydicom cannot decode
            log.warning("query from %s refused: cannot decode identifier: %s", caller, exc)
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        vrs = query_vrs(keys)
        matched = 0
        outcome = "done"
        for item in self.directory.items():
            if not query.matches(item.tree):
                continue
            if event.is_cancelled:
                outcome = "cancelled"
                yield CANCEL, None
                break
            try:
                response = response_dataset(query.select(item.tree), vrs)
            except Exception as exc:  # one bad item must not end the query
                log.error("worklist item %s cannot be sent: %s", item.name, exc)
                continue
            matched += 1
            yield PENDING, response
        log.info(
            "query from %s on %s: %d matched of %d, %s in %.3f s",
            caller,
            ",".join(_keyword(tag) for tag in keys if keys[tag].value) or "universal",
            matched,
            len(self.directory),
            outcome,
            time.monotonic() - started,
        )


def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"{tag:08X}"


def build_ae(config: Config) -> AE:
    """The worklist AE: Verification and MWL FIND, uncompressed syntaxes."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.require_called_aet = False
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
        directory.load()
        log.info("worklist re-read on SIGHUP: %d items", len(directory))

    try:
        listener.serve(build_ae(config), [(evt.EVT_C_FIND, service.handle_find)], listen_fd,
                       config.dimse_timeout, on_hangup=reload)
    finally:
        watcher.stop()
    return 0
