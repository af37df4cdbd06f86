"""The PostgreSQL index backend's pure part: columns, rows <-> documents, the SQL text.

Why apart from :mod:`echoes.index.postgres`.  What a row means and which SQL
a query makes are decided here without a server, so the unit tests check
them in microseconds; the backend only runs the statements.

Columns are the DICOM keywords in snake case (``PatientID`` ->
``patient_id``), tables in ``echoes/database/sql``.  A study's summary and
series documents are derived in Python by :mod:`echoes.index.tally` (the
embedded backend's own code), so both backends give the same documents.
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

#: One instance written (or written again: later records win), with its write order.
INSTANCE_UPSERT = (
    f"INSERT INTO instances ({_list(INSTANCE_COLUMNS.values())}, seq) "
    f"VALUES ({_list(['%s'] * len(INSTANCE_COLUMNS))}, nextval('instances_seq')) "
    "ON CONFLICT (sop_instance_uid) DO UPDATE SET "
    + _list(f"{column} = EXCLUDED.{column}" for column in [*INSTANCE_COLUMNS.values(), "seq"]
            if column != "sop_instance_uid"))
STUDY_INSERT = (f"INSERT INTO studies ({_list(STUDY_COLUMNS.values())}, changed) "
                f"VALUES ({_list(['%s'] * (len(STUDY_COLUMNS) + 1))})")
SERIES_INSERT = (f"INSERT INTO series (study_instance_uid, {_list(SERIES_COLUMNS.values())}) "
                 f"VALUES ({_list(['%s'] * (len(SERIES_COLUMNS) + 1))})")
KEY_INSERT = "INSERT INTO study_keys (name, key, study_instance_uid) VALUES (%s, %s, %s)"


def instance_row(record: InstanceRecord) -> tuple:
    """The column values of one instance (INSTANCE_UPSERT's parameters)."""
    values = record.__dict__
    return tuple(values[name] for name in INSTANCE_COLUMNS)


def instance_doc(row: Sequence) -> dict:
    """The instance document of a row of INSTANCE_SELECT (as the embedded backend keeps it)."""
    return dict(zip(INSTANCE_COLUMNS, row, strict=True))


def study_row(summary: dict, changed: int) -> tuple:
    return (*(summary[name] for name in STUDY_COLUMNS), changed)


def study_doc(row: Sequence) -> dict:
    doc = dict(zip(STUDY_COLUMNS, row, strict=True))
    doc["ModalitiesInStudy"] = list(doc["ModalitiesInStudy"])
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
