"""The Browser's HTML pages: server-rendered Jinja templates, enhanced by static/app.js.

Pages that show data at rest (the study list, a study, the AE map, the
worklist of a day, health) are rendered here from the same read models the
API uses, so they work and can be bookmarked without JavaScript.  Live parts
(push progress, the queue's auto refresh) and every change (push, AE edits,
C-ECHO, retry, cancel) go through the JSON API from app.js, which finds its
URLs and the CSRF token in ``data-`` attributes and a ``<meta>`` tag: the
Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from echoes.queue import jobs
from echoes.web import api, catalog
from echoes.web.state import state

blueprint = Blueprint("pages", __name__)

#: Study list columns: (heading, sort key or None).
STUDY_COLUMNS = (
    ("Date", "date"), ("Patient", "patient_name"), ("Patient ID", "patient_id"),
    ("Accession", "accession"), ("Description", None), ("Modality", "modality"),
    ("Series", None), ("Images", "instances"), ("Received", "received"),
)


def _iso_date(value: str) -> str:
    """YYYYMMDD -> YYYY-MM-DD (what a date input wants, and easier to read)."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() \
        else value


def _time(value: str) -> str:
    """DICOM TM (HHMMSS.frac) -> HH:MM or HH:MM:SS."""
    digits = value.split(".")[0]
    if len(digits) >= 6 and digits.isdigit():
        return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    if len(digits) == 4 and digits.isdigit():
        return f"{digits[:2]}:{digits[2:4]}"
    return value


def _person(value: str) -> str:
    """DOE^JANE^M -> DOE, JANE M (the alphabetic group; empty parts dropped)."""
    parts = [p for p in value.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def _received(value: str) -> str:
    """An index arrival time (ISO 8601, UTC) as local ``YYYY-MM-DD HH:MM``."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return value or ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def _size(value: int) -> str:
    size = float(value)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return str(value)


def install_filters(app) -> None:
    app.jinja_env.filters.update(dicom_date=_iso_date, dicom_time=_time, person=_person,
                                 size=_size, received=_received)


@blueprint.get("/")
def studies() -> tuple[str, int] | str:
    args = {key: value for key, value in request.args.items() if value.strip()}
    problem = ""
    try:
        query = catalog.parse_study_query(args)
    except catalog.QueryError as exc:
        problem, query = str(exc), catalog.StudyQuery()
    result = state().catalog.search(query)
    page = render_template("studies.html", query=query, result=result, columns=STUDY_COLUMNS,
                           defaults=catalog.StudyQuery(), default_order=catalog.DEFAULT_ORDER,
                           problem=problem, iso_date=_iso_date, active="studies")
    return (page, 400) if problem else page


@blueprint.get("/studies/<study_uid>")
def study(study_uid: str) -> str:
    detail = api.study_detail(study_uid)
    config = state().config
    return render_template("study.html", study=detail, aes=sorted(config.remote_aes.values(),
                                                                   key=lambda ae: ae.title),
                           active="studies")


#: Modalities of series without pixels: the viewer opens on another series first.
NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC", "RTPLAN", "RTSTRUCT", "RTRECORD"})


@blueprint.get("/studies/<study_uid>/viewer")
def viewer(study_uid: str) -> str:
    """The image viewer: dwv (static/vendor/dwv) in a page of our own, static/viewer.js.

    The page only names the study, its series and the DICOMweb base; the
    script fetches the pixels through ``/dicom-web`` (WADO-RS, with this
    session's cookie), so what the viewer shows is what any DICOMweb client
    gets.  ``?series=`` picks the series shown first (default: the first).
    """
    detail = api.study_detail(study_uid)
    series = detail["series"]
    chosen = request.args.get("series", "")
    images = [s for s in series if s.get("Modality") not in NOT_IMAGES] or series
    current = next((s for s in series if s["SeriesInstanceUID"] == chosen),
                   images[0] if images else None)
    return render_template("viewer.html", study=detail, current=current,
                           dicomweb=url_for("dicomweb.search_studies").rsplit("/", 1)[0],
                           active="studies")


@blueprint.get("/aes")
def aes() -> str:
    config = state().config
    return render_template("aes.html", aes=[config.remote_aes[t] for t in
                                            sorted(config.remote_aes)], active="aes")


@blueprint.get("/queue")
def queue() -> tuple[str, int] | str:
    """The queue page, filtered as its URL says (``?destination=PACS&state=done``).

    The filter's fields start from the URL, and app.js lists what they
    select (and keeps the URL in step), so a filtered view can be linked to
    and bookmarked.  Destinations with jobs but no AE section are offered too.
    """
    config = state().config
    wanted_state = request.args.get("state", "").strip()
    destination = request.args.get("destination", "").strip()
    problem = ""
    if wanted_state and wanted_state not in jobs.STATES:
        problem = f"state: must be one of {', '.join(jobs.STATES)}, got {wanted_state!r}"
        wanted_state = ""
    titles = set(config.remote_aes) | {job.destination for job in state().all_jobs()}
    if destination:
        titles.add(destination)
    page = render_template("queue.html", destinations=sorted(titles), states=jobs.STATES,
                           chosen_state=wanted_state, chosen_destination=destination,
                           problem=problem, active="queue")
    return (page, 400) if problem else page


@blueprint.get("/worklist")
def worklist() -> tuple[str, int] | str:
    given = request.args.get("date", "").strip()
    problem = ""
    try:
        day = catalog.parse_date(given, "date") if given else catalog.today()
    except catalog.QueryError as exc:
        problem, day = str(exc), catalog.today()
    page = render_template("worklist.html", day=api.worklist_day(day), iso_day=_iso_date(day),
                           problem=problem, active="worklist")
    return (page, 400) if problem else page


@blueprint.get("/health")
def health() -> str:
    return render_template("health.html", report=api.health_report(), active="health")


def html_error(exc: HTTPException) -> tuple[str, int]:
    """An error as a page (the API's errors are JSON; see create_app)."""
    message = exc.description or exc.name
    return render_template("error.html", code=exc.code, name=exc.name, message=message,
                           active=""), exc.code or 500
