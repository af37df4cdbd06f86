"""Logging for every echoes process: one format, one file, level from config.

The file handler is a WatchedFileHandler, so logrotate can move the file
away and each process follows to the new one.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from echoes.config import Config

SYSLOG_SOCKET = "/dev/log"
FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"


class _WatchdogStopRace(logging.Filter):
    """Drop watchdog's own ERROR when its inotify thread is stopped mid-read.

    watchdog logs "queue_events() called when the thread is inactive" on
    every clean observer stop (a race inside watchdog, harmless); an admin
    must not see an ERROR on each restart.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


_to_stderr = True


def to_stderr() -> bool:
    """Whether this process logs to stderr too (as set by the last ``setup``)."""
    return _to_stderr


def setup(config: Config | None, role: str, to_stderr: bool = True) -> None:
    """Configure the root logger for the process playing ``role``.

    Called again on SIGHUP: handlers are closed and opened anew (the log
    file is reopened) with the level and syslog setting of ``config``.
    """
    global _to_stderr
    _to_stderr = to_stderr
    import multiprocessing

    multiprocessing.current_process().name = role
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    if config is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.WatchedFileHandler(config.log_file, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    syslog_missing = False
    if config is not None and config.syslog_facility:
        if os.path.exists(SYSLOG_SOCKET):
            syslog = logging.handlers.SysLogHandler(
                address=SYSLOG_SOCKET, facility=config.syslog_facility)
            syslog.setFormatter(logging.Formatter(
                f"echoes[%(process)d]: {role}: %(levelname)s %(name)s: %(message)s"))
            root.addHandler(syslog)
        else:
            syslog_missing = True
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    root.setLevel(config.log_level if config is not None else "INFO")
    if syslog_missing:
        logging.getLogger("echoes.logs").warning(
            "syslog_facility is set but %s does not exist: logging to the file only",
            SYSLOG_SOCKET)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    inotify_log = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _WatchdogStopRace) for f in inotify_log.filters):
        inotify_log.addFilter(_WatchdogStopRace())


def reload(config: Config, role: str) -> Config:
    """On SIGHUP (the worker base's, echoes.processes.worker): re-read the config
    file for the log settings and reopen the log.

    Returns the fresh configuration (or ``config`` when the file became
    invalid, which is logged).  Call it from the main loop, not from inside a
    signal handler: logging takes locks.
    """
    from echoes.config import ConfigError, load

    try:
        fresh = load(config.path)
    except ConfigError as exc:
        logging.getLogger("echoes.logs").error("SIGHUP: config not re-read: %s", exc)
        fresh = config
    setup(fresh, role, to_stderr=_to_stderr)
    return fresh
