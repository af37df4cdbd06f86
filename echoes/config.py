"""Configuration: the INI file of SPEC.md, parsed and validated in one place.

Every key is declared once in ``KEYS`` (name, parser, default), so the parser,
the defaults and the error messages cannot drift apart.  A bad file raises
:class:`ConfigError` whose message is one line naming the key and the
problem; the CLI prints it and exits non-zero, never a traceback.

Relative paths resolve against the installation's home: the folder that holds
``etc/`` (for ``/srv/echoes/etc/echoes.ini`` that is ``/srv/echoes``).
"""

from __future__ import annotations

import configparser
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The checkout or installation folder that holds ``etc/echoes.ini``.
PACKAGE_HOME = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem, worded for the admin: ``key: problem``."""


def _parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _parse_float(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def parse_bool(text: str) -> bool:
    """Read yes/no, true/false, on/off or 1/0, as configparser users expect."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"must be yes or no, got {text!r}") from None


def parse_ae_title(text: str) -> str:
    """An AE title per PS3.5: 1-16 characters, no backslash or control codes."""
    title = text.strip()
    if not title:
        raise ValueError("must not be empty")
    if len(title) > 16:
        raise ValueError(f"must be at most 16 characters, got {len(title)}")
    if "\\" in title or any(ord(c) < 32 or ord(c) > 126 for c in title):
        raise ValueError(f"must be printable ASCII without backslash, got {title!r}")
    return title


def _parse_host(text: str) -> str:
    host = text.strip()
    if not host:
        raise ValueError("must not be empty")
    return host


def _parse_bind(text: str) -> str:
    host = text.strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"must be an IP address such as 0.0.0.0, got {text!r}") from None
    return host


def _parse_text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}, got {text!r}")
    return level


_FACILITIES = ("user", "daemon", "local0", "local1", "local2", "local3", "local4", "local5",
               "local6", "local7")


def _parse_facility(text: str) -> str:
    facility = text.strip().lower()
    if facility and facility not in _FACILITIES:
        raise ValueError(f"must be empty (no syslog) or one of {', '.join(_FACILITIES)}, "
                         f"got {text!r}")
    return facility


def _parse_ae_list(text: str) -> tuple[str, ...]:
    """AE titles separated by commas; empty means anyone."""
    titles = []
    for part in text.split(","):
        if part.strip():
            try:
                titles.append(parse_ae_title(part))
            except ValueError as exc:
                raise ValueError(f"AE title {part.strip()!r} {exc}") from None
    return tuple(titles)


def _parse_networks(text: str) -> tuple[str, ...]:
    """Addresses or networks (10.0.0.0/8, 192.168.1.20) separated by commas."""
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"not an address or network: {part.strip()!r}") from None
    return tuple(networks)


def _parse_user(text: str) -> str:
    """A login name: 1-64 printable characters, no spaces."""
    user = text.strip()
    if not 1 <= len(user) <= 64 or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError(f"must be 1-64 printable characters without spaces, got {text!r}")
    return user


def _parse_optional(text: str) -> str:
    return text.strip()


#: The URL schemes libpq (psycopg) reads as PostgreSQL.
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def _parse_database_url(text: str) -> str:
    """Empty (the embedded index and job files) or a PostgreSQL URL."""
    url = text.strip()
    if url and not url.startswith(DATABASE_SCHEMES):
        raise ValueError("must be empty (the embedded index) or a URL such as "
                         "postgresql://user:password@host:5432/echoes")
    return url


#: Modality defined terms (PS3.3 C.7.3.1.1.1, current and retired), what
#: ``forward_modalities`` may name: a typo there would silently forward nothing.
MODALITIES = frozenset("""
    ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DOC DG DX ECG EEG EMG EOG EPS ES FID
    GM HC HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF
    OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD
    RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())


def _parse_modalities(text: str) -> tuple[str, ...]:
    """Modality defined terms separated by spaces (or commas); empty means every modality."""
    names = tuple(part.upper() for part in text.replace(",", " ").split())
    unknown = [name for name in names if name not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r} (DICOM defined terms such as CT, "
                         "MR, US, CR, DX)")
    return tuple(dict.fromkeys(names))


def _parse_ae_words(text: str) -> tuple[str, ...]:
    """AE titles separated by spaces (or commas); empty means any calling AE."""
    titles = []
    for part in text.replace(",", " ").split():
        try:
            titles.append(parse_ae_title(part))
        except ValueError as exc:
            raise ValueError(f"AE title {part!r} {exc}") from None
    return tuple(dict.fromkeys(titles))


FORWARD_WHEN = ("instance", "study")


def _parse_forward_when(text: str) -> str:
    value = text.strip().lower()
    if value not in FORWARD_WHEN:
        raise ValueError(f"must be instance or study, got {text!r}")
    return value


def _parse_node_name(text: str) -> str:
    """A node's name in logs and jobs: printable, no spaces (empty: the host name)."""
    name = text.strip()
    if len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"must be at most 64 printable characters without spaces, got {text!r}")
    return name


def _parse_origin(text: str) -> str:
    """Empty (no CORS) or one web origin, ``scheme://host[:port]`` as a browser sends it
    in its Origin header (no path, no trailing slash: the header is compared as is)."""
    origin = text.strip()
    if not origin:
        return ""
    scheme, sep, rest = origin.partition("://")
    if (scheme not in ("http", "https") or not sep or not rest or "/" in rest
            or any(c.isspace() or not c.isprintable() or c in ",*" for c in rest)):
        raise ValueError("must be empty (no CORS) or one origin such as "
                         f"https://viewer.example.org:3000 (no path), got {text!r}")
    return origin


_port = _parse_int(1, 65535)

#: key -> (parser, default as written in the file, is a path).  ``None`` as a
#: default marks a required key.
KEYS: dict[str, tuple[Callable[[str], Any], str | None, bool]] = {
    "ae_title": (parse_ae_title, "ECHOES", False),
    "bind": (_parse_bind, "0.0.0.0", False),
    "store_port": (_port, "4000", False),
    "mwl_port": (_port, "4001", False),
    "store_workers": (_parse_int(1, 64), "2", False),
    "spool_dir": (_parse_text, "spool", True),
    "archive_dir": (_parse_text, "var/archive", True),
    "index_path": (_parse_text, "var/index.json", True),
    "worklist_dir": (_parse_text, "var/worklist", True),
    "log_file": (_parse_text, "var/log/echoes.log", True),
    "pid_file": (_parse_text, "var/run/echoes.pid", True),
    "log_level": (_parse_log_level, "INFO", False),
    "syslog_facility": (_parse_facility, "", False),
    "disk_warning_mb": (_parse_int(0, 10**9), "2000", False),
    "min_free_mb": (_parse_int(0, 10**9), "500", False),
    "retry_interval": (_parse_int(1, 86400), "30", False),
    "max_attempts": (_parse_int(1, 100000), "20", False),
    "keep_done_hours": (_parse_float(0, 8760), "24", False),
    "queue_alarm_minutes": (_parse_int(1, 10**6), "60", False),
    "acse_timeout": (_parse_float(1, 3600), "30", False),
    "dimse_timeout": (_parse_float(1, 3600), "60", False),
    "network_timeout": (_parse_float(1, 3600), "60", False),
    # Below 3 s a child busy for a moment (a start, a full disk's retry) would
    # be killed for being slow, not for being hung.
    "heartbeat_timeout": (_parse_float(3, 3600), "60", False),
    "max_associations": (_parse_int(1, 1000), "32", False),
    "allowed_calling_aes": (_parse_ae_list, "", False),
    "store_allowed_calling_aes": (_parse_ae_list, "", False),
    "mwl_allowed_calling_aes": (_parse_ae_list, "", False),
    "qr_allowed_calling_aes": (_parse_ae_list, "", False),
    "allowed_networks": (_parse_networks, "", False),
    "require_called_ae": (parse_bool, "no", False),
    "tls_certificate": (_parse_optional, "", True),
    "tls_private_key": (_parse_optional, "", True),
    "tls_ca_certificates": (_parse_optional, "", True),
    "http_bind": (_parse_bind, "127.0.0.1", False),
    "http_port": (_port, "8080", False),
    "http_user": (_parse_user, "admin", False),
    "http_password_hash": (_parse_optional, "", False),
    "http_session_minutes": (_parse_int(1, 7 * 24 * 60), "60", False),
    "dicomweb_cors_origin": (_parse_origin, "", False),
    "database_url": (_parse_database_url, "", False),
    "node_name": (_parse_node_name, "", False),
    # Retention (issue 20): 0 is no limit.
    "retention_days": (_parse_float(0, 10**6), "0", False),
    "max_archive_gb": (_parse_float(0, 10**9), "0", False),
    # -- the modality workflow, issue 20 part 1 (MPPS, Storage Commitment) --
    "mpps_dir": (_parse_text, "var/mpps", True),
    "worklist_hide_performed": (parse_bool, "yes", False),
    "commitment_dir": (_parse_text, "var/commitments", True),
}

#: Keys read once when the server starts (ports bound, worker processes
#: started, folders opened): a change takes effect only after a restart, and
#: the supervisor names it on SIGHUP.  Every other key applies on SIGHUP (and,
#: in the processes that poll the file, when it changes) to what starts after
#: it: new associations on the DICOM ports (access rules, timeouts, TLS), the
#: sender's next association, the Browser's next request, the log.
RESTART_KEYS = ("bind", "store_port", "mwl_port", "store_workers", "spool_dir", "archive_dir",
                "index_path", "worklist_dir", "pid_file", "http_bind", "http_port",
                "database_url", "node_name", "mpps_dir", "commitment_dir")

#: Keys whose values may hold a password: never written to a log.
SECRET_KEYS = frozenset({"database_url"})

AE_KEYS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "host": (_parse_host, None),
    "port": (_port, None),
    "forward": (parse_bool, "no"),
    "tls": (parse_bool, "no"),
    # Routing rules (issue 20): see echoes.queue.routing.
    "forward_modalities": (_parse_modalities, ""),
    "forward_calling_aes": (_parse_ae_words, ""),
    "forward_when": (_parse_forward_when, "instance"),
    "stable_study_seconds": (_parse_int(1, 30 * 86400), "60"),
}


@dataclass(frozen=True)
class RemoteAE:
    """One ``[ae:TITLE]`` section: where a destination lives."""

    title: str
    host: str
    port: int
    forward: bool
    tls: bool = False
    #: Routing rules (empty: every modality, every calling AE; see echoes.queue.routing).
    forward_modalities: tuple[str, ...] = ()
    forward_calling_aes: tuple[str, ...] = ()
    forward_when: str = "instance"
    stable_study_seconds: int = 60


@dataclass(frozen=True)
class Config:
    """The validated configuration; paths are absolute."""

    path: Path
    home: Path
    ae_title: str
    bind: str
    store_port: int
    mwl_port: int
    store_workers: int
    spool_dir: Path
    archive_dir: Path
    index_path: Path
    worklist_dir: Path
    log_file: Path
    pid_file: Path
    log_level: str
    syslog_facility: str
    disk_warning_mb: int
    min_free_mb: int
    retry_interval: int
    max_attempts: int
    keep_done_hours: float
    queue_alarm_minutes: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    heartbeat_timeout: float
    max_associations: int
    allowed_calling_aes: tuple[str, ...]
    store_allowed_calling_aes: tuple[str, ...]
    mwl_allowed_calling_aes: tuple[str, ...]
    #: Who may query and retrieve on the store port (empty: whoever the port lets in).
    qr_allowed_calling_aes: tuple[str, ...]
    allowed_networks: tuple[str, ...]
    require_called_ae: bool
    tls_certificate: Path | None
    tls_private_key: Path | None
    tls_ca_certificates: Path | None
    http_bind: str
    http_port: int
    http_user: str
    http_password_hash: str
    http_session_minutes: int
    #: The one web origin (another host's viewer) allowed to call /dicom-web; empty: none.
    dicomweb_cors_origin: str
    #: Empty: the embedded index and job files; else the PostgreSQL that holds both.
    database_url: str
    #: This node's name in logs and jobs (the host name unless set).
    node_name: str
    #: MPPS instances as DICOM JSON, one file each, for the RIS.
    mpps_dir: Path
    #: Whether a worklist item a COMPLETED/DISCONTINUED MPPS performed is still offered.
    worklist_hide_performed: bool
    #: Storage Commitment requests not yet reported (survive a restart).
    commitment_dir: Path
    #: Retention (0: no limit): delete studies last received this many days ago,
    #: and the oldest-arrived ones while the archive holds more than this.
    retention_days: float = 0.0
    max_archive_gb: float = 0.0
    remote_aes: dict[str, RemoteAE] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """Whether TLS is configured (inbound ports speak only TLS then)."""
        return self.tls_certificate is not None

    def calling_aes_for(self, role: str) -> tuple[str, ...]:
        """Calling AE titles allowed on the port of ``role`` (empty: anyone)."""
        per_port = getattr(self, f"{role}_allowed_calling_aes", ())
        return per_port or self.allowed_calling_aes

    @property
    def directories(self) -> list[Path]:
        """Every folder echoes writes into, for ``echoes start`` to create."""
        return [
            self.spool_dir,
            self.archive_dir,
            self.index_path.parent,
            self.worklist_dir,
            self.mpps_dir,
            self.commitment_dir,
            self.log_file.parent,
            self.pid_file.parent,
        ]


def changed_keys(old: Config, new: Config) -> list[str]:
    """The ``[echoes]`` keys whose values differ, in file order; ``[ae:*]`` when
    the remote AEs differ."""
    names = [name for name in KEYS if getattr(old, name) != getattr(new, name)]
    if old.remote_aes != new.remote_aes:
        names.append("[ae:*]")
    return names


def restart_needed(running: Config, fresh: Config) -> list[str]:
    """The RESTART_KEYS that differ between the running server's configuration
    and ``fresh``, as ``key (old -> new)`` for the log."""
    return [f"{name} (changed)" if name in SECRET_KEYS
            else f"{name} ({getattr(running, name)} -> {getattr(fresh, name)})"
            for name in RESTART_KEYS if getattr(running, name) != getattr(fresh, name)]


def default_config_path() -> Path:
    """``$ECHOES_CONFIG``, else ``etc/echoes.ini`` under the installation."""
    env = os.environ.get("ECHOES_CONFIG")
    if env:
        return Path(env)
    return PACKAGE_HOME / "etc" / "echoes.ini"


def home_for(config_path: Path) -> Path:
    """The folder relative paths resolve against: the one holding ``etc/``."""
    folder = config_path.resolve().parent
    return folder.parent if folder.name == "etc" else folder


def new_parser() -> configparser.ConfigParser:
    """The INI parser echoes reads its file with (config_edit checks edits with it)."""
    return configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True)


def load(path: Path | str | None = None) -> Config:
    """Read and validate the INI file at ``path``; raise ConfigError."""
    config_path = Path(path) if path is not None else default_config_path()
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: configuration file not found")
    parser = new_parser()
    try:
        parser.read(config_path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"{config_path}: cannot parse: {one_line}") from None
    return from_parser(parser, config_path)


def _read_section(section: configparser.SectionProxy, keys: dict, prefix: str) -> dict:
    unknown = sorted(set(section.keys()) - set(keys))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key")
    values = {}
    for name, spec in keys.items():
        parse, default = spec[0], spec[1]
        raw = section.get(name, default)
        if raw is None:
            raise ConfigError(f"{prefix}{name}: missing (required)")
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{prefix}{name}: {exc}") from None
    return values


def from_parser(parser: configparser.ConfigParser, config_path: Path) -> Config:
    """Validate a parsed INI; split from :func:`load` so tests need no file."""
    for name in parser.sections():
        if name != "echoes" and not name.startswith("ae:"):
            raise ConfigError(f"[{name}]: unknown section (expected [echoes] or [ae:TITLE])")
    if not parser.has_section("echoes"):
        parser.add_section("echoes")
    values = _read_section(parser["echoes"], KEYS, "")
    home = home_for(config_path)
    for name, (_parse, _default, is_path) in KEYS.items():
        if is_path:
            values[name] = (home / values[name]).resolve() if values[name] else None
    tls = [values[k] for k in ("tls_certificate", "tls_private_key", "tls_ca_certificates")]
    if any(tls) and not all(tls):
        raise ConfigError("tls_certificate, tls_private_key, tls_ca_certificates: "
                          "set all three for TLS, or none")
    for name, path in zip(("tls_certificate", "tls_private_key", "tls_ca_certificates"), tls,
                          strict=True):
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}: no such file: {path}")

    remote_aes: dict[str, RemoteAE] = {}
    for name in parser.sections():
        if not name.startswith("ae:"):
            continue
        try:
            title = parse_ae_title(name[3:])
        except ValueError as exc:
            raise ConfigError(f"[{name}]: AE title {exc}") from None
        if title in remote_aes:
            raise ConfigError(f"[{name}]: AE title defined twice")
        ae_values = _read_section(parser[name], AE_KEYS, f"[{name}] ")
        remote_aes[title] = RemoteAE(title=title, **ae_values)

    if not values["node_name"]:
        import socket

        values["node_name"] = socket.gethostname()
    if values["store_port"] == values["mwl_port"]:
        raise ConfigError("mwl_port: must differ from store_port")
    if values["http_port"] in (values["store_port"], values["mwl_port"]):
        raise ConfigError("http_port: must differ from store_port and mwl_port")
    return Config(path=config_path.resolve(), home=home, remote_aes=remote_aes, **values)


class Reloader:
    """The current configuration of a long-running process.

    Re-reads the file when its mtime or size changes (checked at most once
    per ``interval`` seconds) or when ``request()`` was called (SIGHUP).  A
    file that became invalid is logged and the last good configuration kept,
    so a typo made while the server runs never stops it.
    """

    def __init__(self, config: Config, interval: float = 2.0) -> None:
        self.config = config
        self.interval = interval
        # Unknown, not "the file now": the file may have changed between the
        # load that made ``config`` and this moment (``echoes passwd`` right
        # after start: the web process then never saw the password), so the
        # first check reads it again.
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._requested = False

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.config.path)
        except OSError:
            return None
        # The inode too: an atomic replace (config_edit) of the same size
        # within one tick of the file system's clock still shows.
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def request(self) -> None:
        """Re-read at the next ``current()`` (safe from a signal handler)."""
        self._requested = True

    def current(self) -> Config:
        """The configuration to use now."""
        import logging
        import time

        now = time.monotonic()
        if not self._requested and now - self._checked < self.interval:
            return self.config
        self._checked = now
        signature = self._signature()
        if not self._requested and signature == self._stamp:
            return self.config
        self._requested = False
        self._stamp = signature
        try:
            fresh = load(self.config.path)
        except ConfigError as exc:
            logging.getLogger("echoes.config").error(
                "config not reloaded, keeping the previous one: %s", exc)
            return self.config
        if fresh != self.config:
            logging.getLogger("echoes.config").info(
                "config reloaded: forwarding to %s",
                ", ".join(t for t, ae in fresh.remote_aes.items() if ae.forward) or "nobody")
        self.config = fresh
        return fresh
