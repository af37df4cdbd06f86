"""Query/Retrieve C-FIND rows 8a/8b of compare.py: the corpus, dcmqrscp, the queries.

The archive: ``studies`` studies of ``per_study`` tiny objects (16x16 8-bit
secondary capture; the issue's 1,000 x 100 = 100,000 instances), one series
each.  Study ``n`` belongs to patient ``PID<n // 2>`` (two studies a patient),
is named ``<SURNAME>^P<n>`` with 20 six-letter surnames in turn, and dated
2020-01-01 plus ``n`` days.  Files are made once from a template by
replacing fixed-length placeholders (pydicom would take minutes for 100,000)
and kept in ``bench/out``.

dcmqrscp keeps at most 500 studies per storage area (``DB_UpperMaxStudies`` in
dcmtk's dcmqrdbi.h), and its index grows in quadratic time: ``index.dat``
holds one ~8 KB record per image and every insertion (dcmqridx, or a C-STORE)
scans it whole (here 1,000 files took 2.6 s, the next 1,000 9.6 s: its 500
studies x 100 would take hours).  So it gets the first
``dcmqrscp_studies(...)`` studies, at most ``DCMQRSCP_MAX_INSTANCES`` (10,000)
instances, indexed with ``dcmqridx`` once; the queries are built so that
every match lies in those, and every server must return the same number of
matches:

- 8a: study level by PatientID: the two studies of the patient of study
  ``indexed // 4``;
- 8b: PatientName ``MUL*`` (one surname in 20) and a StudyDate range
  covering studies ``indexed // 10`` .. ``0.6 x indexed``.
"""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import ENV, OUT, free_port, start_dcmtk_server, stop_process, tool
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from echoes import config as config_module
from echoes.index.embedded import ArchiveIndex
from echoes.index.record import InstanceRecord, read_record

ROOT = "1.2.826.0.1.3680043.99.17"
SC = "1.2.840.10008.5.1.4.1.1.7"
STUDY_ROOT_FIND = "-S"
DCMQRSCP_AE = "DCMQRSCP"
#: dcmtk's DB_UpperMaxStudies: the most studies one dcmqrscp storage area indexes.
DCMQRSCP_MAX_STUDIES = 500
#: The most instances given to dcmqrscp: its index takes quadratic time to build.
DCMQRSCP_MAX_INSTANCES = 10_000
SURNAMES = ("MULLER", "SMITHE", "JOHNSO", "BROWNE", "GARCIA", "MILLER", "DAVISO", "MARTIN",
            "WILSON", "ANDERS", "THOMAS", "TAYLOR", "MOOREE", "JACKSO", "WHITEE", "HARRIS",
            "CLARKE", "LEWISS", "ROBINS", "WALKER")
FIRST_DAY = dt.date(2020, 1, 1)
#: Fixed-length placeholders of the template, replaced per object.
PLACEHOLDERS = {"study": f"{ROOT}.1.9999999", "series": f"{ROOT}.2.9999999",
                "sop": f"{ROOT}.3.99999999", "patient": "PID99999", "name": "XXXXXX^P99999",
                "date": "19000101"}
#: The study-level keys every query asks for (each server answers them all).
RETURN_KEYS = ("StudyInstanceUID", "StudyTime", "AccessionNumber", "StudyDescription")


def study_date(n: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=n)).strftime("%Y%m%d")


def _template() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = PLACEHOLDERS["sop"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = PLACEHOLDERS["study"], PLACEHOLDERS["series"]
    ds.PatientID, ds.PatientName = PLACEHOLDERS["patient"], PLACEHOLDERS["name"]
    ds.StudyDate, ds.StudyTime = PLACEHOLDERS["date"], "101500"
    ds.AccessionNumber, ds.StudyDescription, ds.Modality = "ACC1", "QR BENCH", "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256))
    path = OUT / ".qr-template.dcm"
    OUT.mkdir(exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    for value in PLACEHOLDERS.values():
        assert data.count(value.encode()) >= 1, value
    return data


def corpus(studies: int, per_study: int) -> list[Path]:
    """The archive's files (made once, kept in ``bench/out/qr<studies>x<per_study>``)."""
    folder = OUT / f"qr{studies}x{per_study}"
    if (folder / ".done").exists():
        return sorted(folder.glob("*.dcm"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    template = _template()
    for n in range(studies):
        study = template
        for key, value in (("study", f"{ROOT}.1.{1_000_000 + n}"),
                           ("series", f"{ROOT}.2.{1_000_000 + n}"),
                           ("patient", f"PID{n // 2:05d}"),
                           ("name", f"{SURNAMES[n % len(SURNAMES)]}^P{n:05d}"),
                           ("date", study_date(n))):
            assert len(value) == len(PLACEHOLDERS[key]), key
            study = study.replace(PLACEHOLDERS[key].encode(), value.encode())
        for k in range(per_study):
            sop = f"{ROOT}.3.{10_000_000 + n * per_study + k}"
            (folder / f"{n:05d}-{k:04d}.dcm").write_bytes(
                study.replace(PLACEHOLDERS["sop"].encode(), sop.encode()))
    (folder / ".done").touch()
    return sorted(folder.glob("*.dcm"))


@dataclass(frozen=True)
class Query:
    key: str
    label: str
    keys: tuple[str, ...]
    matches: int


def dcmqrscp_studies(studies: int, per_study: int) -> int:
    """How many of the first studies dcmqrscp gets (see the module docstring)."""
    return max(1, min(studies, DCMQRSCP_MAX_STUDIES, DCMQRSCP_MAX_INSTANCES // per_study))


def queries(studies: int, per_study: int) -> list[Query]:
    """Rows 8a and 8b, with the matches each server must return."""
    indexed = dcmqrscp_studies(studies, per_study)
    patient = indexed // 4 // 2  # the patient of study indexed // 4 (and its neighbour)
    low, high = indexed // 10, indexed * 6 // 10
    wanted = sum(1 for n in range(low, high + 1) if n % len(SURNAMES) == 0)
    return [
        Query("8a", "study-level C-FIND by PatientID",
              ("QueryRetrieveLevel=STUDY", f"PatientID=PID{patient:05d}", "PatientName",
               "StudyDate", *RETURN_KEYS), 2),
        Query("8b", "study-level C-FIND by PatientName wildcard + StudyDate range",
              ("QueryRetrieveLevel=STUDY", "PatientName=MUL*",
               f"StudyDate={study_date(low)}-{study_date(high)}", "PatientID", *RETURN_KEYS),
              wanted),
    ]


#: Queries on one association in a timed per-query run (8a, 8b).
QUERIES_PER_RUN = 50


@functools.cache
def query_file() -> Path:
    """A C-FIND query file holding only QueryRetrieveLevel (the ``-k`` keys fill the
    rest): findscu sends one query per file named, all on one association."""
    text, path = OUT / ".qr-query.txt", OUT / ".qr-query.dcm"
    OUT.mkdir(exist_ok=True)
    text.write_text("(0008,0052) CS [STUDY]\n")
    subprocess.run([tool("dump2dcm"), "--write-xfer-little", str(text), str(path)],
                   env=ENV, check=True, capture_output=True)
    return path


def findscu(port: int, called: str, keys: tuple[str, ...], count: bool = False,
            queries: int = 1) -> tuple[float, int]:
    """Wall time of one whole ``findscu -S`` run sending ``queries`` queries on one
    association, and (when counting) the matches of all of them (-q for timed runs:
    no dump of each response, as the worklist row)."""
    argv = [tool("findscu"), STUDY_ROOT_FIND, "-aec", called, "-v" if count else "-q"]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(port)]
    if queries > 1:
        argv += [str(query_file())] * queries
    started = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, timeout=300)
    elapsed = time.perf_counter() - started
    text = done.stdout + done.stderr
    if done.returncode != 0 or b"Association Request Failed" in text:
        raise RuntimeError(f"findscu failed: {text.decode(errors='replace')[-300:]}")
    if count and text.count(b"Final Find Response (Success)") != queries:
        raise RuntimeError(f"a query failed: {text.decode(errors='replace')[-300:]}")
    return elapsed, text.count(b"(Pending)")


def per_query(port: int, called: str, keys: tuple[str, ...], runs: int) -> tuple[float, float]:
    """(seconds per query, seconds of a whole one-query run): the median of ``runs``
    findscu runs with 1 + QUERIES_PER_RUN queries on one association, less the median
    of ``runs`` one-query runs, over QUERIES_PER_RUN.  What findscu's own start and
    association cost (about 20 ms, the same for every server) cancels out."""
    whole = statistics.median(findscu(port, called, keys)[0] for _ in range(runs))
    many = statistics.median(findscu(port, called, keys, queries=1 + QUERIES_PER_RUN)[0]
                             for _ in range(runs))
    return (many - whole) / QUERIES_PER_RUN, whole


class DcmQRSCP:
    """dcmtk's Q/R SCP on a storage area indexed with dcmqridx (no network ingest)."""

    name = "dcmqrscp"
    called = DCMQRSCP_AE

    def __init__(self, work: Path, files: list[Path] | None = None) -> None:
        """Index ``files`` into ``work/db`` (once: pass None to reuse the index)."""
        self.work = work
        database = work / "db"
        if files is not None:
            database.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(files), 2000):
                subprocess.run([tool("dcmqridx"), str(database),
                                *map(str, files[start:start + 2000])],
                               env=ENV, check=True, capture_output=True)
        self.port = free_port()
        config = work / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{DCMQRSCP_AE} {database} RW ({DCMQRSCP_MAX_STUDIES}, 1024mb) ANY\n"
            "AETable END\n")
        log = open(work / "dcmqrscp.log", "ab")  # noqa: SIM115
        self.process = start_dcmtk_server(
            [tool("dcmqrscp"), "-c", str(config), str(self.port)], self.port, self.called,
            cwd=work, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_process(self.process, 10)

    def __enter__(self) -> DcmQRSCP:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def fill_echoes(config: config_module.Config, files: list[Path]) -> None:
    """Put ``files`` into a stopped echoes as its ingester would: each file's record
    read by echoes' own header reader, the file copied to its archive path, the
    records applied by echoes' own index writer in ingester-sized batches."""
    index = ArchiveIndex(config.index_path)
    batch: list[InstanceRecord] = []
    try:
        for path in files:
            record = read_record(path)
            target = config.archive_dir / record.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            batch.append(record)
            if len(batch) == 500:
                index.apply(batch)
                batch = []
        if batch:
            index.apply(batch)
    finally:
        index.close()
