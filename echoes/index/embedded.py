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
derived data: it is not fsynced, and it is rebuilt from the shards whenever
the writer starts, so a crash between a shard write and the catalog write
loses nothing.  Document ids are derived from UIDs (:func:`doc_id`), so
writing the same SOP Instance UID again replaces its document.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from echoes.index.base import newest_first, query
from echoes.index.instance import InstanceRecord
from echoes.index.journal import JournalStorage, journal_path
from echoes.index.tally import StudyTally
from echoes.storage.durable import fsync_dir

log = logging.getLogger("echoes.index")

STUDIES = "studies"
SERIES = "series"
INSTANCES = "instances"

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
        self.storage = JournalStorage(path)
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

    Holds nothing but the path: every call reads the files again (a caller
    that wants a cache keys it by :meth:`version`, as the Browser does).
    """

    def __init__(self, index_path: Path) -> None:
        self.index_path = Path(index_path)

    def version(self, study_uid: str | None = None) -> tuple:
        """Stat signature of the catalog (or of one study's shard) and its journal."""
        if study_uid is None:
            return signature(self.index_path)
        return signature(shard_path(self.index_path, study_uid))

    def studies(self) -> list[dict]:
        """Every study summary in the catalog, in file order (one read of it)."""
        data = JournalStorage(self.index_path).read() or {}
        return list(data.get(STUDIES, {}).values())

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


class ArchiveIndex(EmbeddedIndex):
    """The index as its one writer (the ingester) sees it
    (:class:`~echoes.index.base.IndexWriter`); it reads like any reader."""

    def __init__(self, index_path: Path) -> None:
        super().__init__(index_path)
        shard_dir(index_path).mkdir(parents=True, exist_ok=True)
        self._catalog = JournalStorage(index_path, durable=False)
        self._studies: dict[str, dict] = {}
        self._shards: OrderedDict[str, _Shard] = OrderedDict()
        self._locations: dict[str, str] = {}
        self._stale = False  # a batch failed: memory may disagree with the disk
        self._rebuild_from_shards()

    def _rebuild_from_shards(self) -> None:
        """Load SOP locations and write the catalog afresh from the shards."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._locations.clear()
        self._studies.clear()
        _remove_leftovers(shard_dir(self.index_path))
        for tmp in self.index_path.parent.glob(f".{self.index_path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)  # the catalog's, from a killed writer
        for study_uid, path in _shard_files(self.index_path):
            instances = (JournalStorage(path).read() or {}).get(INSTANCES, {})
            for instance in instances.values():
                self._locations[instance["SOPInstanceUID"]] = study_uid
            summary = StudyTally(instances.values()).summary(instances)
            if summary is not None:
                self._studies[str(doc_id(study_uid))] = summary
        self._catalog.write({STUDIES: self._studies})
        self._stale = False

    def _shard(self, study_uid: str, touched: dict[str, _Shard]) -> _Shard:
        """The study's shard, loaded if needed, and noted as touched by this batch."""
        shard = touched.get(study_uid)
        if shard is None:
            shard = self._shards.pop(study_uid, None)
            if shard is None:
                shard = _Shard(shard_path(self.index_path, study_uid))
            self._shards[study_uid] = touched[study_uid] = shard
        return shard

    def location(self, sop_uid: str) -> str | None:
        """The study that currently holds ``sop_uid``, if any."""
        return self._locations.get(sop_uid)

    def instance(self, study_uid: str, sop_uid: str) -> dict | None:
        """The current document of one instance."""
        doc = self._shard(study_uid, {}).get(str(doc_id(sop_uid)))
        self._trim()
        return dict(doc) if doc is not None else None

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
                key = str(doc_id(sop_uid))
                study_uid = record.StudyInstanceUID
                previous = None
                previous_study = self._locations.get(sop_uid)
                if previous_study is not None and previous_study != study_uid:
                    previous = self._shard(previous_study, touched).discard(key)
                doc = record.__dict__.copy()  # asdict() deep-copies: 10x slower
                previous = self._shard(study_uid, touched).put(key, doc) or previous
                if previous is not None and previous["path"] != record.path:
                    replaced.append(dict(previous))
                self._locations[sop_uid] = study_uid
        return replaced

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Forget instances (reindex: records whose file is gone); return how many."""
        removed = 0
        with self._batch() as touched:
            for sop_uid in sop_uids:
                study_uid = self._locations.pop(sop_uid, None)
                if study_uid is not None:
                    self._shard(study_uid, touched).discard(str(doc_id(sop_uid)))
                    removed += 1
        return removed

    def _batch(self) -> _Batch:
        if self._stale:
            self._rebuild_from_shards()
        return _Batch(self)

    def _commit(self, touched: dict[str, _Shard]) -> None:
        """Shards first (fsynced), then the catalog, then forget shards over the limit."""
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
        if changes:
            self._catalog.commit({STUDIES: self._studies}, {STUDIES: changes})
        self._trim()

    def _trim(self) -> None:
        held = sum(len(shard.instances) for shard in self._shards.values())
        while len(self._shards) > OPEN_SHARDS or (held > OPEN_INSTANCES
                                                  and len(self._shards) > 1):
            _uid, oldest = self._shards.popitem(last=False)
            held -= len(oldest.instances)
            oldest.close()

    def close(self) -> None:
        """Release every open file."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
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
    return newest_first(dict(s) for s in EmbeddedIndex(index_path).studies())


def read_study(index_path: Path, study_uid: str) -> dict | None:
    """One study: its summary, series and instances, or None if unknown."""
    return EmbeddedIndex(index_path).study(study_uid)


def iter_instances(index_path: Path) -> Iterator[dict]:
    """Every instance record, study shard by study shard (read-only)."""
    return EmbeddedIndex(index_path).instances()
