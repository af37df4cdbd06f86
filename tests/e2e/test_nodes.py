"""Nodes of one archive on one PostgreSQL: each supervisor's heartbeat in the ``nodes``
table, and ``echoes check`` on one node reporting the others and the shared queue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import psycopg
from helpers import (
    DCMTK_ENV,
    Server,
    echoes_cli,
    free_port,
    make_dataset,
    start_server,
    stop_server,
    wait_for,
    write_part10,
)
from pydicom.uid import generate_uid


def nodes(server: Server) -> dict[str, dict]:
    done = echoes_cli(server, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    return {row["node_name"]: row for row in json.loads(done.stdout)}


def check_lines(server: Server) -> tuple[int, list[str]]:
    done = echoes_cli(server, "check")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def last_seen(url: str, node: str) -> float:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT extract(epoch FROM last_seen)::float8 FROM nodes "
                                  "WHERE node_name = %s", (node,)).fetchone()[0]


def kill_node(server: Server) -> None:
    """SIGKILL the supervisor and every process of the node, as a crash would."""
    every = [server.process.pid] + [child.pid for child in
                                    psutil.Process(server.process.pid).children(recursive=True)]
    for pid in every:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)


def test_each_node_beats_and_check_on_one_reports_the_others_and_the_shared_queue(
        tmp_path: Path, database_url: str, dcmtk: None) -> None:
    down = free_port()  # the destination: nobody listens, so its jobs fail
    section = f"\n[ae:DEST]\nhost = 127.0.0.1\nport = {down}\nforward = yes\n"
    shared = tmp_path / "archive"
    common = {"database_url": database_url, "archive_dir": shared, "retry_interval": 1,
              "max_attempts": 1}
    a = start_server(tmp_path / "a", node_name="node-a", sections=section, **common)
    b = start_server(tmp_path / "b", node_name="node-b", sections=section, **common)
    try:
        # both rows, written by each supervisor: host, its pid, every role running
        wait_for(lambda: set(nodes(a)) == {"node-a", "node-b"}, 20, "no row for each node")
        seen = nodes(b)
        for server, name in ((a, a.process.pid), (b, b.process.pid)):
            row = seen["node-a" if server is a else "node-b"]
            assert row["pid"] == name and row["state"] == "running"
            assert row["roles"]["ingester"]["running"] == 1
            assert row["roles"]["store"]["running"] == row["roles"]["store"]["wanted"] == 2
        _code, lines = check_lines(a)
        assert not [line for line in lines if "node" in line], lines

        # the shared queue: node-b's failed jobs are reported by node-a's check
        folder = tmp_path / "in"
        folder.mkdir()
        files = [write_part10(make_dataset(study=generate_uid()), folder / f"{n}.dcm")
                 for n in range(3)]
        subprocess.run(["storescu", "-aec", "ECHOES", "127.0.0.1", str(b.port),
                        *map(str, files)], env=DCMTK_ENV, check=True, capture_output=True,
                       timeout=60)
        wait_for(lambda: "CRITICAL: 3 failed jobs to DEST (see echoes queue; echoes retry "
                         "--failed)" in check_lines(a)[1], 30, "failed jobs not reported")

        # a clean stop: a WARNING naming the node
        stop_server(b)
        code, lines = check_lines(a)
        stopped = [re.sub(r"stopped \d+ s ago", "stopped N s ago", line)
                   for line in lines if "node-b" in line]
        assert stopped == [
            f"WARNING: node node-b ({os.uname().nodename}, pid {b.process.pid}) stopped N s "
            "ago (echoes nodes --forget node-b if it is gone for good)"], lines
        assert nodes(a)["node-b"]["state"] == "stopped"

        # started again, then killed (no clean stop): its beats end; once its last beat
        # is older than 30 s, CRITICAL naming it
        b = start_server(tmp_path / "b", node_name="node-b", sections=section, **common)
        wait_for(lambda: nodes(a)["node-b"]["pid"] == b.process.pid
                 and nodes(a)["node-b"]["state"] == "running", 20, "restarted node not seen")
        kill_node(b)
        before_a, before_b = last_seen(database_url, "node-a"), last_seen(database_url,
                                                                          "node-b")
        time.sleep(6)  # longer than a beat (5 s)
        assert last_seen(database_url, "node-b") == before_b  # a killed node is silent
        assert last_seen(database_url, "node-a") > before_a  # the other beats on
        code, lines = check_lines(a)
        assert not [line for line in lines if "node-b" in line], lines  # 6 s: not yet
        with psycopg.connect(database_url) as connection:  # 40 s pass, without the wait
            connection.execute("UPDATE nodes SET last_seen = last_seen - interval '40 s' "
                               "WHERE node_name = 'node-b'")
        code, lines = check_lines(a)
        assert code == 2
        down_line = [line for line in lines if line.startswith("CRITICAL: node")]
        assert len(down_line) == 1 and re.fullmatch(
            rf"CRITICAL: node node-b \({os.uname().nodename}, pid {b.process.pid}\) not seen "
            r"for \d\d s: down\?", down_line[0]), lines
        assert nodes(a)["node-b"]["state"] == "down"
        table = echoes_cli(a, "nodes")
        assert "node-b" in table.stdout and "down" in table.stdout, table.stdout

        # a node gone for good is forgotten
        assert echoes_cli(a, "nodes", "--forget", "node-b").returncode == 0
        assert set(nodes(a)) == {"node-a"}
        assert not [line for line in check_lines(a)[1] if "node-b" in line]
    finally:
        for server in (a, b):
            if server.process.poll() is None:
                stop_server(server)


def test_two_nodes_with_one_node_name_are_told_apart_and_named(tmp_path: Path,
                                                               database_url: str) -> None:
    """Two supervisors writing one node's row (a cloned config): their senders would take
    each other's jobs, so the log says so (ERROR) and echoes check is CRITICAL."""
    common = {"database_url": database_url, "archive_dir": tmp_path / "archive",
              "node_name": "twin"}
    a = start_server(tmp_path / "a", **common)
    b = start_server(tmp_path / "b", **common)
    try:
        def said() -> bool:
            return any("node_name twin is used by another node too" in
                       server.config.log_file.read_text(errors="replace")
                       for server in (a, b))

        wait_for(said, 30, "no ERROR about the shared node_name")

        def checked() -> bool:
            return any(any(line.startswith("CRITICAL: node_name twin is used by another "
                                           "node too") for line in check_lines(server)[1])
                       for server in (a, b))

        wait_for(checked, 30, "echoes check never reported the shared node_name")
    finally:
        for server in (a, b):
            stop_server(server)
