"""The layer rules of README's "Code layout", checked on the source (an ``ast`` walk).

Why a test: the layout only keeps its meaning if nobody quietly imports across
it. Each package may import the packages listed for it and nothing else of
echoes; the rules read top to bottom as the layers do (dicom knows nothing of
the rest, services nothing of processes, the Browser only the seams' faces).
Imports inside functions count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ECHOES = Path(__file__).resolve().parents[2] / "echoes"

#: package (or top-level module) -> the echoes packages/modules it may import.
#: "echoes" itself (the package's __init__: version, implementation UID) is always allowed.
ALLOWED: dict[str, frozenset[str]] = {
    "dicom": frozenset(),
    "config": frozenset(),
    "worklist": frozenset({"dicom"}),
    # The seams' constructors read the configuration (the one place a backend is chosen).
    "storage": frozenset({"dicom", "config"}),
    # PostgreSQL (connections, pools, the schema) for the backends of both seams.
    "database": frozenset({"config"}),
    "index": frozenset({"dicom", "storage", "worklist", "config", "database"}),
    "queue": frozenset({"dicom", "storage", "config", "database"}),
    "logs": frozenset({"config"}),
    "services": frozenset({"dicom", "worklist", "storage", "index", "queue", "config", "logs"}),
    "ops": frozenset({"dicom", "worklist", "storage", "index", "queue", "config", "logs",
                      "services", "processes", "database"}),
    "processes": frozenset({"dicom", "worklist", "storage", "index", "queue", "config", "logs",
                            "services", "ops", "web", "database"}),
    "web": frozenset({"dicom", "worklist", "storage", "index", "queue", "config", "logs",
                      "services", "ops", "config_edit"}),
    "config_edit": frozenset({"config", "storage"}),
    "cli": frozenset({"dicom", "worklist", "storage", "index", "queue", "config", "logs",
                      "services", "ops", "processes", "web", "config_edit", "database"}),
    "__main__": frozenset({"cli"}),
}

#: Modules of a package that nobody outside it may import: the backends behind a seam.
PRIVATE: dict[str, frozenset[str]] = {
    "index.embedded": frozenset({"index", "ops", "cli"}),
    "index.postgres": frozenset({"index"}),
    "queue.postgres": frozenset({"queue"}),
    "index.journal": frozenset({"index"}),
}


def layer_of(path: Path) -> str:
    parts = path.relative_to(ECHOES).with_suffix("").parts
    return parts[0]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ECHOES).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Every ``echoes.x.y`` this file imports, as ``x.y`` (names imported from a package too)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name[len("echoes."):] for name in found if name.startswith("echoes.")}


SOURCES = sorted(p for p in ECHOES.rglob("*.py"))


def test_every_module_is_in_a_layer_with_rules() -> None:
    assert {layer_of(p) for p in SOURCES} - {"__init__", "data"} <= set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_of(p) or "echoes")
def test_imports_follow_the_layers(path: Path) -> None:
    layer = layer_of(path)
    if layer in ("__init__", "data"):
        return
    allowed = ALLOWED[layer] | {layer}
    wrong = set()
    for name in imported(path):
        target = name.split(".")[0]
        if (ECHOES / target).is_dir() or (ECHOES / f"{target}.py").exists():
            if target not in allowed:
                wrong.add(name)
        for private, users in PRIVATE.items():
            if (name == private or name.startswith(private + ".")) and layer not in users:
                wrong.add(name)
    assert not wrong, f"{module_of(path)} may not import {sorted(wrong)}"


def test_the_rules_catch_a_wrong_import(tmp_path: Path) -> None:
    """The walk sees a late import inside a function (so the test can fail)."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from echoes.processes import supervisor\n")
    assert imported(source) == {"processes", "processes.supervisor"}


def test_web_does_not_import_tinydb() -> None:
    for path in (ECHOES / "web").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(n.split(".")[0] == "tinydb" for n in names), path


#: The only modules that speak to PostgreSQL: the database package and the two
#: seams' backends (everything else goes through open_index / open_job_store).
PSYCOPG_USERS = ("database", "index.postgres", "queue.postgres")


def test_only_the_database_backends_import_psycopg() -> None:
    for path in SOURCES:
        module = module_of(path)
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if any(n.split(".")[0] in ("psycopg", "psycopg_pool") for n in names):
            assert module.startswith(PSYCOPG_USERS), module


#: Modules of the Browser that hold pure logic: no web framework, so their
#: unit tests need no app, no request and no socket.
PURE_WEB_MODULES = ("dicomweb/qido.py", "dicomweb/dicom_json.py", "dicomweb/media.py",
                    "dicomweb/multipart.py")
WEB_FRAMEWORKS = frozenset({"flask", "werkzeug", "waitress", "jinja2"})


def third_party(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (late imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("name", PURE_WEB_MODULES)
def test_pure_web_modules_import_no_web_framework(name: str) -> None:
    assert not third_party(ECHOES / "web" / name) & WEB_FRAMEWORKS


def test_the_pure_rule_catches_a_framework_import(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from flask import request\n")
    assert third_party(source) & WEB_FRAMEWORKS == {"flask"}
