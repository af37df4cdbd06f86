"""One page of the study list through the index seam (issue 18: ``study_page``).

The Browser's list and ``echoes studies --limit/--offset`` read one page in
arrival or study-date order instead of every study.  Here the embedded side:
the partial sort of :func:`echoes.index.base.study_page` must give exactly
the slice a full sort gives, in both directions, with every tie broken by
StudyInstanceUID; ``EmbeddedIndex.study_page`` pages what the writer wrote;
``echoes studies --limit/--offset`` prints that page; the Browser's catalog
asks a reader that cannot tell its changes for the page (PostgreSQL's case,
checked end to end in tests/e2e/test_study_pages.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from echoes import cli
from echoes.index.base import PAGE_ORDERS, StudyPage, page_key, study_page
from echoes.index.embedded import ArchiveIndex, EmbeddedIndex, InstanceRecord
from echoes.web.catalog import StudyCatalog, parse_study_query


def summaries(count: int, seed: int = 7) -> list[dict]:
    """Study summaries with many ties in date, time and arrival."""
    rng = random.Random(seed)
    return [{"StudyInstanceUID": f"1.2.{n}", "StudyDate": f"2026120{rng.randint(1, 3)}",
             "StudyTime": rng.choice(["", "0800", "0930"]),
             "updated": f"2026-12-04T10:00:0{rng.randint(0, 2)}.000+00:00",
             "NumberOfInstances": n % 5 + 1} for n in range(count)]


@pytest.mark.parametrize("order", PAGE_ORDERS)
@pytest.mark.parametrize("descending", [True, False])
def test_a_page_is_the_slice_of_the_full_sort(order: str, descending: bool) -> None:
    studies = summaries(300)
    full = sorted(studies, key=page_key(order), reverse=descending)
    for limit, offset in ((10, 0), (10, 5), (50, 280), (7, 299), (5, 300), (0, 0)):
        page = study_page(studies, order, descending, limit, offset)
        assert page.studies == full[offset:offset + limit], (limit, offset)
        assert page.total == 300 and page.instances == sum(s["NumberOfInstances"]
                                                           for s in studies)
    assert study_page(studies, order, descending, None, 290).studies == full[290:]


def test_pages_in_a_row_cover_every_study_once() -> None:
    studies = summaries(103)
    seen = []
    for offset in range(0, 110, 10):
        seen += [s["StudyInstanceUID"] for s in
                 study_page(studies, "received", True, 10, offset).studies]
    assert sorted(seen) == sorted(s["StudyInstanceUID"] for s in studies)


def test_bad_pages_are_refused() -> None:
    with pytest.raises(ValueError, match="order must be one of"):
        study_page([], "name")
    with pytest.raises(ValueError, match="limit"):
        study_page([], "date", True, -1)
    with pytest.raises(ValueError, match="offset"):
        study_page([], "date", True, 1, -1)


def record(n: int, study: int, date: str, second: int) -> InstanceRecord:
    return InstanceRecord(
        SOPInstanceUID=f"9.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        SeriesInstanceUID=f"9.2.{study}", StudyInstanceUID=f"9.1.{study}",
        PatientName="DOE^JANE", PatientID=f"P{study}", StudyDate=date,
        path=f"9.1.{study}/9.2.{study}/9.3.{n}.dcm", size=10,
        received=f"2026-12-04T10:00:{second:02d}.000+00:00")


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    """Study 0 arrived last but is the oldest by date; study 4 has two instances."""
    path = tmp_path / "var" / "index.json"
    writer = ArchiveIndex(path)
    writer.apply([record(n, n, f"2026110{n + 1}", 10 + n) for n in range(1, 5)])
    writer.apply([record(5, 4, "20261105", 20), record(6, 0, "20261101", 30)])
    writer.close()
    return path


def uids(page: StudyPage) -> list[str]:
    return [s["StudyInstanceUID"] for s in page.studies]


def test_embedded_index_pages_by_date_and_by_arrival(index_path: Path) -> None:
    reader = EmbeddedIndex(index_path)
    page = reader.study_page("date", True, 2, 0)
    assert uids(page) == ["9.1.4", "9.1.3"] and (page.total, page.instances) == (5, 6)
    assert uids(reader.study_page("date", True, 2, 2)) == ["9.1.2", "9.1.1"]
    assert uids(reader.study_page("date", False, None, 3)) == ["9.1.3", "9.1.4"]
    assert uids(reader.study_page("received", True, 3, 0)) == ["9.1.0", "9.1.4", "9.1.3"]
    assert uids(reader.study_page("received", False, 1, 0)) == ["9.1.1"]


def write_config(tmp_path: Path, index_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "echoes.ini"
    path.write_text(f"[echoes]\nindex_path = {index_path}\n")
    return path


def test_echoes_studies_limit_and_offset(tmp_path: Path, index_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    config = str(write_config(tmp_path, index_path))
    assert cli.main(["--config", config, "studies"]) == 0
    whole = capsys.readouterr().out.splitlines()
    assert whole[-1] == "5 studies, 6 instances"  # the default output as before
    assert cli.main(["--config", config, "studies", "--limit", "2", "--offset", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[1:-1]] == ["9.1.3", "9.1.2"]
    assert lines[-1] == "studies 2-3 of 5 (date order, newest first), 6 instances in all"
    assert cli.main(["--config", config, "studies", "--json", "--order", "received",
                     "--limit", "1"]) == 0
    assert '"StudyInstanceUID": "9.1.0"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--config", config, "studies", "--limit", "-1"])


class PagingReader:
    """A reader that pages in its store and cannot tell its changes (as PostgreSQL):
    records the pages asked for; reading every study is an error here."""

    def __init__(self, studies: list[dict]) -> None:
        self._studies = studies
        self.asked: list[tuple] = []

    def version(self, study_uid: str | None = None) -> int:
        return 1

    def studies(self) -> list[dict]:
        raise AssertionError("the whole catalog was read for an unfiltered page")

    def study_page(self, order: str, descending: bool, limit: int | None,
                   offset: int) -> StudyPage:
        self.asked.append((order, descending, limit, offset))
        return study_page(self._studies, order, descending, limit, offset)


def test_the_browser_reads_one_page_from_a_reader_that_pages() -> None:
    studies = summaries(120)
    reader = PagingReader(studies)
    catalog = StudyCatalog(reader)
    result = catalog.search(parse_study_query({"page": "2", "per_page": "50"}))
    assert reader.asked == [("received", True, 50, 50)]
    full = sorted(studies, key=page_key("received"), reverse=True)
    assert result.studies == full[50:100] and result.total == 120 and result.pages == 3
    result = catalog.search(parse_study_query({"sort": "date", "order": "asc"}))
    assert reader.asked[-1] == ("date", False, 50, 0)
    assert result.studies == sorted(studies, key=page_key("date"))[:50]
    with pytest.raises(AssertionError, match="whole catalog"):  # a filter: the snapshot
        catalog.search(parse_study_query({"patient_id": "P1"}))


def test_the_browser_keeps_its_snapshot_for_an_embedded_index(index_path: Path) -> None:
    catalog = StudyCatalog(EmbeddedIndex(index_path))
    result = catalog.search(parse_study_query({"sort": "date", "per_page": "2"}))
    assert [s["StudyInstanceUID"] for s in result.studies] == ["9.1.4", "9.1.3"]
    assert catalog.full_loads == 1


def test_the_caching_reader_pages_its_catalog_or_asks_its_reader(index_path: Path) -> None:
    from echoes.index.cache import CachingReader

    embedded = EmbeddedIndex(index_path)
    cached = CachingReader(embedded)
    assert uids(cached.study_page("received", True, 2, 1)) == uids(
        embedded.study_page("received", True, 2, 1)) == ["9.1.4", "9.1.3"]
    paging = PagingReader(summaries(30))
    page = CachingReader(paging).study_page("date", True, 5, 10)  # type: ignore[arg-type]
    assert paging.asked == [("date", True, 5, 10)] and len(page.studies) == 5
