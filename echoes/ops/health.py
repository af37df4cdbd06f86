"""``echoes check``: what is wrong, how badly, in the Nagios plugin convention.

Each probe returns problems as (severity, message); the worst severity is
the exit code (0 OK, 1 WARNING, 2 CRITICAL), the first line a summary, then
one line per problem.  CRITICAL is what stops images or worklists flowing
(a process or port down, a disk under ``min_free_mb``, the database of
``database_url`` unreachable, another node of the archive silent for 30 s,
failed outbound jobs);
WARNING is what needs a look soon (the Browser down, another node stopped, disk under
``disk_warning_mb``, jobs waiting long, invalid worklist files, rejected
spool files).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass

from echoes.config import Config
from echoes.ops import daemon
from echoes.queue import jobs, open_job_store
from echoes.storage import spool
from echoes.worklist import files as worklist

OK, WARNING, CRITICAL = 0, 1, 2
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, for one line of output."""

    severity: int
    message: str


@dataclass(frozen=True)
class ProcessState:
    """One process echoes should be running: its role, pid, and whether it runs."""

    role: str
    pid: int | None
    running: bool


def process_table(config: Config) -> tuple[list[ProcessState], str | None]:
    """The supervisor and every process ``ROLES`` asks for, found or missing.

    The second item says why nothing could be looked at (echoes not running,
    supervisor not inspectable); the Browser's health page shows the table,
    ``processes`` turns it into problems.
    """
    from echoes.processes.supervisor import ROLES

    wanted = [(role, count(config)) for role, count in ROLES.items()]
    missing = [ProcessState(role, None, False) for role, count in wanted for _ in range(count)]
    pid = daemon.running_pid(config.pid_file)
    if pid is None:
        return ([ProcessState("supervisor", None, False)] + missing,
                f"echoes is not running (no lock on {config.pid_file})")
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.Error as exc:
        return ([ProcessState("supervisor", pid, True)] + missing,
                f"cannot inspect supervisor pid {pid}: {exc}")
    pids: dict[str, list[int]] = {}
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.setdefault(" ".join(child.cmdline()).strip(), []).append(child.pid)
        except psutil.Error:
            continue  # gone or a zombie: not running
    table = [ProcessState("supervisor", pid, True)]
    for role, count in wanted:
        found = sorted(pids.get(f"echoes: {role}", []))
        table += [ProcessState(role, child_pid, True) for child_pid in found]
        table += [ProcessState(role, None, False)] * max(0, count - len(found))
    return table, None


def processes(config: Config) -> list[Problem]:
    """The supervisor runs, and every role has its processes.

    A missing Browser (web) process is a WARNING: images and worklists still
    flow without it.
    """
    from echoes.processes.supervisor import OPTIONAL_ROLES, ROLES

    table, why_not = process_table(config)
    if why_not is not None:
        return [Problem(CRITICAL, why_not)]
    problems = []
    for role, count in ROLES.items():
        wanted = count(config)
        running = sum(1 for entry in table if entry.role == role and entry.running)
        if running < wanted:
            severity = WARNING if role in OPTIONAL_ROLES else CRITICAL
            problems.append(Problem(severity, f"{role}: {running} of {wanted} processes running"))
    return problems


def ports(config: Config) -> list[Problem]:
    """The store and worklist ports answer C-ECHO."""
    problems = []
    for name, port in (("store", config.store_port), ("worklist", config.mwl_port)):
        why = daemon.answers(config, port)
        if why:
            problems.append(Problem(CRITICAL, f"{name} port {port} does not answer C-ECHO: {why}"))
    return problems


def browser_port(config: Config) -> list[Problem]:
    """The Browser answers HTTP (a WARNING: images and worklists flow without it).

    When another program listens on ``http_port`` (a second echoes, anything),
    that is the problem to name: the supervisor waits for the port, and asking
    the stranger over HTTP would judge the wrong server (another echoes'
    Browser answers 200; a silent one only times out).
    """
    holder = foreign_listener(config, config.http_port)
    if holder:
        return [Problem(WARNING, f"Browser port {config.http_port} is taken by {holder}: the "
                                 "web process starts once it is free")]
    why = browser_answers(config)
    if why:
        return [Problem(WARNING, f"Browser port {config.http_port} does not answer: {why}")]
    return []


def foreign_listener(config: Config, port: int) -> str | None:
    """Who listens on ``port`` when no process of this echoes does, in words; else None.

    None too when that cannot be told (no server running, no access to the
    socket table): then the ordinary probes speak.
    """
    import psutil

    supervisor = daemon.running_pid(config.pid_file)
    if supervisor is None or supervisor <= 0:
        return None
    try:
        ours = {supervisor} | {child.pid for child in
                               psutil.Process(supervisor).children(recursive=True)}
        listening = [connection for connection in psutil.net_connections("tcp")
                     if connection.status == psutil.CONN_LISTEN and connection.laddr
                     and connection.laddr.port == port]
    except (psutil.Error, OSError):
        return None
    if not listening or any(connection.pid in ours for connection in listening):
        return None
    pid = next((connection.pid for connection in listening if connection.pid), None)
    if pid is None:
        return "another program (its owner is not visible to this user)"
    try:
        command = " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        command = ""
    return f"another program (pid {pid}{': ' + command[:60] if command else ''})"


def browser_answers(config: Config, timeout: float = 5.0) -> str | None:
    """None when the Browser's login page answers 200, else why not."""
    import http.client

    host = daemon.reachable_address(config.http_bind)
    connection = http.client.HTTPConnection(host, config.http_port, timeout=timeout)
    try:
        connection.request("GET", "/login")
        status = connection.getresponse().status
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except http.client.HTTPException as exc:
        return f"not HTTP ({type(exc).__name__})"
    finally:
        connection.close()
    return None if status == 200 else f"HTTP status {status}"


def disks(config: Config) -> list[Problem]:
    """Free space where objects are received and kept."""
    problems = []
    seen: set[int] = set()
    for name, folder in (("spool", config.spool_dir), ("archive", config.archive_dir)):
        if not folder.exists():
            continue
        device = os.stat(folder).st_dev
        if device in seen:
            continue
        seen.add(device)
        free = spool.free_megabytes(folder)
        if free < config.min_free_mb:
            problems.append(Problem(CRITICAL, f"{name} disk: {free:.0f} MB free, under min_free_mb "
                                              f"{config.min_free_mb} (C-STORE refused)"))
        elif free < config.disk_warning_mb:
            problems.append(Problem(WARNING, f"{name} disk: {free:.0f} MB free, under "
                                             f"disk_warning_mb {config.disk_warning_mb}"))
    return problems


def spool_rejects(config: Config) -> list[Problem]:
    """Acknowledged files the ingester could not read."""
    rejected = spool.SpoolLayout(config.spool_dir).rejected
    count = len(os.listdir(rejected)) if rejected.exists() else 0
    if count:
        return [Problem(WARNING, f"{count} spooled files rejected (see {rejected})")]
    return []


def worklist_files(config: Config) -> list[Problem]:
    """Worklist files the MWL SCP skips."""
    directory = worklist.WorklistDirectory(config.worklist_dir, quiet=True)
    directory.load()
    return [Problem(WARNING, f"worklist file {name} skipped: {reason}")
            for name, reason in directory.invalid().items()]


def database_reachable(config: Config) -> list[Problem]:
    """With ``database_url``: the database answers (the index and the queue are there)."""
    if not config.database_url:
        return []
    from echoes import database

    try:
        database.connect(config.database_url).close()
    except database.DatabaseError as exc:
        return [Problem(CRITICAL, f"database unreachable: {exc}")]
    return []


def other_nodes(config: Config) -> list[Problem]:
    """With ``database_url``: every other node of the archive beats (its supervisor
    writes the ``nodes`` table every few seconds) and runs its processes."""
    if not config.database_url:
        return []
    from echoes.database import DatabaseError
    from echoes.database import nodes as node_rows
    from echoes.ops import nodes
    from echoes.processes.supervisor import OPTIONAL_ROLES

    try:
        rows = node_rows.read(config.database_url)
    except DatabaseError:  # database_reachable says so
        return []
    import socket

    supervisor = daemon.running_pid(config.pid_file)
    here_is = (socket.gethostname(), supervisor) if supervisor else None
    return [Problem(severity, message) for severity, message in
            nodes.problems(rows, config.node_name, OPTIONAL_ROLES, here_is=here_is)]


def outbound_queue(config: Config) -> list[Problem]:
    """Failed jobs, jobs waiting too long, jobs for AEs no longer configured."""
    now = time.time()
    alarm = config.queue_alarm_minutes * 60
    failed: Counter[str] = Counter()
    old: Counter[str] = Counter()
    orphans: Counter[str] = Counter()
    store = open_job_store(config)
    try:
        every = store.all()
    except OSError:  # its database is down: database_reachable says so
        return []
    finally:
        store.close()
    for job in every:
        if job.state == jobs.FAILED:
            failed[job.destination] += 1
        elif job.state in jobs.ACTIVE:
            if now - job.created > alarm:
                old[job.destination] += 1
            if job.destination not in config.remote_aes:
                orphans[job.destination] += 1
    minutes = config.queue_alarm_minutes
    return (
        [Problem(CRITICAL, f"{count} failed jobs to {ae} (see echoes queue; "
                           "echoes retry --failed)") for ae, count in sorted(failed.items())]
        + [Problem(WARNING, f"{count} jobs to {ae} waiting longer than {minutes} min")
           for ae, count in sorted(old.items())]
        + [Problem(WARNING, f"{count} jobs to {ae}, which is no longer configured")
           for ae, count in sorted(orphans.items())]
    )


def retention_blocked(config: Config) -> list[Problem]:
    """WARNING when the archive stays over ``max_archive_gb`` even after every study the
    limits may delete: the rest is held by outbound jobs not done (failed ones
    included), which someone has to retry or cancel."""
    if not config.max_archive_gb:
        return []
    from echoes.index import open_index
    from echoes.ops import retention

    store = open_job_store(config)
    try:
        summaries = open_index(config).studies()
        keep = retention.keeping(store.open_jobs())
    except OSError:  # the database is down: database_reachable says so
        return []
    finally:
        store.close()
    chosen = {d.study_uid for d in retention.plan(summaries, set(keep), time.time(),
                                                  config.retention_days, config.max_archive_gb)}
    left = sum(int(s.get("size", 0)) for s in summaries if s["StudyInstanceUID"] not in chosen)
    if left <= config.max_archive_gb * 1e9:
        return []
    held = sum(1 for s in summaries if s["StudyInstanceUID"] in keep)
    return [Problem(WARNING, f"archive holds {left / 1e9:.3f} GB, over max_archive_gb "
                             f"{config.max_archive_gb:g}: {held} studies are kept for outbound "
                             "jobs not done (see echoes queue)")]


def deletions(config: Config) -> dict:
    """Studies deleted (``echoes delete``, the Browser, the retention limits): in the
    last 24 hours by reason, and in all, from the deletion log."""
    from echoes.ops import retention

    every = retention.deletions(config)
    recent = [entry for entry in every if entry.get("time", 0) >= time.time() - 86400]
    return {"last_24h": len(recent), "total": len(every),
            "last_24h_bytes": sum(int(entry.get("bytes", 0)) for entry in recent),
            "last_24h_by_reason": dict(Counter(entry.get("reason", "") for entry in recent))}


def deletions_line(counts: dict) -> str:
    """The line ``echoes check`` prints about deletions."""
    reasons = ", ".join(f"{count} {reason}" for reason, count
                        in sorted(counts["last_24h_by_reason"].items()))
    return (f"deleted: {counts['last_24h']} studies in the last 24 h"
            + (f" ({reasons}; {counts['last_24h_bytes']} bytes)" if reasons else "")
            + f", {counts['total']} in all")


#: The probes, in the order their problems are listed.
PROBES = (processes, ports, browser_port, disks, database_reachable, other_nodes,
          spool_rejects, worklist_files, outbound_queue, retention_blocked)
#: Probes that talk to the running server's ports.
PORT_PROBES = frozenset({ports, browser_port})


def check(config: Config, probes: tuple = PROBES) -> list[Problem]:
    """Every problem now, worst first (port probes only when the server runs).

    The Browser's own health page leaves out ``browser_port``: it is the
    answer, and asking itself over HTTP from a request thread could wait on
    a thread the same page holds.
    """
    problems: list[Problem] = []
    running = daemon.running_pid(config.pid_file) is not None
    for probe in probes:
        if probe in PORT_PROBES and not running:
            continue
        problems += probe(config)
    return sorted(problems, key=lambda problem: -problem.severity)


def summary(problems: list[Problem]) -> tuple[int, str]:
    """(exit code, first line) in the Nagios plugin style."""
    code = max((problem.severity for problem in problems), default=OK)
    if not problems:
        return OK, "ECHOES OK - running, ports answer, disks and queue fine"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return code, f"ECHOES {NAMES[code]} - {problems[0].message}{more}"
