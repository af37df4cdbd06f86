"""Issue 18's rows on PostgreSQL for compare.py (``--only postgres``, opt-in).

Why a module of its own and opt-in: these rows need a PostgreSQL cluster
(Debian's server, started here in a temporary folder, as the tests do:
tests/pgserver.py) and at the issue's sizes they take most of an hour, so
``compare.py`` runs them only when asked.  ``compare.py`` runs as
``__main__``: it passes itself in (``harness``) rather than this module
importing it, which would load a second copy with its own globals (the
round, ``--keep``).

The cluster runs with ``fsync = on`` (the tests' is off): what a site runs.
Every system gets a database of its own on it, created empty.

Rows (echoes column unless said; sizes ``PgSizes``, ``--quick``: QUICK_PG):

* P1a/P1b: build an archive of ``instances`` instances (``per_study`` a
  study, 4 series) through the index seam (``PostgresIndexWriter.apply``,
  batches of 50 as the ingester writes them: bench/index_walls.py's way,
  no DICOM): seconds for the first ``window`` instances and for the last;
  target last <= 1.2x first.
* P1c: the ingester's index restart on that archive: a new
  ``PostgresIndexWriter`` and its first batch of 50 (what issue 18's table
  timed for the embedded index: a fresh ``ArchiveIndex()``, 14-37 s, its
  catalog rebuilt); target < 2 s.
* P1d: a real ``echoes start`` with ``database_url`` on that archive (started
  and stopped once before), timed until its ingester logs "ingester
  watching": Python, the supervisor and every process; no target (it is the
  same on an empty archive: compare.py's startup row).
* P2a-P2d: an archive of ``search_studies`` one-instance studies (names,
  patients and dates varied), then study searches: P2a a C-FIND-like query
  through the seam (``query(STUDY, PatientID=...)``), P2b a name wildcard
  plus date range through the seam, P2c the same PatientID query by real
  ``findscu`` against echoes on that database (per query, findscu's start
  cancelled out: bench/qr.py ``per_query``), P2d the Browser's study list
  (``GET /api/studies``, first page, newest arrival first: ``study_page``);
  medians in ms; target < 100 ms each.  ``echoes studies --json --limit 50``
  (the whole command, Python's start included) is in P2d's note.
* P3: Orthanc with Debian's orthanc-postgresql index plugin
  (``EnableIndex``, files on disk as echoes keeps them) and echoes with
  ``database_url``, both on this cluster, ingesting the same CT corpus
  (``corpus`` objects in studies of 100, storescu, one association) until
  every object is stored (Orthanc's /statistics, echoes' archive folder);
  target echoes <= 1.0x Orthanc.
"""

from __future__ import annotations

import base64
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import qr

from echoes.index import postgres as pg_index
from echoes.index.base import STUDY
from echoes.index.instance import InstanceRecord

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:  # tests/pgserver.py: the tests' own PostgreSQL starter
    sys.path.append(str(TESTS))
from pgserver import PASSWORD  # noqa: E402

ORTHANC_PG_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
#: The ingester's batch (echoes.processes.ingester): what one index write holds.
BATCH = 50
#: Batches while building the search archive, which is not timed.
FILL_BATCH = 1000
ROOT = "1.2.826.0.1.3680043.99.18"
SURNAMES = ("MULLER", "SMITH", "GARCIA", "TANAKA", "NOVAK", "ROSSI", "DUBOIS", "SILVA",
            "KOWALSKI", "JENSEN")
SEARCH_RUNS = 21
BROWSER_PASSWORD = "bench"


@dataclass(frozen=True)
class PgSizes:
    """Counts of the PostgreSQL rows (the issue's; QUICK_PG for a smoke test)."""

    instances: int = 1_000_000
    per_study: int = 100
    window: int = 10_000
    search_studies: int = 200_000
    corpus: int = 1000


FULL_PG = PgSizes()
QUICK_PG = PgSizes(instances=20_000, window=2_000, search_studies=20_000, corpus=200)


def cluster():
    """A started PostgreSQL cluster of tests/pgserver.py, with fsync on (the caller
    removes it)."""
    from pgserver import PgServer

    server = PgServer()
    server.init()
    with open(server.data / "postgresql.conf", "a") as conf:  # later lines win
        conf.write("fsync = on\nfull_page_writes = on\nshared_buffers = 128MB\n")
    server.start()
    return server


def archive_records(total: int, per_study: int, start: int = 0):
    """``total`` instance records from number ``start``: ``per_study`` a study, 4
    series (1 for one-instance studies), 10 surnames, 5,000 patients, a date per study."""
    series_count = 1 if per_study == 1 else 4
    for n in range(start, start + total):
        study, within = divmod(n, per_study)
        series = within % series_count
        day = 1 + study % 28
        month = 1 + study // 28 % 12
        yield InstanceRecord(
            SOPInstanceUID=f"{ROOT}.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            SeriesInstanceUID=f"{ROOT}.2.{study}.{series}", StudyInstanceUID=f"{ROOT}.1.{study}",
            PatientID=f"P{study % 5000:05d}",
            PatientName=f"{SURNAMES[study % len(SURNAMES)]}^P{study}",
            StudyDate=f"{2020 + study // 336 % 6}{month:02d}{day:02d}", Modality="CT",
            InstanceNumber=str(within), TransferSyntaxUID="1.2.840.10008.1.2.1",
            path=f"{ROOT}.1.{study}/{ROOT}.2.{study}.{series}/{ROOT}.3.{n}.dcm", size=526000,
            received=f"2026-11-29T{10 + n // 3_600_000:02d}:{n // 60_000 % 60:02d}:"
                     f"{n // 1000 % 60:02d}.{n % 1000:03d}+00:00",  # 1 ms apart
            calling_ae="CT01")


def build(writer: pg_index.PostgresIndexWriter, total: int, per_study: int, window: int,
          batch: int) -> tuple[float, float, float]:
    """Apply ``total`` records in batches of ``batch``: (seconds of the first
    ``window`` instances, of the last ``window``, of all)."""
    first = last = 0.0
    started = window_start = time.perf_counter()
    pending: list[InstanceRecord] = []
    for n, record in enumerate(archive_records(total, per_study), 1):
        pending.append(record)
        if len(pending) == batch or n == total or n % window == 0:
            writer.apply(pending)
            pending = []
        if n % window == 0:
            now = time.perf_counter()
            if n == window:
                first = now - window_start
            if n == total:
                last = now - window_start
            window_start = now
    return first, last, time.perf_counter() - started


def median_ms(action, runs: int = SEARCH_RUNS) -> float:
    """Median wall time of ``action()`` in ms (after one untimed run)."""
    action()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def first_start(target) -> None:
    """Start echoes once (the schema is created or upgraded), then stop it."""
    target.start()
    target.stop()


def timed_start(target) -> float:
    """Seconds from ``echoes start`` until the ingester logs that it watches
    (then the rest of the start as compare.Echoes does it)."""
    target.starts += 1
    started = time.perf_counter()
    target.process = subprocess.Popen(
        [sys.executable, "-m", "echoes", "--config", str(target.ini), "start"],
        stdout=open(target.home / "echoes.out", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while target.log().count("ingester watching") < target.starts:
        if time.monotonic() > deadline or target.process.poll() is not None:
            raise RuntimeError(f"echoes' ingester did not start: {target.problems()}")
        time.sleep(0.01)
    return time.perf_counter() - started


def api_get(port: int, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(f"admin:{BROWSER_PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def echoes_on(h: ModuleType, folder: Path, url: str, browser: bool = False):
    """compare.Echoes (not started) with ``database_url`` (and a Browser password)."""
    from werkzeug.security import generate_password_hash

    extra = f"database_url = {url}\n"
    if browser:
        extra += ("http_password_hash = "
                  + generate_password_hash(BROWSER_PASSWORD, method="pbkdf2:sha256:1000")
                  + "\n")
    return h.Echoes(folder / "home", extra=extra, start=False)


def scale_rows(h: ModuleType, sizes: PgSizes, work: Path, server) -> list:
    """P1a, P1b, P1c: the big archive's ingest cost and the ingester restart on it."""
    cells = {key: h.Cell(None, False) for key in ("first", "last", "restart", "start")}
    how = ""
    h.progress(f"P1 echoes: {sizes.instances:,} instances through the PostgreSQL index")
    try:
        url = server.fresh_database()
        from echoes import database

        database.prepare(url)
        writer = pg_index.PostgresIndexWriter(url)
        try:
            first, last, total = build(writer, sizes.instances, sizes.per_study, sizes.window,
                                       BATCH)
        finally:
            writer.close()
        cells["first"], cells["last"] = h.Cell(first), h.Cell(last)
        how = (f"{sizes.instances:,} records ({sizes.per_study} a study, 4 series) applied "
               f"by PostgresIndexWriter.apply in batches of {BATCH} (the ingester's) into an "
               f"empty database, fsync on; {total:.0f} s in all; the first and the last "
               f"{sizes.window:,} timed")
        # The ingester's index at start, as issue 18's table measured the embedded
        # one (a fresh ArchiveIndex()): a new writer and its first batch.
        started = time.perf_counter()
        writer = pg_index.PostgresIndexWriter(url)
        writer.apply(list(archive_records(BATCH, sizes.per_study, sizes.instances)))
        writer.close()
        cells["restart"] = h.Cell(time.perf_counter() - started)
        with h.scratch(work, "echoes-pg") as folder:
            target = echoes_on(h, folder, url)
            first_start(target)
            try:
                cells["start"] = h.Cell(timed_start(target))
            finally:
                target.stop()
    except Exception as exc:
        h.progress(f"  {exc}")
        for key, cell in cells.items():
            if cell.value is None:
                cells[key] = h.failed(exc)
    first_fig = h.Figure("P1a", f"PostgreSQL index: first {sizes.window:,} instances into "
                         "an empty archive", "s", {"echoes": cells["first"]}, how=how)
    last_fig = h.Figure("P1b", f"PostgreSQL index: last {sizes.window:,} instances up to "
                        f"{sizes.instances:,}", "s", {"echoes": cells["last"]})

    def flat(fig, figures) -> None:
        a, b = h.cell_of(figures["P1a"], "echoes"), h.cell_of(fig, "echoes")
        if a.value and b.value is not None:
            ratio = b.value / a.value
            fig.checks.append(h.Check(f"{ratio:.2f}x P1a", "<= 1.2x P1a",
                                      a.ok and b.ok and ratio <= 1.2))
        else:
            fig.checks.append(h.Check("n/a", "<= 1.2x P1a", False))

    last_fig.targets.append(flat)
    restart_fig = h.Figure("P1c", f"ingester's index restart at {sizes.instances:,} "
                           "instances (PostgreSQL)", "s", {"echoes": cells["restart"]},
                           how=("a new PostgresIndexWriter (pool, schema check) and its first "
                                f"batch of {BATCH} new instances on the full archive: what "
                                "issue 18's table timed for the embedded index (a fresh "
                                "ArchiveIndex(), 14-37 s)"))
    h.below(restart_fig, 2.0, "s")
    start_fig = h.Figure("P1d", f"echoes start until the ingester watches, at "
                         f"{sizes.instances:,} instances (PostgreSQL)", "s",
                         {"echoes": cells["start"]},
                         how=("the whole echoes start (database_url set; started and stopped "
                              "once before): Python, the supervisor, every process; no "
                              "target: the same on an empty archive (the startup row)"))
    return [first_fig, last_fig, restart_fig, start_fig]


def search_rows(h: ModuleType, sizes: PgSizes, work: Path, server) -> list:
    """P2a-P2d: study searches at ``search_studies`` one-instance studies."""
    studies = sizes.search_studies
    patient = f"P{(studies // 3) % 5000:05d}"
    low, high = "20220301", "20220331"
    keys = {"P2a": None, "P2b": None, "P2c": None, "P2d": None}
    cells = {key: h.Cell(None, False) for key in keys}
    notes = {key: "" for key in keys}
    h.progress(f"P2 echoes: {studies:,} one-instance studies, study searches")
    try:
        url = server.fresh_database()
        from echoes import database

        database.prepare(url)
        writer = pg_index.PostgresIndexWriter(url)
        try:
            _f, _l, filled = build(writer, studies, 1, max(studies, 1), FILL_BATCH)
        finally:
            writer.close()
        reader = pg_index.PostgresIndex(url)
        try:
            matches = len(reader.query(STUDY, {"PatientID": patient}))
            cells["P2a"] = h.Cell(median_ms(lambda: reader.query(STUDY, {"PatientID": patient})),
                                  matches > 0, "" if matches else "no match")
            notes["P2a"] = f"{matches} matches"
            wanted = {"PatientName": "MUL*", "StudyDate": f"{low}-{high}"}
            matches = len(reader.query(STUDY, wanted))
            cells["P2b"] = h.Cell(median_ms(lambda: reader.query(STUDY, wanted)),
                                  matches > 0, "" if matches else "no match")
            notes["P2b"] = f"{matches} matches"
        finally:
            reader.close()
        with h.scratch(work, "echoes-pg") as folder:
            target = echoes_on(h, folder, url, browser=True)
            target.start()
            try:
                find_keys = ("QueryRetrieveLevel=STUDY", f"PatientID={patient}", "PatientName",
                             "StudyDate", *qr.RETURN_KEYS)
                _s, found = qr.findscu(target.port, target.called, find_keys, count=True)
                per, whole = qr.per_query(target.port, target.called, find_keys, 5)
                cells["P2c"] = h.Cell(per * 1000, found > 0, "" if found else "no match")
                notes["P2c"] = f"{found} matches; a whole findscu run {whole * 1000:.0f} ms"
                port = target.config.http_port
                page = "/api/studies?per_page=50"
                api_get(port, page)  # the web process's first request
                cells["P2d"] = h.Cell(median_ms(lambda: api_get(port, page)))
                runs = []
                for _ in range(3):
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "echoes", "--config",
                                    str(target.ini), "studies", "--json", "--limit", "50"],
                                   capture_output=True, check=True)
                    runs.append(time.perf_counter() - started)
                notes["P2d"] = (f"echoes studies --json --limit 50, the whole command: "
                                f"{statistics.median(runs) * 1000:.0f} ms")
            finally:
                target.stop()
        notes["P2a"] += f"; archive filled in {filled:.0f} s (batches of {FILL_BATCH})"
    except Exception as exc:
        h.progress(f"  {exc}")
        for key, cell in cells.items():
            if cell.value is None:
                cells[key] = h.failed(exc)
    labels = {
        "P2a": f"seam query(STUDY, PatientID) at {studies:,} studies",
        "P2b": f"seam query(STUDY, PatientName MUL* + a month's StudyDate) at {studies:,}",
        "P2c": f"findscu study C-FIND by PatientID at {studies:,} studies, per query",
        "P2d": f"Browser GET /api/studies (first page of 50) at {studies:,} studies",
    }
    figures = []
    for key, label in labels.items():
        fig = h.Figure(key, label, "ms", {"echoes": cells[key]},
                       how=f"median of {SEARCH_RUNS} after one untimed; {notes[key]}"
                       if key != "P2c" else f"bench/qr.py per_query (5 runs); {notes[key]}")
        h.below(fig, 100.0, "ms")
        figures.append(fig)
    return figures


def orthanc_row(h: ModuleType, sizes: PgSizes, work: Path, server) -> list:
    """P3: Orthanc with its PostgreSQL index plugin vs echoes on PostgreSQL, same corpus."""
    files = h.ct_studies(sizes.corpus)
    h.warm(files)
    cells = {}
    for system in ("orthanc", "echoes") if h.ROUND % 2 == 0 else ("echoes", "orthanc"):
        def run(system: str = system) -> object:
            url = server.fresh_database()
            with h.scratch(work, f"{system}-pg") as folder:
                if system == "orthanc":
                    name = url.rsplit("/", 1)[1]
                    target = h.Orthanc(folder, extra={
                        "Plugins": [str(ORTHANC_PG_PLUGIN)],
                        "PostgreSQL": {"EnableIndex": True, "EnableStorage": False,
                                       "Host": "127.0.0.1", "Port": server.port,
                                       "Database": name, "Username": "postgres",
                                       "Password": PASSWORD,
                                       "Lock": False}})
                else:
                    target = echoes_on(h, folder, url)
                    target.start()
                with target:
                    return h.ingest(target, files)
        cells[system] = h.measure(f"P3 {system} on PostgreSQL: ingest {len(files):,} CT", run)
    fig = h.Figure("P3", f"ingest {len(files):,} CT 512x512, 1 association, index in "
                   "PostgreSQL", "s", cells,
                   how=("storescu -xe, TCP_NODELAY=1, studies of 100; Orthanc with "
                        f"{ORTHANC_PG_PLUGIN.name} (EnableIndex, files on disk), echoes with "
                        "database_url; each in a fresh database of the same cluster, fsync on; "
                        "until Orthanc's /statistics / echoes' archive folder hold every "
                        "object"))
    h.at_most(fig, "orthanc", 1.0)
    return [fig]


def rows(h: ModuleType, quick: bool, work: Path) -> list:
    """Every PostgreSQL row, on one cluster started for them and removed after."""
    if not ORTHANC_PG_PLUGIN.exists():
        raise h.MissingTool(f"{ORTHANC_PG_PLUGIN} missing: install the Debian package "
                            "'orthanc-postgresql'")
    sizes = QUICK_PG if quick else FULL_PG
    server = cluster()
    try:
        return [*scale_rows(h, sizes, work, server), *search_rows(h, sizes, work, server),
                *orthanc_row(h, sizes, work, server)]
    finally:
        server.remove()
