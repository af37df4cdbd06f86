"""A TinyDB storage that appends each write's changes to a journal.

Why.  TinyDB's JSON storage (and the atomic variant the index used before)
serialises the whole database on every write, so a study shard of n instances
cost O(n) bytes of JSON per ingester batch and one big study was quadratic to
ingest (profiled: JSON encoding was the ingester's largest cost).  Here a
write that knows what changed appends only that, as one JSON line, to a
journal beside the TinyDB file; when the journal has grown as big as the file
(or :data:`COMPACT_MIN_BYTES`) the two are compacted into a new file.  A batch
then costs bytes in proportion to the batch, and compaction, happening at
doubling sizes, costs O(1) per document amortised.

Files (``path`` is the TinyDB file, e.g. ``<study>.json``)::

    <path>      {"_generation": G, "<table>": {"<doc id>": {...}}, ...}
                the whole data at the last compaction, replaced atomically
    <path>.jnl  line 1: {"_generation": G}
                then one line per write: [crc32, {"<table>": {"<doc id>": doc | null}}]
                (null removes the document)

Readers in any process (:meth:`JournalStorage.read`, so any ``TinyDB(path,
storage=JournalStorage)``) read the file, then replay the journal lines of
the same generation, up to the first line that is not whole (no newline yet,
or a checksum that does not match: a write in progress or torn by a crash).
So a reader sees the data as it was after some write, never half of one.

Compaction writes the new file with generation G+1 first (temporary name,
fsync, rename) and leaves the old journal in place: a reader that holds the
old file finds the old journal whole; one that reads the new file sees a
journal of an older generation and ignores it (the file holds all of it).
The next append replaces the old journal by a new one (again by rename), so a
reader that finds a journal *newer* than its file read the file just before
it was replaced, and reads again.  The writer (one process) repairs a torn
tail when it loads the files, before appending again.

Since a journal only grows within its generation, it is also a change log: a
long-lived reader (:class:`JournalTail`, :func:`read_since`) reads the file
once and then only the lines appended after the position it stopped at,
reading whole again only when the file was compacted since.
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

from echoes.storage.durable import atomic_write_bytes, fsync_dir, fsync_file

GENERATION = "_generation"

#: Compact when the journal would exceed the file's size, or this, if larger.
COMPACT_MIN_BYTES = 64 * 1024

#: A reader that keeps meeting a journal newer than its file settles for the file.
READ_ATTEMPTS = 8

Changes = dict[str, dict[str, Any]]

_PEEK = re.compile(rb'\{"' + GENERATION.encode() + rb'":(\d+)')


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a whole file is decoded (any thread).

    Why.  Decoding a catalog of 200,000 studies makes millions of objects,
    and every few thousand allocations the collector walks all of them again:
    half the time of reading it (measured: 0.66 s against 0.28 s at 50,000
    studies).  JSON makes no cycles, so nothing is left for it to find.
    Nested and concurrent uses are counted: it is enabled again (if it was)
    when the last one ends.
    """
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def journal_path(path: Path) -> Path:
    """The journal of the TinyDB file ``path`` (never a name that ends in .json)."""
    return path.with_name(path.name + ".jnl")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(obj: object) -> bytes:
    """Compact UTF-8 JSON, the form of every file and line here."""
    return _ENCODER.encode(obj).encode("utf-8")


def _entry(key: str, document: object) -> bytes:
    """``"key":document`` as it stands inside a table's JSON object."""
    return encode(key) + b":" + encode(document)


def _tables(tables: dict[str, Iterable[bytes]], head: bytes = b"") -> list[bytes]:
    """A JSON object of tables from their encoded entries, as chunks to write.

    ``head``: leading members.  Chunks, not one bytes object: a big shard's
    entries are joined once and written, never copied again.
    """
    chunks = [b"{" + head]
    for table, entries in tables.items():
        if len(chunks) > 1 or head:
            chunks.append(b",")
        chunks += [encode(table), b":{", b",".join(entries), b"}"]
    chunks.append(b"}")
    return chunks


def encode_line(changes: Changes) -> bytes:
    """One journal line: the changes and a checksum of their JSON."""
    return _line(encode(changes))


def _line(payload: bytes) -> bytes:
    return b"[%d,%s]\n" % (zlib.crc32(payload), payload)


def decode_line(line: bytes) -> Changes | None:
    """The changes of a whole line, or None if the line is torn or damaged."""
    comma = line.find(b",")
    if not line.startswith(b"[") or not line.endswith(b"]") or comma < 0:
        return None
    payload = line[comma + 1 : -1]
    try:
        if int(line[1:comma]) != zlib.crc32(payload):
            return None
        changes = json.loads(payload)
    except ValueError:
        return None
    return changes if isinstance(changes, dict) else None


def apply_changes(data: dict, changes: Changes) -> None:
    """Replay one journal line onto TinyDB data (``None`` removes a document)."""
    for table, documents in changes.items():
        target = data.setdefault(table, {})
        for key, document in documents.items():
            if document is None:
                target.pop(key, None)
            else:
                target[key] = document


def _header(generation: int) -> bytes:
    return encode({GENERATION: generation}) + b"\n"


def _parse_header(line: bytes) -> int | None:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    value = header.get(GENERATION) if isinstance(header, dict) else None
    return value if isinstance(value, int) else None


def _read_base(path: Path) -> tuple[dict, int, int, tuple[int, int]] | None:
    """(data, generation, size, identity) of the TinyDB file, None if there is none."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
            stat = os.fstat(handle.fileno())
    except FileNotFoundError:
        return None
    data = json.loads(raw) if raw else {}
    generation = data.pop(GENERATION, 0)
    return data, generation, len(raw), (stat.st_ino, stat.st_mtime_ns)


def _replay(data: dict, raw: bytes) -> int:
    """Apply the whole lines after the header; return the length of the good part."""
    good = raw.index(b"\n") + 1
    while True:
        end = raw.find(b"\n", good)
        if end < 0:
            return good
        changes = decode_line(raw[good:end])
        if changes is None:
            return good
        apply_changes(data, changes)
        good = end + 1


def _base_changed(path: Path, identity: tuple[int, int]) -> bool:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return True
    return (stat.st_ino, stat.st_mtime_ns) != identity


class JournalStorage(Storage):
    """TinyDB storage: whole file plus an append-only journal of changes.

    For readers it is an ordinary TinyDB storage.  The one writer calls
    :meth:`load` once, then :meth:`commit` with the whole data and what
    changed; TinyDB's own :meth:`write` (whole data only) compacts.
    """

    def __init__(self, path: str | Path, durable: bool = True, *, sync_folder: bool = True,
                 keep_encoded: bool = True, **_kwargs: Any) -> None:
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.durable = durable
        # sync_folder False: a rename (compaction, new journal) is not made durable
        # here; the caller fsyncs the folder once for many files (:attr:`renamed`).
        self.sync_folder = sync_folder
        self.renamed = False
        # keep_encoded False: compaction encodes every document again instead of
        # keeping each one's JSON (the catalog: memory of the writer, issue 18).
        self.keep_encoded = keep_encoded
        self.generation: int | None = None  # of the file on disk; known once loaded
        self._highest = 0  # highest generation seen on disk (a new file goes above)
        self.base_bytes = 0
        self.journal_bytes = 0
        self._journal_current = False  # the journal on disk is of our generation
        self._fd: int | None = None
        # The writer's encoded documents (``"key":{...}``), per table: compaction
        # joins them instead of encoding the whole data again.
        self._encoded: dict[str, dict[str, bytes]] = {}

    # -- reading (any process) ------------------------------------------------

    def read(self) -> dict | None:
        """The data after the last whole write (None when there is no file)."""
        with paused_gc():
            return self._read()

    def _read(self) -> dict | None:
        for _attempt in range(READ_ATTEMPTS):
            base = _read_base(self.path)
            if base is None:
                return None
            data, generation, _size, identity = base
            try:
                with open(self.journal, "rb") as handle:
                    header = handle.readline()
                    journal_generation = _parse_header(header)
                    if journal_generation == generation:
                        _replay(data, header + handle.read())
                        return data
            except FileNotFoundError:
                return data
            if journal_generation is not None and journal_generation < generation:
                return data  # compacted into the file already
            if not _base_changed(self.path, identity):
                return data  # a leftover journal: the file alone is current
        return data  # still racing a busy writer: the file alone is an earlier whole state

    # -- writing (the one writer) ---------------------------------------------

    def compact(self, data: dict, durable: bool | None = None) -> None:
        """Replace everything by ``data`` now, reusing the entries already encoded
        (``durable``: this once, whatever the storage's own setting)."""
        saved = self.durable
        self.durable = saved if durable is None else durable
        try:
            self._compact(data)
        finally:
            self.durable = saved

    def load(self) -> dict | None:
        """Read as the writer: learn sizes and generation, cut off a torn tail."""
        with paused_gc():
            return self._load()

    def _load(self) -> dict | None:
        self.close()
        self._encoded.clear()
        base = _read_base(self.path)
        journal_generation, raw = None, b""
        try:
            raw = self.journal.read_bytes()
            journal_generation = _parse_header(raw.split(b"\n", 1)[0]) if raw else None
        except FileNotFoundError:
            pass
        self._highest = journal_generation or 0
        if base is None:
            self.generation = 0
            self.base_bytes = self.journal_bytes = 0
            self._journal_current = False
            return None
        data, self.generation, self.base_bytes, _identity = base
        generation = self.generation
        self._highest = max(self._highest, generation)
        self._journal_current = journal_generation == generation and b"\n" in raw
        self.journal_bytes = 0
        if self._journal_current:
            good = _replay(data, raw)
            if good < len(raw):
                os.truncate(self.journal, good)
                self._sync_file(self.journal)
            self.journal_bytes = good
        return data

    def write(self, data: dict) -> None:
        """Replace everything by ``data`` (compaction; TinyDB's write)."""
        self._encoded.clear()
        self._compact(data)

    def commit(self, data: dict, changes: Changes) -> None:
        """Make ``data`` the stored state; ``changes`` is all that differs from the last.

        Appends ``changes`` as one line when the journal has room, else
        compacts.  Returns once it is on disk (fsynced when ``durable``).
        """
        if self.generation is None:
            self.load()
        entries: dict[str, list[bytes]] = {}
        for table, documents in changes.items():
            cache = self._encoded.setdefault(table, {})
            encoded = entries[table] = []
            for key, document in documents.items():
                entry = _entry(key, document)
                encoded.append(entry)
                if not self.keep_encoded:
                    continue
                if document is None:
                    cache.pop(key, None)
                else:
                    cache[key] = entry
        line = _line(b"".join(_tables(entries)))
        limit = max(COMPACT_MIN_BYTES, self.base_bytes)
        if self.base_bytes == 0 or self.journal_bytes + len(line) > limit:
            self._compact(data)
        elif not self._journal_current:
            self._start_journal(line)
        else:
            self._append(line)

    def close(self) -> None:
        """Release the journal's descriptor (reopened on the next append)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the file, then its journal (a journal without a file is ignored)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
        self.generation = None
        self.base_bytes = self.journal_bytes = 0
        self._journal_current = False
        self._encoded.clear()

    # -- internals ------------------------------------------------------------

    def _compact(self, data: dict) -> None:
        """Write ``data`` as the new file of the next generation."""
        if self.generation is None:
            self._highest = max(self._highest, self._peek_generation())
        self.close()
        tables: dict[str, Iterable[bytes]] = {}
        for table, documents in data.items():
            if not self.keep_encoded:
                tables[table] = [_entry(key, doc) for key, doc in documents.items()]
                continue
            cache = self._encoded.setdefault(table, {})
            for key in documents.keys() - cache.keys():
                cache[key] = _entry(key, documents[key])
            if len(cache) != len(documents):  # entries of documents no longer there
                cache = self._encoded[table] = {
                    key: cache.get(key) or _entry(key, doc) for key, doc in documents.items()}
            tables[table] = cache.values()
        self.generation = self._highest = self._highest + 1
        chunks = _tables(tables, head=encode(GENERATION) + b":%d" % self.generation)
        atomic_write_bytes(self.path, chunks, self.durable, self.sync_folder)
        self.renamed = True
        self.base_bytes = sum(map(len, chunks))
        self.journal_bytes = 0
        self._journal_current = False

    def _start_journal(self, first_line: bytes) -> None:
        """A new journal for this generation, replacing any older one by rename."""
        chunks = [_header(self.generation or 0), first_line]
        atomic_write_bytes(self.journal, chunks, self.durable, self.sync_folder)
        self.renamed = True
        self._journal_current = True
        self.journal_bytes = sum(map(len, chunks))

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
        written = 0
        try:
            while written < len(line):
                written += os.write(self._fd, line[written:])
            if self.durable:
                os.fdatasync(self._fd)
        except BaseException:
            # A partial line must not stay in front of later ones: cut it off,
            # and have the next commit start from what is on disk.
            if written:
                try:
                    os.ftruncate(self._fd, self.journal_bytes)
                except OSError:
                    pass
            self.close()
            self.generation = None
            raise
        self.journal_bytes += len(line)

    def _sync_file(self, path: Path) -> None:
        if self.durable:
            fsync_file(path)
            fsync_dir(path.parent)

    def _peek_generation(self) -> int:
        """The highest generation on disk, from the first bytes of both files."""
        found = 0
        for path in (self.path, self.journal):
            try:
                with open(path, "rb") as handle:
                    match = _PEEK.match(handle.read(64))
            except FileNotFoundError:
                continue
            if match:
                found = max(found, int(match.group(1)))
        return found


# -- following a file: read it once, then only what was appended ---------------------------


@dataclass(frozen=True)
class Position:
    """Where a reader of a journaled file stands: the file of ``generation`` (whose
    identity is ``base``) and the journal (inode ``journal``, None: none of this
    generation yet) read up to byte ``offset``."""

    generation: int
    base: tuple[int, int]
    journal: int | None
    offset: int


def read_with_position(path: Path) -> tuple[dict | None, Position | None]:
    """The data after the last whole write, and where that leaves a follower
    (:func:`read_since`); (None, None) when there is no file."""
    with paused_gc():
        return _read_with_position(path)


def _read_with_position(path: Path) -> tuple[dict | None, Position | None]:
    for _attempt in range(READ_ATTEMPTS):
        base = _read_base(path)
        if base is None:
            return None, None
        data, generation, _size, identity = base
        try:
            with open(journal_path(path), "rb") as handle:
                header = handle.readline()
                journal_generation = _parse_header(header)
                if journal_generation == generation:
                    good = _replay(data, header + handle.read())
                    inode = os.fstat(handle.fileno()).st_ino
                    return data, Position(generation, identity, inode, good)
        except FileNotFoundError:
            return data, Position(generation, identity, None, 0)
        if journal_generation is not None and journal_generation < generation:
            return data, Position(generation, identity, None, 0)
        if not _base_changed(path, identity):
            return data, Position(generation, identity, None, 0)
    # A busy writer kept replacing the file: this position makes the next call read whole.
    return data, Position(-1, (0, 0), None, 0)


def read_since(path: Path, position: Position) -> tuple[Position, list[Changes] | None]:
    """The whole writes appended since ``position``, oldest first, and the new position.

    None instead of the list: the changes since ``position`` are no longer in
    the journal (the file was compacted since: the write that compacted it
    is in the new file only): read the whole data again.  A journal only
    grows within its generation (a new one replaces it by rename), so while
    the file stays the same the bytes after ``offset`` are exactly the later
    writes.  The file is looked at first: a compaction after that is seen
    by the next call.
    """
    if _base_changed(path, position.base):
        return position, None
    try:
        with open(journal_path(path), "rb") as handle:
            header = handle.readline()
            generation = _parse_header(header)
            inode = os.fstat(handle.fileno()).st_ino
            if generation == position.generation and position.journal in (None, inode):
                start = position.offset if position.journal is not None else len(header)
                handle.seek(start)
                raw = handle.read()
                found: list[Changes] = []
                good = 0
                while (end := raw.find(b"\n", good)) >= 0:
                    changes = decode_line(raw[good:end])
                    if changes is None:
                        break
                    found.append(changes)
                    good = end + 1
                return replace(position, journal=inode, offset=start + good), found
    except FileNotFoundError:
        return position, []
    if generation is not None and generation < position.generation:
        return position, []  # no journal of this generation yet
    return position, None


class JournalTail:
    """A journaled file followed by one reader: read whole once, then only the
    writes appended since (the writer's journal is the change log).

    Why.  The catalog of 200,000 studies is about 100 MB of JSON: reading it
    whole after every ingester batch cost the Browser seconds per change.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict = {}
        self.position: Position | None = None
        self.full_reads = 0  # how often it was read whole (tests and benches look)

    def refresh(self) -> list[Changes] | None:
        """Bring :attr:`data` up to date; the changes applied, None if read whole."""
        if self.position is not None:
            position, found = read_since(self.path, self.position)
            if found is not None:
                for changes in found:
                    apply_changes(self.data, changes)
                self.position = position
                return found
        data, self.position = read_with_position(self.path)
        self.data = data or {}
        self.full_reads += 1
        return None
