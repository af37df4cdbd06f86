"""qr_allowed_calling_aes: the one rule C-FIND, C-MOVE and C-GET apply."""

import configparser
from pathlib import Path

import pytest

from echoes import config
from echoes.services.qr_access import NOT_ALLOWED, qr_allowed, refusal_comment


def parse(line: str) -> config.Config:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(f"[echoes]\n{line}\n")
    return config.from_parser(parser, Path("/srv/echoes/etc/echoes.ini"))


def test_empty_list_allows_anyone():
    assert qr_allowed(parse(""), "ANYONE")


@pytest.mark.parametrize("line", [
    "qr_allowed_calling_aes = VIEWER, HOROS",
    "qr_allowed_calling_aes = VIEWER HOROS",
    "qr_allowed_calling_aes = VIEWER,HOROS",
])
def test_listed_titles_allowed_others_not(line):
    cfg = parse(line)
    assert qr_allowed(cfg, "VIEWER") and qr_allowed(cfg, "HOROS ")
    assert not qr_allowed(cfg, "MODALITY") and not qr_allowed(cfg, "VIEW")


def test_status_is_in_the_unable_to_process_range_and_comment_fits_lo():
    assert 0xC000 <= NOT_ALLOWED <= 0xCFFF
    assert len(refusal_comment("X" * 16)) <= 64
