"""Index write cost as the archive grows: 100,000 synthetic instances.

Feeds ArchiveIndex.apply() in ingester-sized batches (studies of --per-study
instances in 4 series) and prints the cost per 1,000 records at the start and
at the end; the ratio must stay <= 1.5 (flat cost per object).  Then times
reading the catalog the way ``echoes studies --json`` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from echoes.index import ArchiveIndex, InstanceRecord, read_studies

ROOT = "1.2.826.0.1.3680043.99"


def records(total: int, per_study: int):
    for n in range(total):
        study, within = divmod(n, per_study)
        series = within % 4
        yield InstanceRecord(
            SOPInstanceUID=f"{ROOT}.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            SeriesInstanceUID=f"{ROOT}.2.{study}.{series}", StudyInstanceUID=f"{ROOT}.1.{study}",
            PatientID=f"P{study % 5000}", PatientName=f"DOE^PATIENT{study}", StudyDate="20261129",
            Modality="CT", InstanceNumber=str(within), TransferSyntaxUID="1.2.840.10008.1.2.1",
            path=f"{ROOT}.1.{study}/{ROOT}.2.{study}.{series}/{ROOT}.3.{n}.dcm", size=526000,
            received=f"2026-11-29T10:00:00.{n:09d}", calling_ae="CT01")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="records per ingester batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.json"
        index = ArchiveIndex(path)
        per_thousand: list[float] = []
        batch: list[InstanceRecord] = []
        started = time.perf_counter()
        for n, record in enumerate(records(args.records, args.per_study), 1):
            batch.append(record)
            if len(batch) == args.batch:
                index.apply(batch)
                batch = []
            if n % 1000 == 0:
                if batch:
                    index.apply(batch)
                    batch = []
                now = time.perf_counter()
                per_thousand.append(now - started)
                started = now
        index.close()
        first, last = per_thousand[0], per_thousand[-1]
        ratio = last / first
        t0 = time.perf_counter()
        studies = read_studies(path)
        read_seconds = time.perf_counter() - t0
    print(f"records {args.records}, {args.per_study} per study, batches of {args.batch}")
    print(f"first 1,000: {first:.3f} s   last 1,000: {last:.3f} s   ratio {ratio:.2f} "
          f"(target <= 1.5): {'PASS' if ratio <= 1.5 else 'FAIL'}")
    print(f"read_studies: {len(studies)} studies in {read_seconds * 1000:.0f} ms")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
