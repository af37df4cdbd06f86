"""The PostgreSQL index backend: every node's index in one database (``database_url``).

:class:`PostgresIndex` is the reader and :class:`PostgresIndexWriter` the
writer of :mod:`echoes.index.base`, built by :func:`echoes.index.open_index`;
the SQL text and the row mapping are in :mod:`echoes.index.postgres_sql`.

Why this shape.  A batch of the ingester is one transaction: the instances
are upserted (later records of one SOP Instance UID win), and the summaries
and series of the studies it touched are derived again from their instances
by three aggregate queries (the documents :mod:`echoes.index.tally` makes
for the embedded backend: the same rules, checked by the tests) and written
with their ``study_keys``.  The transaction starts by
counting up ``index_state``: that row lock puts the batches of several nodes'
ingesters one after the other, so a study's summary is never derived from
half of another node's batch, and the counter is the readers' version token
(one indexed row: cheap enough to ask before every cached read).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from echoes import database
from echoes.index import postgres_sql as sql
from echoes.index.base import StudyPage, check_page, query
from echoes.index.instance import InstanceRecord
from echoes.worklist.match import Query

log = logging.getLogger("echoes.index")

#: Rows fetched at a time when every instance is read (fsck, reindex).
STREAM_ROWS = 2000
#: Instances written before the writer first refreshes the planner's statistics.
ANALYZE_FIRST = 1000


class PostgresIndex:
    """The index as a reader sees it (:class:`~echoes.index.base.IndexReader`).

    Holds a pool of this process's connections (:class:`echoes.database.Database`),
    opened at the first read: a process may start while the database is down;
    the read then raises :class:`echoes.database.DatabaseError`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = database.shared(url)

    def _rows(self, statement: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self.db.connection() as connection:
            return connection.execute(statement, tuple(params)).fetchall()

    def version(self, study_uid: str | None = None) -> int | None:
        """The write counter (or the counter of the study's last change; None: unknown)."""
        if study_uid is None:
            return self._rows("SELECT counter FROM index_state")[0][0]
        rows = self._rows("SELECT changed FROM studies WHERE study_instance_uid = %s",
                          (study_uid,))
        return rows[0][0] if rows else None

    def studies(self) -> list[dict]:
        return [sql.study_doc(row) for row in self._rows(sql.STUDY_SELECT)]

    def study(self, study_uid: str) -> dict | None:
        """Summary, series and instances of one study, read in one snapshot."""
        with self.db.connection() as connection, connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            summary = connection.execute(
                f"{sql.STUDY_SELECT} WHERE study_instance_uid = %s", (study_uid,)).fetchone()
            if summary is None:
                return None
            series = connection.execute(
                f"{sql.SERIES_SELECT} WHERE study_instance_uid = %s", (study_uid,)).fetchall()
            instances = connection.execute(
                f"{sql.INSTANCE_SELECT} WHERE study_instance_uid = %s ORDER BY seq",
                (study_uid,)).fetchall()
        return {"study": sql.study_doc(summary),
                "series": [sql.series_doc(row) for row in series],
                "instances": [sql.instance_doc(row) for row in instances]}

    def series(self, study_uid: str) -> list[dict]:
        return [sql.series_doc(row) for row in self._rows(
            f"{sql.SERIES_SELECT} WHERE study_instance_uid = %s", (study_uid,))]

    def instances(self, study_uid: str | None = None) -> Iterator[dict]:
        if study_uid is not None:
            yield from (sql.instance_doc(row) for row in self._rows(
                f"{sql.INSTANCE_SELECT} WHERE study_instance_uid = %s ORDER BY seq",
                (study_uid,)))
            return
        # Study by study, streamed (a server-side cursor: not the whole table in memory).
        with self.db.connection() as connection, connection.transaction():
            cursor = connection.cursor(name="echoes_instances")
            cursor.itersize = STREAM_ROWS
            cursor.execute(f"{sql.INSTANCE_SELECT} ORDER BY study_instance_uid, seq")
            for row in cursor:
                yield sql.instance_doc(row)

    def study_candidates(self, study_query: Query) -> list[dict] | None:
        """Study summaries that include every match of ``study_query``, found through
        the database's indexes (None: no indexed key constrains it; scan all)."""
        found = sql.candidates(study_query)
        if found is None:
            return None
        statement, params = found
        return [sql.study_doc(row) for row in self._rows(statement, params)]

    def study_summaries(self, study_uids: Iterable[str]) -> dict[str, dict]:
        """The summaries of these studies that are archived, by StudyInstanceUID (one
        indexed query: the Browser names the studies of the jobs it lists)."""
        rows = self._rows(f"{sql.STUDY_SELECT} WHERE study_instance_uid = ANY(%s)",
                          (sorted(study_uids),))
        return {doc["StudyInstanceUID"]: doc for doc in map(sql.study_doc, rows)}

    def instance_studies(self, sop_uids: Iterable[str]) -> dict[str, str]:
        """SOP Instance UID -> StudyInstanceUID of those the index holds (one query
        on the instances' primary key)."""
        rows = self._rows("SELECT sop_instance_uid, study_instance_uid FROM instances "
                          "WHERE sop_instance_uid = ANY(%s)", (sorted(set(sop_uids)),))
        return {sop: study for sop, study in rows}

    def query(self, level: str, filters: Mapping[str, str]) -> list[dict]:
        """See :func:`echoes.index.base.query` (narrowed by :meth:`study_candidates`)."""
        return query(self, level, filters)

    def study_page(self, order: str = "date", descending: bool = True,
                   limit: int | None = None, offset: int = 0) -> StudyPage:
        """See :meth:`echoes.index.base.IndexReader.study_page`: the page through an
        index of migration 0003 (LIMIT/OFFSET) and the totals its triggers keep in
        ``index_state``, in one snapshot."""
        check_page(order, limit, offset)
        statement, params = sql.page_statement(order, descending, limit, offset)
        with self.db.connection() as connection, connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            total, instances = connection.execute(sql.STUDY_TOTALS_ALL).fetchone()
            rows = connection.execute(statement, params).fetchall()
        return StudyPage(total, instances, [sql.study_doc(row) for row in rows])

    def close(self) -> None:
        """Close the pool (its connections)."""
        self.db.close()


class PostgresIndexWriter(PostgresIndex):
    """The index as a writer sees it (:class:`~echoes.index.base.IndexWriter`): one per
    node (its ingester), several nodes at once."""

    #: The schema was created or upgraded by this writer (at its first batch).
    _prepared = False
    #: Instances this writer has written, and the count at which it next
    #: refreshes the planner's statistics (see _analyze_now).
    _written = 0
    _analyze_at = ANALYZE_FIRST

    def apply(self, records: list[InstanceRecord]) -> list[dict]:
        """Write a batch in one transaction; return the earlier documents whose file
        is no longer used (the object was stored again under another path)."""
        latest: dict[str, InstanceRecord] = {r.SOPInstanceUID: r for r in records}
        if not latest:
            return []
        with self._transaction() as (connection, counter):
            earlier = write_batch(connection, counter, latest)
        self._written += len(latest)
        if self._written >= self._analyze_at:
            self._analyze_now()
        return [doc for sop_uid, doc in earlier.items() if doc["path"] != latest[sop_uid].path]

    def _analyze_now(self) -> None:
        """Refresh the planner's statistics of the index tables, at 1,000, 2,000,
        4,000... instances written by this writer.

        Why: a database filled from empty is planned as if its tables were
        still empty until autovacuum gets to them (a minute or more): measured
        here, 20,000 one-instance studies ingested 4x slower at the end than at
        the start, and a name and date C-FIND took 110 ms instead of 2 ms.
        Doubling keeps the cost (a sample of each table) negligible.
        """
        self._analyze_at = max(self._analyze_at * 2, self._written + 1)
        with self.db.connection() as connection:
            connection.execute("ANALYZE instances, studies, series, study_keys")

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Forget instances; return how many were known."""
        wanted = sorted(set(sop_uids))
        if not wanted:
            return 0
        with self._transaction() as (connection, counter):
            gone = connection.execute(
                "DELETE FROM instances WHERE sop_instance_uid = ANY(%s) "
                "RETURNING study_instance_uid", (wanted,)).fetchall()
            derive(connection, {row[0] for row in gone}, counter)
        return len(gone)

    @contextmanager
    def _transaction(self) -> Iterator[tuple[Any, int]]:
        """One write: a connection in a transaction that began by counting up the version.

        The row lock on ``index_state`` orders the writers of several nodes; a
        connection error becomes :class:`echoes.database.DatabaseError` (an
        OSError: the ingester leaves the batch in the spool and tries again).
        """
        if not self._prepared:  # the schema, before this writer's first batch
            database.prepare(self.url)
            self._prepared = True
        with self.db.connection() as connection, connection.transaction():
            counter = connection.execute(
                "UPDATE index_state SET counter = counter + 1 RETURNING counter").fetchone()[0]
            yield connection, counter


def derive(connection: Any, study_uids: set[str], counter: int) -> None:
    """Write the summaries, series and keys of ``study_uids`` from their instances."""
    uids = sorted(study_uids)
    derived = sql.summaries(*(connection.execute(statement, (uids,)).fetchall()
                              for statement in (sql.STUDIES_NEWEST,
                                                sql.SERIES_FROM_INSTANCES,
                                                sql.STUDY_TOTALS)))
    connection.execute("DELETE FROM studies WHERE study_instance_uid = ANY(%s)", (uids,))
    studies, series, keys = [], [], []
    for uid, (summary, series_docs) in derived.items():
        studies.append(sql.study_row(summary, counter))
        series.extend(sql.series_row(uid, doc) for doc in series_docs)
        keys.extend(sql.key_rows(summary))
    for statement, rows in ((sql.STUDY_INSERT, studies), (sql.SERIES_INSERT, series),
                            (sql.KEY_INSERT, keys)):
        if rows:
            connection.execute(statement, sql.as_columns(rows))


def write_batch(connection: Any, counter: int,
                latest: dict[str, InstanceRecord]) -> dict[str, dict]:
    """Upsert the records (SOP Instance UID -> record, in write order) and derive their
    studies again, in the caller's transaction; return the earlier documents of the
    instances written again (by SOP Instance UID)."""
    earlier = {row[0]: sql.instance_doc(row) for row in connection.execute(
        f"{sql.INSTANCE_SELECT} WHERE sop_instance_uid = ANY(%s) "
        "ORDER BY sop_instance_uid FOR UPDATE", (list(latest),))}
    connection.execute(sql.INSTANCE_UPSERT, sql.as_columns(
        [sql.instance_row(record) for record in latest.values()]))
    touched = {record.StudyInstanceUID for record in latest.values()}
    touched |= {doc["StudyInstanceUID"] for doc in earlier.values()}
    derive(connection, touched, counter)
    return earlier


def copy_into(connection: Any, batches: Iterable[list[InstanceRecord]]) -> int:
    """Write every batch of records in the caller's transaction (``echoes migrate``:
    all or nothing), as one version of the index; return how many records."""
    counter = connection.execute(
        "UPDATE index_state SET counter = counter + 1 RETURNING counter").fetchone()[0]
    written = 0
    for records in batches:
        latest = {record.SOPInstanceUID: record for record in records}
        if latest:
            write_batch(connection, counter, latest)
            written += len(latest)
    connection.execute("ANALYZE instances, studies, series, study_keys")
    return written
