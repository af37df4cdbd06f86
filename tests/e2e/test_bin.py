"""The project's own scripts and test prerequisites: what bin/setup and bin/test install, when.

bin/setup runs on every ``bin/run``: it must not need a package index once
.venv is set up (a server without one could not start).  bin/test installs
every Debian package the suite drives, and a test whose tool is missing fails
naming what to install instead of skipping (a green run must have run them).
The scripts run for real against a copy in a temporary folder, with fake
``python``/``apt-get`` that write down how they were called; the pytest runs
are real ones in a subprocess with the tool hidden.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Stands in for python3 and then for .venv/bin/python: writes its arguments
#: down; ``-m venv DIR`` makes DIR/bin/python (itself); ``-m pip install -e``
#: makes .venv/bin/echoes (a fake that writes its arguments down too), or
#: fails when FAKE_PIP_FAILS is set.
FAKE_PYTHON = """#!/bin/sh
echo "python $*" >>"$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [ "$1 $2 $3" = "-m pip install" ] && [ "$5" = "-e" ]; then
    [ -z "${FAKE_PIP_FAILS:-}" ] || exit 1
    printf '#!/bin/sh\\necho "echoes $*" >>"$FAKE_LOG"\\n' >"$(dirname "$0")/echoes"
    chmod +x "$(dirname "$0")/echoes"
fi
exit 0
"""


def fake(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def project_copy(tmp_path: Path, *scripts: str) -> Path:
    """A folder with bin/<scripts>, setup.cfg and pyproject.toml, as in a checkout."""
    home = tmp_path / "echoes"
    (home / "bin").mkdir(parents=True)
    for script in scripts:
        shutil.copy2(REPO / "bin" / script, home / "bin" / script)
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, home / name)
    return home


def test_setup_installs_only_when_the_venv_or_its_dependencies_change(tmp_path: Path) -> None:
    home = project_copy(tmp_path, "setup", "run")
    log = tmp_path / "calls.log"
    python = fake(tmp_path / "python", "python3", FAKE_PYTHON)
    env = {**{k: v for k, v in os.environ.items() if k != "ECHOES_CONFIG"},
           "PYTHON": str(python), "FAKE_LOG": str(log)}
    offline = {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}

    def setup(*args: str, environ: dict[str, str] = offline) -> list[str]:
        """Run bin/setup; return the installs it made (pip's self-upgrade left out)."""
        before = log.read_text().splitlines() if log.exists() else []
        done = subprocess.run([str(home / "bin" / "setup"), *args], env=environ,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        calls = log.read_text().splitlines()[len(before):] if log.exists() else []
        return [c for c in calls if "--upgrade pip" not in c]

    assert setup(environ=env) == ["python -m venv " + str(home / ".venv"),
                                  f"python -m pip install --quiet -e {home}"]
    assert setup() == []  # set up: no pip, no index needed
    assert setup("--test", environ=env) == [f"python -m pip install --quiet -e {home}[test]"]
    assert setup("--test") == []
    assert setup() == []  # the test install serves a plain run too

    # bin/run, offline, on a set-up checkout: straight to echoes.
    done = subprocess.run([str(home / "bin" / "run"), "--daemon"], env=offline,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines()[-1] == (
        f"echoes --config {home}/etc/echoes.ini start --daemon")

    # Dependencies changed: installed again (as asked: plain), then offline again.
    with open(home / "setup.cfg", "a") as cfg:
        cfg.write("# a new dependency\n")
    assert setup(environ=env) == [f"python -m pip install --quiet -e {home}"]
    assert setup() == []
    assert setup("--test", environ=env) == [f"python -m pip install --quiet -e {home}[test]"]

    # A failed install leaves no stamp: the next run tries again.
    (home / "pyproject.toml").write_text((home / "pyproject.toml").read_text() + "\n")
    failed = subprocess.run([str(home / "bin" / "setup")], env={**env, "FAKE_PIP_FAILS": "1"},
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0
    assert setup(environ=env) == [f"python -m pip install --quiet -e {home}"]


def tool_folder(tmp_path: Path, present: list[str], real: list[str]) -> Path:
    """A PATH folder: fake no-op ``present`` commands and links to the ``real`` ones."""
    folder = tmp_path / "path"
    folder.mkdir()
    for name in present:
        fake(folder, name, "#!/bin/sh\nexit 0\n")
    for name in real:
        target = shutil.which(name)
        assert target, f"{name} is needed to run this test"
        (folder / name).symlink_to(target)
    return folder


def test_bin_test_installs_openssl_when_missing(tmp_path: Path) -> None:
    home = project_copy(tmp_path, "test")
    # Stops bin/test right after the packages (set -e): no setup, no pytest here.
    fake(home / "bin", "setup", "#!/bin/sh\nexit 3\n")
    log = tmp_path / "apt.log"
    path = tool_folder(tmp_path, ["storescu", "chromium", "chromedriver"],
                       ["bash", "dirname", "id"])
    fake(path, "apt-get", f'#!/bin/sh\necho "apt-get $*" >>{log}\n')
    fake(path, "sudo", '#!/bin/sh\nexec "$@"\n')
    done = subprocess.run([str(home / "bin" / "test")], env={**os.environ, "PATH": str(path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert "apt-get install -y -qq openssl" in calls, calls

    fake(path, "openssl", "#!/bin/sh\nexit 0\n")
    log.unlink()
    done = subprocess.run([str(home / "bin" / "test")], env={**os.environ, "PATH": str(path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert not log.exists(), "nothing missing, yet apt-get ran"


def inner_pytest(tmp_path: Path, test_file: str, env: dict[str, str]) -> str:
    """Run one test file of this suite in a subprocess; it must fail. Return its output."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'inner'}", test_file],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output  # 0 would mean passed or skipped
    assert " skipped" not in output.splitlines()[-1], output
    return output


def test_tls_tests_fail_without_openssl(tmp_path: Path) -> None:
    path = tool_folder(tmp_path, [], ["storescu"])
    output = inner_pytest(tmp_path, "tests/e2e/test_tls.py", {**os.environ, "PATH": str(path)})
    assert "openssl is not installed" in output and "run bin/test" in output, output


def test_browser_tests_fail_without_selenium(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    fake(hidden / "selenium", "__init__.py",  # as a package that is not installed
         'raise ModuleNotFoundError("hidden by test_bin", name="selenium")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])])}
    output = inner_pytest(tmp_path, "tests/e2e/test_browser.py", env)
    assert "selenium is not installed" in output and "bin/setup --test" in output, output
