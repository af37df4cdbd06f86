"""A reader that keeps what it read while the index's version token stays the same.

Why.  A study-level C-FIND reads the catalog (every study summary) and a
viewer asks several in a row; re-reading and re-parsing the catalog file for
each would cost more than the matching (a catalog of 1,000 studies: about
the whole query's server time).  The Browser caches the same way
(:class:`echoes.web.catalog.StudyCatalog`); this one is the index seam's own,
so any service can wrap any backend's reader in it: the documents it hands
out are read-only, as :class:`~echoes.index.base.IndexReader` says.

The token is taken before the read: a write in between makes the next call
read again, never keeps stale data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping

from echoes.index.base import IndexReader, query


class CachingReader:
    """An :class:`~echoes.index.base.IndexReader` over another, caching the catalog
    and the last few studies read whole (each by its own version token)."""

    #: Studies kept whole (a 1,000-instance study is a few MB of documents).
    STUDIES_KEPT = 8

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._catalog: tuple[Hashable, list[dict]] | None = None
        self._details: OrderedDict[str, tuple[Hashable, dict | None]] = OrderedDict()

    def version(self, study_uid: str | None = None) -> Hashable:
        return self.reader.version(study_uid)

    def studies(self) -> list[dict]:
        token = self.reader.version()
        cached = self._catalog
        if cached is not None and cached[0] == token:
            return cached[1]
        documents = self.reader.studies()
        self._catalog = (token, documents)
        return documents

    def study(self, study_uid: str) -> dict | None:
        token = self.reader.version(study_uid)
        with self._lock:
            cached = self._details.get(study_uid)
            if cached is not None and cached[0] == token:
                self._details.move_to_end(study_uid)
                return cached[1]
        detail = self.reader.study(study_uid)
        with self._lock:
            self._details[study_uid] = (token, detail)
            while len(self._details) > self.STUDIES_KEPT:
                self._details.popitem(last=False)
        return detail

    def series(self, study_uid: str) -> list[dict]:
        detail = self.study(study_uid)
        return detail["series"] if detail else []

    def instances(self, study_uid: str | None = None) -> Iterator[dict]:
        if study_uid is None:
            return self.reader.instances()
        detail = self.study(study_uid)
        return iter(detail["instances"] if detail else [])

    def query(self, level: str, filters: Mapping[str, str]) -> list[dict]:
        """See :func:`echoes.index.base.query`."""
        return query(self, level, filters)
