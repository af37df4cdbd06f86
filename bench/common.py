"""Helpers shared by the benchmarks: the real dcmtk tools, ports, peak memory.

Why a resolver for dcmtk: pynetdicom installs Python apps called
``storescu``, ``storescp``, ``findscu`` and ``echoscu`` into the venv's
``bin/``.  With that folder on PATH, a plain ``storescu`` is the Python one,
about ten times slower than dcmtk's, and every figure would be wrong.
:func:`tool` therefore returns only ELF executables, ``/usr/bin`` first.

Why the two environments: Debian's dcmtk leaves Nagle's algorithm on unless
``TCP_NODELAY=1`` is in its environment (a sender then waits 40-90 ms per
object for a delayed ACK), so every dcmtk client and server gets
:data:`ENV`, except a deliberately Nagle-on sender, which gets
:func:`nagle_env`.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

#: Environment for dcmtk processes: Nagle off (see the module docstring).
ENV = {**os.environ, "TCP_NODELAY": "1"}

#: Debian package that provides each external program.
PACKAGES = {
    "storescu": "dcmtk", "storescp": "dcmtk", "findscu": "dcmtk", "echoscu": "dcmtk",
    "wlmscpfs": "dcmtk", "Orthanc": "orthanc",
}


class MissingTool(SystemExit):
    """A program the benchmark needs is not installed (says which package)."""


def nagle_env() -> dict[str, str]:
    """Environment of a dcmtk sender that leaves Nagle's algorithm on."""
    return {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


@functools.cache
def tool(name: str) -> str:
    """Absolute path of the real (compiled) program ``name``.

    ``/usr/bin`` and ``/usr/sbin`` first, then PATH; scripts of the same name
    (pynetdicom's apps in a venv) are skipped.
    """
    folders = ["/usr/bin", "/usr/sbin", *os.environ.get("PATH", "").split(os.pathsep)]
    for folder in folders:
        candidate = Path(folder or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and _is_elf(candidate):
            return str(candidate)
    package = PACKAGES.get(name, "dcmtk")
    raise MissingTool(f"{name} not found (a compiled binary is needed, not a script of that "
                      f"name): install the Debian package '{package}' (apt-get install {package})")


#: Ports this test process has handed out: the kernel may give a just-released port again,
#: and a config with store_port == http_port is refused (a test run failed on exactly that).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback TCP port free right now and not handed out before in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def echo(port: int, called: str = "ANY-SCP") -> bool:
    """True when a C-ECHO to ``port`` succeeds (dcmtk echoscu)."""
    done = subprocess.run([tool("echoscu"), "-aec", called, "127.0.0.1", str(port)], env=ENV,
                          capture_output=True)
    return done.returncode == 0


def wait_echo(port: int, called: str = "ANY-SCP", timeout: float = 60.0,
              process: subprocess.Popen | None = None) -> None:
    """Wait until a server answers C-ECHO; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if echo(port, called):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers C-ECHO on port {port} after {timeout:.0f} s")


def vm_hwm(pid: int) -> float:
    """Peak resident set size of ``pid`` in MiB (0 when the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def quiet_disk() -> None:
    """Write back what earlier runs left in the page cache before a clock starts.

    A row's corpus and the last system's store (about 1.5 GB after the CT
    rows) stay dirty in memory for up to 30 s (the kernel's
    ``dirty_expire_centisecs``) and are then flushed in the background: on
    this kind of machine that lands in the middle of the next timed run and
    slows every fsync in it, which bills servers that make the
    acknowledgement durable (echoes, Orthanc) for an earlier system's
    writes, by whichever order they ran in.  Every system gets the same
    call right before its clock.
    """
    os.sync()


def wait_idle(pid: int, timeout: float = 20.0, window: float = 0.5,
              busy: float = 0.05) -> bool:
    """Wait until ``pid`` and its children use under ``busy`` of a CPU over ``window``.

    A server that answers C-ECHO may still be starting its other processes
    (imports, folder scans); on two cores that would bill the first
    measurement for the start-up.  False when still busy after ``timeout``.
    """
    import psutil

    def cpu() -> float:
        total = 0.0
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    deadline = time.monotonic() + timeout
    before = cpu()
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu()
        if now - before < busy * window:
            return True
        before = now
    return False


def start_dcmtk_server(argv: list[str], port: int, called: str = "ANY-SCP",
                      **popen: object) -> subprocess.Popen:
    """Start a dcmtk server (``ENV``: TCP_NODELAY=1) and wait until it answers C-ECHO
    on ``port``; stopped again if it does not (storescp, wlmscpfs, dcmqrscp)."""
    process = subprocess.Popen(argv, env=ENV, **popen)  # type: ignore[call-overload]
    try:
        wait_echo(port, called, process=process)
    except BaseException:
        stop_process(process, 10)
        raise
    return process


def stop_process(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM, wait, then SIGKILL: a server this benchmark started must not outlive it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def storescu_acknowledged(port: int, files: list[Path], sop_of: dict[str, str]) -> dict[str, float]:
    """Send ``files`` with ``storescu -v``; SOP Instance UID -> when its Success came.

    storescu -v prints "Sending file: X" then the response: the moment the
    response line arrives is the moment the receiver acknowledged X.
    """
    responses: dict[str, float] = {}
    client = subprocess.Popen([tool("storescu"), "-v", "-xe", "127.0.0.1", str(port),
                               *map(str, files)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
    current = ""
    assert client.stdout is not None
    for line in client.stdout:
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line:
            responses[sop_of[current]] = time.time()
    client.wait()
    return responses
