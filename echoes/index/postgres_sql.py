"""The PostgreSQL index backend's pure part: columns, rows <-> documents, the SQL text.

Why apart from :mod:`echoes.index.postgres`.  What a row means and which SQL
a query makes are decided here without a server, so the unit tests check
them in microseconds; the backend only runs the statements.

Columns are the DICOM keywords in snake case (``PatientID`` ->
``patient_id``), tables in ``echoes/database/sql``.  A study's summary and
series documents are derived from three aggregate queries by
:func:`summaries`, by the rules of :mod:`echoes.index.tally` (the embedded
backend's): the newest instance by arrival gives the fields, later writes
win a tie.
``study_keys`` holds, per study, the forms of its keys that a C-FIND
constraint compares with (:func:`echoes.worklist.match.index_keys`): a query
narrows its candidate studies there, and the matching engine decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from echoes.index.instance import InstanceRecord
from echoes.index.tally import PATIENT_STUDY_FIELDS, SERIES_FIELDS
from echoes.worklist.match import Query, index_keys, name_prefix

#: Instance document field -> column, in InstanceRecord's order.
INSTANCE_COLUMNS: dict[str, str] = {
    "SOPInstanceUID": "sop_instance_uid", "SOPClassUID": "sop_class_uid",
    "SeriesInstanceUID": "series_instance_uid", "StudyInstanceUID": "study_instance_uid",
    "PatientID": "patient_id", "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date", "PatientSex": "patient_sex",
    "StudyDate": "study_date", "StudyTime": "study_time",
    "StudyDescription": "study_description", "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician_name", "StudyID": "study_id",
    "Modality": "modality", "SeriesNumber": "series_number",
    "SeriesDescription": "series_description", "InstanceNumber": "instance_number",
    "SeriesDate": "series_date", "BodyPartExamined": "body_part_examined",
    "Rows": "rows", "Columns": "columns", "NumberOfFrames": "number_of_frames",
    "TransferSyntaxUID": "transfer_syntax_uid",
    "path": "path", "size": "size", "received": "received", "calling_ae": "calling_ae",
}
#: Study summary field -> column (besides ModalitiesInStudy, a text array).
STUDY_COLUMNS: dict[str, str] = {
    **{name: INSTANCE_COLUMNS[name] for name in PATIENT_STUDY_FIELDS},
    "ModalitiesInStudy": "modalities_in_study", "NumberOfSeries": "number_of_series",
    "NumberOfInstances": "number_of_instances", "size": "size", "updated": "updated",
}
SERIES_COLUMNS: dict[str, str] = {
    **{name: INSTANCE_COLUMNS[name] for name in SERIES_FIELDS},
    "NumberOfSeriesRelatedInstances": "number_of_series_related_instances",
}

#: Study keys kept in study_keys: keyword -> VR (the ones a C-FIND narrows by).
KEYED: dict[str, str] = {
    "PatientID": "LO", "AccessionNumber": "SH", "StudyID": "SH", "StudyDate": "DA",
    "PatientName": "PN", "ModalitiesInStudy": "CS",
}
#: keyword -> tag of KEYED (match.Query keys its constraints by tag).
KEYED_TAGS: dict[str, int] = {
    "PatientID": 0x00100020, "AccessionNumber": 0x00080050, "StudyID": 0x00200010,
    "StudyDate": 0x00080020, "PatientName": 0x00100010, "ModalitiesInStudy": 0x00080061,
}
#: The highest code point: a prefix's keys all sort below prefix + TOP.
TOP = "\U0010ffff"


def _list(columns: Iterable[str]) -> str:
    return ", ".join(columns)


INSTANCE_SELECT = f"SELECT {_list(INSTANCE_COLUMNS.values())} FROM instances"
STUDY_SELECT = f"SELECT {_list(STUDY_COLUMNS.values())} FROM studies"
SERIES_SELECT = f"SELECT {_list(SERIES_COLUMNS.values())} FROM series"

#: ORDER BY of each study page order (echoes.index.base.PAGE_ORDERS), as the
#: indexes of migration 0003 hold them.
PAGE_ORDER_COLUMNS = {
    "date": ("study_date", "study_time", "study_instance_uid"),
    "received": ("updated", "study_instance_uid"),
}
#: The studies and instances of the whole index, kept by triggers (migration 0003).
STUDY_TOTALS_ALL = "SELECT studies, instances FROM index_state"


def page_statement(order: str, descending: bool, limit: int | None,
                   offset: int) -> tuple[str, tuple]:
    """SELECT of one study page (``order`` already checked) and its parameters."""
    direction = " DESC" if descending else ""
    by = _list(f'{column} COLLATE "C"{direction}' for column in PAGE_ORDER_COLUMNS[order])
    return (f"{STUDY_SELECT} ORDER BY {by} LIMIT %s OFFSET %s", (limit, offset))

def _bulk(table: str, columns: dict[str, str], computed: tuple[str, str] | None = None,
          suffix: str = "") -> str:
    """INSERT of many rows in one statement: one array parameter per column, unnested
    (``columns``: column -> SQL type; ``computed``: one more column and the
    expression that fills it).  Per-row statements in a pipeline cost the
    ingester more than the rest of a batch together."""
    names = _list(columns)
    arrays = _list(f"%s::{kind}[]" for kind in columns.values())
    more_column, more_value = (f", {computed[0]}", f", {computed[1]}") if computed else ("", "")
    return (f"INSERT INTO {table} ({names}{more_column}) SELECT u.*{more_value} "
            f"FROM unnest({arrays}) AS u({names}){suffix}")


def _types(columns: Iterable[str], numeric: dict[str, str]) -> dict[str, str]:
    return {column: numeric.get(column, "text") for column in columns}


#: The instances of a batch written (or written again: later records win), with
#: their write order.
INSTANCE_UPSERT = _bulk(
    "instances", _types(INSTANCE_COLUMNS.values(), {"size": "bigint"}),
    computed=("seq", "nextval('instances_seq')"),
    suffix=" ON CONFLICT (sop_instance_uid) DO UPDATE SET " + _list(
        f"{column} = EXCLUDED.{column}" for column in [*INSTANCE_COLUMNS.values(), "seq"]
        if column != "sop_instance_uid"))
#: ModalitiesInStudy travels as one backslash-joined text (unnest flattens arrays).
STUDY_INSERT = _bulk(
    "studies", {**_types(STUDY_COLUMNS.values(), {
        "number_of_series": "integer", "number_of_instances": "integer", "size": "bigint"}),
        "changed": "bigint"}).replace(
    "SELECT u.*", "SELECT " + _list(
        "string_to_array(u.modalities_in_study, '\\')" if column == "modalities_in_study"
        else f"u.{column}" for column in [*STUDY_COLUMNS.values(), "changed"]))
SERIES_INSERT = _bulk("series", _types(["study_instance_uid", *SERIES_COLUMNS.values()],
                                       {"number_of_series_related_instances": "integer"}))
KEY_INSERT = _bulk("study_keys", _types(["name", "key", "study_instance_uid"], {}))


#: The newest instance of each study (by arrival; later writes win a tie): the
#: study fields of its summary, as echoes.index.tally decides them.  "C": the
#: arrival times compare as Python compares them, whatever the database's locale.
NEWEST = " received COLLATE \"C\" DESC, seq DESC"
STUDIES_NEWEST = (f"SELECT DISTINCT ON (study_instance_uid) {_list(INSTANCE_COLUMNS.values())} "
                  "FROM instances WHERE study_instance_uid = ANY(%s) "
                  f"ORDER BY study_instance_uid,{NEWEST}")
#: Each series of the studies: its newest instance's series fields and its count.
SERIES_FROM_INSTANCES = (
    "SELECT DISTINCT ON (study_instance_uid, series_instance_uid) study_instance_uid, "
    + _list(INSTANCE_COLUMNS[name] for name in SERIES_FIELDS)
    + ", count(*) OVER (PARTITION BY study_instance_uid, series_instance_uid) "
    "FROM instances WHERE study_instance_uid = ANY(%s) "
    f"ORDER BY study_instance_uid, series_instance_uid,{NEWEST}")
STUDY_TOTALS = ("SELECT study_instance_uid, count(*), sum(size)::bigint FROM instances "
                "WHERE study_instance_uid = ANY(%s) GROUP BY study_instance_uid")


def summaries(newest: Iterable[Sequence], series: Iterable[Sequence],
              totals: Iterable[Sequence]) -> dict[str, tuple[dict, list[dict]]]:
    """StudyInstanceUID -> (summary, series documents) from the rows of STUDIES_NEWEST,
    SERIES_FROM_INSTANCES and STUDY_TOTALS: the documents
    :func:`echoes.index.tally.summarize_study` makes from every instance, for the
    price of three aggregate queries."""
    by_study: dict[str, list[dict]] = {}
    for row in series:
        by_study.setdefault(row[0], []).append(
            dict(zip(SERIES_COLUMNS, row[1:], strict=True)))
    counts = {row[0]: (row[1], row[2]) for row in totals}
    found = {}
    for row in newest:
        doc = instance_doc(row)
        uid = doc["StudyInstanceUID"]
        series_docs = by_study.get(uid, [])
        count, size = counts[uid]
        summary = {
            **{name: doc[name] for name in PATIENT_STUDY_FIELDS},
            "ModalitiesInStudy": sorted({s["Modality"] for s in series_docs if s["Modality"]}),
            "NumberOfSeries": len(series_docs),
            "NumberOfInstances": count,
            "size": size,
            "updated": doc["received"],
        }
        found[uid] = (summary, series_docs)
    return found


def as_columns(rows: list[tuple]) -> tuple[list, ...]:
    """Rows as one list per column: the parameters of a bulk statement."""
    return tuple(list(column) for column in zip(*rows, strict=True))


def instance_row(record: InstanceRecord) -> tuple:
    """The column values of one instance (INSTANCE_UPSERT's parameters)."""
    values = record.__dict__
    return tuple(values[name] for name in INSTANCE_COLUMNS)


def instance_doc(row: Sequence) -> dict:
    """The instance document of a row of INSTANCE_SELECT (as the embedded backend keeps it)."""
    return dict(zip(INSTANCE_COLUMNS, row, strict=True))


def study_row(summary: dict, changed: int) -> tuple:
    """STUDY_INSERT's values of a summary (ModalitiesInStudy joined, see there)."""
    return (*("\\".join(summary[name]) if name == "ModalitiesInStudy" else summary[name]
              for name in STUDY_COLUMNS), changed)


def study_doc(row: Sequence) -> dict:
    doc = dict(zip(STUDY_COLUMNS, row, strict=True))
    modalities = doc["ModalitiesInStudy"]
    doc["ModalitiesInStudy"] = (list(modalities) if isinstance(modalities, list)
                                else [part for part in modalities.split("\\") if part])
    return doc


def series_row(study_uid: str, series: dict) -> tuple:
    return (study_uid, *(series[name] for name in SERIES_COLUMNS))


def series_doc(row: Sequence) -> dict:
    return dict(zip(SERIES_COLUMNS, row, strict=True))


def key_rows(summary: dict) -> list[tuple[str, str, str]]:
    """The study_keys rows of a study: (name, key, StudyInstanceUID)."""
    uid = summary["StudyInstanceUID"]
    rows = []
    for name, vr in KEYED.items():
        value = summary.get(name)
        text = "\\".join(value) if isinstance(value, list) else str(value or "")
        rows.extend((name, key, uid) for key in sorted(index_keys(vr, text)) if key)
    return rows


def candidates(study_query: Query) -> tuple[str, list] | None:
    """SQL (and parameters) for the summaries of every study ``study_query`` may match,
    found through study_keys (a superset: the engine still decides); None when no
    key of KEYED constrains the query (then every study is a candidate)."""
    conditions: list[str] = []
    params: list = []
    for name, tag in KEYED_TAGS.items():
        constraint = study_query.constraints.get(tag)
        if constraint is None:
            continue
        if constraint[0] == "values":
            conditions.append("name = %s AND key = ANY(%s)")
            params += [name, sorted(constraint[1])]
        else:
            conditions.append("name = %s AND key BETWEEN %s AND %s")
            params += [name, constraint[1], constraint[2]]
    name_key = study_query.keys.get(KEYED_TAGS["PatientName"])
    prefix = name_prefix(name_key) if name_key is not None else None
    if prefix is not None:
        conditions.append("name = %s AND key BETWEEN %s AND %s")
        params += ["PatientName", prefix, prefix + TOP]
    if not conditions:
        return None
    where = " AND ".join(
        f"study_instance_uid IN (SELECT study_instance_uid FROM study_keys WHERE {condition})"
        for condition in conditions)
    return f"{STUDY_SELECT} WHERE {where}", params
