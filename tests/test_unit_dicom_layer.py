"""echoes.dicom is one self-contained DICOM layer: it imports nothing else from echoes."""

from __future__ import annotations

import ast
from pathlib import Path

import echoes
from echoes import dicom

DICOM = Path(dicom.__file__).parent


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            if node.module == "echoes":
                names.extend(f"echoes.{alias.name}" for alias in node.names)
    return names


def test_dicom_imports_nothing_else_from_echoes() -> None:
    outside = {
        f"{path.name}: {name}"
        for path in sorted(DICOM.glob("*.py"))
        for name in _imported_modules(path)
        if (name == "echoes" or name.startswith("echoes."))
        and not (name == "echoes.dicom" or name.startswith("echoes.dicom."))
    }
    assert not outside


def test_implementation_version_name_follows_the_version() -> None:
    assert dicom.IMPLEMENTATION_VERSION_NAME == f"ECHOES_{echoes.__version__}"[:16]
    assert echoes.IMPLEMENTATION_CLASS_UID == dicom.IMPLEMENTATION_CLASS_UID
