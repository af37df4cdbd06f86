"""Ingest speed and memory, echoes beside dcmtk's storescp, in one run.

Sends the same corpus of CT-like images (512x512, 16-bit) with dcmtk
``storescu`` (one association, TCP_NODELAY=1) to ``storescp`` and to echoes,
and prints objects/s for each and the ratio.  echoes' time runs until the last
object is acknowledged *and* indexed.  ``--big`` also sends one ~1 GB
multi-frame object to echoes and prints the store workers' peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from common import ENV, OUT, free_port, tool, vm_hwm, wait_echo  # bench/common.py
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echoes import config as config_module
from echoes.index.embedded import read_studies

CT = "1.2.840.10008.5.1.4.1.1.2"


def image(study: str, series: str, number: int, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT if frames == 1 else "1.2.840.10008.5.1.4.1.1.7.3"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "BENCH^CT", "BENCH1", "CT"
    ds.StudyDate, ds.InstanceNumber = "20261129", number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def corpus(count: int) -> list[Path]:
    folder = OUT / f"ct{count}"
    files = sorted(folder.glob("*.dcm")) if folder.exists() else []
    if len(files) == count:
        return files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    pixels = (np.random.default_rng(1).integers(0, 4096, (512, 512))).astype("<u2").tobytes()
    for n in range(count):
        ds = image(study, series, n + 1)
        ds.PixelData = pixels
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    return sorted(folder.glob("*.dcm"))


def big_object(frames: int) -> Path:
    """A multi-frame file written header first, pixels appended in chunks."""
    path = OUT / f"big{frames}.dcm"
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    ds = image(generate_uid(), generate_uid(), 1, frames)
    ds.save_as(path, enforce_file_format=True)
    frame = np.arange(512 * 512, dtype="<u2").tobytes()
    with open(path, "ab") as handle:
        handle.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * frames).to_bytes(4, "little"))
        for _ in range(frames):
            handle.write(frame)
    return path


def storescu(port: int, files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run([tool("storescu"), "-xe", "127.0.0.1", str(port),
                    *map(str, files)], env=ENV, check=True, capture_output=True)
    return time.perf_counter() - started


def wait_port(port: int) -> None:
    wait_echo(port, timeout=20.0)


def run_storescp(files: list[Path]) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        process = subprocess.Popen([tool("storescp"), "-od", folder, str(port)], env=ENV)
        try:
            wait_port(port)
            seconds = storescu(port, files)
            arrived = len(os.listdir(folder))
        finally:
            process.terminate()
            process.wait()
    if arrived != len(files):
        raise SystemExit(f"storescp got {arrived} of {len(files)}")
    return seconds


def start_echoes(home: Path) -> tuple[subprocess.Popen, config_module.Config]:
    (home / "etc").mkdir(parents=True)
    ini = home / "etc" / "echoes.ini"
    ini.write_text(f"[echoes]\nbind = 127.0.0.1\nstore_port = {free_port()}\n"
                   f"mwl_port = {free_port()}\nhttp_port = {free_port()}\nmin_free_mb = 100\n")
    config = config_module.load(ini)
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(ini), "start"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(config.store_port)
    return process, config


def instances(config: config_module.Config) -> int:
    return sum(s["NumberOfInstances"] for s in read_studies(config.index_path))


def run_echoes(files: list[Path], big: Path | None) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        process, config = start_echoes(Path(folder) / "home")
        try:
            started = time.perf_counter()
            storescu(config.store_port, files)
            while instances(config) < len(files):
                time.sleep(0.01)
            seconds = time.perf_counter() - started
            peak = None
            if big is not None:
                storescu(config.store_port, [big])
                workers = [c for c in psutil.Process(process.pid).children()
                           if c.cmdline() and c.cmdline()[0].strip() == "echoes: store"]
                peak = max(vm_hwm(w.pid) for w in workers)
                while instances(config) < len(files) + 1:
                    time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
    return seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--big", action="store_true", help="also send a ~1 GB object")
    parser.add_argument("--frames", type=int, default=2000, help="frames of the big object")
    args = parser.parse_args()
    for name in ("storescu", "storescp", "echoscu"):
        tool(name)  # exits naming the Debian package when missing
    OUT.mkdir(exist_ok=True)
    files = corpus(args.count)
    big = big_object(args.frames) if args.big else None
    dcmtk_s = run_storescp(files)
    echoes_s, peak = run_echoes(files, big)
    print(f"{args.count} CT 512x512 16-bit, one association, storescu -xe, TCP_NODELAY=1")
    print(f"  storescp: {dcmtk_s:7.2f} s  {args.count / dcmtk_s:7.1f} objects/s")
    print(f"  echoes:   {echoes_s:7.2f} s  {args.count / echoes_s:7.1f} objects/s "
          "(until all indexed)")
    print(f"  ratio echoes/storescp time: {echoes_s / dcmtk_s:.2f} (target <= 2.0)")
    if peak is not None:
        size = big.stat().st_size / 2**20
        print(f"  {size:.0f} MiB object: store worker peak RSS {peak:.0f} MiB (target < 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
