"""The project's own scripts and test prerequisites: what bin/test installs, when.

bin/test installs every Debian package the suite drives, and a test whose
tool is missing fails naming what to install instead of skipping (a green run
must have run them).  The script runs for real against a copy in a temporary
folder, with a fake ``apt-get`` that writes down how it was called; the
pytest runs are real ones in a subprocess with the tool hidden.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

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
    output = inner_pytest(tmp_path, "tests/test_tls.py", {**os.environ, "PATH": str(path)})
    assert "openssl is not installed" in output and "run bin/test" in output, output


def test_browser_tests_fail_without_selenium(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    fake(hidden / "selenium", "__init__.py",  # as a package that is not installed
         'raise ModuleNotFoundError("hidden by test_bin", name="selenium")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])])}
    output = inner_pytest(tmp_path, "tests/test_browser.py", env)
    assert "selenium is not installed" in output and "bin/setup --test" in output, output
