"""``/dicom-web``: QIDO-RS searches and WADO-RS retrieves, a thin Flask layer.

Each handler validates the URL's UIDs (a non-UID, path traversal included,
is a 400 with a log line: no value of the URL ever names a file), asks the
index seam (:meth:`~echoes.index.IndexReader.query`, the matching engine
C-FIND uses) or the object store, and answers through the pure modules
(:mod:`.qido`, :mod:`.dicom_json`, :mod:`.media`, :mod:`.multipart`).

Retrieves stream: an object stored in the syntax asked for (or any, with
``transfer-syntax=*``) goes out as its file's bytes, chunk by chunk, so a
gigabyte object never sits in memory; one that must be converted (a JPEG
object asked for as Explicit VR Little Endian, the default) goes through the
sender's own conversion (:mod:`echoes.services.outbound`: choose_route,
prepare, payload), the one transcoder of echoes, and is held in memory
while it is encoded.  Authentication is the Browser's (:mod:`echoes.web.auth`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Blueprint, Response, request, url_for

from echoes import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from echoes.dicom.part10 import part10_header, uid_problem
from echoes.dicom.syntax import DEFLATED, ENCAPSULATED, EXPLICIT_VR_BIG_ENDIAN
from echoes.index.base import IMAGE, SERIES, STUDY
from echoes.services import stow
from echoes.services.outbound import Route, choose_route, payload, prepare
from echoes.web import thumbnail as thumbnails
from echoes.web.api import fail
from echoes.web.dicomweb import dicom_json, media, multipart, qido
from echoes.web.state import state

log = logging.getLogger("echoes.web")

blueprint = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

DICOM_JSON = "application/dicom+json"
PIXEL_DATA = 0x7FE00010
#: Binary values longer than this are not read by metadata: they become BulkDataURIs.
BULK_THRESHOLD = 64 * 1024
_TAG = re.compile(r"[0-9A-Fa-f]{8}\Z")
_FRAMES = re.compile(r"[0-9]+(,[0-9]+)*\Z")


# -- shared checks -----------------------------------------------------------------------


def refuse(status: int, message: str) -> NoReturn:
    """A refused request, logged (a client's mistake or a probe: both worth a line)."""
    log.warning("DICOMweb: %d for %s %s from %s: %s", status, request.method,
                request.full_path.rstrip("?")[:300], request.remote_addr or "?", message)
    fail(status, message)


def _uid(value: str, what: str) -> str:
    problem = uid_problem(value)
    if problem:
        refuse(400, f"{what} {problem}")
    return value


def _uids(study: str | None, series: str | None = None, sop: str | None = None) -> None:
    for value, what in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"),
                        (sop, "SOPInstanceUID")):
        if value is not None:
            _uid(value, what)


def _instance_number(doc: dict) -> tuple[int, str]:
    text = str(doc.get("InstanceNumber") or "")
    return (int(text), "") if text.isdigit() else (0, text)


def _instances(study: str, series: str | None = None, sop: str | None = None) -> list[dict]:
    """The instance documents a WADO-RS URL names (404 naming the unknown UID)."""
    _uids(study, series, sop)
    detail = state().query_index.study(study)
    if detail is None or not detail["instances"]:
        refuse(404, f"no study {study}")
    found = [doc for doc in detail["instances"]
             if series is None or doc["SeriesInstanceUID"] == series]
    if not found:
        refuse(404, f"no series {series} in study {study}")
    if sop is not None:
        found = [doc for doc in found if doc["SOPInstanceUID"] == sop]
        if not found:
            refuse(404, f"no instance {sop} in series {series}")
    return sorted(found, key=lambda d: (d["SeriesInstanceUID"], _instance_number(d),
                                        d["SOPInstanceUID"]))


# -- QIDO-RS -----------------------------------------------------------------------------


@blueprint.get("/studies")
def search_studies() -> Response:
    return _search(STUDY, {})


@blueprint.get("/series")
def search_series() -> Response:
    return _search(SERIES, {})


@blueprint.get("/instances")
def search_instances() -> Response:
    return _search(IMAGE, {})


@blueprint.get("/studies/<study>/series")
def search_study_series(study: str) -> Response:
    return _search(SERIES, {"StudyInstanceUID": _uid(study, "StudyInstanceUID")})


@blueprint.get("/studies/<study>/instances")
def search_study_instances(study: str) -> Response:
    return _search(IMAGE, {"StudyInstanceUID": _uid(study, "StudyInstanceUID")})


@blueprint.get("/studies/<study>/series/<series>/instances")
def search_series_instances(study: str, series: str) -> Response:
    return _search(IMAGE, {"StudyInstanceUID": _uid(study, "StudyInstanceUID"),
                           "SeriesInstanceUID": _uid(series, "SeriesInstanceUID")})


def _search(level: str, path_uids: dict[str, str]) -> Response:
    if not media.json_acceptable(request.headers.get("Accept")):
        refuse(406, f"search results are {DICOM_JSON} only, not {request.headers['Accept']}")
    try:
        search = qido.parse(level, request.args.items(multi=True), path_uids)
        index = state().query_index
        if qido.whole_list(search):
            # Every study, one page (a viewer's study list): read as that page
            # through the index seam (on PostgreSQL one indexed query), not as
            # every study read and sorted.
            page = index.study_page(*qido.STUDY_PAGE_ORDER, search.limit, search.offset)
            return _answer(search, qido.page(search, page.studies, paged=True))
        documents = index.query(level, search.filters)
        if documents and qido.needs_study(search):
            uids = "\\".join(sorted({doc["StudyInstanceUID"] for doc in documents}))
            documents = qido.with_study(documents,
                                        index.query(STUDY, {"StudyInstanceUID": uids}))
    except ValueError as exc:  # qido.BadQuery, or a value the matching engine refuses
        refuse(400, str(exc))
    return _answer(search, qido.page(search, documents))


def _answer(search: qido.Search, answers: list[dict]) -> Response:
    """The search's answers as DICOM JSON (204 when none), with its warnings."""
    if answers:
        body = json.dumps([dicom_json.to_dicom_json(answer) for answer in answers],
                          ensure_ascii=False)
        response = Response(body, content_type=f"{DICOM_JSON}; charset=utf-8")
    else:
        response = Response(status=204)
    for warning in search.warnings:
        response.headers.add("Warning", warning)
    return response


# -- WADO-RS: instances ------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    """An archived object as the sender's conversion sees a job (outbound.Outbound)."""

    id: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _object(doc: dict) -> _Object:
    return _Object(doc["SOPInstanceUID"], doc["SOPClassUID"], doc["SOPInstanceUID"],
                   doc.get("TransferSyntaxUID", ""))


def plan(doc: dict, syntaxes: list[str]) -> tuple[str, Route | None] | None:
    """(syntax of the part, None to send the stored bytes or the sender's conversion
    route), for the first of ``syntaxes`` this object can be sent in; None: none."""
    stored = doc.get("TransferSyntaxUID", "")
    for wanted in syntaxes:
        if wanted == media.ANY_SYNTAX:
            return stored, None
        route = choose_route(doc["SOPClassUID"], stored, {(doc["SOPClassUID"], wanted)})
        if route.kind == "file":
            return stored, None
        if route.kind != "refuse":
            return wanted, route
    return None


def _converted_chunks(objects: Any, doc: dict, route: Route, syntax: str) -> Iterator[bytes]:
    """The object as a Part 10 file in ``syntax``, made by the sender's conversion."""
    item = _object(doc)
    accepted = {(item.sop_class_uid, syntax)}
    try:
        prepared = prepare(objects.path_of(doc["path"]), route)
        used, data = payload(item, route, prepared, accepted)
    except Exception:
        log.exception("DICOMweb: cannot convert %s to %s", item.sop_instance_uid, syntax)
        raise
    return _converted_file(item, used, data)


def _converted_file(item: _Object, used: str, data: Any) -> Iterator[bytes]:
    yield part10_header(item.sop_class_uid, item.sop_instance_uid, used,
                        IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    with data:
        while chunk := data.read(multipart.CHUNK):
            yield chunk


def _part_headers(syntax: str) -> dict[str, str]:
    return {"Content-Type": f"application/dicom; transfer-syntax={syntax}"}


def _converted_or_stored(objects: Any, doc: dict, route: Route, syntax: str,
                         syntaxes: list[str]) -> tuple[str, Iterable[bytes]]:
    """(syntax, chunks) of a part that needs converting, converted before its part
    begins: a conversion that fails (a codec we lack, known only on decoding) sends
    the stored bytes when the Accept allows them (``transfer-syntax=*`` or the stored
    syntax later in the list), rather than cutting the whole answer short."""
    item = _object(doc)
    try:
        with thumbnails.pydicom_quiet():  # each failed decoder plugin: a traceback
            prepared = prepare(objects.path_of(doc["path"]), route)
            used, data = payload(item, route, prepared, {(item.sop_class_uid, syntax)})
    except Exception as exc:
        stored = doc.get("TransferSyntaxUID", "")
        if media.ANY_SYNTAX not in syntaxes and stored not in syntaxes:
            log.exception("DICOMweb: cannot convert %s to %s", item.sop_instance_uid, syntax)
            raise
        log.warning("DICOMweb: cannot convert %s to %s (%s): sent as stored (%s), "
                    "which the request also accepts", item.sop_instance_uid, syntax,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    stored)
        key = doc["path"]
        return stored, multipart.file_chunks(lambda: objects.open(key))
    return syntax, _converted_file(item, used, data)


def _dicom_parts(objects: Any, docs: list[dict], plans: list[tuple[str, Route | None]],
                 syntaxes: list[str], sizes: list[int] | None = None
                 ) -> Iterator[multipart.Part]:
    """The parts of a retrieve, made one by one while the answer streams (after the
    request: ``objects`` is taken before it ends); ``sizes``: the stored files' sizes
    the answer's Content-Length was counted with (every part sent as stored)."""
    for n, (doc, (syntax, route)) in enumerate(zip(docs, plans, strict=True)):
        if route is None:
            key = doc["path"]
            chunks: Iterable[bytes] = multipart.file_chunks(
                lambda key=key: objects.open(key), whole=sizes[n] if sizes else None)
        else:
            syntax, chunks = _converted_or_stored(objects, doc, route, syntax, syntaxes)
        yield _part_headers(syntax), chunks


def _stored_sizes(objects: Any, docs: list[dict]) -> list[int] | None:
    """Each object's size as stored, or None when one is missing (the answer then
    goes chunked and that part fails where it comes, as before)."""
    try:
        return [objects.path_of(doc["path"]).stat().st_size for doc in docs]
    except OSError:
        return None


def _multipart(part_type: str, parts: Iterable[multipart.Part], boundary: str | None = None,
               length: int | None = None) -> Response:
    boundary = boundary or multipart.new_boundary()
    response = Response(multipart.stream(parts, boundary),
                        content_type=multipart.content_type(part_type, boundary),
                        direct_passthrough=True)
    if length is not None:
        response.content_length = length
    return response


@blueprint.get("/studies/<study>")
@blueprint.get("/studies/<study>/series/<series>")
@blueprint.get("/studies/<study>/series/<series>/instances/<sop>")
def retrieve(study: str, series: str | None = None, sop: str | None = None) -> Response:
    docs = _instances(study, series, sop)
    syntaxes = media.dicom_syntaxes(request.headers.get("Accept"))
    if not syntaxes:
        refuse(406, "instances are sent as multipart/related; type=\"application/dicom\"")
    plans = []
    for doc in docs:
        chosen = plan(doc, syntaxes)
        if chosen is None:
            refuse(406, f"instance {doc['SOPInstanceUID']} (stored as "
                        f"{doc.get('TransferSyntaxUID')}) cannot be sent in "
                        f"{', '.join(syntaxes)}")
        plans.append(chosen)
    objects = state().objects
    sizes = (_stored_sizes(objects, docs) if all(route is None for _s, route in plans)
             else None)  # a converted object's size is known only once it is made
    if sizes is None:
        return _multipart("application/dicom", _dicom_parts(objects, docs, plans, syntaxes))
    boundary = multipart.new_boundary()
    length = multipart.body_length(
        ((_part_headers(syntax), size) for (syntax, _r), size in zip(plans, sizes, strict=True)),
        boundary)
    return _multipart("application/dicom", _dicom_parts(objects, docs, plans, syntaxes, sizes),
                      boundary, length)


# -- WADO-RS: metadata and bulk data -----------------------------------------------------


DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin() -> str:
    """``scheme://host:port`` of this server as the client reached it, for BulkDataURIs.

    From the Host header; when it names no port (dicomweb-client sends its
    host without the port) the port the request came in on is added, else a
    client would follow the URI to port 80.
    """
    host = request.host
    if ":" not in host.rsplit("]", 1)[-1]:
        port = str(request.environ.get("SERVER_PORT") or "")
        if port and port != DEFAULT_PORTS.get(request.scheme):
            host = f"{host}:{port}"
    return f"{request.scheme}://{host}"


def _instance_url(doc: dict) -> str:
    return origin() + url_for("dicomweb.retrieve", study=doc["StudyInstanceUID"],
                              series=doc["SeriesInstanceUID"], sop=doc["SOPInstanceUID"])


def instance_metadata(path: Any, doc: dict, uri: Any) -> dict[str, Any]:
    """The DICOM JSON of one archived object: every attribute, the pixel data and
    other values over BULK_THRESHOLD as BulkDataURIs (never read: ``uri(tag)``)."""
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement

    dataset = dcmread(path, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
    bulk: dict[int, str] = {}
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            bulk[int(tag)] = raw.VR or "UN"
            del dataset[tag]
    out = dataset.to_json_dict(bulk_data_threshold=BULK_THRESHOLD)
    stored = doc.get("TransferSyntaxUID", "")
    if doc.get("Rows"):
        bits = dataset.get("BitsAllocated", 16)
        bulk[PIXEL_DATA] = "OB" if stored in ENCAPSULATED or (bits or 16) <= 8 else "OW"
    for tag, vr in bulk.items():
        out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": uri(tag)}
    if stored:
        out["00083002"] = {"vr": "UI", "Value": [stored]}  # Available Transfer Syntax UID
    return dict(sorted(out.items()))


@blueprint.get("/studies/<study>/metadata")
@blueprint.get("/studies/<study>/series/<series>/metadata")
@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/metadata")
def metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    docs = _instances(study, series, sop)
    if not media.json_acceptable(request.headers.get("Accept")):
        refuse(406, f"metadata is {DICOM_JSON} only, not {request.headers['Accept']}")
    objects = state().objects
    # Taken now: the body is made after the request, where url_for cannot run.
    bases = {doc["SOPInstanceUID"]: _instance_url(doc) for doc in docs}

    def uri_for(doc: dict) -> Callable[[int], str]:
        base = bases[doc["SOPInstanceUID"]]
        return lambda tag: f"{base}/bulkdata/{tag:08X}"

    def body() -> Iterator[bytes]:
        yield b"["
        for n, doc in enumerate(docs):
            try:
                item = instance_metadata(objects.path_of(doc["path"]), doc, uri_for(doc))
            except Exception:
                log.exception("DICOMweb: cannot read the metadata of %s", doc["SOPInstanceUID"])
                raise
            yield (b"," if n else b"") + json.dumps(item, ensure_ascii=False).encode()
        yield b"]"

    return Response(body(), content_type=f"{DICOM_JSON}; charset=utf-8",
                    direct_passthrough=True)


def bulk_value(objects: Any, doc: dict, tag: int) -> Iterable[bytes] | None:
    """The bytes of attribute ``tag`` of an archived object, little endian and
    uncompressed (None: the object has no such attribute).

    A value of the file's own encoding is streamed from its place in the file;
    compressed pixel data is decoded and a big-endian or deflated object is
    read whole, by the sender's conversion.
    """
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement

    path = objects.path_of(doc["path"])
    stored = doc.get("TransferSyntaxUID", "")
    if stored in ENCAPSULATED or stored in DEFLATED or stored == EXPLICIT_VR_BIG_ENDIAN:
        if tag != PIXEL_DATA and stored in ENCAPSULATED:
            dataset = dcmread(path, stop_before_pixels=True)
        else:
            kind = "decompress" if stored in ENCAPSULATED else "reencode"
            dataset = prepare(path, Route(kind, target=media.EXPLICIT_VR_LITTLE_ENDIAN))
        if tag not in dataset:
            return None
        value = dataset[tag].value
        return [value if isinstance(value, bytes) else bytes(value)]
    dataset = dcmread(path, defer_size=BULK_THRESHOLD)
    raw = dataset.get_item(tag, keep_deferred=True)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement) and raw.value is None:
        key = doc["path"]
        return multipart.file_chunks(lambda: objects.open(key), raw.value_tell, raw.length)
    value = dataset[tag].value
    if not isinstance(value, bytes | bytearray):
        return None  # not a bulk value (a number, text): it is in the metadata itself
    return [bytes(value)]


@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/bulkdata/<tag>")
def bulkdata(study: str, series: str, sop: str, tag: str) -> Response:
    [doc] = _instances(study, series, sop)
    if not _TAG.match(tag):
        refuse(400, f"a bulk data tag is 8 hex digits, not {tag!r}")
    if not media.octet_stream_syntaxes(request.headers.get("Accept")):
        refuse(406, "bulk data is sent as multipart/related; type=\"application/octet-stream\"")
    body = bulk_value(state().objects, doc, int(tag, 16))
    if body is None:
        refuse(404, f"instance {sop} has no bulk data {tag}")
    return _multipart("application/octet-stream",
                      [({"Content-Type": "application/octet-stream"}, body)])


# -- WADO-RS: frames ---------------------------------------------------------------------


def frame_numbers(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (frames count from 1); ValueError otherwise."""
    if not _FRAMES.match(text) or any(int(n) < 1 for n in text.split(",")):
        raise ValueError(f"frames are numbers from 1 separated by commas, not {text!r}")
    return [int(n) for n in text.split(",")]


def frame_values(objects: Any, doc: dict, numbers: list[int]) -> list[Iterable[bytes]]:
    """The uncompressed little-endian bytes of each frame of ``numbers``.

    Frames of a file in its own uncompressed little-endian encoding are
    streamed from their place in the file; compressed pixel data is decoded
    (by the sender's conversion) and held while it is sent.  ValueError (a
    1-bit image, a frame beyond the last), LookupError (no pixel data).
    """
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement

    path = objects.path_of(doc["path"])
    stored = doc.get("TransferSyntaxUID", "")
    converted = stored in ENCAPSULATED or stored in DEFLATED or stored == EXPLICIT_VR_BIG_ENDIAN
    if converted:
        kind = "decompress" if stored in ENCAPSULATED else "reencode"
        dataset = prepare(path, Route(kind, target=media.EXPLICIT_VR_LITTLE_ENDIAN))
    else:
        dataset = dcmread(path, defer_size=BULK_THRESHOLD)
    if PIXEL_DATA not in dataset:
        raise LookupError(f"instance {doc['SOPInstanceUID']} has no pixel data")
    bits = int(dataset.get("BitsAllocated") or 0)
    if bits < 8 or bits % 8:
        raise ValueError(f"frames of {bits}-bit pixel data are not sent one by one")
    size = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1)
            * bits // 8)
    count = int(dataset.get("NumberOfFrames") or 1)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise ValueError(f"instance {doc['SOPInstanceUID']} has {count} frame(s), "
                         f"not frame {beyond[0]}")
    raw = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    if not converted and isinstance(raw, RawDataElement) and raw.value is None:
        key, start = doc["path"], raw.value_tell
        return [multipart.file_chunks(lambda: objects.open(key), start + (n - 1) * size, size)
                for n in numbers]
    pixels = dataset.PixelData
    return [[bytes(pixels[(n - 1) * size:n * size])] for n in numbers]


@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>")
def frames(study: str, series: str, sop: str, frames: str) -> Response:
    [doc] = _instances(study, series, sop)
    try:
        numbers = frame_numbers(frames)
    except ValueError as exc:
        refuse(400, str(exc))
    wanted = media.octet_stream_syntaxes(request.headers.get("Accept"))
    if not {media.ANY_SYNTAX, media.EXPLICIT_VR_LITTLE_ENDIAN} & set(wanted):
        refuse(406, "frames are sent uncompressed: multipart/related; "
                    "type=\"application/octet-stream\"")
    try:
        values = frame_values(state().objects, doc, numbers)
    except LookupError as exc:
        refuse(404, str(exc))
    except ValueError as exc:
        refuse(404 if "frame(s)" in str(exc) else 406, str(exc))
    content = f"application/octet-stream; transfer-syntax={media.EXPLICIT_VR_LITTLE_ENDIAN}"
    return _multipart("application/octet-stream",
                      [({"Content-Type": content}, value) for value in values])


# -- WADO-RS: rendered and thumbnail ----------------------------------------------------

#: Longest side of a DICOMweb thumbnail, as the Browser's default.
THUMBNAIL_SIZE = 128
IMAGE_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}


def _image_format() -> str:
    chosen = media.rendered_format(request.headers.get("Accept"))
    if chosen is None:
        refuse(406, "rendered images are image/jpeg or image/png")
    return chosen


def _image_response(data: bytes, fmt: str) -> Response:
    response = Response(data, content_type=IMAGE_TYPES[fmt])
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


def _rendered(doc: dict, index: int) -> Response:
    """Frame ``index`` of ``doc`` through the Browser's renderer (:mod:`echoes.web.thumbnail`)."""
    fmt = _image_format()
    try:
        voi = media.parse_window(request.args.get("window"))
    except ValueError as exc:
        refuse(400, str(exc))
    path = state().objects.path_of(doc["path"])
    try:
        image = thumbnails.render_frame(path, index, voi)
    except IndexError as exc:
        refuse(404, str(exc))
    except thumbnails.NotAnImage as exc:
        refuse(406, str(exc))
    except Exception as exc:  # a decoder's refusal: the object is there, we cannot draw it
        log.warning("DICOMweb: cannot render %s: %s", doc["SOPInstanceUID"], exc)
        refuse(406, f"instance {doc['SOPInstanceUID']} cannot be rendered")
    return _image_response(thumbnails.encode(image, fmt), fmt)


@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/rendered")
def rendered_instance(study: str, series: str, sop: str) -> Response:
    """The first frame (a multi-frame object's frames: .../frames/{n}/rendered)."""
    [doc] = _instances(study, series, sop)
    return _rendered(doc, 0)


@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/frames/<frame>/rendered")
def rendered_frame(study: str, series: str, sop: str, frame: str) -> Response:
    [doc] = _instances(study, series, sop)
    if not frame.isdigit() or int(frame) < 1:
        refuse(400, f"a frame number is a whole number from 1, not {frame!r}")
    return _rendered(doc, int(frame) - 1)


@blueprint.get("/studies/<study>/thumbnail")
@blueprint.get("/studies/<study>/series/<series>/thumbnail")
@blueprint.get("/studies/<study>/series/<series>/instances/<sop>/thumbnail")
def thumbnail(study: str, series: str | None = None, sop: str | None = None) -> Response:
    """The Browser's thumbnail of the middle instance (its middle frame); never an error
    for what a file holds: an SR gets a labelled grey square, as in the Browser."""
    docs = _instances(study, series, sop)
    fmt = _image_format()
    path = state().objects.path_of(docs[len(docs) // 2]["path"])
    return _image_response(thumbnails.render(path, THUMBNAIL_SIZE, fmt), fmt)


# -- WADO-URI (PS3.18 9) ----------------------------------------------------------------

#: WADO-URI contentType -> what answers it (None: the object itself).
WADO_URI_TYPES = {"application/dicom": None, "image/jpeg": "jpeg", "image/png": "png"}


def _wado_parameter(name: str) -> str:
    value = request.args.get(name)
    if not value:
        refuse(400, f"WADO-URI: the {name} parameter is missing")
    return value


@blueprint.get("/wado")
def wado_uri() -> Response:
    """``/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``: one object as
    ``application/dicom`` (``transferSyntax``, default Explicit VR Little Endian as
    PS3.18 9.1.2.5.1 says; ``*`` the stored bytes), or rendered as ``image/jpeg``
    (the default) or ``image/png`` (``frameNumber``, ``windowCenter``/``windowWidth``)."""
    if _wado_parameter("requestType") != "WADO":
        refuse(400, "WADO-URI: requestType must be WADO")
    [doc] = _instances(_wado_parameter("studyUID"), _wado_parameter("seriesUID"),
                       _wado_parameter("objectUID"))
    wanted = [t.split(";")[0].strip().lower()
              for t in request.args.get("contentType", "image/jpeg").split(",")]
    kinds = [t for t in wanted if t in WADO_URI_TYPES]
    if not kinds:
        refuse(406, f"WADO-URI: contentType is one of {', '.join(WADO_URI_TYPES)}")
    fmt = WADO_URI_TYPES[kinds[0]]
    if fmt is None:
        return _wado_object(doc, request.args.get("transferSyntax",
                                                  media.EXPLICIT_VR_LITTLE_ENDIAN))
    frame = request.args.get("frameNumber", "1")
    if not frame.isdigit() or int(frame) < 1:
        refuse(400, f"frameNumber is a whole number from 1, not {frame!r}")
    center, width = request.args.get("windowCenter"), request.args.get("windowWidth")
    if (center is None) != (width is None):
        refuse(400, "windowCenter and windowWidth go together")
    try:
        voi = media.parse_window(None if center is None else f"{center},{width}")
    except ValueError as exc:
        refuse(400, str(exc))
    path = state().objects.path_of(doc["path"])
    try:
        image = thumbnails.render_frame(path, int(frame) - 1, voi)
    except IndexError as exc:
        refuse(404, str(exc))
    except Exception as exc:  # no pixels, or a decoder's refusal
        refuse(406, f"instance {doc['SOPInstanceUID']} cannot be rendered: {exc}")
    return _image_response(thumbnails.encode(image, fmt), fmt)


def _wado_object(doc: dict, syntax: str) -> Response:
    chosen = plan(doc, [syntax])
    if chosen is None:
        refuse(406, f"instance {doc['SOPInstanceUID']} (stored as "
                    f"{doc.get('TransferSyntaxUID')}) cannot be sent in {syntax}")
    used, route = chosen
    objects, key = state().objects, doc["path"]
    body = (multipart.file_chunks(lambda: objects.open(key)) if route is None
            else _converted_chunks(objects, doc, route, used))
    response = Response(body, content_type="application/dicom", direct_passthrough=True)
    response.headers["Content-Disposition"] = f'attachment; filename="{doc["SOPInstanceUID"]}.dcm"'
    return response


# -- STOW-RS ----------------------------------------------------------------------------

#: Bytes read from the request body at a time (waitress holds the body in its own
#: buffer file; this bounds what one upload holds in the web process's memory).
UPLOAD_CHUNK = 1024 * 1024
#: The largest STOW-RS body (the Browser's other routes keep 64 KB).  waitress keeps
#: a body over 512 KB in a temporary file, not in memory, before the app reads it,
#: so this bounds disk, not memory.
MAX_UPLOAD_BYTES = 64 * 2**30
#: Answer status by (any stored, any failed): PS3.18 10.5.3.
STOW_STATUS = {(True, False): 200, (True, True): 202, (False, True): 409}


def _body_chunks() -> Iterator[bytes]:
    # The Browser's 64 KB cap is not for uploads (None would fall back to it).
    request.max_content_length = MAX_UPLOAD_BYTES
    stream = request.stream
    while chunk := stream.read(UPLOAD_CHUNK):
        yield chunk


def _stow_parts(study: str | None) -> list[Any]:
    kind, parameters = multipart.media_parameters(request.headers.get("Content-Type", ""))
    part_type = parameters.get("type", "application/dicom").lower()
    if kind != "multipart/related" or part_type != "application/dicom":
        refuse(415, 'STOW-RS takes multipart/related; type="application/dicom" only')
    store = state().stow
    outcomes: list[Any] = []
    try:
        for headers, body in multipart.split(_body_chunks(), parameters.get("boundary", "")):
            declared, _ = multipart.media_parameters(
                headers.get("content-type", "application/dicom"))
            if declared != "application/dicom":
                for _ in body:
                    pass
                outcomes.append(stow.Outcome("", "", stow.CANNOT_UNDERSTAND,
                                             f"a part of type {declared}"))
                continue
            outcomes.append(store.receive(body, study))
    except multipart.BadMultipart as exc:
        store.discard(outcomes)
        refuse(400, f"not a valid multipart/related body: {exc}")
    except BaseException:
        store.discard(outcomes)
        raise
    if not outcomes:
        refuse(400, "the multipart body holds no part")
    store.publish(outcomes)  # durable (fsync) before the answer, as C-STORE
    return outcomes


def stow_answer(outcomes: list[Any], study_url: str | None, url_of: Callable[[Any], str]
                ) -> dict[str, Any]:
    """The STOW-RS response data set (PS3.18 10.5.3.1) as DICOM JSON."""
    stored = [o for o in outcomes if o.status == 0]
    failed = [o for o in outcomes if o.status != 0]

    def reference(outcome: Any) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for tag, value in (("00081150", outcome.sop_class), ("00081155", outcome.sop_instance)):
            item[tag] = {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
        return item

    answer: dict[str, Any] = {}
    if study_url:
        answer["00081190"] = {"vr": "UR", "Value": [study_url]}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": [
            {**reference(o), "00081190": {"vr": "UR", "Value": [url_of(o)]}} for o in stored]}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [
            {**reference(o), "00081197": {"vr": "US", "Value": [o.status]}} for o in failed]}
    return answer


@blueprint.post("/studies")
@blueprint.post("/studies/<study>")
def store_instances(study: str | None = None) -> Response:
    if study is not None:
        _uid(study, "StudyInstanceUID")
    outcomes = _stow_parts(study)
    for outcome in outcomes:
        if outcome.status:
            log.warning("STOW-RS from %s: refused %s: 0x%04X %s", request.remote_addr or "?",
                        outcome.sop_instance or "?", outcome.status, outcome.reason)
    stored = [o for o in outcomes if o.status == 0]
    log.info("STOW-RS from %s: %d stored, %d refused, %d bytes", request.remote_addr or "?",
             len(stored), len(outcomes) - len(stored), sum(o.size for o in stored))
    base = origin() + url_for("dicomweb.search_studies")
    study_url = f"{base}/{study}" if study else None

    def url_of(outcome: Any) -> str:
        return (f"{base}/{outcome.study}/series/{outcome.series}"
                f"/instances/{outcome.sop_instance}")

    status = STOW_STATUS[(bool(stored), len(stored) < len(outcomes))]
    # Plain ASCII JSON, and no charset parameter: dicomweb-client compares the
    # Content-Type with "application/dicom+json" as a whole to read the answer.
    return Response(json.dumps(stow_answer(outcomes, study_url, url_of)), status=status,
                    content_type=DICOM_JSON)


# -- anything else under /dicom-web ------------------------------------------------------


@blueprint.get("/<path:rest>")
def unknown(rest: str) -> NoReturn:
    segments = rest.split("/")
    if any(s in ("", ".", "..") or "\\" in s or "%" in s or "\x00" in s for s in segments):
        refuse(400, "path traversal refused: a DICOMweb path holds UIDs only")
    refuse(404, f"no such DICOMweb resource: /dicom-web/{rest}")


__all__ = ["blueprint", "bulk_value", "frame_values", "instance_metadata", "plan"]
