"""Config parsing: defaults, path resolution, one-line errors naming the key."""

import configparser
import os
from pathlib import Path

import pytest

from echoes import config


def parse(text: str, path: Path = Path("/srv/echoes/etc/echoes.ini")) -> config.Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    return config.from_parser(parser, path)


def test_defaults_and_paths_resolve_against_home():
    cfg = parse("[echoes]\n")
    assert cfg.store_port == 4000 and cfg.mwl_port == 4001 and cfg.store_workers == 2
    assert cfg.home == Path("/srv/echoes")
    assert cfg.archive_dir == Path("/srv/echoes/var/archive")
    assert cfg.spool_dir == Path("/srv/echoes/spool")
    assert cfg.min_free_mb == 500


def test_absolute_path_kept():
    assert parse("[echoes]\narchive_dir = /data/a\n").archive_dir == Path("/data/a")


def test_remote_ae_sections():
    cfg = parse("[echoes]\n[ae:PACS]\nhost = 10.0.0.5\nport = 104\nforward = yes ; comment\n")
    assert cfg.remote_aes["PACS"] == config.RemoteAE("PACS", "10.0.0.5", 104, True)


@pytest.mark.parametrize("text, message", [
    ("[echoes]\nstore_port = abc\n", "store_port: must be a whole number"),
    ("[echoes]\nstore_port = 70000\n", "store_port: must be between 1 and 65535"),
    ("[echoes]\nstor_port = 4000\n", "stor_port: unknown key"),
    ("[echoes]\nae_title = WAY_TOO_LONG_AE_TITLE\n", "ae_title: must be at most 16"),
    ("[echoes]\nbind = somewhere\n", "bind: must be an IP address"),
    ("[echoes]\nmwl_port = 4000\n", "mwl_port: must differ"),
    ("[echoes]\n[ae:PACS]\nport = 104\n", "[ae:PACS] host: missing"),
    ("[echoes]\n[ae:PACS]\nhost = h\nport = 104\nforward = maybe\n", "[ae:PACS] forward"),
    ("[echoes]\n[other]\n", "[other]: unknown section"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(config.ConfigError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    from echoes import cli

    (tmp_path / "etc").mkdir()
    ini = tmp_path / "etc" / "echoes.ini"
    ini.write_text("[echoes]\nstore_workers = lots\n")
    assert cli.main(["--config", str(ini), "studies"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("echoes: config: store_workers:") and "\n" not in err
    assert cli.main(["studies", "--config", str(tmp_path / "missing.ini")]) == 2


def test_reloader_sees_a_change_made_before_it_was_made(tmp_path: Path) -> None:
    # echoes passwd right after start: the file changed between the worker's
    # load and the Reloader's creation; the first check must still read it.
    path = tmp_path / "etc" / "echoes.ini"
    path.parent.mkdir()
    path.write_text("[echoes]\nhttp_user = admin\n")
    loaded = config.load(path)
    path.write_text("[echoes]\nhttp_user = someone\n")
    reloader = config.Reloader(loaded, interval=0.0)
    assert reloader.current().http_user == "someone"


def test_reloader_sees_a_same_size_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "echoes.ini"
    path.parent.mkdir()
    path.write_text("[echoes]\nhttp_user = aaaaa\n")
    reloader = config.Reloader(config.load(path), interval=0.0)
    assert reloader.current().http_user == "aaaaa"
    stamp = path.stat().st_mtime_ns
    replacement = path.with_name("new.ini")
    replacement.write_text("[echoes]\nhttp_user = bbbbb\n")
    os.utime(replacement, ns=(stamp, stamp))  # same size, same mtime: only the inode differs
    os.replace(replacement, path)
    assert reloader.current().http_user == "bbbbb"
