"""Who may use the Browser: login, sessions, CSRF, and the checks on every request.

Why this shape.  There is one user (``http_user``) with a password hash in the
configuration (``http_password_hash``, set by ``echoes passwd``); an empty
hash means nobody can log in.  The session is Flask's signed cookie and
holds the user, the time of the last request, a CSRF token and a short
fingerprint of the password hash: idle sessions expire after
``http_session_minutes``, and changing the password logs everybody out
without any server-side session store.  The signing key lives in a file
beside the index (``web-secret``, mode 0600), so sessions survive a restart
of the web process.

Every page and API call needs a login: pages redirect to ``/login``, the API
answers 401 JSON.  Scripts may use HTTP Basic auth on ``/api/`` instead of
the cookie; no ``WWW-Authenticate`` challenge is sent there, so browsers never
remember a password on their own.  DICOMweb (``/dicom-web``) takes HTTP
Basic on every call, or the session cookie for GET, and its 401 carries the
``Basic`` challenge that DICOMweb clients and viewers expect.  The pages'
automatic refreshes (queue, push progress) say so in a header and do not
extend the session.  A POST, PUT or DELETE made with the session cookie must
carry the session's CSRF
token (``X-CSRF-Token`` header from JavaScript, ``csrf_token`` field in HTML
forms), which a page of another site cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash

from echoes.config import Config
from echoes.web.state import state

log = logging.getLogger("echoes.web")

SECRET_FILE = "web-secret"
USER, SEEN, CSRF, PASSWORD = "user", "seen", "csrf", "pw"
UNSAFE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: Sent by the pages' automatic refreshes: they do not count as activity, so a
#: queue page left open on a screen does not keep its session alive for ever.
POLL_HEADER = "X-Echoes-Poll"
NO_PASSWORD = "No password is set: run `echoes passwd`"
WRONG = "Wrong user name or password"
#: The DICOMweb base URL (:mod:`echoes.web.dicomweb`): HTTP Basic on every call,
#: or the session cookie for reading only (a viewer page of the Browser).
DICOMWEB = "/dicom-web"
SESSION_DICOMWEB_METHODS = frozenset({"GET", "HEAD"})
#: Endpoints reachable without a login (the login itself, and the CSS/JS it uses).
PUBLIC_ENDPOINTS = frozenset({"static", "auth.login_page", "auth.login_form", "auth.api_login"})
#: Failed logins from one address before it must wait.
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 300.0

blueprint = Blueprint("auth", __name__)


# -- pure pieces -----------------------------------------------------------------------


def password_fingerprint(password_hash: str) -> str:
    """A short digest of the hash: a session made under another password is void."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def safe_next(target: str | None) -> str:
    """Where to go after login: a local path only (no open redirect), else ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def session_problem(values: dict, config: Config, now: float) -> str | None:
    """Why the session ``values`` does not log anybody in now (None: it does)."""
    user = values.get(USER)
    if not user:
        return "login required"
    if not config.http_password_hash:
        return NO_PASSWORD
    if not hmac.compare_digest(str(user), config.http_user) \
            or values.get(PASSWORD) != password_fingerprint(config.http_password_hash):
        return "the password or user was changed: log in again"
    seen = values.get(SEEN)
    if not isinstance(seen, int | float) or now - seen > config.http_session_minutes * 60:
        return "session expired: log in again"
    return None


def credentials_ok(config: Config, user: str, password: str) -> bool:
    """The configured user and a password matching its hash (never with no hash)."""
    if not config.http_password_hash:
        return False
    user_ok = hmac.compare_digest(user.encode(), config.http_user.encode())
    try:
        password_ok = check_password_hash(config.http_password_hash, password)
    except (ValueError, TypeError):  # a hash echoes passwd did not write
        log.error("http_password_hash is not a password hash werkzeug understands")
        return False
    return user_ok and password_ok


def load_secret(folder: Path) -> bytes:
    """The session signing key, made once: ``web-secret`` beside the index, mode 0600.

    Written under a temporary name and linked into place, so two processes
    starting at once agree on one key and nobody reads half a file.
    """
    path = folder / SECRET_FILE
    try:
        text = path.read_text().strip()
        if len(text) >= 32:
            return text.encode()
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SECRET_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: use its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


class Throttle:
    """Failed logins per remote address in a sliding window (guessing is slow)."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW_SECONDS) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str, now: float) -> bool:
        with self._lock:
            recent = [t for t in self._failures.get(address, []) if now - t < self.window]
            if recent:
                self._failures[address] = recent
            else:
                self._failures.pop(address, None)
            return len(recent) >= self.limit

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(address, []).append(now)
            if len(self._failures) > 10_000:  # a flood of addresses: forget the oldest
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


class BasicCache:
    """Basic-auth credentials already checked against the current hash.

    A password hash check costs ~0.1 s by design; a script calling the API
    with Basic auth would pay it on every call.  Kept: keyed HMACs of
    (user, password, hash), never the password itself.
    """

    def __init__(self, key: bytes, limit: int = 64) -> None:
        self.key, self.limit = key, limit
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, config: Config, user: str, password: str) -> bytes:
        message = "\0".join((user, password, config.http_password_hash)).encode()
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def check(self, config: Config, user: str, password: str) -> bool:
        digest = self._digest(config, user, password)
        with self._lock:
            if digest in self._seen:
                return True
        if not credentials_ok(config, user, password):
            return False
        with self._lock:
            self._seen[digest] = None
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
        return True


# -- the request guard -------------------------------------------------------------------


def is_api() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def is_dicomweb() -> bool:
    return request.path == DICOMWEB or request.path.startswith(DICOMWEB + "/")


def is_machine() -> bool:
    """A request of a program (the JSON API, DICOMweb): errors as JSON, never a page."""
    return is_api() or is_dicomweb()


def error(status: int, message: str) -> Response:
    """The API's error body: one clear sentence.

    A 401 of DICOMweb carries a ``WWW-Authenticate: Basic`` challenge (the
    SPEC's rule): viewers and DICOMweb clients expect it to send credentials.
    The JSON API sends none, so that browsers never keep a password.
    """
    response = jsonify(error=message)
    response.status_code = status
    if status == 401 and is_dicomweb():
        response.headers["WWW-Authenticate"] = 'Basic realm="echoes", charset="UTF-8"'
    return response


def _clock() -> float:
    return time.time()


def _login_redirect() -> Response:
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login_page", next=safe_next(target)))


def _csrf_ok() -> bool:
    expected = session.get(CSRF)
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest(str(expected), given)


def guard() -> Response | None:
    """Before every request: let it through, or answer 401/403/redirect."""
    g.user = None
    g.via = None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    config = state().config
    if is_machine() and request.authorization is not None:
        auth = request.authorization
        if auth.type != "basic" or auth.username is None or auth.password is None:
            return error(401, "only HTTP Basic authorization is accepted")
        if not config.http_password_hash:
            return error(401, NO_PASSWORD)
        throttle: Throttle = _extension("throttle")
        now = _clock()
        address = request.remote_addr or "?"
        if throttle.blocked(address, now):
            return error(429, "too many failed logins from this address: wait a few minutes")
        if not _extension("basic").check(config, auth.username, auth.password):
            throttle.failed(address, now)
            log.warning("failed login (basic auth) for user %r from %s",
                        auth.username[:64], address)
            return error(401, WRONG)
        g.user, g.via = config.http_user, "basic"
        return None
    problem = session_problem(dict(session), config, _clock())
    if problem is not None:
        if session.get(USER):
            session.clear()  # expired or void: the next login starts clean
        if is_machine():
            return error(401, problem)
        return _login_redirect()
    if is_dicomweb() and request.method not in SESSION_DICOMWEB_METHODS:
        return error(401, "DICOMweb takes the session for GET only: send HTTP Basic credentials")
    if request.method in UNSAFE_METHODS and not _csrf_ok():
        return error(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
    if request.headers.get(POLL_HEADER) != "1":
        session[SEEN] = _clock()  # a person did something: the idle clock starts again
    g.user, g.via = session[USER], "session"
    return None


def _extension(name: str):
    from flask import current_app

    return current_app.extensions[f"echoes.{name}"]


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; script-src 'self'; "
                                "style-src 'self'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action 'self'"),
    "Cross-Origin-Opener-Policy": "same-origin",
}


def secure_headers(response: Response) -> Response:
    """After every request: the security headers, and no caching of patient data."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if "Cache-Control" not in response.headers and request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


# -- login and logout -------------------------------------------------------------------


def _start_session(config: Config) -> str:
    session.clear()  # no fixation: a fresh session, a fresh token
    token = secrets.token_urlsafe(32)
    session[USER] = config.http_user
    session[SEEN] = _clock()
    session[CSRF] = token
    session[PASSWORD] = password_fingerprint(config.http_password_hash)
    return token


def csrf_token() -> str:
    """The session's CSRF token, created for an anonymous session (the login form)."""
    token = session.get(CSRF)
    if not token:
        token = session[CSRF] = secrets.token_urlsafe(32)
    return token


def _attempt(config: Config, user: str, password: str) -> tuple[int, str] | None:
    """None when the login succeeds, else (status, message)."""
    if not config.http_password_hash:
        return 403, NO_PASSWORD
    throttle: Throttle = _extension("throttle")
    address = request.remote_addr or "?"
    now = _clock()
    if throttle.blocked(address, now):
        return 429, "too many failed logins from this address: wait a few minutes"
    if not credentials_ok(config, user, password):
        throttle.failed(address, now)
        log.warning("failed login for user %r from %s", user[:64], address)
        return 401, WRONG
    throttle.succeeded(address)
    log.info("login: %s from %s", config.http_user, address)
    return None


@blueprint.get("/login")
def login_page() -> str:
    config = state().config
    return render_template("login.html", message=NO_PASSWORD if not config.http_password_hash
                           else request.args.get("message", ""),
                           next=safe_next(request.args.get("next")), csrf_token=csrf_token(),
                           user=config.http_user)


@blueprint.post("/login")
def login_form() -> Response | tuple[str, int]:
    config = state().config
    target = safe_next(request.form.get("next"))
    if not _csrf_ok():
        return render_template("login.html", message="The login form had expired: try again.",
                               next=target, csrf_token=csrf_token(), user=config.http_user), 403
    problem = _attempt(config, request.form.get("user", ""), request.form.get("password", ""))
    if problem is not None:
        return render_template("login.html", message=problem[1], next=target,
                               csrf_token=csrf_token(), user=config.http_user), problem[0]
    _start_session(config)
    return redirect(target)


@blueprint.post("/logout")
def logout_form() -> Response:
    session.clear()
    return redirect(url_for("auth.login_page", message="Logged out."))


@blueprint.post("/api/login")
def api_login() -> Response:
    from echoes.web.api import json_body

    body = json_body()
    user, password = body.get("user"), body.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        return error(400, "give user and password as strings")
    config = state().config
    problem = _attempt(config, user, password)
    if problem is not None:
        return error(*problem)
    token = _start_session(config)
    return jsonify(csrf_token=token, user=config.http_user,
                   session_minutes=config.http_session_minutes)


@blueprint.post("/api/logout")
def api_logout() -> Response:
    session.clear()
    return jsonify(logged_out=True)


def install(app: Flask, config: Config) -> None:
    """Signing key, cookie settings, the guard and the headers, on ``app``."""
    secret = load_secret(config.index_path.parent)
    app.secret_key = secret
    app.config.update(
        SESSION_COOKIE_NAME="echoes_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.extensions["echoes.throttle"] = Throttle()
    app.extensions["echoes.basic"] = BasicCache(hashlib.sha256(secret).digest())
    app.before_request(guard)
    app.after_request(secure_headers)
    app.register_blueprint(blueprint)
    app.jinja_env.globals["csrf_token"] = csrf_token
