"""``echoes passwd``: the real command against a config file, checked as the Browser checks."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_config
from werkzeug.security import check_password_hash

from echoes import config as config_module


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "home")
    path.write_text("# the admin's notes\n" + path.read_text() + "http_user = admin ; login\n")
    return path


def passwd(ini: Path, *args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(ini), "passwd",
                           *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_password_from_stdin(ini: Path) -> None:
    before = ini.read_text()
    done = passwd(ini, stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert "admin" in done.stdout and "without restart" in done.stdout
    config = config_module.load(ini)
    assert config.http_password_hash.startswith("scrypt:")
    assert check_password_hash(config.http_password_hash, "correct horse")
    assert not check_password_hash(config.http_password_hash, "correct horse\n")
    assert not check_password_hash(config.http_password_hash, "wrong horse")
    assert ini.read_text() == before + f"http_password_hash = {config.http_password_hash}\n"


def test_user_and_password_together(ini: Path) -> None:
    done = passwd(ini, "--user", "radiology", stdin="s3cret-enough")
    assert done.returncode == 0, done.stderr
    assert "radiology" in done.stdout
    config = config_module.load(ini)
    assert config.http_user == "radiology"
    assert check_password_hash(config.http_password_hash, "s3cret-enough")
    assert "http_user = radiology ; login\n" in ini.read_text()


def test_setting_again_replaces_the_hash(ini: Path) -> None:
    assert passwd(ini, stdin="first password\n").returncode == 0
    assert passwd(ini, stdin="second password\n").returncode == 0
    config = config_module.load(ini)
    assert ini.read_text().count("http_password_hash") == 1
    assert check_password_hash(config.http_password_hash, "second password")


@pytest.mark.parametrize("stdin, message", [
    ("short\n", "at least 8 characters"),
    ("", "no password on stdin"),
])
def test_bad_password_is_refused(ini: Path, stdin: str, message: str) -> None:
    before = ini.read_text()
    done = passwd(ini, stdin=stdin)
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert ini.read_text() == before


def test_bad_user_is_refused_and_nothing_set(ini: Path) -> None:
    before = ini.read_text()
    done = passwd(ini, "--user", "two words", stdin="long enough password\n")
    assert done.returncode == 1
    assert "http_user: must be 1-64 printable characters" in done.stderr
    assert done.stderr.count("\n") == 1
    assert ini.read_text() == before


def _at_terminal(ini: Path, answers: list[str]) -> tuple[int, str]:
    """Run ``echoes passwd`` with a terminal of its own, typing ``answers`` at its prompts."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-m", "echoes", "--config", str(ini),
                                  "passwd"])
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            prompts = output.count(b"New password: ") + output.count(b"Again: ")
            if pending and prompts > len(answers) - len(pending):  # a prompt not answered yet
                os.write(master, pending.pop(0).encode() + b"\n")
    done, status = os.waitpid(pid, os.WNOHANG)
    patience = time.monotonic() + 10
    while not done and time.monotonic() < patience:
        time.sleep(0.05)
        done, status = os.waitpid(pid, os.WNOHANG)
    if not done:  # still waiting for input: a failure, not a hang
        os.kill(pid, signal.SIGKILL)
        _pid, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_password_typed_twice_at_a_terminal(ini: Path) -> None:
    code, output = _at_terminal(ini, ["typed at a tty", "typed at a tty"])
    assert code == 0, output
    assert "New password:" in output and "Again:" in output
    assert "typed at a tty" not in output  # not echoed
    assert check_password_hash(config_module.load(ini).http_password_hash, "typed at a tty")


def test_passwords_that_differ_at_a_terminal(ini: Path) -> None:
    before = ini.read_text()
    code, output = _at_terminal(ini, ["typed at a tty", "typed at a ttx"])
    assert code == 1
    assert "the two passwords differ" in output
    assert ini.read_text() == before
