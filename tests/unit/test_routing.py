"""Routing rules (issue 20): which destinations an object goes to, held studies, config keys."""

import configparser
from dataclasses import replace
from pathlib import Path

import pytest

from echoes import config
from echoes.index.instance import InstanceRecord
from echoes.processes.ingester import routed_jobs
from echoes.queue import jobs, routing


def parse(text: str) -> config.Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    return config.from_parser(parser, Path("/srv/echoes/etc/echoes.ini"))


def ae(title: str, **rules) -> config.RemoteAE:
    return config.RemoteAE(title, "h", 104, rules.pop("forward", True), **rules)


def record(sop: str, modality: str = "CT", calling: str = "SCANNER", study: str = "1.2.3"):
    return InstanceRecord(SOPInstanceUID=sop, SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                          SeriesInstanceUID=f"{study}.1", StudyInstanceUID=study,
                          Modality=modality, calling_ae=calling, path=f"{study}/{sop}.dcm")


def test_rule_keys_parse_with_defaults():
    cfg = parse("[echoes]\n[ae:CTWS]\nhost = h\nport = 104\nforward = yes\n"
                "forward_modalities = ct  MR,US\nforward_calling_aes = CT1 CT2\n"
                "forward_when = Study\nstable_study_seconds = 5\n"
                "[ae:PACS]\nhost = h\nport = 104\n")
    ctws = cfg.remote_aes["CTWS"]
    assert ctws.forward_modalities == ("CT", "MR", "US")
    assert ctws.forward_calling_aes == ("CT1", "CT2")
    assert (ctws.forward_when, ctws.stable_study_seconds) == ("study", 5)
    pacs = cfg.remote_aes["PACS"]
    assert (pacs.forward_modalities, pacs.forward_calling_aes) == ((), ())
    assert (pacs.forward_when, pacs.stable_study_seconds) == ("instance", 60)


@pytest.mark.parametrize("line, message", [
    ("forward_modalities = CT CATSCAN", "[ae:X] forward_modalities: unknown modality 'CATSCAN'"),
    ("forward_calling_aes = WAY_TOO_LONG_AE_TITLE", "[ae:X] forward_calling_aes: AE title"),
    ("forward_when = series", "[ae:X] forward_when: must be instance or study"),
    ("stable_study_seconds = 0", "[ae:X] stable_study_seconds: must be between 1"),
    ("stable_study_seconds = 1.5", "[ae:X] stable_study_seconds: must be a whole number"),
])
def test_bad_rules_name_the_key(line, message):
    with pytest.raises(config.ConfigError) as caught:
        parse(f"[echoes]\n[ae:X]\nhost = h\nport = 104\n{line}\n")
    assert message in str(caught.value)


@pytest.mark.parametrize("text, days, gb", [
    ("", 0.0, 0.0), ("retention_days = 30\nmax_archive_gb = 0.5\n", 30.0, 0.5)])
def test_retention_keys(text, days, gb):
    cfg = parse(f"[echoes]\n{text}")
    assert (cfg.retention_days, cfg.max_archive_gb) == (days, gb)


def test_bad_retention_value_names_the_key():
    with pytest.raises(config.ConfigError, match="max_archive_gb: must be a number"):
        parse("[echoes]\nmax_archive_gb = lots\n")


@pytest.mark.parametrize("rules, modality, calling, wanted", [
    ({}, "MR", "ANY", True),
    ({"forward_modalities": ("CT",)}, "CT", "ANY", True),
    ({"forward_modalities": ("CT",)}, "MR", "ANY", False),
    ({"forward_modalities": ("CT",)}, "ct", "ANY", True),
    ({"forward_modalities": ("CT",)}, "", "ANY", False),
    ({"forward_calling_aes": ("CT1",)}, "MR", "CT1", True),
    ({"forward_calling_aes": ("CT1",)}, "MR", "CT2", False),
    ({"forward_modalities": ("CT",), "forward_calling_aes": ("CT1",)}, "CT", "CT1", True),
    ({"forward_modalities": ("CT",), "forward_calling_aes": ("CT1",)}, "CT", "CT2", False),
    ({"forward_modalities": ("CT",), "forward_calling_aes": ("CT1",)}, "MR", "CT1", False),
])
def test_matches(rules, modality, calling, wanted):
    assert routing.matches(ae("X", **rules), modality, calling) is wanted


def test_destinations_skip_aes_that_do_not_forward():
    remotes = [ae("A"), ae("B", forward=False), ae("C", forward_modalities=("MR",))]
    assert [r.title for r in routing.destinations(remotes, "CT", "S")] == ["A"]
    assert [r.title for r in routing.destinations(remotes, "MR", "S")] == ["A", "C"]


def test_routed_jobs_per_object_and_held_for_study_destinations():
    remotes = [ae("ALL"), ae("CTONLY", forward_modalities=("CT",)),
               ae("STUDY", forward_when="study", stable_study_seconds=10)]
    made = routed_jobs([record("1.1", "CT"), record("1.2", "MR")], remotes, 100.0)
    by = {(job.destination, job.sop_instance_uid): job for job in made}
    assert set(by) == {("ALL", "1.1"), ("ALL", "1.2"), ("CTONLY", "1.1"),
                       ("STUDY", "1.1"), ("STUDY", "1.2")}
    assert by[("STUDY", "1.1")].state == jobs.HELD
    assert not by[("STUDY", "1.1")].is_due(10**12)
    assert by[("ALL", "1.1")].state == jobs.PENDING


def test_held_study_released_together_once_stable():
    remotes = {"S": ae("S", forward_when="study", stable_study_seconds=10)}
    early = routed_jobs([record("1.1"), record("1.2")], remotes.values(), 100.0)
    late = routed_jobs([record("1.3")], remotes.values(), 105.0)
    other = routed_jobs([record("2.1", study="9.9")], remotes.values(), 101.0)
    held = early + late + other
    released, look = routing.release_stable(held, remotes, 112.0)
    assert [job.sop_instance_uid for job in released] == ["2.1"]  # 101 + 10 <= 112
    assert look == 115.0  # the newest of study 1.2.3 arrived at 105
    released, look = routing.release_stable(early + late, remotes, 115.0)
    assert sorted(job.sop_instance_uid for job in released) == ["1.1", "1.2", "1.3"]
    assert all(job.state == jobs.PENDING and job.is_due(115.0) for job in released)
    assert look is None


def test_release_when_the_destination_no_longer_holds_or_is_gone():
    held = routed_jobs([record("1.1")], [ae("S", forward_when="study")], 100.0)
    released, _ = routing.release_stable(held, {"S": ae("S")}, 100.5)
    assert len(released) == 1
    released, look = routing.release_stable(held, {}, 10**9)
    assert released == [] and look is None


def test_held_jobs_can_be_cancelled_not_retried():
    job = routed_jobs([record("1.1")], [ae("S", forward_when="study")], 100.0)[0]
    assert jobs.cancelled(job, 101.0).state == jobs.CANCELLED
    assert jobs.retried(job, 101.0) is job
    assert jobs.HELD in jobs.STATES
    assert replace(job, state=jobs.HELD) == job
