"""Several echoes nodes as one archive, as a site runs them: two nodes (own spool, own
ports, one PostgreSQL, one archive folder) behind HAProxy in TCP mode, 4 dcmtk storescu
clients sending 2,000 objects through it; in one run a node is killed with SIGKILL
midway (its whole process group) and started again, and what storescu did not see
acknowledged is sent again.  Slow: about a minute per run on 2 cores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pydicom
import pytest
from helpers import (
    DCMTK_ENV,
    Server,
    free_port,
    make_dataset,
    start_server,
    stop_server,
    studies_json,
    wait_for,
    write_part10,
)
from pydicom.uid import generate_uid

CLIENTS = 4
OBJECTS = 2000
STUDIES_PER_CLIENT = 10
#: Files per storescu run: one association each, so HAProxy spreads them over the nodes.
PER_ASSOCIATION = 50

HAPROXY_CFG = """global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch
frontend dicom
    bind 127.0.0.1:{port}
    default_backend echoes
backend echoes
    balance roundrobin
{servers}"""


def haproxy(folder: Path, node_ports: dict[str, int]) -> tuple[subprocess.Popen, int]:
    """HAProxy in front of the nodes' store ports, on a free port of its own."""
    port = free_port()
    servers = "".join(f"    server {name} 127.0.0.1:{store} check inter 1s fall 2 rise 1\n"
                      for name, store in node_ports.items())
    cfg = folder / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers=servers))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                               stderr=open(folder / "haproxy.log", "wb"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("haproxy did not listen")


def corpus(folder: Path) -> list[list[Path]]:
    """Each client's files: STUDIES_PER_CLIENT studies of tiny images."""
    per_client = OBJECTS // CLIENTS
    per_study = per_client // STUDIES_PER_CLIENT
    clients = []
    for client in range(CLIENTS):
        files = []
        for s in range(STUDIES_PER_CLIENT):
            study, series = generate_uid(), generate_uid()
            for n in range(per_study):
                ds = make_dataset(study=study, series=series, patient_id=f"MN{client}-{s}")
                ds.PatientName = f"NODES^C{client}S{s}"
                ds.InstanceNumber = n + 1
                files.append(write_part10(ds, folder / f"c{client}-s{s}-{n}.dcm"))
        clients.append(files)
    return clients


def acknowledged_by(output: str) -> set[str]:
    """The files storescu -v saw acknowledged with Success (each 'Sending file' line
    followed by 'Received Store Response (Success)' before the next one)."""
    done, current = set(), None
    for line in output.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = sending[1].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            done.add(current)
            current = None
    return done


def send(port: int, files: list[Path]) -> set[str]:
    """storescu runs of PER_ASSOCIATION files; the files acknowledged."""
    acknowledged: set[str] = set()
    for start in range(0, len(files), PER_ASSOCIATION):
        chunk = files[start:start + PER_ASSOCIATION]
        done = subprocess.run(["storescu", "-v", "-nh", "-aec", "ECHOES", "127.0.0.1",
                               str(port), *map(str, chunk)], env=DCMTK_ENV,
                              capture_output=True, text=True, timeout=300)
        acknowledged |= acknowledged_by(done.stdout + done.stderr)
    return acknowledged


def scalar(url: str, statement: str) -> object:
    with psycopg.connect(url) as connection:
        return connection.execute(statement).fetchone()[0]


def wait_for_association(port: int, timeout: float = 60) -> None:
    """Until a connection to ``port`` has stayed open across two looks 20 ms apart (an
    association, not one of HAProxy's health checks, which close at once)."""
    import psutil

    before: set[tuple] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = {tuple(c.raddr) for c in psutil.net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.raddr
               and c.status == psutil.CONN_ESTABLISHED}
        if now & before:
            return
        before = now
        time.sleep(0.02)
    raise AssertionError(f"no association on port {port}")


def kill_group(server: Server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


def run_cluster(tmp_path: Path, database_url: str, kill: bool) -> dict:
    destination_port = free_port()
    received = tmp_path / "destination"
    received.mkdir()
    storescp_log = tmp_path / "storescp.log"
    storescp = subprocess.Popen(["storescp", "-v", "-aet", "DEST", "-od", str(received),
                                 str(destination_port)], env=DCMTK_ENV,
                                stdout=open(storescp_log, "wb"), stderr=subprocess.STDOUT)
    shared = tmp_path / "archive"
    section = f"\n[ae:DEST]\nhost = 127.0.0.1\nport = {destination_port}\nforward = yes\n"
    settings = {name: {"store_port": free_port(), "mwl_port": free_port(),
                       "http_port": free_port(), "node_name": name}
                for name in ("node-a", "node-b")}
    common = {"database_url": database_url, "archive_dir": shared, "retry_interval": 1,
              "max_attempts": 10000}
    nodes: dict[str, Server] = {}
    proxy = None
    try:
        for name, own in settings.items():
            nodes[name] = start_server(tmp_path / name, sections=section, own_group=True,
                                       **own, **common)
        proxy, port = haproxy(tmp_path, {name: own["store_port"]
                                         for name, own in settings.items()})
        (tmp_path / "in").mkdir()
        clients = corpus(tmp_path / "in")
        every = {str(path): path for files in clients for path in files}
        acknowledged: set[str] = set()
        lock = threading.Lock()

        def client(files: list[Path]) -> None:
            done = send(port, files)
            with lock:
                acknowledged.update(done)

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(files,)) for files in clients]
        for thread in threads:
            thread.start()
        killed_at = in_spool = None
        if kill:  # midway: once half the objects are indexed
            wait_for(lambda: scalar(database_url, "SELECT count(*) FROM instances")
                     >= OBJECTS // 2, 300, "half the objects never indexed")
            wait_for_association(settings["node-b"]["store_port"])  # objects in flight
            killed_at = scalar(database_url, "SELECT count(*) FROM instances")
            kill_group(nodes["node-b"])
            in_spool = len(list((nodes["node-b"].config.spool_dir / "incoming").iterdir()))
            nodes["node-b"] = start_server(tmp_path / "node-b", sections=section,
                                           own_group=True, **settings["node-b"], **common)
        for thread in threads:
            thread.join(600)
        first_pass = len(acknowledged)
        resent = 0
        for _round in range(5):  # what was not acknowledged, sent again
            missing = [every[name] for name in sorted(set(every) - acknowledged)]
            if not missing:
                break
            resent += len(missing)
            acknowledged |= send(port, missing)
        elapsed = time.monotonic() - started
        assert acknowledged == set(every), f"{len(set(every) - acknowledged)} never acknowledged"

        expected = sorted(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                          for path in every.values())
        # indexed: every acknowledged object once, every spool drained
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM instances") == OBJECTS
                 and not any(list((node.config.spool_dir / "incoming").iterdir())
                             for node in nodes.values()), 120,
                 lambda: f"indexed {scalar(database_url, 'SELECT count(*) FROM instances')}")
        with psycopg.connect(database_url) as connection:
            indexed = sorted(row[0] for row in connection.execute(
                "SELECT sop_instance_uid FROM instances"))
            summed = connection.execute("SELECT sum(number_of_instances) FROM studies"
                                        ).fetchone()[0]
        assert indexed == expected  # 0 duplicates: each SOP Instance UID once
        assert summed == OBJECTS
        archived = sorted(path.stem for path in shared.rglob("*.dcm"))
        assert archived == expected
        listings = [studies_json(node) for node in nodes.values()]
        assert listings[0] == listings[1] and len(listings[0]) == CLIENTS * STUDIES_PER_CLIENT

        # both nodes beat, the restarted one under its new supervisor
        with psycopg.connect(database_url) as connection:
            beats = dict(connection.execute("SELECT node_name, pid FROM nodes WHERE NOT stopped "
                                            "AND last_seen > now() - interval '30 s'"))
        assert beats == {name: node.process.pid for name, node in nodes.items()}

        # the forward destination: every object
        def done_jobs() -> object:
            return scalar(database_url, "SELECT count(*) FROM jobs WHERE state = 'done'")

        wait_for(lambda: done_jobs() == OBJECTS, 300, lambda: f"jobs done: {done_jobs()}")
        assert scalar(database_url, "SELECT count(*) FROM jobs") == OBJECTS
        time.sleep(2)  # a late second send would come now
        delivered = sorted(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                           for path in received.iterdir())
        assert delivered == expected
        requests = storescp_log.read_text(errors="replace").count("Received Store Request")
        figures = {"first_pass_acknowledged": first_pass, "resent": resent,
                   "killed_at_indexed": killed_at, "left_in_killed_spool": in_spool,
                   "destination_requests": requests,
                   "seconds": round(elapsed, 1)}
        print(f"\nmultinode kill={kill}: {figures}")
        return figures
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                stop_server(node)
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        storescp.terminate()
        storescp.wait(10)


@pytest.mark.slow
def test_two_nodes_behind_haproxy_without_kills_forward_every_object_exactly_once(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    figures = run_cluster(tmp_path, database_url, kill=False)
    assert figures["resent"] == 0
    assert figures["destination_requests"] == OBJECTS


@pytest.mark.slow
def test_a_node_killed_midway_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    figures = run_cluster(tmp_path, database_url, kill=True)
    assert figures["resent"] > 0  # the kill hit associations in flight
    assert figures["destination_requests"] >= OBJECTS
