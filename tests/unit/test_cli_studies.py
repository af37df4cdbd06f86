"""``echoes studies``: an aligned table a person can read, JSON for scripts.

Pure: the index is written by ``ArchiveIndex`` into a temporary folder and
the command runs in this process (``cli.main``); no server is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echoes import cli
from echoes.index.embedded import ArchiveIndex, InstanceRecord


def record(sop: str, study: str, **values: str) -> InstanceRecord:
    fields = dict(SOPInstanceUID=sop, SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                  SeriesInstanceUID=study + ".1", StudyInstanceUID=study,
                  path=f"{study}/{study}.1/{sop}.dcm", size=100,
                  received="2026-11-29T10:00:00.000+00:00")
    fields.update(values)
    return InstanceRecord(**fields)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A config whose index holds studies with every kind of gap a modality leaves."""
    index_path = tmp_path / "var" / "index.json"
    archive = ArchiveIndex(index_path)
    archive.apply([
        record("1.1.1", "1.2.826.0.1.1", PatientID="P100", PatientName="DOE^JANE",
               StudyDate="20261101", Modality="CT"),
        record("1.1.2", "1.2.826.0.1.1", PatientID="P100", PatientName="DOE^JANE",
               StudyDate="20261101", Modality="SR", SeriesInstanceUID="1.2.826.0.1.1.2"),
        record("2.1.1", "1.2.826.0.1.22"),  # no patient, date or modality at all
        record("3.1.1", "1.2.826.0.1.333", PatientID="J1", PatientName="山田^太郎",
               StudyDate="20261120", Modality="MR"),
    ])
    archive.close()
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "echoes.ini"
    path.write_text(f"[echoes]\nindex_path = {index_path}\n")
    return path


def columns_start(line: str, cells: list[str]) -> list[int]:
    """Display column (CJK characters are two wide) where each cell begins."""
    starts, position = [], 0
    for cell in cells:
        found = line.index(cell, position)
        starts.append(cli._display_width(line[:found]))
        position = found + len(cell)
    return starts


def test_studies_table_is_aligned_and_shows_empty_fields(
        config_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--config", str(config_path), "studies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows, total = lines[0], lines[1:-1], lines[-1]
    assert total == "3 studies, 4 instances"
    assert len(rows) == 3
    cells = [header.split()] + [row.split() for row in rows]
    # every row has a value in every column: empty fields are "-", not a gap
    assert all(len(row) == len(cli.STUDY_COLUMNS) for row in cells), lines
    empty = next(row for row in cells if row[-1] == "1.2.826.0.1.22")
    assert empty[:4] == ["-", "-", "-", "-"]
    # left-aligned columns start at the same display column on every line...
    starts = [columns_start(line, row) for line, row in zip([header, *rows], cells, strict=True)]
    for n, heading in enumerate(cli.STUDY_COLUMNS):
        if heading not in cli.NUMBER_COLUMNS:
            assert len({start[n] for start in starts}) == 1, (heading, lines)
    # ...and counts end at the same one
    for n, heading in enumerate(cli.STUDY_COLUMNS):
        if heading in cli.NUMBER_COLUMNS:
            ends = {start[n] + cli._display_width(row[n]) for start, row in zip(starts, cells,
                                                                                 strict=True)}
            assert len(ends) == 1, (heading, lines)
    assert not any(line != line.rstrip() for line in lines)
    assert any("CT\\SR" in row for row in rows)


def test_studies_json_is_unchanged(config_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--config", str(config_path), "studies", "--json"]) == 0
    studies = json.loads(capsys.readouterr().out)
    assert [s["StudyInstanceUID"] for s in studies] == [
        "1.2.826.0.1.333", "1.2.826.0.1.1", "1.2.826.0.1.22"]
    empty = studies[-1]
    assert (empty["PatientName"], empty["PatientID"], empty["ModalitiesInStudy"]) == ("", "", [])
