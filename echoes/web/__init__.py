"""The echoes Browser: a Flask app served by waitress in the supervisor's ``web`` process.

Why Flask and waitress: Flask is small and well kept, and waitress is a
production WSGI server made of threads in one process, with no forking of
its own, so it fits under the supervisor like the other roles (the
supervisor binds ``http_bind:http_port`` once and passes the socket; a
restarted web process serves on the same socket).  Nothing is served on an
address other than ``http_bind``: the ``web`` role
(:mod:`echoes.processes.web`) refuses a socket bound elsewhere.

Layout: :mod:`auth` (login, sessions, CSRF, security headers), :mod:`api`
(JSON under ``/api/``), :mod:`pages` (HTML), :mod:`dicomweb` (DICOMweb under
``/dicom-web``), :mod:`catalog` (the pure read models), :mod:`state` (what
the process keeps between requests).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from echoes.config import Config
from echoes.web import api, auth, pages
from echoes.web.dicomweb import cors
from echoes.web.dicomweb import routes as dicomweb
from echoes.web.state import WebState

log = logging.getLogger("echoes.web")

#: Largest request body (JSON bodies here are a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: waitress's request threads.  A streaming answer (WADO-RS of a study, a
#: gigabyte object) holds one for as long as its client reads, so with 4 a
#: few slow viewers or downloads left open took every thread and the Browser
#: stopped answering (tests/e2e/test_dicomweb_busy.py).  An idle thread costs
#: a stack and nothing else.
THREADS = 16
#: How much of one answer waitress keeps waiting for the socket before the
#: answer's iterator waits (its default: 16 MiB): with THREADS streams at once
#: at most THREADS x 8 MiB in memory, plus one 256 KiB chunk each.
OUTBUF_HIGH_WATERMARK = 8 * 1024 * 1024
#: ... and past this it would move the pending bytes into a new temporary file
#: (its default: 1 MiB), which for a WADO-RS study of 500 MB meant creating a
#: file, writing and reading back every few MiB (py-spy: 24% of the web
#: process's samples in TempfileBasedBuffer); above the watermark, so a
#: stream never spills.
OUTBUF_OVERFLOW = 10 * 1024 * 1024
#: waitress's cap on a request body (its default is 1 GiB): STOW-RS's
#: (:data:`echoes.web.dicomweb.routes.MAX_UPLOAD_BYTES`); every other route
#: keeps Flask's MAX_BODY_BYTES.
MAX_UPLOAD_BYTES = dicomweb.MAX_UPLOAD_BYTES

#: Messages for errors Flask raises itself, worded for a script's author.
_API_MESSAGES = {
    404: "no such API endpoint: {method} {path}",
    405: "method {method} is not allowed on {path}",
    413: f"request body too large (at most {MAX_BODY_BYTES // 1024} KB)",
}


def create_app(config: Config, reload_interval: float = 1.0) -> Flask:
    """The Browser app for ``config`` (re-read from its file while running)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["echoes"] = WebState(config, reload_interval)
    cors.install(app)  # its preflight answer comes before auth's login guard
    auth.install(app, config)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(dicomweb.blueprint)
    pages.install_filters(app)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(500, _internal_error)
    app.register_error_handler(ConnectionError, _unavailable)
    return app


def _http_error(exc: HTTPException) -> Any:
    if not auth.is_machine():
        return pages.html_error(exc)
    code = exc.code or 500
    if isinstance(exc, api.ApiError):
        message = exc.description or "refused"
    else:
        template = _API_MESSAGES.get(code)
        message = (template.format(method=request.method, path=request.path) if template
                   else f"{exc.name}: {exc.description}")
    response = auth.error(code, message)
    allowed = exc.get_response().headers.get("Allow")
    if allowed:
        response.headers["Allow"] = allowed
    return response


def _unavailable(exc: ConnectionError) -> Any:
    """The index or queue's database cannot be reached (echoes.database.DatabaseError, a
    ConnectionError): 503 and one log line, not a traceback per request."""
    log.error("%s %s: %s", request.method, request.path, exc)
    message = f"service unavailable: {exc}"
    if auth.is_api():
        return auth.error(503, message)
    return Response(message, 503, mimetype="text/plain")


def _internal_error(exc: Exception) -> Any:
    log.error("internal error on %s %s", request.method, request.path,
              exc_info=getattr(exc, "original_exception", exc))
    if auth.is_machine():
        return auth.error(500, "internal error (see the echoes log)")
    return Response("Internal error (see the echoes log).", 500, mimetype="text/plain")


def listen(config: Config) -> socket.socket:
    """A socket listening on ``http_bind:http_port`` (what the supervisor passes on)."""
    family = socket.AF_INET6 if ":" in config.http_bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.http_bind, config.http_port))
    sock.listen(128)
    return sock


def make_server(app: Flask, sock: socket.socket) -> Any:
    """A waitress server on an already bound, listening socket (not started)."""
    import waitress

    return waitress.create_server(app, sockets=[sock], threads=THREADS, ident="echoes",
                                  channel_timeout=60, connection_limit=100,
                                  max_request_body_size=MAX_UPLOAD_BYTES,
                                  outbuf_overflow=OUTBUF_OVERFLOW,
                                  outbuf_high_watermark=OUTBUF_HIGH_WATERMARK,
                                  clear_untrusted_proxy_headers=True)


def stop_server(server: Any) -> None:
    """Stop a server of :func:`make_server` that runs in another thread (tests, bench).

    Its sockets are closed by its own loop thread (through waitress's
    trigger), never under a ``select`` that is still watching them.
    """
    from waitress import wasyncore

    server.task_dispatcher.shutdown()
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
