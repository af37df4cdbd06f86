"""The archive index: TinyDB, sharded per study, written only by the ingester.

Why this shape.  TinyDB's JSON storage rewrites the whole file on every
write, and every TinyDB write walks the whole table, so one big table gets
slower with every object.  Here no file grows with the archive except the
small study catalog:

* ``index_path`` (``var/index.json``) is the *catalog*: table ``studies``,
  one summary document per study (the fields ``echoes studies`` prints).
* ``<index_path>.d/<StudyInstanceUID>.json`` is one *study shard*: tables
  ``series`` and ``instances``.  Its size is bounded by the study, not the
  archive.

The ingester hands over objects in batches (whatever arrived since the last
batch): each touched shard is written once per batch.  The catalog is derived
data (a summary of the shards), so it is written at most once a second while
objects stream in and at once when the ingester goes idle, and it is rebuilt
from the shards when the ingester starts; so the per-object cost stays flat
as the archive grows (``bench/index_scale.py`` measures it) and a crash
between two catalog writes loses nothing.  Every file is written to a temporary name, fsynced and
renamed (:class:`AtomicJSONStorage`), so a reader in another process sees the
previous or the next version, never a torn one, and a crash leaves either.
Document ids are derived from UIDs (:func:`doc_id`), so writing the same SOP
Instance UID again replaces its document instead of adding one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage
from tinydb.table import Document

from echoes.spool import atomic_write_bytes

log = logging.getLogger("echoes.index")

STUDIES = "studies"
SERIES = "series"
INSTANCES = "instances"

#: Study shards kept open (parsed) in the ingester between batches.
OPEN_SHARDS = 64

#: While objects stream in, the catalog is rewritten at most this often.
CATALOG_FLUSH_SECONDS = 1.0


def doc_id(uid: str) -> int:
    """A stable positive integer id for a UID (60 bits of SHA-1)."""
    return int(hashlib.sha1(uid.encode("ascii", "replace")).hexdigest()[:15], 16)


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces its file atomically (write, fsync, rename)."""

    def __init__(self, path: str | Path, durable: bool = True, **_kwargs) -> None:
        self.path = Path(path)
        self.durable = durable

    def read(self) -> dict | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return json.loads(data) if data else None

    def write(self, data: dict) -> None:
        encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        atomic_write_bytes(self.path, encoded.encode("utf-8"), durable=self.durable)

    def close(self) -> None:
        """Nothing held open between writes."""


class _WriteBehind(CachingMiddleware):
    """CachingMiddleware that writes only when :meth:`flush` is called."""

    WRITE_CACHE_SIZE = 2**62


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps about one archived object."""

    SOPInstanceUID: str
    SOPClassUID: str
    SeriesInstanceUID: str
    StudyInstanceUID: str
    PatientID: str = ""
    PatientName: str = ""
    PatientBirthDate: str = ""
    PatientSex: str = ""
    StudyDate: str = ""
    StudyTime: str = ""
    StudyDescription: str = ""
    AccessionNumber: str = ""
    ReferringPhysicianName: str = ""
    StudyID: str = ""
    Modality: str = ""
    SeriesNumber: str = ""
    SeriesDescription: str = ""
    InstanceNumber: str = ""
    TransferSyntaxUID: str = ""
    path: str = ""
    size: int = 0
    received: str = ""
    calling_ae: str = ""


PATIENT_STUDY_FIELDS = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
    "ReferringPhysicianName", "StudyID",
)
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")


def shard_dir(index_path: Path) -> Path:
    """Folder of the per-study shards, beside the catalog."""
    return index_path.with_name(index_path.name + ".d")


def shard_path(index_path: Path, study_uid: str) -> Path:
    """The shard file of one study (UIDs are validated: safe as a name)."""
    return shard_dir(index_path) / f"{study_uid}.json"


def summarize_study(instances: Iterable[dict]) -> tuple[dict, list[dict]]:
    """Study summary and series documents, derived from a study's instances."""
    latest: dict | None = None
    series: dict[str, dict] = {}
    size = 0
    for doc in instances:
        if latest is None or doc["received"] >= latest["received"]:
            latest = doc
        size += doc["size"]
        entry = series.setdefault(
            doc["SeriesInstanceUID"],
            {**{key: doc[key] for key in SERIES_FIELDS}, "NumberOfSeriesRelatedInstances": 0},
        )
        entry["NumberOfSeriesRelatedInstances"] += 1
    if latest is None:
        raise ValueError("a study without instances has no summary")
    count = sum(s["NumberOfSeriesRelatedInstances"] for s in series.values())
    study = {key: latest[key] for key in PATIENT_STUDY_FIELDS}
    study.update(
        ModalitiesInStudy=sorted({s["Modality"] for s in series.values() if s["Modality"]}),
        NumberOfSeries=len(series),
        NumberOfInstances=count,
        size=size,
        updated=latest["received"],
    )
    return study, list(series.values())


class ArchiveIndex:
    """The index as its one writer (the ingester) sees it."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        shard_dir(index_path).mkdir(parents=True, exist_ok=True)
        self.catalog = TinyDB(index_path, storage=_WriteBehind(AtomicJSONStorage))
        self._shards: OrderedDict[str, TinyDB] = OrderedDict()
        self._locations: dict[str, str] = {}
        self._catalog_flushed = 0.0
        self._rebuild_from_shards()

    def _rebuild_from_shards(self) -> None:
        """Load SOP locations and make the catalog agree with the shards."""
        studies = self.catalog.table(STUDIES)
        present = set()
        summaries: dict[int, dict | None] = {}
        for entry in os.scandir(shard_dir(self.index_path)):
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue
            study_uid = entry.name[: -len(".json")]
            present.add(doc_id(study_uid))
            instances = _read_only(Path(entry.path)).table(INSTANCES).all()
            for instance in instances:
                self._locations[instance["SOPInstanceUID"]] = study_uid
            if instances:
                summaries[doc_id(study_uid)] = summarize_study(instances)[0]
        self._update_catalog(summaries)
        orphans = [doc.doc_id for doc in studies.all() if doc.doc_id not in present]
        if orphans:
            studies.remove(doc_ids=orphans)
        self.flush_catalog()

    def flush_catalog(self) -> None:
        """Write the catalog now (the ingester calls this when it goes idle)."""
        self.catalog.storage.flush()
        self._catalog_flushed = time.monotonic()

    def _shard(self, study_uid: str) -> TinyDB:
        shard = self._shards.pop(study_uid, None)
        if shard is None:
            shard = TinyDB(shard_path(self.index_path, study_uid),
                           storage=_WriteBehind(AtomicJSONStorage))
        self._shards[study_uid] = shard
        while len(self._shards) > OPEN_SHARDS:
            _uid, oldest = self._shards.popitem(last=False)
            oldest.close()
        return shard

    def location(self, sop_uid: str) -> str | None:
        """The study that currently holds ``sop_uid``, if any."""
        return self._locations.get(sop_uid)

    def instance(self, study_uid: str, sop_uid: str) -> dict | None:
        """The current document of one instance."""
        doc = self._shard(study_uid).table(INSTANCES).get(doc_id=doc_id(sop_uid))
        return dict(doc) if doc is not None else None

    def apply(self, records: list[InstanceRecord]) -> list[dict]:
        """Write a batch; return earlier documents whose file is no longer used.

        Later records for the same SOP Instance UID win.  A returned document
        is an earlier copy stored under another path (the object was re-sent
        under a new study or series): the caller deletes that file.
        """
        latest: dict[str, InstanceRecord] = {r.SOPInstanceUID: r for r in records}
        by_study: dict[str, list[InstanceRecord]] = defaultdict(list)
        moved_away: dict[str, list[int]] = defaultdict(list)
        replaced: list[dict] = []
        for record in latest.values():
            by_study[record.StudyInstanceUID].append(record)
            previous_study = self._locations.get(record.SOPInstanceUID)
            if previous_study is None:
                continue
            previous = self.instance(previous_study, record.SOPInstanceUID)
            if previous is not None and previous["path"] != record.path:
                replaced.append(previous)
            if previous_study != record.StudyInstanceUID:
                moved_away[previous_study].append(doc_id(record.SOPInstanceUID))

        for study_uid, ids in moved_away.items():
            instances = self._shard(study_uid).table(INSTANCES)
            instances.remove(doc_ids=[i for i in ids if instances.contains(doc_id=i)])
        for study_uid, study_records in by_study.items():
            instances = self._shard(study_uid).table(INSTANCES)
            ids = [doc_id(r.SOPInstanceUID) for r in study_records]
            present = [i for i in ids if instances.contains(doc_id=i)]
            if present:
                instances.remove(doc_ids=present)
            instances.insert_multiple(
                Document(asdict(r), doc_id=i) for r, i in zip(study_records, ids, strict=True)
            )
            for record in study_records:
                self._locations[record.SOPInstanceUID] = study_uid

        summaries = {}
        for study_uid in set(by_study) | set(moved_away):
            summaries[doc_id(study_uid)] = self._write_study(study_uid)
        self._update_catalog(summaries)
        if time.monotonic() - self._catalog_flushed >= CATALOG_FLUSH_SECONDS:
            self.flush_catalog()
        return replaced

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Forget instances (reindex: records whose file is gone); return how many."""
        by_study: dict[str, list[int]] = defaultdict(list)
        for sop_uid in sop_uids:
            study_uid = self._locations.pop(sop_uid, None)
            if study_uid is not None:
                by_study[study_uid].append(doc_id(sop_uid))
        for study_uid, ids in by_study.items():
            instances = self._shard(study_uid).table(INSTANCES)
            instances.remove(doc_ids=[i for i in ids if instances.contains(doc_id=i)])
        self._update_catalog({doc_id(study): self._write_study(study) for study in by_study})
        self.flush_catalog()
        return sum(len(ids) for ids in by_study.values())

    def _update_catalog(self, summaries: dict[int, dict | None]) -> None:
        """Replace catalog documents in two table passes (None removes a study).

        One TinyDB write walks the whole table, so the batch's studies are
        written together, never one upsert per study.
        """
        studies = self.catalog.table(STUDIES)
        present = [i for i in summaries if studies.contains(doc_id=i)]
        if present:
            studies.remove(doc_ids=present)
        studies.insert_multiple(
            Document(summary, doc_id=i) for i, summary in summaries.items() if summary
        )

    def _write_study(self, study_uid: str) -> dict | None:
        """Derive a study's series and summary from its instances; flush its shard."""
        shard = self._shard(study_uid)
        instances = shard.table(INSTANCES).all()
        if not instances:
            self._drop_shard(study_uid)
            return None
        summary, series_docs = summarize_study(instances)
        series_table = shard.table(SERIES)
        series_table.truncate()
        series_table.insert_multiple(
            Document(s, doc_id=doc_id(s["SeriesInstanceUID"])) for s in series_docs
        )
        shard.storage.flush()
        return summary

    def _drop_shard(self, study_uid: str) -> None:
        self._shards.pop(study_uid, None)  # dropped unflushed: nothing left to keep
        shard_path(self.index_path, study_uid).unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and close every open file."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self.catalog.close()


# --- readers: any process, any time, never a torn file -----------------------


def _read_only(path: Path) -> TinyDB:
    return TinyDB(path, storage=AtomicJSONStorage, create_dirs=False)


def read_studies(index_path: Path) -> list[dict]:
    """Every study summary in the catalog, newest study date first."""
    if not index_path.exists():
        return []
    studies = _read_only(index_path).table(STUDIES).all()
    return sorted(
        (dict(s) for s in studies),
        key=lambda s: (s.get("StudyDate", ""), s.get("StudyTime", ""), s["StudyInstanceUID"]),
        reverse=True,
    )


def read_study(index_path: Path, study_uid: str) -> dict | None:
    """One study: its summary, series and instances, or None if unknown."""
    path = shard_path(index_path, study_uid)
    if not index_path.exists() or not path.exists():
        return None
    summary = _read_only(index_path).table(STUDIES).get(doc_id=doc_id(study_uid))
    shard = _read_only(path)
    return {
        "study": dict(summary) if summary else None,
        "series": [dict(s) for s in shard.table(SERIES).all()],
        "instances": [dict(i) for i in shard.table(INSTANCES).all()],
    }


def iter_instances(index_path: Path) -> Iterator[dict]:
    """Every instance record, study shard by study shard (read-only)."""
    folder = shard_dir(index_path)
    if not folder.exists():
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        yield from (dict(doc) for doc in _read_only(Path(entry.path)).table(INSTANCES).all())
