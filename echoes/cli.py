"""The ``echoes`` command: argument parsing and one small function per command.

``--config PATH`` is accepted before or after the command name.  Problems an
admin can fix (bad config, unknown study, server not running) print one line
on stderr and exit non-zero; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence

from echoes import __version__
from echoes import config as config_module
from echoes.index import open_index
from echoes.index.base import PAGE_ORDERS, newest_first
from echoes.storage import durable

#: LSB exit codes for ``status``.
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3
#: ``echoes stop`` waits this long for the supervisor to exit.
STOP_WAIT_SECONDS = 90


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="configuration file (default: $ECHOES_CONFIG or etc/echoes.ini)")
    parser = argparse.ArgumentParser(
        prog="echoes", parents=[common],
        description="DICOM image archive and Modality Worklist server")
    parser.add_argument("--version", action="version", version=f"echoes {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser("start", parents=[common], help="run every process")
    start.add_argument("--daemon", action="store_true", help="detach and write pid_file")
    commands.add_parser("stop", parents=[common], help="stop the running server")
    commands.add_parser("status", parents=[common], help="exit 0 if running, 3 if not")
    commands.add_parser("reload", parents=[common],
                        help="SIGHUP: re-read the configuration and reopen the log")
    studies = commands.add_parser("studies", parents=[common], help="list archived studies")
    studies.add_argument("--json", action="store_true", help="print a JSON list")
    studies.add_argument("--limit", type=_count, metavar="N",
                         help="print at most N studies (one page, read through the index)")
    studies.add_argument("--offset", type=_count, default=0, metavar="N",
                         help="skip the first N studies of the order (with --limit)")
    studies.add_argument("--order", choices=PAGE_ORDERS, default="date",
                         help="date: newest study date first (default); received: the "
                              "studies that got an object last first")
    check = commands.add_parser("check", parents=[common], help="health check for cron")
    check.add_argument("--json", action="store_true")
    nodes = commands.add_parser("nodes", parents=[common],
                                help="the nodes sharing database_url and their last heartbeat")
    nodes.add_argument("--json", action="store_true", help="print JSON")
    nodes.add_argument("--forget", metavar="NODE_NAME",
                       help="remove a node gone for good from the list")
    push = commands.add_parser("push", parents=[common],
                               help="queue a push of one archived study to a configured AE")
    push.add_argument("study_uid", metavar="STUDY_UID")
    push.add_argument("ae_title", metavar="AE_TITLE")
    queue = commands.add_parser("queue", parents=[common], help="outbound jobs by destination")
    queue.add_argument("--json", action="store_true", help="print JSON")
    retry = commands.add_parser("retry", parents=[common],
                                help="send failed jobs again (all with --failed, or one)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="every failed job")
    which.add_argument("job_id", nargs="?", metavar="JOB_ID",
                       help="one job, retrying, failed or cancelled (see echoes queue)")
    cancel = commands.add_parser("cancel", parents=[common],
                                 help="withdraw an outbound job that is not done")
    withdraw = cancel.add_mutually_exclusive_group(required=True)
    withdraw.add_argument("job_id", nargs="?", metavar="JOB_ID", help="the job (see echoes queue)")
    withdraw.add_argument("--destination", metavar="AE_TITLE",
                          help="every job of this AE that is not done")
    fsck = commands.add_parser("fsck", parents=[common],
                               help="check the index against the archive tree (read-only)")
    fsck.add_argument("--quick", action="store_true",
                      help="compare paths and sizes only, do not read file headers")
    fsck.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser("reindex", parents=[common],
                        help="rebuild the index from the archive tree")
    delete = commands.add_parser("delete", parents=[common],
                                 help="delete one archived study, files and index")
    delete.add_argument("study_uid", metavar="STUDY_UID")
    migrate = commands.add_parser(
        "migrate", parents=[common],
        help="copy the embedded index and open jobs into an empty PostgreSQL database")
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="postgresql://user:password@host:port/dbname")
    worklist = commands.add_parser("worklist", parents=[common],
                                   help="list the worklist items (or, with --check, bad files)")
    worklist.add_argument("--check", action="store_true",
                          help="list only invalid files and why; exit 1 if there are any")
    worklist.add_argument("--json", action="store_true", help="print JSON")

    passwd = commands.add_parser("passwd", parents=[common],
                                 help="set the Browser's password (http_password_hash)")
    passwd.add_argument("--user", metavar="NAME", help="also set the login name (http_user)")

    worker = commands.add_parser("_worker", parents=[common])  # internal: supervisor's children
    worker.add_argument("role")
    worker.add_argument("--listen-fd", type=int, default=-1)
    return parser


def _load(args: argparse.Namespace) -> config_module.Config:
    return config_module.load(getattr(args, "config", None))


def _read_pid(config: config_module.Config) -> int | None:
    """The running supervisor's pid (it holds the pid file's lock), else None."""
    from echoes.ops import daemon

    return daemon.running_pid(config.pid_file)


def cmd_start(args: argparse.Namespace, config: config_module.Config) -> int:
    """Run the supervisor in the foreground, or detached with --daemon.

    ``--daemon`` returns 0 only once the store and worklist ports answer
    C-ECHO, 1 (with the end of the log) when the server could not start.
    """
    from echoes.ops import daemon
    from echoes.processes import supervisor

    running = _read_pid(config)
    if running:
        print(f"echoes: already running (pid {running})", file=sys.stderr)
        return 1
    if config.database_url:  # before anything is created: a bad database stops here
        from echoes import database

        try:
            database.prepare(config.database_url)
        except database.DatabaseError as exc:
            print(f"echoes: database_url: {exc}", file=sys.stderr)
            return 1
    if args.daemon:
        ready_fd = daemon.detach()
        if ready_fd is not None:  # the original process: wait, report, exit
            started, message = daemon.wait_until_serving(config, ready_fd)
            if started:
                print(f"echoes: {message}")
                return 0
            print(f"echoes: {message}; end of {config.log_file}:\n{daemon.log_tail(config)}",
                  file=sys.stderr)
            return 1
    lock_fd = daemon.lock_pid_file(config.pid_file)
    if lock_fd is None:
        print("echoes: already running (another start won the race)", file=sys.stderr)
        return 1
    daemon.write_pid(lock_fd, os.getpid())
    from echoes import logs  # here, not at the top: every other command starts faster

    logs.setup(config, "supervisor", to_stderr=not args.daemon)
    try:
        return supervisor.run(config, on_started=daemon.report_ready)
    finally:
        config.pid_file.unlink(missing_ok=True)
        os.close(lock_fd)


def cmd_stop(args: argparse.Namespace, config: config_module.Config) -> int:
    """SIGTERM the supervisor and wait (bounded) until it has let go of the pid file."""
    pid = _read_pid(config)
    if pid is None:
        print("echoes: not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline:
        if _read_pid(config) is None:
            print(f"echoes: stopped (pid {pid})")
            return 0
        time.sleep(0.1)
    print(f"echoes: pid {pid} still running after {STOP_WAIT_SECONDS} s "
          "(associations or the ingester not done; see the log)", file=sys.stderr)
    return 1


def cmd_reload(args: argparse.Namespace, config: config_module.Config) -> int:
    """SIGHUP to the supervisor, which passes it on (LSB: 7 when not running)."""
    pid = _read_pid(config)
    if pid is None:
        print("echoes: not running", file=sys.stderr)
        return 7
    os.kill(pid, signal.SIGHUP)
    print(f"echoes: reload signalled (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace, config: config_module.Config) -> int:
    """LSB status: 0 running, 3 not running."""
    pid = _read_pid(config)
    if pid is None:
        print("echoes: not running")
        return STATUS_NOT_RUNNING
    print(f"echoes: running (supervisor pid {pid})")
    for child_pid, title in _children(pid):
        print(f"  {title:<20} pid {child_pid}")
    return STATUS_RUNNING


def _children(pid: int) -> list[tuple[int, str]]:
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    result = []
    for child in children:
        try:
            result.append((child.pid, " ".join(" ".join(child.cmdline()).split())))
        except psutil.Error:
            continue
    return result


STUDY_COLUMNS = ("StudyDate", "PatientID", "PatientName", "ModalitiesInStudy",
                 "NumberOfSeries", "NumberOfInstances", "StudyInstanceUID")
#: Columns of ``echoes studies`` that hold counts: right-aligned, as numbers are read.
NUMBER_COLUMNS = frozenset({"NumberOfSeries", "NumberOfInstances"})
#: What an empty field shows, so a row with gaps still reads column by column.
EMPTY_FIELD = "-"


def _display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK) characters take two,
    combining marks none, so Japanese or Korean patient names stay aligned.
    """
    import unicodedata

    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def aligned_table(headings: Sequence[str], rows: Iterable[Sequence[str]],
                  right: Iterable[str] = ()) -> list[str]:
    """Lines of a table whose column widths come from the content.

    Empty fields are shown as ``EMPTY_FIELD`` (a run of blanks cannot be told
    from a column gap); ``right`` names the right-aligned columns; the last
    column is not padded, so lines carry no trailing blanks.
    """
    right_aligned = {n for n, heading in enumerate(headings) if heading in set(right)}
    table = [list(headings)] + [[cell or EMPTY_FIELD for cell in row] for row in rows]
    widths = [max(_display_width(row[n]) for row in table) for n in range(len(headings))]
    lines = []
    for row in table:
        cells = []
        for n, cell in enumerate(row):
            padding = " " * (widths[n] - _display_width(cell))
            if n in right_aligned:
                cells.append(padding + cell)
            elif n < len(row) - 1:
                cells.append(cell + padding)
            else:
                cells.append(cell)
        lines.append("  ".join(cells))
    return lines


def _count(text: str) -> int:
    """A whole number of 0 or more (argparse type of --limit and --offset)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def cmd_studies(args: argparse.Namespace, config: config_module.Config) -> int:
    """Archived studies from the index catalog, as an aligned table (or JSON).

    Without --limit, --offset or --order: every study, newest study date first,
    and the totals line, as always.  With them: one page read through the index
    seam's ``study_page`` (SQL LIMIT/OFFSET on an index in PostgreSQL), and a
    totals line that says which rows of how many were printed.
    """
    paged = args.limit is not None or args.offset or args.order != "date"
    if paged:
        page = open_index(config).study_page(args.order, True, args.limit, args.offset)
        studies, total, instances = page.studies, page.total, page.instances
    else:
        studies = newest_first(open_index(config).studies())
        total, instances = len(studies), sum(s["NumberOfInstances"] for s in studies)
    if args.json:
        json.dump(studies, sys.stdout, indent=1, ensure_ascii=False)
        print()
        return 0
    rows = []
    for study in studies:
        row = []
        for column in STUDY_COLUMNS:
            value = study.get(column, "")
            row.append("\\".join(value) if isinstance(value, list) else str(value))
        rows.append(row)
    for line in aligned_table(STUDY_COLUMNS, rows, right=NUMBER_COLUMNS):
        print(line)
    if paged:
        shown = f"{args.offset + 1}-{args.offset + len(studies)}" if studies else "none"
        print(f"studies {shown} of {total} ({args.order} order, newest first), "
              f"{instances} instances in all")
    else:
        print(f"{total} studies, {instances} instances")
    return 0


def cmd_check(args: argparse.Namespace, config: config_module.Config) -> int:
    """Nagios plugin: exit 0 OK, 1 WARNING, 2 CRITICAL; a summary line, then details."""
    from echoes.ops import health

    problems = health.check(config)
    code, first_line = health.summary(problems)
    deleted = health.deletions(config)
    if args.json:
        print(json.dumps({"status": health.NAMES[code], "code": code, "summary": first_line,
                          "problems": [{"severity": health.NAMES[p.severity],
                                        "message": p.message} for p in problems],
                          "deletions": deleted},
                         ensure_ascii=False))
        return code
    print(first_line)
    for problem in problems:
        print(f"{health.NAMES[problem.severity]}: {problem.message}")
    print(health.deletions_line(deleted))
    return code


def cmd_nodes(args: argparse.Namespace, config: config_module.Config) -> int:
    """Every node of the archive as its supervisor's last heartbeat says."""
    from echoes.database import nodes as node_rows
    from echoes.ops.nodes import SILENT_SECONDS, ago

    if not config.database_url:
        print("echoes: nodes: only with database_url (one node has no others)", file=sys.stderr)
        return 1
    if args.forget:
        if not node_rows.forget(config.database_url, args.forget):
            print(f"echoes: no node {args.forget!r}", file=sys.stderr)
            return 1
        print(f"echoes nodes: {args.forget} forgotten")
        return 0
    rows = node_rows.read(config.database_url)

    def state(row: node_rows.NodeRow) -> str:
        if row.stopped:
            return "stopped"
        return "down" if row.silent > SILENT_SECONDS else "running"

    if args.json:
        print(json.dumps([{"node_name": row.name, "host": row.host, "pid": row.pid,
                           "started": row.started, "seconds_since_seen": round(row.silent, 1),
                           "state": state(row), "roles": row.roles,
                           "spool_waiting": row.spool_waiting} for row in rows],
                         ensure_ascii=False, indent=1))
        return 0
    table = [[row.name, row.host, str(row.pid), state(row), f"{ago(row.silent)} ago",
              " ".join(f"{role} {entry.get('running', 0)}/{entry.get('wanted', 0)}"
                       for role, entry in sorted(row.roles.items())),
              str(row.spool_waiting)] for row in rows]
    for line in aligned_table(("node", "host", "pid", "state", "seen", "processes",
                               "spool"), table, right={"pid", "spool"}):
        print(line)
    return 0


def _job_store(config: config_module.Config):
    from echoes.queue import open_job_store

    return open_job_store(config)


def cmd_push(args: argparse.Namespace, config: config_module.Config) -> int:
    """Queue every object of an archived study for one configured AE."""
    if args.ae_title not in config.remote_aes:
        known = ", ".join(sorted(config.remote_aes)) or "none"
        print(f"echoes: unknown AE {args.ae_title!r} (configured: {known})", file=sys.stderr)
        return 1
    study = open_index(config).study(args.study_uid)
    if study is None or not study["instances"]:
        print(f"echoes: no archived study {args.study_uid}", file=sys.stderr)
        return 1
    count = _job_store(config).queue(args.ae_title, study["instances"], "push", time.time())
    print(f"queued {count} objects of study {args.study_uid} for {args.ae_title}")
    return 0


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def cmd_queue(args: argparse.Namespace, config: config_module.Config) -> int:
    """Outbound jobs per destination: counts, then what is retrying or failed and why."""
    from dataclasses import asdict

    from echoes.queue import jobs

    everything = sorted(_job_store(config).all(), key=lambda job: (job.destination, job.created))
    by_destination: dict[str, list] = {}
    for job in everything:
        by_destination.setdefault(job.destination, []).append(job)
    for title in config.remote_aes:
        by_destination.setdefault(title, [])
    if args.json:
        document = {}
        for title, group in sorted(by_destination.items()):
            counts = {state: sum(job.state == state for job in group) for state in jobs.STATES}
            document[title] = {**counts, "jobs": [asdict(job) for job in group
                                                  if job.state != jobs.DONE]}
        print(json.dumps(document, indent=1))
        return 0
    for title, group in sorted(by_destination.items()):
        counts = {state: sum(job.state == state for job in group) for state in jobs.STATES}
        remote = config.remote_aes.get(title)
        where = f"{remote.host}:{remote.port}" if remote else "not configured"
        print(f"{title} ({where}): " + ", ".join(f"{counts[s]} {s}" for s in jobs.STATES))
        for job in group:
            if job.state == jobs.RETRYING:
                print(f"  retrying {job.id} attempt {job.attempts}, next {_when(job.next_attempt)}"
                      f": {job.last_error}")
            elif job.state == jobs.FAILED:
                print(f"  failed   {job.id} after {job.attempts} attempts: {job.last_error}")
            elif job.state == jobs.CANCELLED:
                print(f"  cancelled {job.id} {_when(job.updated)} after {job.attempts} attempts")
    return 0


def cmd_retry(args: argparse.Namespace, config: config_module.Config) -> int:
    """Put failed jobs (or one job) back in the queue.

    One job that is done or pending is refused (exit 1, job untouched), as
    the Browser's API refuses a done one with 409: a done job was delivered
    (pushing the study again sends it anew), a pending one waits already.
    """
    from echoes.queue import jobs

    store = _job_store(config)
    now = time.time()
    if args.job_id:
        job = store.read(args.job_id)
        if job is None:
            print(f"echoes: no job {args.job_id}", file=sys.stderr)
            return 1
        if job.state == jobs.DONE:
            print(f"echoes: job {job.id} is done already (delivered {_when(job.updated)}); "
                  "push the study again to send it anew", file=sys.stderr)
            return 1
        if job.state not in jobs.RETRIABLE:
            print(f"echoes: job {job.id} is {job.state} already (waiting to be sent): "
                  "nothing to retry", file=sys.stderr)
            return 1
        chosen = [job]
    else:
        chosen = [job for job in store.all() if job.state == jobs.FAILED]
    count = store.write_many(jobs.retried(job, now) for job in chosen)
    print(f"{count} jobs queued again")
    return 0


def cmd_cancel(args: argparse.Namespace, config: config_module.Config) -> int:
    """Withdraw one job, or all of one AE: the sender never sends them
    (echoes retry JOB_ID brings one back).
    """
    from echoes.queue import jobs

    if args.destination:
        count = _job_store(config).cancel_destination(args.destination, time.time())
        print(f"{count} jobs to {args.destination} cancelled")
        return 0
    job = _job_store(config).cancel(args.job_id, time.time())
    if job is None:
        print(f"echoes: no job {args.job_id}", file=sys.stderr)
        return 1
    if job.state == jobs.DONE:
        print(f"echoes: job {job.id} is done already (delivered {_when(job.updated)})",
              file=sys.stderr)
        return 1
    print(f"job {job.id} ({job.sop_instance_uid} to {job.destination}) cancelled")
    return 0


def cmd_fsck(args: argparse.Namespace, config: config_module.Config) -> int:
    """Index against tree: 0 when they agree, 1 with one line per lasting problem."""
    from echoes.ops import integrity

    findings = integrity.fsck(config, read_headers=not args.quick)
    if args.json:
        print(json.dumps([integrity.as_dict(f) for f in findings], ensure_ascii=False))
    else:
        for finding in findings:
            print(integrity.describe(finding))
        print(f"echoes fsck: {len(findings)} problems" if findings
              else "echoes fsck: index and archive agree")
    return 1 if findings else 0


def cmd_reindex(args: argparse.Namespace, config: config_module.Config) -> int:
    """Rebuild the index from the tree: by the running ingester, or here when stopped."""
    from echoes.ops import integrity

    if _read_pid(config) is None:
        archive_index = open_index(config, writer=True)
        try:
            outcome = integrity.rebuild(config, archive_index)
        finally:
            archive_index.close()
        print(f"echoes reindex: {json.dumps(outcome)}")
        return 0
    result = integrity.result_path(config)
    result.unlink(missing_ok=True)
    durable.atomic_write_bytes(integrity.request_path(config), b"reindex\n")
    print("echoes reindex: asked the running ingester; waiting", file=sys.stderr)
    deadline = time.monotonic() + 24 * 3600
    while time.monotonic() < deadline:
        if result.exists():
            outcome = result.read_text().strip()
            print(f"echoes reindex: {outcome}")
            return 1 if '"error"' in outcome else 0
        time.sleep(0.5)
    return 1


def cmd_delete(args: argparse.Namespace, config: config_module.Config) -> int:
    """Delete one study: by the running ingester (the one index writer), or here when
    stopped; exit 1 for an unknown study or one with outbound jobs not done."""
    from echoes.ops import retention
    from echoes.storage.objects import open_object_store

    study_uid = args.study_uid.strip()
    try:
        if _read_pid(config) is None:
            from echoes import logs

            logs.setup(config, "delete", to_stderr=False)
            archive_index = open_index(config, writer=True)
            store = _job_store(config)
            try:
                deleter = retention.Retention(config, archive_index,
                                              open_object_store(config), store)
                deleter.finish_intents()
                outcome = deleter.delete(study_uid, retention.BY_HAND)
            finally:
                archive_index.close()
                store.close()
        else:
            result = retention.request_delete(config, study_uid)
            deadline = time.monotonic() + 600
            while not result.exists():
                if time.monotonic() > deadline:
                    print("echoes delete: the ingester did not answer in 10 min; the request "
                          "stays and will be carried out", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            outcome = json.loads(result.read_text())
            result.unlink(missing_ok=True)
            if "error" in outcome:
                raise retention.DeleteRefused(outcome["error"])
    except retention.DeleteRefused as exc:
        print(f"echoes delete: {exc}", file=sys.stderr)
        return 1
    print(f"echoes delete: study {study_uid} deleted ({outcome['instances']} objects, "
          f"{outcome['bytes']} bytes)")
    return 0


def cmd_migrate(args: argparse.Namespace, config: config_module.Config) -> int:
    """Copy the embedded index and the unfinished jobs into PostgreSQL, all or nothing."""
    from echoes import database
    from echoes.ops import migrate

    url = args.to.strip()
    if not url.startswith(config_module.DATABASE_SCHEMES):
        print("echoes migrate: --to must be a URL such as "
              "postgresql://user:password@host:5432/echoes", file=sys.stderr)
        return 2
    try:
        copied = migrate.migrate(config, url)
    except (migrate.MigrateError, database.DatabaseError) as exc:
        print(f"echoes migrate: {exc}; nothing copied", file=sys.stderr)
        return 1
    print(f"echoes migrate: copied {copied.instances} instances of {copied.studies} studies "
          f"and {copied.jobs} unfinished jobs into PostgreSQL at {database.describe(url)}; "
          f"now set database_url in {config.path} and start echoes")
    return 0


def _read_worklist(config: config_module.Config):
    from echoes.worklist import files as worklist

    directory = worklist.WorklistDirectory(config.worklist_dir, quiet=True)
    directory.load()
    return directory


#: Columns of ``echoes worklist``: heading -> path of tags in the item tree.
WORKLIST_COLUMNS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Date", (0x00400100, 0x00400002)),
    ("Time", (0x00400100, 0x00400003)),
    ("Modality", (0x00400100, 0x00080060)),
    ("Station", (0x00400100, 0x00400001)),
    ("PatientID", (0x00100020,)),
    ("PatientName", (0x00100010,)),
    ("Accession", (0x00080050,)),
    ("File", ()),
)


def _column(item, path: tuple[int, ...]) -> str:
    if not path:
        return item.name
    value = item.tree.get(path[0], "")
    if len(path) > 1:
        value = value[0].get(path[1], "") if isinstance(value, list) and value else ""
    return value if isinstance(value, str) else ""


def _scheduled(item) -> tuple[bool, str, str, str]:
    """Sort key of ``echoes worklist``: the shown (first) step's start date and
    time, then the file name; items without a date last."""
    date = _column(item, WORKLIST_COLUMNS[0][1])
    return (not date, date, _column(item, WORKLIST_COLUMNS[1][1]), item.name)


def cmd_worklist(args: argparse.Namespace, config: config_module.Config) -> int:
    """The worklist as the MWL SCP serves it, read with the same parser.

    ``--check`` is a report for scripts and cron mail: every problem and the
    summary on stdout, exit 1 when there is a problem.
    """
    directory = _read_worklist(config)
    invalid = directory.invalid()
    if args.check:
        if args.json:
            print(json.dumps([{"file": name, "problem": reason}
                              for name, reason in invalid.items()], ensure_ascii=False))
        else:
            for name, reason in invalid.items():
                print(f"{name}: {reason}")
            print(f"{len(directory)} valid, {len(invalid)} invalid worklist files "
                  f"in {config.worklist_dir}")
        return 1 if invalid else 0
    items = sorted(directory.items(), key=_scheduled)
    if args.json:
        from echoes.worklist import files as worklist

        rows = []
        for item in items:
            dataset = worklist.to_dataset(item.tree)
            rows.append({"file": item.name, "item": dataset.to_json_dict()})
        json.dump(rows, sys.stdout, indent=1, ensure_ascii=False)
        print()
        return 0
    rows = [[heading for heading, _ in WORKLIST_COLUMNS]]
    rows += [[_column(item, path) for _, path in WORKLIST_COLUMNS] for item in items]
    widths = [max(len(row[n]) for row in rows) for n in range(len(WORKLIST_COLUMNS))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"{len(items)} items" + (f"; {len(invalid)} invalid files (see --check)"
                                   if invalid else ""))
    return 0


#: The shortest password ``echoes passwd`` accepts.
MIN_PASSWORD_LENGTH = 8


def _read_password() -> str:
    """The new password: typed twice at a terminal, else one line from stdin (scripts)."""
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the two passwords differ")
    else:
        line = sys.stdin.readline()
        if not line:
            raise ValueError("no password on stdin")
        password = line.rstrip("\r\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def cmd_passwd(args: argparse.Namespace, config: config_module.Config) -> int:
    """Store a scrypt hash of a new Browser password (and the login name) in the config.

    Only the hash is kept, written with config_edit so the admin's comments
    survive; running processes re-read the file when it changes, so the new
    password works without a restart.
    """
    from werkzeug.security import generate_password_hash

    from echoes import config_edit

    try:
        password = _read_password()
    except ValueError as exc:
        print(f"echoes: {exc}", file=sys.stderr)
        return 1
    except EOFError:
        print("echoes: no password given", file=sys.stderr)
        return 1
    values = {"http_password_hash": generate_password_hash(password, method="scrypt")}
    if args.user is not None:
        values["http_user"] = args.user
    try:
        config_edit.set_options(config.path, values)
    except config_module.ConfigError as exc:
        print(f"echoes: {exc}", file=sys.stderr)
        return 1
    user = args.user if args.user is not None else config.http_user
    print(f"echoes: Browser password set for user {user} in {config.path}; "
          "a running server picks it up without restart")
    return 0


def cmd_worker(args: argparse.Namespace, config: config_module.Config) -> int:
    """Entry point of a supervised child (not for people)."""
    from echoes.processes import worker

    return worker.run_role(args.role, config, args.listen_fd)


COMMANDS = {
    "start": cmd_start,
    "stop": cmd_stop,
    "status": cmd_status,
    "reload": cmd_reload,
    "studies": cmd_studies,
    "check": cmd_check,
    "worklist": cmd_worklist,
    "fsck": cmd_fsck,
    "migrate": cmd_migrate,
    "reindex": cmd_reindex,
    "delete": cmd_delete,
    "nodes": cmd_nodes,
    "push": cmd_push,
    "queue": cmd_queue,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "passwd": cmd_passwd,
    "_worker": cmd_worker,
}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config, run the command."""
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
    except config_module.ConfigError as exc:
        print(f"echoes: config: {exc}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args, config)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if isinstance(exc, PermissionError | FileNotFoundError) and exc.filename:
            print(f"echoes: {exc.strerror}: {exc.filename}", file=sys.stderr)
            return 1
        from echoes.database import DatabaseError

        if isinstance(exc, DatabaseError):  # one line, as at echoes start
            print(f"echoes: database_url: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
