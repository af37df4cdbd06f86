"""The worklist directory: JSON files read into an in-memory, always-current index.

A RIS drops one ``*.json`` file per scheduled procedure step.  Each file is
parsed once -- when it appears or changes -- into a *tree* (see
``mwl_match``), validated attribute by attribute against the DICOM data
dictionary, and kept in memory, so a C-FIND never touches the disk.  Both
JSON forms of SPEC.md are read: the DICOM JSON model (``"00100010": {"vr":
"PN", "Value": [...]}``) and the keyword form (``"PatientName": "DOE^JANE"``).

Freshness: watchdog (inotify) reports files renamed in, changed or removed
and ``WorklistDirectory.refresh`` re-reads just that file.  Only events that
can change the folder's content are asked for: reading a file (``cat``,
``echoes worklist``, a backup, our own parse) raises open and close-no-write
events, and refreshing on those made the watcher feed itself forever.  Because
inotify sees nothing on NFS or SMB mounts, a poll thread also compares the
folder's own mtime every second (a rename in or out changes it) and rescans
all signatures (inode, size, mtime) every minute.  A file whose signature did
not change is not read again, valid or not; a file that cannot be used is
kept out of the index, logged once per version, and reported by ``invalid``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from pydicom import config as pydicom_config
from pydicom import datadict, valuerep
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from echoes.dicom.dataset import vr_for
from echoes.dicom.part10 import uid_problem
from echoes.worklist.match import Query, Tree

log = logging.getLogger("echoes.worklist")

#: VRs whose JSON value is a number; the tree keeps their DICOM string form.
NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
#: Binary number VRs: converted back from the tree's string form for pydicom.
INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "SV", "UV"})
FLOAT_VRS = frozenset({"FL", "FD"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
#: The poll thread's periods (seconds): folder mtime check, full rescan.
POLL_SECONDS = 1.0
RESCAN_SECONDS = 60.0
#: Paths (tag, or sequence tag then tag) the snapshot indexes, most selective
#: first: PatientID, AccessionNumber, and in the Scheduled Procedure Step
#: Sequence the start date, station AE title and modality.
INDEXED_PATHS: tuple[tuple[int, ...], ...] = (
    (0x00100020,),
    (0x00080050,),
    (0x00400100, 0x00400002),
    (0x00400100, 0x00400001),
    (0x00400100, 0x00080060),
)
#: Sequences inside sequences, at most (a worklist item needs two or three).
MAX_SEQUENCE_DEPTH = 8
#: Largest worklist file read; a bigger one is reported, not parsed.
MAX_FILE_BYTES = 1 << 20


#: A file's version as ``os.stat`` tells it: (inode, size, mtime_ns).  The
#: inode tells a file renamed over another apart even when size and mtime
#: agree (a copy keeping the original's mtime).
Signature = tuple[int, int, int]


def signature_of(stat: os.stat_result) -> Signature:
    """The ``Signature`` of a file from its stat result."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class InvalidWorklistFile(ValueError):
    """The reason one file cannot be served, in words for the RIS integrator."""


@dataclass(frozen=True)
class WorklistItem:
    """One scheduled procedure step as served: file name, version, content."""

    name: str
    signature: Signature
    tree: Tree


def is_worklist_name(name: str) -> bool:
    """RIS temporary names (``.x.json``) and other files are not worklist items."""
    return name.endswith(".json") and not name.startswith(".")


# -- parsing -------------------------------------------------------------------


def parse_bytes(data: bytes) -> Tree:
    """A validated tree from the bytes of one worklist file (either JSON form)."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidWorklistFile(f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidWorklistFile(f"not JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise InvalidWorklistFile("nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidWorklistFile("not a JSON object")
    if not document:
        raise InvalidWorklistFile("empty object")
    return _parse_object(document, "")


def parse_file(path: Path) -> Tree:
    """Read and parse one file; every problem is an ``InvalidWorklistFile``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidWorklistFile(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidWorklistFile(f"larger than {MAX_FILE_BYTES} bytes")
    return parse_bytes(data)


def _parse_object(document: dict[str, Any], where: str) -> Tree:
    if where.count("[") > MAX_SEQUENCE_DEPTH:
        raise InvalidWorklistFile(f"{where.rstrip('.')}: sequences nested deeper than "
                                  f"{MAX_SEQUENCE_DEPTH} levels")
    tree: Tree = {}
    for key, raw in document.items():
        if HEX_TAG.match(key):
            tag = int(key, 16)
            if (tag >> 16) % 2:
                continue  # private attributes are not served
            name = datadict.keyword_for_tag(tag) or key
            if not isinstance(raw, dict):
                raise InvalidWorklistFile(f"{where}{name}: expected an object with vr and Value")
            vr = _json_model_vr(tag, raw, where + name)
            tree[tag] = _json_model_value(vr, raw, where + name)
            _check_multiplicity(tag, tree[tag], where + name)
        else:
            tag = datadict.tag_for_keyword(key)
            if tag is None:
                raise InvalidWorklistFile(f"{where}{key}: unknown attribute keyword")
            vr = vr_for(tag)
            tree[tag] = _keyword_value(vr, raw, where + key)
            _check_multiplicity(tag, tree[tag], where + key)
    return tree


def _json_model_vr(tag: int, element: dict[str, Any], name: str) -> str:
    vr = element.get("vr")
    if not isinstance(vr, str):
        raise InvalidWorklistFile(f"{name}: missing vr")
    try:
        allowed = datadict.dictionary_VR(tag).split(" or ")
    except KeyError:
        allowed = [vr]
    if vr not in allowed:
        raise InvalidWorklistFile(f"{name}: vr {vr} where the dictionary says {'/'.join(allowed)}")
    return vr


def max_multiplicity(tag: int) -> int | None:
    """The most values the dictionary allows for ``tag`` (None: no limit)."""
    try:
        vm = datadict.dictionary_VM(tag)
    except KeyError:
        return None
    if "n" in vm:
        return None
    return int(vm.split("-")[-1])


def _check_multiplicity(tag: int, value: Any, name: str) -> None:
    if not isinstance(value, str) or "\\" not in value:
        return
    if vr_for(tag) in ("LT", "ST", "UT"):
        return  # single-valued text may hold backslashes
    most = max_multiplicity(tag)
    count = value.count("\\") + 1
    if most is not None and count > most:
        raise InvalidWorklistFile(f"{name}: {count} values where at most {most} allowed")


def _json_model_value(vr: str, element: dict[str, Any], name: str) -> Any:
    if "InlineBinary" in element or "BulkDataURI" in element or vr in BINARY_VRS:
        raise InvalidWorklistFile(f"{name}: binary values are not supported in worklists")
    values = element.get("Value", [])
    if not isinstance(values, list):
        raise InvalidWorklistFile(f"{name}: Value must be a list")
    if vr == "SQ":
        return _sequence(values, name, json_model=True)
    if vr == "PN":
        return _join(_person_name(value, name) for value in values)
    return _join(_scalar(vr, value, name) for value in values)


def _keyword_value(vr: str, raw: Any, name: str) -> Any:
    if vr in BINARY_VRS:
        raise InvalidWorklistFile(f"{name}: binary values are not supported in worklists")
    if vr == "SQ":
        if not isinstance(raw, list):
            raise InvalidWorklistFile(f"{name}: a sequence must be a list of objects")
        return _sequence(raw, name, json_model=False)
    values = raw if isinstance(raw, list) else [raw]
    if vr == "PN":
        return _join(_person_name(value, name) for value in values)
    return _join(_scalar(vr, value, name) for value in values)


def _sequence(values: list[Any], name: str, json_model: bool) -> list[Tree]:
    # Items are numbered from 0, as findscu's -k Sequence[0].Key and DICOM
    # tooling count them, so a message names the item a query would.
    items = []
    for number, value in enumerate(values):
        if not isinstance(value, dict):
            raise InvalidWorklistFile(f"{name}[{number}]: not an object")
        items.append(_parse_object(value, f"{name}[{number}]."))
    return items


def _person_name(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        unknown = set(value) - set(PN_GROUPS)
        if unknown:
            raise InvalidWorklistFile(f"{name}: unknown name group {sorted(unknown)[0]}")
        groups = [value.get(group) or "" for group in PN_GROUPS]
        if not all(isinstance(group, str) for group in groups):
            raise InvalidWorklistFile(f"{name}: name groups must be strings")
        while groups and not groups[-1]:
            groups.pop()
        text = "=".join(groups)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidWorklistFile(f"{name}: a person name must be a string, not {_kind(value)}")
    _validate("PN", text, name)
    return text


def _scalar(vr: str, value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, list | dict):
        raise InvalidWorklistFile(f"{name}: expected a {vr} value, not {_kind(value)}")
    if isinstance(value, int | float):
        if vr not in NUMBER_VRS:
            raise InvalidWorklistFile(f"{name}: {vr} wants a string, not a number")
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:  # pragma: no cover - json gives no other types
        raise InvalidWorklistFile(f"{name}: unusable value")
    if "\\" in text and vr not in ("LT", "ST", "UT"):
        raise InvalidWorklistFile(f"{name}: backslash in a value (give a list instead)")
    _validate(vr, text, name)
    return text


def _validate(vr: str, text: str, name: str) -> None:
    if not text:
        return
    if vr in INTEGER_VRS or vr in FLOAT_VRS:
        try:
            number = int(text) if vr in INTEGER_VRS else float(text)
        except ValueError:
            raise InvalidWorklistFile(f"{name}: {vr} wants a number, got {text!r}") from None
        bits = {"US": (0, 1 << 16), "UL": (0, 1 << 32), "SS": (-(1 << 15), 1 << 15),
                "SL": (-(1 << 31), 1 << 31), "UV": (0, 1 << 64),
                "SV": (-(1 << 63), 1 << 63)}.get(vr)
        if bits and not bits[0] <= number < bits[1]:
            raise InvalidWorklistFile(f"{name}: {number} out of range for {vr}")
        return
    if vr == "UI":
        problem = uid_problem(text)
        if problem:
            raise InvalidWorklistFile(f"{name}: {problem}")
        return
    try:
        valuerep.validate_value(vr, text, pydicom_config.RAISE)
    except (ValueError, TypeError) as exc:
        reason = str(exc).split(". Please see")[0].rstrip(".")
        raise InvalidWorklistFile(f"{name}: {reason}") from None


def _join(values: Iterable[str]) -> str:
    return "\\".join(values)


def _kind(value: Any) -> str:
    return {bool: "true/false", list: "a list", dict: "an object"}.get(type(value), "a number")


# -- trees to data sets ----------------------------------------------------------


def to_dataset(tree: Tree, vrs: dict[int, Any] | None = None) -> Dataset:
    """A pydicom data set from a tree, for a C-FIND response or a .wl file.

    ``vrs`` maps tag -> VR (or, for sequences, ``("SQ", nested vrs)``) as the
    query gave them; tags it lacks take the dictionary VR.
    """
    dataset = Dataset()
    for tag in sorted(tree):
        value = tree[tag]
        given = (vrs or {}).get(tag)
        nested = None
        if isinstance(given, tuple):
            given, nested = given
        vr = given or vr_for(tag)
        if vr == "SQ" or isinstance(value, list):
            children = value if isinstance(value, list) else []
            dataset.add_new(tag, "SQ", Sequence(to_dataset(child, nested) for child in children))
        else:
            dataset.add_new(tag, vr, _pydicom_value(vr, value))
    return dataset


def _pydicom_value(vr: str, text: str) -> Any:
    if not text:
        return None
    if vr in INTEGER_VRS or vr in FLOAT_VRS:
        convert = int if vr in INTEGER_VRS else float
        numbers = [convert(part) for part in text.split("\\")]
        return numbers[0] if len(numbers) == 1 else numbers
    return text


def tree_is_ascii(tree: Tree) -> bool:
    """False when any value needs a character set beyond the default repertoire."""
    for value in tree.values():
        if isinstance(value, list):
            if not all(tree_is_ascii(child) for child in value):
                return False
        elif not value.isascii():
            return False
    return True


# -- the snapshot and its indexes -----------------------------------------------------


def _values_at(tree: Tree, path: tuple[int, ...]) -> Iterator[str]:
    """Every value at ``path`` in one tree (each item of a sequence, each of a list)."""
    value = tree.get(path[0])
    if len(path) > 1:
        for child in value if isinstance(value, list) else []:
            yield from _values_at(child, path[1:])
        return
    if isinstance(value, str) and value:
        yield value.strip(" ")
        if "\\" in value:
            yield from (part.strip(" ") for part in value.split("\\"))


class Snapshot:
    """An immutable view of the worklist, with indexes built on first use.

    The indexes only narrow the candidates; every candidate is still checked
    with the full query, so an index can never make a query wrong.
    """

    def __init__(self, items: tuple[WorklistItem, ...]) -> None:
        self.items = items
        self._indexes: dict[tuple[int, ...], dict[str, list[int]]] = {}
        self._sorted_keys: dict[tuple[int, ...], list[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def _index(self, path: tuple[int, ...]) -> dict[str, list[int]]:
        index = self._indexes.get(path)
        if index is None:
            with self._lock:
                index = self._indexes.get(path)
                if index is None:
                    index = {}
                    for position, item in enumerate(self.items):
                        for value in set(_values_at(item.tree, path)):
                            index.setdefault(value, []).append(position)
                    self._sorted_keys[path] = sorted(index)
                    self._indexes[path] = index
        return index

    def _positions(self, path: tuple[int, ...], constraint: tuple) -> set[int]:
        index = self._index(path)
        if constraint[0] == "values":
            keys: Iterable[str] = constraint[1]
        else:
            ordered = self._sorted_keys[path]
            low, high = constraint[1], constraint[2]
            keys = ordered[bisect.bisect_left(ordered, low):bisect.bisect_right(ordered, high)]
        positions: set[int] = set()
        for key in keys:
            positions.update(index.get(key, ()))
        return positions

    def candidates(self, query: Query) -> Iterable[WorklistItem]:
        """The items worth matching: narrowed by the most selective indexed key."""
        best: set[int] | None = None
        for path in INDEXED_PATHS:
            constraint = query.constraint(path)
            if constraint is None:
                continue
            positions = self._positions(path, constraint)
            if best is None or len(positions) < len(best):
                best = positions
            if len(best) <= 1:
                break
        if best is None:
            return self.items
        return (self.items[position] for position in sorted(best))

    def matching(self, query: Query) -> Iterator[WorklistItem]:
        """Every item that matches ``query``, in file name order."""
        for item in self.candidates(query):
            if query.matches(item.tree):
                yield item


# -- the directory -----------------------------------------------------------------


def scan(folder: Path) -> Iterator[tuple[str, Signature]]:
    """(name, signature) for each worklist file in ``folder``."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if not is_worklist_name(entry.name):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            if not os.path.isfile(entry.path):
                continue
            yield entry.name, signature_of(stat)


class WorklistDirectory:
    """The parsed worklist: every valid item in memory, invalid files with reasons.

    Thread-safe: watchdog and poll threads update it, association threads
    read ``items()``, which returns an immutable snapshot rebuilt only after
    a change.
    """

    def __init__(self, folder: Path, quiet: bool = False) -> None:
        self.folder = Path(os.path.abspath(folder))
        self.quiet = quiet  # commands report invalid files themselves
        self._items: dict[str, WorklistItem] = {}
        self._invalid: dict[str, tuple[Signature, str]] = {}
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._folder_mtime = 0
        self._events_since_poll = 0

    # reading ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """All valid items now, indexed (cheap when nothing changed)."""
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                snapshot = self._snapshot = Snapshot(
                    tuple(self._items[name] for name in sorted(self._items)))
        return snapshot

    def items(self) -> tuple[WorklistItem, ...]:
        """All valid items now, in file name order."""
        return self.snapshot().items

    def invalid(self) -> dict[str, str]:
        """File name -> why it is not served."""
        with self._lock:
            return {name: reason for name, (_, reason) in sorted(self._invalid.items())}

    def __len__(self) -> int:
        return len(self._items)

    # updating -------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read the whole folder; files unchanged since last time are kept."""
        try:
            self._folder_mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            self._folder_mtime = 0
        present = dict(scan(self.folder))
        with self._lock:
            known = set(self._items) | set(self._invalid)
        for name in known - set(present):
            self._forget(name)
        for name, signature in present.items():
            self._update(name, signature)

    def refresh(self, name: str, force: bool = False) -> None:
        """Re-read one file (called for each watchdog event).

        Free when the file's signature is the one last read, whether it
        parsed or not.  ``force`` re-reads even then: the watcher asks for it
        when a writer closed the file, as a rewrite of the same length within
        the file system's timestamp granularity keeps inode, size and mtime.
        """
        self._events_since_poll += 1
        if not is_worklist_name(name):
            return
        path = self.folder / name
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._forget(name)
            return
        if not S_ISREG(stat.st_mode):
            self._forget(name)  # a folder or device named *.json is not an item
            return
        self._update(name, signature_of(stat), force)

    def poll(self) -> None:
        """The NFS fallback: rescan when the folder's mtime moved unseen.

        A rename in or out changes the folder's mtime.  When watchdog has
        reported events since the last poll, inotify works here and the
        change is already applied; otherwise (NFS, SMB) rescan the folder.
        """
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._folder_mtime:
            return
        if self._events_since_poll:
            # inotify reported the change already: just remember the mtime.
            self._events_since_poll = 0
            self._folder_mtime = mtime
            return
        self.load()

    def _known_signature(self, name: str) -> Signature | None:
        item = self._items.get(name)
        if item is not None:
            return item.signature
        invalid = self._invalid.get(name)
        return invalid[0] if invalid else None

    def _update(self, name: str, signature: Signature, force: bool = False) -> None:
        if not force and self._known_signature(name) == signature:
            return
        try:
            tree = parse_file(self.folder / name)
        except InvalidWorklistFile as exc:
            reason = str(exc)
            with self._lock:
                before = self._invalid.get(name)
                self._invalid[name] = (signature, reason)
                if self._items.pop(name, None) is not None:
                    self._snapshot = None
            if (before is None or before[1] != reason) and not self.quiet:
                log.warning("worklist file %s skipped: %s", name, reason)
            return
        with self._lock:
            if self._invalid.pop(name, None) is not None:
                log.info("worklist file %s is valid again", name)
            old = self._items.get(name)
            if old is not None and old.signature == signature and old.tree == tree:
                return  # read again, same content: keep the item, its snapshot and answers
            self._items[name] = WorklistItem(name, signature, tree)
            self._snapshot = None

    def _forget(self, name: str) -> None:
        with self._lock:
            removed = self._items.pop(name, None)
            self._invalid.pop(name, None)
            if removed is not None:
                self._snapshot = None


class WorklistWatcher:
    """Keeps a ``WorklistDirectory`` current: watchdog events plus a poll thread."""

    def __init__(self, directory: WorklistDirectory) -> None:
        self.directory = directory
        self._stop = threading.Event()
        self._observer: Any = None
        self._poller = threading.Thread(target=self._poll, name="worklist-poll", daemon=True)

    def start(self) -> None:
        """Start watching; ``directory`` should be loaded already.

        Only the events that can change what the folder holds are asked for
        (the filter also narrows the inotify mask, so reads of the folder do
        not even wake watchdog's thread).  Refreshing on "opened" and
        "closed without writing" made every read of a file -- ``cat``,
        ``echoes worklist``, a backup, the refresh's own parse -- raise the
        next refresh: 60-100 % of a core and growing memory until restart,
        and new files waiting behind the loop for up to the minute rescan.
        """
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        directory = self.directory

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                # A write in progress raises "modified" per write(): re-read
                # only when the signature moved; the close after writing (or
                # a creation or rename) re-reads even when it did not.
                force = not isinstance(event, FileModifiedEvent)
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path and os.path.dirname(os.fsdecode(path)) == str(directory.folder):
                        directory.refresh(os.path.basename(os.fsdecode(path)), force)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(directory.folder), recursive=False,
                                event_filter=[FileCreatedEvent, FileModifiedEvent,
                                              FileClosedEvent, FileMovedEvent,
                                              FileDeletedEvent])
        self._observer.start()
        self._poller.start()

    def stop(self) -> None:
        """Stop both threads (bounded)."""
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)

    def _poll(self) -> None:
        waited = 0.0
        while not self._stop.wait(POLL_SECONDS):
            waited += POLL_SECONDS
            try:
                if waited >= RESCAN_SECONDS:
                    waited = 0.0
                    self.directory.load()
                else:
                    self.directory.poll()
            except Exception:  # keep polling whatever one pass hit
                log.exception("worklist poll failed")
