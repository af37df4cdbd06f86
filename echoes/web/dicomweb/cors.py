"""CORS for ``/dicom-web``: off unless ``dicomweb_cors_origin`` names one viewer's origin.

A viewer served from another origin (OHIF on its own host, a research
notebook's page) may call ``/dicom-web`` only if echoes says so: the browser
first sends a preflight ``OPTIONS`` (without credentials, so it is answered
before the login guard), then the real request, whose answer it shows to the
page only if it carries ``Access-Control-Allow-Origin`` for that page's
origin.  echoes names exactly one origin (never ``*``) and never allows
credentials: the viewer authenticates with its own ``Authorization: Basic``
header, and the Browser's session cookie is never usable from another origin.
Every other route of the Browser stays same-origin only.

The pure part (:func:`preflight`, :func:`response_headers`) decides; :func:`install`
hooks it into the app.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request

from echoes.web.state import state

log = logging.getLogger("echoes.web")

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
#: What a DICOMweb client sets: Basic credentials, the media type it accepts
#: or sends (STOW-RS), and the cache control some clients add.
ALLOW_HEADERS = "Authorization, Accept, Content-Type, Cache-Control"
ALLOWED_HEADER_NAMES = frozenset(h.strip().lower() for h in ALLOW_HEADERS.split(","))
#: Headers a cross-origin page may read besides the simple ones.
EXPOSE_HEADERS = "Content-Length, Content-Location, Location, Warning, WWW-Authenticate"
#: How long a browser may keep a preflight's answer (seconds).
MAX_AGE = "600"


def preflight(allowed: str, origin: str | None, method: str | None,
              headers: str | None) -> tuple[int, dict[str, str], str]:
    """The answer to a preflight: (status, headers, reason refused or "")."""
    if not allowed:
        return 403, {}, "CORS is off (dicomweb_cors_origin is empty)"
    if origin != allowed:
        return 403, {"Vary": "Origin"}, f"origin {origin!r} is not dicomweb_cors_origin"
    if (method or "").upper() not in {m.strip() for m in ALLOW_METHODS.split(",")}:
        return 403, {"Vary": "Origin"}, f"method {method!r} is not allowed"
    asked = {h.strip().lower() for h in (headers or "").split(",") if h.strip()}
    unknown = sorted(asked - ALLOWED_HEADER_NAMES)
    if unknown:
        return 403, {"Vary": "Origin"}, f"request headers not allowed: {', '.join(unknown)}"
    return 204, {"Access-Control-Allow-Origin": allowed,
                 "Access-Control-Allow-Methods": ALLOW_METHODS,
                 "Access-Control-Allow-Headers": ALLOW_HEADERS,
                 "Access-Control-Max-Age": MAX_AGE,
                 "Vary": "Origin"}, ""


def response_headers(allowed: str, origin: str | None) -> dict[str, str]:
    """Headers added to a (non-preflight) DICOMweb answer for a request from ``origin``."""
    if not allowed:
        return {}
    if origin != allowed:
        return {"Vary": "Origin"}
    return {"Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": EXPOSE_HEADERS, "Vary": "Origin"}


def _is_dicomweb() -> bool:
    from echoes.web.auth import is_dicomweb

    return is_dicomweb()


def _answer_preflight() -> Response | None:
    if request.method != "OPTIONS" or not _is_dicomweb() or "Origin" not in request.headers \
            or "Access-Control-Request-Method" not in request.headers:
        return None
    status, headers, refused = preflight(
        state().config.dicomweb_cors_origin, request.headers.get("Origin"),
        request.headers.get("Access-Control-Request-Method"),
        request.headers.get("Access-Control-Request-Headers"))
    if refused:
        log.warning("DICOMweb: 403 for the CORS preflight of %s %s from %s (origin %s): %s",
                    request.headers.get("Access-Control-Request-Method"), request.path[:300],
                    request.remote_addr or "?", request.headers.get("Origin", "")[:200], refused)
    response = Response(f"CORS: {refused}\n" if refused else b"", status,
                        mimetype="text/plain")
    response.headers.update(headers)
    return response


def _add_headers(response: Response) -> Response:
    if _is_dicomweb() and "Access-Control-Allow-Origin" not in response.headers:
        response.headers.update(response_headers(state().config.dicomweb_cors_origin,
                                                 request.headers.get("Origin")))
    return response


def install(app: Flask) -> None:
    """The preflight answer runs before the login guard (call before auth.install)."""
    app.before_request(_answer_preflight)
    app.after_request(_add_headers)
