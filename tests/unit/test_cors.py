"""CORS on /dicom-web: the pure decisions of echoes.web.dicomweb.cors, and the config key."""

from __future__ import annotations

import pytest

from echoes.config import KEYS
from echoes.web.dicomweb.cors import preflight, response_headers

VIEWER = "https://viewer.example.org:3000"


def test_off_by_default_nothing_is_allowed() -> None:
    assert KEYS["dicomweb_cors_origin"][1] == ""
    status, headers, refused = preflight("", VIEWER, "GET", "authorization")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers and refused
    assert response_headers("", VIEWER) == {}


def test_the_named_origin_gets_its_preflight_and_its_answers() -> None:
    status, headers, refused = preflight(VIEWER, VIEWER, "POST", "Authorization, Content-Type")
    assert (status, refused) == (204, "")
    assert headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Access-Control-Allow-Credentials" not in headers  # never the session cookie
    assert response_headers(VIEWER, VIEWER)["Access-Control-Allow-Origin"] == VIEWER


@pytest.mark.parametrize("origin, method, asked", [
    ("https://viewer.example.org", "GET", ""),  # another port is another origin
    ("null", "GET", ""),
    (None, "GET", ""),
    (VIEWER, "DELETE", ""),
    (VIEWER, "GET", "authorization, x-secret"),
])
def test_anything_else_is_refused(origin: str | None, method: str, asked: str) -> None:
    status, headers, refused = preflight(VIEWER, origin, method, asked)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers and refused
    if origin != VIEWER:
        assert "Access-Control-Allow-Origin" not in response_headers(VIEWER, origin)


@pytest.mark.parametrize("text", ["*", "viewer.example.org", "ftp://x", "https://x/path",
                                  "https://a, https://b", "https://"])
def test_the_config_key_takes_one_origin_only(text: str) -> None:
    parse = KEYS["dicomweb_cors_origin"][0]
    with pytest.raises(ValueError):
        parse(text)
    assert parse(f" {VIEWER} ") == VIEWER
