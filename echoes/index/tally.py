"""Running study and series summaries, kept in step with each change.

Why.  The index used to derive a study's summary and series documents from
all of its instances on every batch (``Table.all`` + a full pass), which made
each batch O(study size).  A :class:`StudyTally` is updated per added or
removed instance in O(1); only when the newest instance of a study or series
goes away without a newer one arriving is its newest found again by one pass
(a re-sent or moved object, which is rare).

Study fields (patient, study date...) come from the study's newest instance
by arrival time, series fields from the series' newest: later data wins.
"""

from __future__ import annotations

from collections.abc import Iterable

PATIENT_STUDY_FIELDS = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
    "ReferringPhysicianName", "StudyID",
)
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                 "SeriesDate", "BodyPartExamined")


class Tally:
    """Count, bytes and newest document of a set of instances."""

    __slots__ = ("count", "size", "newest", "floor")

    def __init__(self) -> None:
        self.count = 0
        self.size = 0
        self.newest: dict | None = None
        # When the newest went away: every remaining one arrived no later than this.
        self.floor: str | None = None

    def add(self, doc: dict) -> None:
        if self.count == 0:
            self.newest, self.floor = doc, None
        elif self.newest is not None:
            if doc["received"] >= self.newest["received"]:
                self.newest = doc
        elif self.floor is not None and doc["received"] >= self.floor:
            self.newest, self.floor = doc, None
        self.count += 1
        self.size += doc["size"]

    def discard(self, doc: dict) -> None:
        self.count -= 1
        self.size -= doc["size"]
        if self.count == 0:
            self.newest = self.floor = None
        elif self.newest is not None and self.newest["SOPInstanceUID"] == doc["SOPInstanceUID"]:
            self.newest, self.floor = None, doc["received"]

    def resolve(self, docs: Iterable[dict]) -> dict | None:
        """The newest document, found again from ``docs`` if it went away."""
        if self.newest is None and self.count:
            for doc in docs:
                if self.newest is None or doc["received"] >= self.newest["received"]:
                    self.newest = doc
            self.floor = None
        return self.newest


class StudyTally:
    """A study's running summary and per-series counts."""

    def __init__(self, instances: Iterable[dict] = ()) -> None:
        self.study = Tally()
        self.series: dict[str, Tally] = {}
        for doc in instances:
            self.add(doc)

    def add(self, doc: dict) -> None:
        self.study.add(doc)
        series = self.series.get(doc["SeriesInstanceUID"])
        if series is None:
            series = self.series[doc["SeriesInstanceUID"]] = Tally()
        series.add(doc)

    def discard(self, doc: dict) -> None:
        self.study.discard(doc)
        series = self.series[doc["SeriesInstanceUID"]]
        series.discard(doc)
        if series.count == 0:
            del self.series[doc["SeriesInstanceUID"]]

    def series_doc(self, series_uid: str, instances: dict[str, dict]) -> dict | None:
        """The series table document (None: the series is gone)."""
        tally = self.series.get(series_uid)
        if tally is None:
            return None
        newest = tally.resolve(d for d in instances.values()
                               if d["SeriesInstanceUID"] == series_uid)
        assert newest is not None
        # .get: instances indexed before SeriesDate/BodyPartExamined were kept lack them.
        return {**{key: newest.get(key, "") for key in SERIES_FIELDS},
                "NumberOfSeriesRelatedInstances": tally.count}

    def summary(self, instances: dict[str, dict]) -> dict | None:
        """The catalog document of the study (None: no instances left)."""
        newest = self.study.resolve(instances.values())
        if newest is None:
            return None
        modalities = set()
        for uid, tally in self.series.items():
            series_newest = tally.resolve(d for d in instances.values()
                                          if d["SeriesInstanceUID"] == uid)
            if series_newest is not None and series_newest["Modality"]:
                modalities.add(series_newest["Modality"])
        return {
            **{key: newest[key] for key in PATIENT_STUDY_FIELDS},
            "ModalitiesInStudy": sorted(modalities),
            "NumberOfSeries": len(self.series),
            "NumberOfInstances": self.study.count,
            "size": self.study.size,
            "updated": newest["received"],
        }


def summarize_study(instances: Iterable[dict]) -> tuple[dict, list[dict]]:
    """Study summary and series documents from scratch (tests check the tally against it)."""
    docs = {str(n): doc for n, doc in enumerate(instances)}
    tally = StudyTally(docs.values())
    summary = tally.summary(docs)
    if summary is None:
        raise ValueError("a study without instances has no summary")
    return summary, [doc for uid in tally.series
                     if (doc := tally.series_doc(uid, docs)) is not None]
