"""The first index backend: TinyDB, sharded per study, written only by the ingester.

:class:`EmbeddedIndex` is its reader and :class:`ArchiveIndex` its one writer
(the protocols of :mod:`echoes.index.base`; :func:`echoes.index.open_index`
builds them).  Nothing outside ``echoes/index/`` needs to know the files.

Why this shape.  Rewriting a whole TinyDB file per write, and TinyDB's own
write path (every write converts the whole table twice), make a write cost
O(table), so one big table, or one big study, gets slower with every object.
Here no write costs more than its batch (``bench/index_scale.py`` measures
it, for many studies and for one big one):

* ``index_path`` (``var/index.json``) is the *catalog*: table ``studies``,
  one summary document per study (the fields ``echoes studies`` prints).
* ``<index_path>.d/<StudyInstanceUID>.json`` is one *study shard*: tables
  ``series`` and ``instances``.

Every file is a TinyDB database in :class:`~echoes.index.journal.JournalStorage`:
the TinyDB JSON plus a journal of changes beside it (``.jnl``), compacted
when it has grown as big as the file.  A batch appends one line per touched
shard (fsynced before :meth:`ArchiveIndex.apply` returns: the ingester moves
files into the archive only after that) and one to the catalog.  Readers in
any process (:class:`EmbeddedIndex`, or plain ``TinyDB(path,
storage=JournalStorage)``) see the state after some batch, never half of one.

The writer keeps the shards it touched lately in memory, in TinyDB's raw
layout, with running summaries (:mod:`echoes.index.tally`), so a batch is O(batch)
work, not O(study).  It does not go through ``tinydb.Table`` for writes:
``Table`` rebuilds the whole table on every insert or remove.  The catalog is
derived data, not fsynced per batch: each batch writes an intent line (its
studies) before the shards and a done line (their summaries) after, so a
starting writer knows what a crash may have left out and reads only those
shards again (:func:`resume_plan`; every shard only when writes may have been
lost to a power cut, or on an index without the marker).  Which study holds
each instance is kept in ``<index_path>.loc`` the same way (:class:`_Locations`).
Readers follow the catalog's journal instead of reading it whole after each
change (:meth:`EmbeddedIndex.study_changes`).  Document ids are derived from
UIDs (:func:`doc_id`), so writing the same SOP Instance UID again replaces
its document.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from pathlib import Path

from echoes.index.base import StudyPage, newest_first, query, study_page
from echoes.index.instance import InstanceRecord
from echoes.index.journal import (
    JournalStorage,
    JournalTail,
    Position,
    journal_path,
    paused_gc,
    read_since,
)
from echoes.index.tally import StudyTally
from echoes.storage.durable import atomic_write_bytes, fsync_dir, fsync_file

log = logging.getLogger("echoes.index")

STUDIES = "studies"
SERIES = "series"
INSTANCES = "instances"
#: The catalog's table of its own state: under ``"last"``, the last batch
#: (see :func:`resume_plan`).
BATCH = "batch"
LAST = "last"

#: Study shards kept in memory in the ingester between batches, and the
#: instances they may hold together (about 2 KB each: big CT studies hold
#: thousands, and the ingester shares the machine).
OPEN_SHARDS = 64
OPEN_INSTANCES = 50_000


def doc_id(uid: str) -> int:
    """A stable positive integer id for a UID (60 bits of SHA-1)."""
    return int(hashlib.sha1(uid.encode("ascii", "replace")).hexdigest()[:15], 16)


def shard_dir(index_path: Path) -> Path:
    """Folder of the per-study shards, beside the catalog."""
    return index_path.with_name(index_path.name + ".d")


def shard_path(index_path: Path, study_uid: str) -> Path:
    """The shard file of one study (UIDs are validated: safe as a name)."""
    return shard_dir(index_path) / f"{study_uid}.json"


def locations_path(index_path: Path) -> Path:
    """The log of which study holds each SOP Instance UID, beside the catalog."""
    return index_path.with_name(index_path.name + ".loc")


def boot_id() -> str | None:
    """This boot of the machine (Linux), None where unknown.

    A write not fsynced survives the death of its process (it is in the page
    cache) but not a power cut: the catalog and the locations log, written
    without fsync, are trusted after an unclean stop only within the boot
    that wrote them.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def resume_plan(last: object, boot: str | None) -> list[str] | None:
    """What a starting writer does with the catalog whose last batch is ``last``.

    None: rebuild it from every shard (no marker: an older catalog; or an
    unclean stop in another boot, so writes may be lost).  ``[]``: use it as
    it is (a clean stop, or a kill after the batch was done).  Study UIDs:
    the batch was cut short (a kill between its intent and its end); read
    those studies' shards again, nothing else.
    """
    if not isinstance(last, dict) or not isinstance(last.get("seq"), int):
        return None
    if not last.get("clean") and (boot is None or last.get("boot") != boot):
        return None
    if last.get("done"):
        return []
    studies = last.get("studies")
    if not isinstance(studies, list) or not all(isinstance(uid, str) for uid in studies):
        return None
    return studies


_LOCATION = struct.Struct("<QQ")


class _Locations:
    """Which study holds each SOP Instance UID, as 60-bit ids (:func:`doc_id`).

    Why.  A re-sent object may come under another study, whose shard must
    then lose it; only a map of every instance says where it was.  Built
    from every shard, it made each ingester start read the whole index, and
    as UID strings it cost ~180 bytes an instance.  Here it is ints, and
    every change is appended (16 bytes) to a log beside the catalog, so a
    start reads the log instead.  A study id 0 removes the instance.  The
    log is rewritten when it holds twice as many records as instances.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.map: dict[int, int] = {}
        self._pending: list[tuple[int, int]] = []
        self._records = 0
        self._fd: int | None = None

    def load(self) -> bool:
        """Read the log (cutting a torn record off); False when there is none."""
        self.close()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        whole = len(raw) - len(raw) % _LOCATION.size
        if whole != len(raw):
            os.truncate(self.path, whole)
        mapping = dict(_LOCATION.iter_unpack(memoryview(raw)[:whole]))
        for gone in [sop for sop, study in mapping.items() if not study]:
            del mapping[gone]
        self.map = mapping
        self._records = whole // _LOCATION.size
        self._pending.clear()
        return True

    def get(self, sop_id: int) -> int | None:
        return self.map.get(sop_id)

    def set(self, sop_id: int, study_id: int) -> None:
        """Note a move (``study_id`` 0: removed) in memory; :meth:`flush` logs it."""
        if study_id:
            self.map[sop_id] = study_id
        else:
            self.map.pop(sop_id, None)
        self._pending.append((sop_id, study_id))

    def flush(self) -> None:
        """Append the changes noted since the last flush (not fsynced: see boot_id)."""
        if not self._pending:
            return
        if self._records > 2 * len(self.map) + 65536:
            self.rewrite()
            return
        data = b"".join(_LOCATION.pack(*pair) for pair in self._pending)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self._records += len(self._pending)
        self._pending.clear()

    def rewrite(self) -> None:
        """The log afresh from the map (atomic, not fsynced)."""
        self.close()
        pack = _LOCATION.pack
        atomic_write_bytes(self.path, [b"".join(pack(sop, study)
                                                for sop, study in self.map.items())],
                           durable=False)
        self._records = len(self.map)
        self._pending.clear()

    def sync(self) -> None:
        self.close()
        if self.path.exists():
            fsync_file(self.path)

    def discard_pending(self) -> None:
        self._pending.clear()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _shard_count(index_path: Path) -> int:
    """How many study shards there are (one listing of the folder, nothing read)."""
    try:
        with os.scandir(shard_dir(index_path)) as entries:
            return sum(1 for entry in entries
                       if entry.name.endswith(".json") and not entry.name.startswith("."))
    except FileNotFoundError:
        return 0


def _shard_files(index_path: Path) -> Iterator[tuple[str, Path]]:
    """(StudyInstanceUID, shard path) of every study shard, in name order."""
    folder = shard_dir(index_path)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(".json") and not entry.name.startswith("."):
            yield entry.name[: -len(".json")], Path(entry.path)


class _Shard:
    """One study's shard as the writer holds it: data, running summary, storage."""

    def __init__(self, path: Path) -> None:
        self.storage = JournalStorage(path, sync_folder=False)  # once a batch: _commit
        self.data: dict[str, dict] = self.storage.load() or {}
        self.instances = self.data.setdefault(INSTANCES, {})
        self.series = self.data.setdefault(SERIES, {})
        self.tally = StudyTally(self.instances.values())
        self._changed: dict[str, dict | None] = {}
        self._touched_series: set[str] = set()

    def get(self, key: str) -> dict | None:
        return self.instances.get(key)

    def put(self, key: str, doc: dict) -> dict | None:
        """Store ``doc`` under ``key``; return the document it replaced."""
        previous = self.discard(key)
        self.instances[key] = doc
        self.tally.add(doc)
        self._changed[key] = doc
        self._touched_series.add(doc["SeriesInstanceUID"])
        return previous

    def discard(self, key: str) -> dict | None:
        """Remove the document under ``key``; return it."""
        previous = self.instances.pop(key, None)
        if previous is not None:
            self.tally.discard(previous)
            self._changed[key] = None
            self._touched_series.add(previous["SeriesInstanceUID"])
        return previous

    def commit(self) -> dict | None:
        """Write this batch's changes durably; return the study summary (None: empty)."""
        summary = self.tally.summary(self.instances)
        if summary is None:
            return None
        series_changes: dict[str, dict | None] = {}
        for uid in self._touched_series:
            key = str(doc_id(uid))
            doc = self.tally.series_doc(uid, self.instances)
            series_changes[key] = doc
            if doc is None:
                self.series.pop(key, None)
            else:
                self.series[key] = doc
        if self._changed:
            self.storage.commit(self.data, {INSTANCES: self._changed, SERIES: series_changes})
        self._changed, self._touched_series = {}, set()
        return summary

    def remove_files(self) -> None:
        self.storage.remove()
        fsync_dir(self.storage.path.parent)

    def close(self) -> None:
        self.storage.close()


class EmbeddedIndex:
    """The index as a reader sees it (:class:`~echoes.index.base.IndexReader`).

    Every call reads the files again, except the catalog: it is followed
    (:class:`~echoes.index.journal.JournalTail`), read whole once, then only
    the journal lines written since, so a long-lived reader (the Browser,
    Q/R) pays for what changed, not for the archive.  A caller that keeps
    its own derived state asks :meth:`study_changes` what changed since it
    looked (a cache of anything else keys it by :meth:`version`).
    """

    def __init__(self, index_path: Path) -> None:
        self.index_path = Path(index_path)
        self._tail = JournalTail(self.index_path)
        self._tail_lock = threading.Lock()

    def version(self, study_uid: str | None = None) -> tuple:
        """Stat signature of the catalog (or of one study's shard) and its journal."""
        if study_uid is None:
            return signature(self.index_path)
        return signature(shard_path(self.index_path, study_uid))

    def studies(self) -> list[dict]:
        """Every study summary in the catalog, in no promised order."""
        with self._tail_lock:
            self._tail.refresh()
            return list(self._tail.data.get(STUDIES, {}).values())

    @property
    def catalog_reads(self) -> int:
        """How often this reader read the catalog whole (the rest: journal lines)."""
        return self._tail.full_reads

    def study_changes(self, since: Hashable | None) -> tuple[Hashable, dict[str, dict] | None]:
        """(now, changes): the study summaries written since the position ``since``
        (by StudyInstanceUID), and the position to pass next time.

        ``changes`` is None when they cannot be told (``since`` None, the
        catalog compacted since, or a study removed): read :meth:`studies`
        whole, which is at least as new as ``now``.  Read from the catalog's
        journal on disk, so any number of callers each keep their own position.
        """
        if isinstance(since, Position):
            now, found = read_since(self.index_path, since)
            if found is not None:
                changes: dict[str, dict] = {}
                for line in found:
                    for summary in (line.get(STUDIES) or {}).values():
                        if summary is None:
                            return now, None
                        changes[summary["StudyInstanceUID"]] = summary
                return now, changes
        with self._tail_lock:
            self._tail.refresh()
            return self._tail.position, None

    def instance_studies(self, sop_uids: Iterable[str]) -> dict[str, str] | None:
        """SOP Instance UID -> StudyInstanceUID of those of ``sop_uids`` the index
        holds, from the writer's locations log (16 bytes an instance, read whole;
        no shard), None when there is no log to read.

        The log is written after each batch and not fsynced (the writer
        rebuilds it after a crash of the machine), so a study named here may
        be a moment ahead of or behind its shard: :func:`~echoes.index.base.query`
        reads the shard and decides there.  A trailing record cut short by an
        append in progress is left out.
        """
        wanted = {doc_id(uid): uid for uid in sop_uids}
        try:
            raw = locations_path(self.index_path).read_bytes()
        except FileNotFoundError:
            return None
        whole = len(raw) - len(raw) % _LOCATION.size
        found: dict[int, int] = {}
        for sop, study in _LOCATION.iter_unpack(memoryview(raw)[:whole]):
            if sop in wanted:
                found[sop] = study  # the last record of an instance wins; 0: removed
        with self._tail_lock:
            self._tail.refresh()
            catalog = self._tail.data.get(STUDIES, {})
            studies = {sop: catalog.get(str(study)) for sop, study in found.items() if study}
        return {wanted[sop]: summary["StudyInstanceUID"]
                for sop, summary in studies.items() if summary is not None}

    def _read_shard(self, study_uid: str) -> dict | None:
        return JournalStorage(shard_path(self.index_path, study_uid)).read()

    def study(self, study_uid: str) -> dict | None:
        """Summary, series and instances of one study from its shard alone (the
        summary as the writer derives it for the catalog: reading a catalog of
        100,000 studies for one of them would cost more than the whole shard).
        """
        data = self._read_shard(study_uid)
        if data is None:
            return None
        instances = data.get(INSTANCES, {})
        return {
            "study": StudyTally(instances.values()).summary(instances),
            "series": list(data.get(SERIES, {}).values()),
            "instances": list(instances.values()),
        }

    def series(self, study_uid: str) -> list[dict]:
        return list(((self._read_shard(study_uid) or {}).get(SERIES) or {}).values())

    def instances(self, study_uid: str | None = None) -> Iterator[dict]:
        if study_uid is not None:
            yield from ((self._read_shard(study_uid) or {}).get(INSTANCES) or {}).values()
            return
        for _uid, path in _shard_files(self.index_path):
            yield from ((JournalStorage(path).read() or {}).get(INSTANCES) or {}).values()

    def query(self, level: str, filters: Mapping[str, str]) -> list[dict]:
        """See :func:`echoes.index.base.query`."""
        return query(self, level, filters)

    def study_page(self, order: str = "date", descending: bool = True,
                   limit: int | None = None, offset: int = 0) -> StudyPage:
        """See :meth:`echoes.index.base.IndexReader.study_page`: from the followed
        catalog (no order is kept on disk: the catalog is one TinyDB table), a
        partial sort of the first ``offset + limit`` summaries."""
        return study_page(self.studies(), order, descending, limit, offset)


class ArchiveIndex(EmbeddedIndex):
    """The index as its one writer (the ingester) sees it
    (:class:`~echoes.index.base.IndexWriter`); it reads like any reader.

    Starting.  The catalog records its last batch (table ``batch``): an
    *intent* line naming the studies a batch is about to write goes to the
    catalog's journal before their shards, and a *done* line with their
    summaries after.  A starting writer (:func:`resume_plan`) uses the
    catalog and the locations log as they are when the last batch is done,
    reads again only the shards of a batch cut short, and reads every shard
    only when it cannot trust them (no marker, or an unclean stop in an
    earlier boot).  :attr:`started_from` says which it did.
    """

    def __init__(self, index_path: Path) -> None:
        super().__init__(index_path)
        shard_dir(self.index_path).mkdir(parents=True, exist_ok=True)
        self._catalog = JournalStorage(self.index_path, durable=False, keep_encoded=False)
        self._studies: dict[str, dict] = {}
        self._meta: dict[str, dict] = {}
        self._shards: OrderedDict[str, _Shard] = OrderedDict()
        self._locations = _Locations(locations_path(self.index_path))
        self._boot = boot_id()
        self._seq = 0
        self._stale = False  # a batch failed: memory may disagree with the disk
        self.started_from = self._resume() or self._rebuild_from_shards()
        log.info("started from %s", self.started_from)

    def _data(self) -> dict:
        return {STUDIES: self._studies, BATCH: self._meta}

    def _resume(self) -> str:
        """Take the catalog and locations as they are on disk, if they can be trusted
        (see :func:`resume_plan`); what was done ("" when they cannot)."""
        for tmp in self.index_path.parent.glob(f".{self.index_path.name}*.tmp"):
            tmp.unlink(missing_ok=True)  # the catalog's or the log's, from a killed writer
        try:
            data = self._catalog.load() or {}
        except (OSError, ValueError):
            return ""
        last = (data.get(BATCH) or {}).get(LAST)
        plan = resume_plan(last, self._boot)
        if plan is None or not self._locations.load():
            return ""
        assert isinstance(last, dict)
        self._studies = data.get(STUDIES) or {}
        self._meta = data.get(BATCH) or {}
        self._seq = last["seq"]
        if plan:
            self._recover(plan)
        shards = _shard_count(self.index_path)
        if shards != len(self._studies):  # shard files removed or added by hand
            log.warning("the catalog lists %d studies, the index folder holds %d: "
                        "reading every shard", len(self._studies), shards)
            return ""
        if not plan:
            return "the catalog"
        return f"the catalog, {len(plan)} studies of an unfinished batch read again"

    def _recover(self, study_uids: list[str]) -> None:
        """The summaries and locations of ``study_uids`` from their shards, then the
        batch marked done (a batch cut short: its shards may be written or not)."""
        _remove_leftovers(shard_dir(self.index_path))
        changes: dict[str, dict | None] = {}
        for study_uid in study_uids:
            instances = (self._read_shard(study_uid) or {}).get(INSTANCES, {})
            study_id = doc_id(study_uid)
            for instance in instances.values():
                self._locations.set(doc_id(instance["SOPInstanceUID"]), study_id)
            summary = StudyTally(instances.values()).summary(instances)
            key = str(study_id)
            if summary is None:
                self._studies.pop(key, None)
            else:
                self._studies[key] = summary
            changes[key] = summary
        self._locations.flush()
        self._mark({"seq": self._seq, "done": True, "boot": self._boot}, changes)

    def _rebuild_from_shards(self) -> str:
        """Load SOP locations and write the catalog afresh from the shards."""
        with paused_gc():
            return self._rebuild()

    def _rebuild(self) -> str:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._locations.map.clear()
        self._locations.discard_pending()
        self._studies.clear()
        _remove_leftovers(shard_dir(self.index_path))
        for tmp in self.index_path.parent.glob(f".{self.index_path.name}*.tmp"):
            tmp.unlink(missing_ok=True)  # the catalog's, from a killed writer
        locations = self._locations.map
        for study_uid, path in _shard_files(self.index_path):
            instances = (JournalStorage(path).read() or {}).get(INSTANCES, {})
            study_id = doc_id(study_uid)
            for instance in instances.values():
                locations[doc_id(instance["SOPInstanceUID"])] = study_id
            summary = StudyTally(instances.values()).summary(instances)
            if summary is not None:
                self._studies[str(study_id)] = summary
        self._locations.rewrite()
        self._meta = {LAST: {"seq": self._seq, "done": True, "boot": self._boot}}
        self._catalog.write(self._data())
        self._stale = False
        return "every shard"

    def _mark(self, last: dict, changes: dict[str, dict | None] | None = None) -> None:
        """One catalog line: the last batch's state, and study summaries if any."""
        self._meta[LAST] = last
        line: dict[str, dict] = {BATCH: {LAST: last}}
        if changes:
            line[STUDIES] = changes
        self._catalog.commit(self._data(), line)

    def _shard(self, study_uid: str, touched: dict[str, _Shard]) -> _Shard:
        """The study's shard, loaded if needed, and noted as touched by this batch."""
        shard = touched.get(study_uid)
        if shard is None:
            shard = self._shards.pop(study_uid, None)
            if shard is None:
                shard = _Shard(shard_path(self.index_path, study_uid))
            self._shards[study_uid] = touched[study_uid] = shard
        return shard

    def _study_uid(self, study_id: int | None, touched: Mapping[str, _Shard]) -> str | None:
        """The StudyInstanceUID of a study id from the locations."""
        if study_id is None:
            return None
        summary = self._studies.get(str(study_id))
        if summary is not None:
            return summary["StudyInstanceUID"]
        return next((uid for uid in touched if doc_id(uid) == study_id), None)

    def location(self, sop_uid: str) -> str | None:
        """The study that currently holds ``sop_uid``, if any."""
        return self._study_uid(self._locations.get(doc_id(sop_uid)), {})

    def instance(self, study_uid: str, sop_uid: str) -> dict | None:
        """The current document of one instance."""
        doc = self._shard(study_uid, {}).get(str(doc_id(sop_uid)))
        self._trim()
        return dict(doc) if doc is not None else None

    def studies(self) -> list[dict]:
        """Every study summary (the writer's own, in memory)."""
        return list(self._studies.values())

    def apply(self, records: list[InstanceRecord]) -> list[dict]:
        """Write a batch durably; return earlier documents whose file is no longer used.

        Later records for the same SOP Instance UID win.  A returned document
        is an earlier copy stored under another path (the object was re-sent
        under a new study or series): the caller deletes that file.
        """
        latest: dict[str, InstanceRecord] = {r.SOPInstanceUID: r for r in records}
        replaced: list[dict] = []
        with self._batch() as touched:
            for sop_uid, record in latest.items():
                sop_id = doc_id(sop_uid)
                key = str(sop_id)
                study_uid = record.StudyInstanceUID
                study_id = doc_id(study_uid)
                previous = None
                previous_id = self._locations.get(sop_id)
                if previous_id is not None and previous_id != study_id:
                    previous_study = self._study_uid(previous_id, touched)
                    if previous_study is not None:
                        previous = self._shard(previous_study, touched).discard(key)
                doc = record.__dict__.copy()  # asdict() deep-copies: 10x slower
                previous = self._shard(study_uid, touched).put(key, doc) or previous
                if previous is not None and previous["path"] != record.path:
                    replaced.append(dict(previous))
                if previous_id != study_id:
                    self._locations.set(sop_id, study_id)
        return replaced

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Forget instances (reindex: records whose file is gone); return how many."""
        removed = 0
        with self._batch() as touched:
            for sop_uid in sop_uids:
                sop_id = doc_id(sop_uid)
                study_uid = self._study_uid(self._locations.get(sop_id), touched)
                if study_uid is not None:
                    self._shard(study_uid, touched).discard(str(sop_id))
                    self._locations.set(sop_id, 0)
                    removed += 1
        return removed

    def _batch(self) -> _Batch:
        if self._stale:
            self.started_from = self._rebuild_from_shards()
        return _Batch(self)

    def _commit(self, touched: dict[str, _Shard]) -> None:
        """Intent (catalog), shards (fsynced), locations, done with the summaries
        (catalog), then forget shards over the limit."""
        if touched:
            self._seq += 1
            self._mark({"seq": self._seq, "done": False, "studies": list(touched),
                        "boot": self._boot})
        changes: dict[str, dict | None] = {}
        for study_uid, shard in touched.items():
            summary = shard.commit()
            key = str(doc_id(study_uid))
            if summary is None:
                self._shards.pop(study_uid, None)
                shard.remove_files()
                self._studies.pop(key, None)
            else:
                self._studies[key] = summary
            changes[key] = summary
        renamed = [shard.storage for shard in touched.values() if shard.storage.renamed]
        if renamed:  # the new shard files and journals, one folder fsync for all
            fsync_dir(shard_dir(self.index_path))
            for storage in renamed:
                storage.renamed = False
        self._locations.flush()
        if touched:
            self._mark({"seq": self._seq, "done": True, "boot": self._boot}, changes)
        self._trim()

    def _trim(self) -> None:
        held = sum(len(shard.instances) for shard in self._shards.values())
        while len(self._shards) > OPEN_SHARDS or (held > OPEN_INSTANCES
                                                  and len(self._shards) > 1):
            _uid, oldest = self._shards.popitem(last=False)
            held -= len(oldest.instances)
            oldest.close()

    def close(self) -> None:
        """Release every open file; after a clean run, mark the catalog clean (fsynced):
        the next start trusts it in any boot."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        if not self._stale and self._catalog.generation is not None:
            self._locations.flush()
            self._locations.sync()
            self._mark({"seq": self._seq, "done": True, "boot": self._boot, "clean": True})
            self._catalog.close()
            for path in (self.index_path, journal_path(self.index_path)):
                if path.exists():
                    fsync_file(path)
            fsync_dir(self.index_path.parent)
        self._locations.close()
        self._catalog.close()


class _Batch:
    """Commits the shards a batch touched; after a failure, reload from disk.

    The in-memory shards already hold the failed batch's changes, and a
    journal only records what it is given, so the next batch starts again
    from what is on disk (the ingester retries the files, which are still in
    the spool).
    """

    def __init__(self, index: ArchiveIndex) -> None:
        self.index = index
        self.touched: dict[str, _Shard] = {}

    def __enter__(self) -> dict[str, _Shard]:
        return self.touched

    def __exit__(self, kind, _value, _traceback) -> None:
        if kind is None:
            try:
                self.index._commit(self.touched)
                return
            except BaseException:
                self.index._stale = True
                raise
        self.index._stale = True


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of a killed writer, and journals whose shard is gone."""
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            os.unlink(entry.path)
        elif name.endswith(".jnl") and not os.path.exists(entry.path[: -len(".jnl")]):
            os.unlink(entry.path)


# --- reading: any process, any time, the state after some whole batch -------


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def signature(path: Path) -> tuple:
    """Stat signature of a TinyDB file and its journal: changes with every write."""
    return (_stat(path), _stat(journal_path(path)))


def read_studies(index_path: Path) -> list[dict]:
    """Every study summary in the catalog, newest study date first (copies)."""
    with paused_gc():
        return newest_first(dict(s) for s in EmbeddedIndex(index_path).studies())


def read_study(index_path: Path, study_uid: str) -> dict | None:
    """One study: its summary, series and instances, or None if unknown."""
    return EmbeddedIndex(index_path).study(study_uid)


def iter_instances(index_path: Path) -> Iterator[dict]:
    """Every instance record, study shard by study shard (read-only)."""
    return EmbeddedIndex(index_path).instances()
