"""The Browser's JSON API under ``/api/``: what the pages call and scripts may call.

Every handler is thin: it validates the request, asks the read models of
:mod:`echoes.web.catalog` or the modules that own the data (jobs, config_edit,
requestor, health), and answers JSON.  Errors are ``{"error": "one
sentence"}`` with the matching 4xx code, so a script or a page can show the
message as it is.  README.md, section "The Browser and its API", documents
each endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from typing import Any, NoReturn

from flask import Blueprint, Response, g, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from echoes import config_edit
from echoes.config import ConfigError, RemoteAE, parse_ae_title
from echoes.dicom.part10 import uid_problem
from echoes.ops import daemon, health
from echoes.queue import jobs
from echoes.storage import spool
from echoes.web import catalog
from echoes.web.state import state
from echoes.worklist import performed

log = logging.getLogger("echoes.web")

blueprint = Blueprint("api", __name__, url_prefix="/api")

JOB_ID = re.compile(r"[0-9a-f]{20}")
THUMBNAIL_SIZES = (32, 512)
ECHO_TIMEOUT = 10.0
AE_FIELDS = ("title", "host", "port", "forward", "tls", "forward_modalities",
             "forward_calling_aes", "forward_when", "stable_study_seconds")
#: The routing rule fields (issue 20), checked by the config's own parsers.
RULE_FIELDS = AE_FIELDS[5:]


class ApiError(HTTPException):
    """A refused request: its status and one sentence (JSON for the API, a page for pages)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(description=message)
        self.code = status


def fail(status: int, message: str) -> NoReturn:
    """Stop the request with ``status`` and ``message``."""
    raise ApiError(status, message)


def json_body() -> dict[str, Any]:
    """The request's JSON object; 415/400 with a clear message otherwise."""
    if not request.is_json:
        fail(415, "send a JSON body with Content-Type: application/json")
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        fail(400, "malformed JSON: the body is not UTF-8")
    except json.JSONDecodeError as exc:
        fail(400, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    if not isinstance(body, dict):
        fail(400, "the JSON body must be an object")
    return body


def _query(name: str, default: str = "") -> str:
    return (request.args.get(name) or default).strip()


# -- studies -----------------------------------------------------------------------------


def _study_row(study: dict) -> dict:
    return {**study, "url": url_for("pages.study", study_uid=study["StudyInstanceUID"])}


@blueprint.get("/studies")
def studies() -> Response:
    try:
        query = catalog.parse_study_query(request.args)
    except catalog.QueryError as exc:
        fail(400, str(exc))
    result = state().catalog.search(query)
    return jsonify(total=result.total, page=result.page, per_page=result.per_page,
                   pages=result.pages, sort=query.sort, order=query.order,
                   studies=[_study_row(s) for s in result.studies])


def checked_uid(value: str, what: str) -> str:
    """A UID from the URL; 400 when it cannot be one (it names files: no '..')."""
    problem = uid_problem(value)
    if problem:
        fail(400, f"{what} {value[:80]!r} is {problem}")
    return value


def read_study(study_uid: str) -> dict:
    """The archived study (summary, series, instances), or 404."""
    checked_uid(study_uid, "StudyInstanceUID")
    study = state().studies.read(study_uid)
    if study is None:
        fail(404, f"no archived study {study_uid}")
    summary = state().catalog.summaries([study_uid]).get(study_uid) or study["study"] or {}
    return {**study, "study": summary}


def study_detail(study_uid: str) -> dict:
    """Summary plus series with their thumbnail URLs (for the API and the page)."""
    study = read_study(study_uid)
    series = [{**s, "thumbnail": url_for("api.thumbnail", study_uid=study_uid,
                                         series_uid=s["SeriesInstanceUID"])}
              for s in catalog.series_list(study)]
    return {**study["study"], "series": series,
            "jobs": url_for("api.study_jobs", study_uid=study_uid)}


@blueprint.get("/studies/<study_uid>")
def study(study_uid: str) -> Response:
    return jsonify(study_detail(study_uid))


@blueprint.get("/studies/<study_uid>/series/<series_uid>/thumbnail.png")
def thumbnail(study_uid: str, series_uid: str) -> Response:
    from echoes.web import thumbnail as thumbnails

    study = read_study(study_uid)
    checked_uid(series_uid, "SeriesInstanceUID")
    size = _query("size", "128")
    if not size.isdigit() or not THUMBNAIL_SIZES[0] <= int(size) <= THUMBNAIL_SIZES[1]:
        fail(400, f"size: must be a whole number from {THUMBNAIL_SIZES[0]} to "
                  f"{THUMBNAIL_SIZES[1]}, got {size!r}")
    instance = catalog.middle_instance(study["instances"], series_uid)
    if instance is None:
        fail(404, f"no series {series_uid} in study {study_uid}")
    path = state().objects.path_of(instance["path"])
    try:
        stat = path.stat()
        key: tuple = (str(path), stat.st_mtime_ns, stat.st_size, int(size))
    except OSError:
        key = (str(path), None, None, int(size))
    cache = state().thumbnails
    png = cache.get(key)
    if png is None:
        png = (thumbnails.render(path, int(size)) if key[1] is not None
               else thumbnails.placeholder("file missing", int(size)))
        cache.put(key, png)
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=300"
    response.set_etag(f"{key[1]}-{key[2]}-{key[3]}")
    return response.make_conditional(request)


@blueprint.post("/studies/<study_uid>/push")
def push(study_uid: str) -> tuple[Response, int]:
    body = json_body()
    title = body.get("ae")
    if not isinstance(title, str) or not title.strip():
        fail(400, "give the destination as {\"ae\": \"TITLE\"}")
    title = title.strip()
    config = state().config
    if title not in config.remote_aes:
        known = ", ".join(sorted(config.remote_aes)) or "none"
        fail(404, f"unknown AE {title} (configured: {known})")
    study = read_study(study_uid)
    queued = state().job_store.queue(title, study["instances"], "push", time.time())
    log.info("push of study %s (%d objects) to %s queued by %s", study_uid, queued, title,
             g.user)
    return jsonify(queued=queued, destination=title, study=study_uid,
                   progress=url_for("api.study_jobs", study_uid=study_uid)), 202


#: How long a delete request waits for the ingester's answer before it says 202.
DELETE_WAIT_SECONDS = 30.0


@blueprint.delete("/studies/<study_uid>")
def delete_study(study_uid: str) -> tuple[Response, int]:
    """Delete a study (files and index), as ``echoes delete`` does: the ingester, the one
    index writer, carries it out; 409 while it has outbound jobs not done."""
    from echoes.ops import retention

    read_study(study_uid)
    waiting = retention.keeping(job for job in state().all_jobs()
                                if job.study_instance_uid == study_uid).get(study_uid, 0)
    if waiting:
        fail(409, f"study {study_uid} has {waiting} outbound jobs not done (see the queue); "
                  "it is kept until they are")
    result = retention.request_delete(state().config, study_uid)
    log.info("deletion of study %s asked by %s", study_uid, g.user)
    deadline = time.monotonic() + DELETE_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            outcome = json.loads(result.read_bytes())
        except (FileNotFoundError, ValueError):
            time.sleep(0.2)
            continue
        result.unlink(missing_ok=True)
        if "error" in outcome:
            fail(409, outcome["error"])
        return jsonify(deleted=study_uid, instances=outcome["instances"],
                       bytes=outcome["bytes"]), 200
    return jsonify(deleting=study_uid), 202


@blueprint.get("/studies/<study_uid>/jobs")
def study_jobs(study_uid: str) -> Response:
    checked_uid(study_uid, "StudyInstanceUID")
    progress = catalog.study_progress(state().all_jobs(), study_uid)
    if not progress["destinations"] and state().studies.read(study_uid) is None:
        fail(404, f"no archived study {study_uid}")
    return jsonify(progress)


# -- remote AEs ---------------------------------------------------------------------------


def ae_view(ae: RemoteAE) -> dict:
    return {"title": ae.title, "host": ae.host, "port": ae.port, "forward": ae.forward,
            "tls": ae.tls, "forward_modalities": list(ae.forward_modalities),
            "forward_calling_aes": list(ae.forward_calling_aes),
            "forward_when": ae.forward_when, "stable_study_seconds": ae.stable_study_seconds}


def _rules_from(values: dict[str, Any]) -> dict[str, Any]:
    """The routing rule fields of a request body (lists or space-separated text), parsed
    as the configuration file's keys are; 400 naming the field."""
    from echoes.config import AE_KEYS

    rules = {}
    for name in RULE_FIELDS:
        value = values.get(name, AE_KEYS[name][1])
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = " ".join(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            fail(400, f"{name}: must be text or a list of text")
        try:
            rules[name] = AE_KEYS[name][0](value)
        except ValueError as exc:
            fail(400, f"{name}: {exc}")
    return rules


def remote_ae_from(body: dict[str, Any], current: RemoteAE | None = None) -> RemoteAE:
    """The AE a request body describes; fields left out keep ``current``'s values.

    400 for unknown fields, wrong types and bad values, each named.
    """
    unknown = sorted(set(body) - set(AE_FIELDS))
    if unknown:
        fail(400, f"unknown field {unknown[0]!r} (known: {', '.join(AE_FIELDS)})")
    values: dict[str, Any] = ae_view(current) if current else {"forward": False, "tls": False}
    values.update(body)
    for name in ("title", "host", "port"):
        if name not in values:
            fail(400, f"{name}: missing")
    if not isinstance(values["title"], str):
        fail(400, "title: must be a string")
    try:
        values["title"] = parse_ae_title(values["title"])
    except ValueError as exc:
        fail(400, f"title: {exc}")
    if not isinstance(values["host"], str) or not values["host"].strip():
        fail(400, "host: must be a host name or IP address")
    port = values["port"]
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        fail(400, f"port: must be a whole number from 1 to 65535, got {values['port']!r}")
    for name in ("forward", "tls"):
        if not isinstance(values[name], bool):
            fail(400, f"{name}: must be true or false")
    return RemoteAE(title=values["title"], host=values["host"].strip(), port=port,
                    forward=values["forward"], tls=values["tls"], **_rules_from(values))


def _configured(title: str) -> RemoteAE:
    remote = state().config.remote_aes.get(title)
    if remote is None:
        fail(404, f"unknown AE {title}")
    return remote


def _edit_config(action, *args) -> None:
    """Run a config_edit function; its refusals become 400/404, the file's 500."""
    config = state().config
    try:
        action(config.path, *args)
    except config_edit.UnknownAE as exc:
        fail(404, str(exc))
    except ConfigError as exc:
        fail(400, str(exc))
    except OSError as exc:
        log.error("cannot write %s: %s", config.path, exc)
        fail(500, f"cannot write the configuration {config.path}: {exc.strerror}")
    state().config_changed()


@blueprint.get("/aes")
def aes() -> Response:
    config = state().config
    return jsonify(aes=[ae_view(config.remote_aes[t]) for t in sorted(config.remote_aes)])


@blueprint.post("/aes")
def add_ae() -> tuple[Response, int]:
    remote = remote_ae_from(json_body())
    if remote.title in state().config.remote_aes:
        fail(409, f"AE {remote.title} is already configured")
    _edit_config(config_edit.save_remote_ae, remote)
    log.info("AE %s added (%s:%d, forward %s) by %s", remote.title, remote.host, remote.port,
             remote.forward, g.user)
    return jsonify(ae_view(remote)), 201


@blueprint.get("/aes/<title>")
def get_ae(title: str) -> Response:
    return jsonify(ae_view(_configured(title)))


@blueprint.put("/aes/<title>")
def edit_ae(title: str) -> Response:
    current = _configured(title)
    remote = remote_ae_from(json_body(), current)
    if remote.title != title and remote.title in state().config.remote_aes:
        fail(409, f"AE {remote.title} is already configured")
    _edit_config(config_edit.save_remote_ae, remote, title)
    log.info("AE %s changed to %s %s:%d, forward %s, by %s", title, remote.title, remote.host,
             remote.port, remote.forward, g.user)
    moved = 0
    if remote.title != title:  # the queue follows a renamed AE
        moved = state().move_jobs(title, remote.title)
        if moved:
            log.info("%d queued jobs moved from %s to %s", moved, title, remote.title)
    return jsonify({**ae_view(remote), "jobs_moved": moved})


@blueprint.delete("/aes/<title>")
def remove_ae(title: str) -> Response:
    _configured(title)
    _edit_config(config_edit.remove_remote_ae, title)
    log.info("AE %s removed by %s", title, g.user)
    return jsonify(removed=title)


@blueprint.post("/aes/<title>/echo")
def echo_ae(title: str) -> Response:
    from echoes.services import dicom_settings

    remote = _configured(title)
    ok, message, milliseconds = dicom_settings.verify(state().config, remote,
                                                      timeout=ECHO_TIMEOUT)
    return jsonify(ae=title, ok=ok, message=message, ms=round(milliseconds, 1))


# -- the outbound queue ----------------------------------------------------------------


@blueprint.get("/queue")
def queue() -> Response:
    wanted_state = _query("state")
    if wanted_state and wanted_state not in jobs.STATES:
        fail(400, f"state: must be one of {', '.join(jobs.STATES)}, got {wanted_state!r}")
    limit = _query("limit", str(catalog.MAX_LISTED_JOBS))
    if not limit.isdigit() or not 1 <= int(limit) <= 100_000:
        fail(400, f"limit: must be a whole number from 1 to 100000, got {limit!r}")
    return jsonify(catalog.queue_summary(state().all_jobs(), state().config.remote_aes,
                                         _query("destination"), wanted_state, int(limit),
                                         studies=state().catalog.summaries))


@blueprint.post("/queue/retry-failed")
def retry_failed() -> Response:
    """Every failed job (of one destination, if given) pending again: ``echoes retry --failed``.

    Only failed jobs: a done job was delivered (pushing the study sends it
    anew), a cancelled one was withdrawn on purpose (its own Retry brings it
    back), pending and retrying ones are on their way already.
    """
    body = json_body() if request.get_data(cache=True) else {}
    unknown = sorted(set(body) - {"destination"})
    if unknown:
        fail(400, f"unknown field {unknown[0]!r} (known: destination)")
    destination = body.get("destination") or ""
    if not isinstance(destination, str):
        fail(400, "destination: must be an AE title")
    retried = state().retry_failed(destination.strip(), time.time())
    if retried:
        log.info("%d failed jobs%s queued again by %s", len(retried),
                 f" to {destination.strip()}" if destination.strip() else "", g.user)
    return jsonify(retried=len(retried), destination=destination.strip() or None)


def _job(job_id: str) -> jobs.Job:
    job = state().job_store.read(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        fail(404, f"no job {job_id[:40]}")
    return job


def job_view(job: jobs.Job) -> dict:
    """The job as the API shows it, with its study's patient and accession."""
    uid = job.study_instance_uid
    return catalog.job_view(job, state().catalog.summaries([uid]).get(uid))


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    return jsonify(job_view(_job(job_id)))


@blueprint.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> Response:
    current = _job(job_id)
    if current.state == jobs.DONE:
        fail(409, f"job {job_id} is already done (push the study again to send it anew)")
    if current.state not in jobs.RETRIABLE:
        fail(409, f"job {job_id} is {current.state} already: nothing to retry")
    fresh = jobs.retried(current, time.time())
    state().job_store.write(fresh)
    log.info("job %s to %s queued again by %s", job_id, fresh.destination, g.user)
    return jsonify(job_view(fresh))


@blueprint.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    current = _job(job_id)
    if current.state == jobs.DONE:
        fail(409, f"job {job_id} is already done")
    if current.state == jobs.CANCELLED:
        return jsonify(job_view(current))
    cancelled = state().job_store.cancel(job_id, time.time())
    if cancelled is None:
        fail(404, f"no job {job_id}")
    log.info("job %s to %s cancelled by %s", job_id, cancelled.destination, g.user)
    return jsonify(job_view(cancelled))


# -- worklist --------------------------------------------------------------------------


def worklist_day(day: str) -> dict:
    directory = state().worklist()
    stations = catalog.worklist_day(directory.items(), day)
    # Each step's MPPS state ("" none, IN PROGRESS, COMPLETED, DISCONTINUED).
    states = performed.step_states(state().mpps_instances())
    for station in stations:
        for step in station["steps"]:
            step["mpps"] = performed.state_of_step(step["step_id"], step["study_uid"],
                                                   step["accession"], states)
    return {"date": day, "stations": stations,
            "steps": sum(len(s["steps"]) for s in stations),
            "invalid": directory.invalid()}


@blueprint.get("/worklist")
def worklist() -> Response:
    given = _query("date")
    try:
        day = catalog.parse_date(given, "date") if given else catalog.today()
    except catalog.QueryError as exc:
        fail(400, str(exc))
    return jsonify(worklist_day(day))


# -- health ----------------------------------------------------------------------------


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((daemon.reachable_address(host), port), timeout=0.5):
            return True
    except OSError:
        return False


def health_report() -> dict:
    """Processes, ports, disks, counts and ``echoes check``'s problems, in one document."""
    config = state().config
    table, why_not = health.process_table(config)
    studies, instances = state().catalog.totals()
    cutoff = time.time() - 3600
    recent = 0
    for uid in state().catalog.updated_since(cutoff):
        detail = state().studies.read(uid)
        if detail is not None:
            recent += catalog.received_since(detail["instances"], cutoff)
    disks = []
    for name, folder in (("spool", config.spool_dir), ("archive", config.archive_dir)):
        entry: dict[str, Any] = {"name": name, "path": str(folder), "free_mb": None,
                                 "total_mb": None}
        if folder.exists():
            stats = os.statvfs(folder)
            entry["free_mb"] = round(spool.free_megabytes(folder))
            entry["total_mb"] = round(stats.f_blocks * stats.f_frsize / 2**20)
        disks.append(entry)
    problems = health.check(config, tuple(p for p in health.PROBES
                                          if p is not health.browser_port))
    code, summary = health.summary(problems)
    return {
        "status": health.NAMES[code], "summary": summary,
        "processes": [{"role": p.role, "pid": p.pid,
                       "state": "running" if p.running else "missing"} for p in table],
        "processes_note": why_not or "",
        "ports": [{"name": name, "address": address, "port": port,
                   "listening": _listening(address, port)}
                  for name, address, port in (("store", config.bind, config.store_port),
                                               ("mwl", config.bind, config.mwl_port),
                                               ("http", config.http_bind, config.http_port))],
        "disks": disks,
        "studies": studies, "instances": instances,
        "received_last_hour": recent,
        # How the study list kept up with the index: loads of the whole catalog,
        # and updates from the changed summaries alone (issue 18).
        "catalog": {"full_loads": state().catalog.full_loads,
                    "updates": state().catalog.updates,
                    "database_reads": state().catalog.database_reads,
                    "dicomweb_full_loads": state().query_index.full_loads},
        "problems": [{"severity": health.NAMES[p.severity], "message": p.message}
                     for p in problems],
    }


@blueprint.get("/health")
def health_endpoint() -> Response:
    return jsonify(health_report())
