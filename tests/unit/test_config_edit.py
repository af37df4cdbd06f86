"""echoes.config_edit: remote AEs and [echoes] keys written into the admin's INI file.

Every test edits a real file and reads it back with config.load; the text
outside the touched lines must be byte for byte what the admin wrote.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from echoes import config as config_module
from echoes import config_edit
from echoes.config import RemoteAE
from echoes.config_edit import ConfigEditError, UnknownAE

ORIGINAL = """\
# echoes at the clinic -- edited by hand, keep the notes
[echoes]
ae_title = ECHOES
bind = 127.0.0.1
store_port = 14000
mwl_port = 14001
# sender
retry_interval = 30        ; seconds between attempts of a failing job
max_attempts = 20          ; then the job is 'failed' until retried by hand
;http_password_hash =      ; set with: echoes passwd

# the PACS in the basement
[ae:PACS]                  ; one section per remote AE: title -> address
host = 10.0.0.5
port = 104
# forwarding agreed with radiology, 2024
forward = yes              ; on the auto-forwarding list

# teaching file server
[ae:TEACHING]
host = teach.example.org
port = 11112
forward = true
"""


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "echoes.ini"
    path.parent.mkdir()
    path.write_text(ORIGINAL)
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def remote(path: Path) -> dict[str, RemoteAE]:
    return config_module.load(path).remote_aes


# -- adding ----------------------------------------------------------------------


def test_add_appends_a_section_after_a_blank_line(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("VIEWER", "192.168.1.20", 4242, forward=False))
    text = ini.read_text()
    assert text == ORIGINAL + "\n[ae:VIEWER]\nhost = 192.168.1.20\nport = 4242\nforward = no\n"
    assert remote(ini)["VIEWER"] == RemoteAE("VIEWER", "192.168.1.20", 4242, False, False)


def test_add_with_tls_and_forward(ini: Path) -> None:
    ae = RemoteAE("SECURE", "pacs.example.org", 2762, forward=True, tls=True)
    pki = ini.parent
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (pki / name).write_text("not checked here\n")
    config_edit.set_options(ini, {"tls_certificate": str(pki / "cert.pem"),
                                  "tls_private_key": str(pki / "key.pem"),
                                  "tls_ca_certificates": str(pki / "ca.pem")})
    config_edit.save_remote_ae(ini, ae)
    assert remote(ini)["SECURE"] == ae
    assert ini.read_text().endswith("[ae:SECURE]\nhost = pacs.example.org\nport = 2762\n"
                                    "forward = yes\ntls = yes\n")


def test_add_to_a_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "echoes.ini"
    path.write_text("[echoes]\nstore_port = 14000\nmwl_port = 14001")
    config_edit.save_remote_ae(path, RemoteAE("A", "10.0.0.1", 104, False))
    assert path.read_text() == ("[echoes]\nstore_port = 14000\nmwl_port = 14001\n"
                                "\n[ae:A]\nhost = 10.0.0.1\nport = 104\nforward = no\n")


def test_add_keeps_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "echoes.ini"
    original = b"[echoes]\r\nstore_port = 14000\r\nmwl_port = 14001\r\n"
    path.write_bytes(original)
    config_edit.save_remote_ae(path, RemoteAE("A", "10.0.0.1", 104, True))
    assert path.read_bytes() == original + b"\r\n[ae:A]\r\nhost = 10.0.0.1\r\nport = 104\r\n" \
                                           b"forward = yes\r\n"


def test_add_existing_title_is_refused(ini: Path) -> None:
    with pytest.raises(ConfigEditError, match="AE PACS already exists"):
        config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.9", 104, False))
    assert ini.read_text() == ORIGINAL


def test_add_title_is_case_sensitive_like_configparser(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("pacs", "10.0.0.9", 104, False))
    assert set(remote(ini)) == {"PACS", "TEACHING", "pacs"}


def test_add_strips_the_title(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("  CT01 ", "10.0.0.9", 104, False))
    assert "[ae:CT01]\n" in ini.read_text()
    assert remote(ini)["CT01"].host == "10.0.0.9"


# -- refused input: file untouched ---------------------------------------------------


@pytest.mark.parametrize("ae, message", [
    (RemoteAE("NEW", "10.0.0.9", 0, False), r"\[ae:NEW\] port: must be between 1 and 65535"),
    (RemoteAE("NEW", "10.0.0.9", 70000, False), "port: must be between 1 and 65535"),
    (RemoteAE("NEW", "", 104, False), "host: not an IP address or host name"),
    (RemoteAE("NEW", "pacs server", 104, False), "host: not an IP address or host name"),
    (RemoteAE("NEW", "10.0.0.9\nport = 1", 104, False), "host: must be one line"),
    (RemoteAE("NEW", "a.b ;x", 104, False), "host: must not hold ';' or '#'"),
    (RemoteAE("NEW", "300.1.1.1", 104, False), "host: not an IP address or host name"),
    (RemoteAE("", "10.0.0.9", 104, False), "AE title must not be empty"),
    (RemoteAE("A" * 17, "10.0.0.9", 104, False), "AE title must be at most 16 characters"),
    (RemoteAE("BAD\\AE", "10.0.0.9", 104, False), "AE title must be printable ASCII"),
    (RemoteAE("X ;Y", "10.0.0.9", 104, False), "AE title: must not hold ';' or '#'"),
])
def test_invalid_remote_ae_is_refused_and_file_unchanged(ini: Path, ae: RemoteAE,
                                                          message: str) -> None:
    before = ini.stat()
    with pytest.raises(ConfigEditError, match=message):
        config_edit.save_remote_ae(ini, ae)
    assert ini.read_text() == ORIGINAL
    assert ini.stat().st_ino == before.st_ino


def test_refused_edit_leaves_no_temporary_file(ini: Path) -> None:
    with pytest.raises(ConfigEditError):
        config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", 0, False), replacing="PACS")
    assert sorted(p.name for p in ini.parent.iterdir()) == ["echoes.ini"]


def test_port_equal_to_store_port_is_fine_for_a_remote(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("LOOP", "127.0.0.1", 14000, False))
    assert remote(ini)["LOOP"].port == 14000


def test_ipv6_and_host_names_accepted(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("V6", "fd00::5", 104, False))
    config_edit.save_remote_ae(ini, RemoteAE("NAMED", "pacs-2.radiology.local", 104, False))
    assert remote(ini)["V6"].host == "fd00::5"
    assert remote(ini)["NAMED"].host == "pacs-2.radiology.local"


def test_a_file_that_does_not_load_is_not_edited(ini: Path) -> None:
    broken = ORIGINAL.replace("max_attempts = 20", "max_attempts = many")
    ini.write_text(broken)
    with pytest.raises(ConfigEditError, match="max_attempts: must be a whole number"):
        config_edit.save_remote_ae(ini, RemoteAE("NEW", "10.0.0.9", 104, False))
    assert ini.read_text() == broken


def test_a_file_that_does_not_parse_is_not_edited(ini: Path) -> None:
    broken = ORIGINAL + "\n[ae:PACS]\nhost = 10.0.0.6\nport = 104\n"
    ini.write_text(broken)
    with pytest.raises(ConfigEditError, match="fix by hand first"):
        config_edit.save_remote_ae(ini, RemoteAE("NEW", "10.0.0.9", 104, False))
    assert ini.read_text() == broken


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigEditError, match="configuration file not found"):
        config_edit.set_option(tmp_path / "nope.ini", "http_user", "x")


# -- editing ---------------------------------------------------------------------------


def test_edit_port_touches_only_its_line(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", 11112, True),
                               replacing="PACS")
    expected = ORIGINAL.replace("port = 104\n", "port = 11112\n")
    assert ini.read_text() == expected
    assert remote(ini)["PACS"] == RemoteAE("PACS", "10.0.0.5", 11112, True, False)


def test_edit_keeps_the_inline_comment_in_its_column(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", 104, False),
                               replacing="PACS")
    old = ORIGINAL.splitlines(keepends=True)
    changed = [(a, b) for a, b in zip(old, lines_of(ini), strict=True) if a != b]
    assert changed == [("forward = yes              ; on the auto-forwarding list\n",
                        "forward = no               ; on the auto-forwarding list\n")]
    assert remote(ini)["PACS"].forward is False


def test_edit_keeps_equivalent_spellings(ini: Path) -> None:
    """forward = true stays 'true' when forward stays on."""
    config_edit.save_remote_ae(ini, RemoteAE("TEACHING", "teach2.example.org", 11112, True),
                               replacing="TEACHING")
    assert ini.read_text() == ORIGINAL.replace("teach.example.org", "teach2.example.org")


def test_edit_without_change_does_not_write(ini: Path) -> None:
    before = ini.stat()
    config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", 104, True), replacing="PACS")
    assert ini.stat().st_ino == before.st_ino
    assert ini.read_text() == ORIGINAL


def test_edit_adds_a_missing_key_after_the_last_key(ini: Path) -> None:
    pki = ini.parent
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (pki / name).write_text("x\n")
    config_edit.set_options(ini, {"tls_certificate": str(pki / "cert.pem"),
                                  "tls_private_key": str(pki / "key.pem"),
                                  "tls_ca_certificates": str(pki / "ca.pem")})
    with_tls = ini.read_text()
    config_edit.save_remote_ae(ini, RemoteAE("TEACHING", "teach.example.org", 11112, True,
                                             tls=True), replacing="TEACHING")
    assert ini.read_text() == with_tls.replace("forward = true\n", "forward = true\ntls = yes\n")
    config_edit.save_remote_ae(ini, RemoteAE("TEACHING", "teach.example.org", 11112, True),
                               replacing="TEACHING")
    assert ini.read_text() == with_tls.replace("forward = true\n", "forward = true\ntls = no\n")


def test_rename_changes_only_the_header(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("PACS2", "10.0.0.5", 104, True), replacing="PACS")
    expected = ORIGINAL.replace(
        "[ae:PACS]                  ; one section",
        "[ae:PACS2]                 ; one section")
    assert ini.read_text() == expected
    assert set(remote(ini)) == {"PACS2", "TEACHING"}


def test_rename_and_edit(ini: Path) -> None:
    config_edit.save_remote_ae(ini, RemoteAE("ARCHIVE", "10.0.0.7", 105, False),
                               replacing="TEACHING")
    assert remote(ini)["ARCHIVE"] == RemoteAE("ARCHIVE", "10.0.0.7", 105, False)
    assert "TEACHING" not in remote(ini)
    assert ini.read_text().startswith(ORIGINAL[:ORIGINAL.index("[ae:TEACHING]")])


def test_rename_onto_another_title_is_refused(ini: Path) -> None:
    with pytest.raises(ConfigEditError, match="AE TEACHING already exists"):
        config_edit.save_remote_ae(ini, RemoteAE("TEACHING", "10.0.0.5", 104, True),
                                   replacing="PACS")
    assert ini.read_text() == ORIGINAL


def test_edit_unknown_ae(ini: Path) -> None:
    with pytest.raises(UnknownAE, match="no AE NOPE"):
        config_edit.save_remote_ae(ini, RemoteAE("NOPE", "10.0.0.5", 104, True),
                                   replacing="NOPE")
    assert ini.read_text() == ORIGINAL


def test_edit_invalid_port_refused(ini: Path) -> None:
    with pytest.raises(ConfigEditError, match="port: must be a whole number"):
        config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", "1o4", True),  # type: ignore[arg-type]
                                   replacing="PACS")
    assert ini.read_text() == ORIGINAL


def test_edit_multi_line_value_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "echoes.ini"
    path.write_text("[echoes]\nstore_port = 14000\nmwl_port = 14001\n\n[ae:A]\nhost = 10.0.0.1\n"
                    "port = 104\nforward = no\n# between\n   yes\n[ae:B]\nhost = b\nport = 1\n")
    config_edit.save_remote_ae(path, RemoteAE("A", "10.0.0.1", 104, True), replacing="A")
    assert path.read_text() == ("[echoes]\nstore_port = 14000\nmwl_port = 14001\n\n[ae:A]\n"
                                "host = 10.0.0.1\nport = 104\nforward = yes\n[ae:B]\nhost = b\n"
                                "port = 1\n")


# -- removing --------------------------------------------------------------------------


def test_remove_takes_its_lines_but_not_the_next_sections_comment(ini: Path) -> None:
    config_edit.remove_remote_ae(ini, "PACS")
    expected = ORIGINAL.replace(
        "# the PACS in the basement\n"
        "[ae:PACS]                  ; one section per remote AE: title -> address\n"
        "host = 10.0.0.5\nport = 104\n# forwarding agreed with radiology, 2024\n"
        "forward = yes              ; on the auto-forwarding list\n\n", "")
    assert ini.read_text() == expected
    assert "# teaching file server\n[ae:TEACHING]" in expected
    assert set(remote(ini)) == {"TEACHING"}


def test_remove_last_section_leaves_no_trailing_blank_lines(ini: Path) -> None:
    config_edit.remove_remote_ae(ini, "TEACHING")
    assert ini.read_text() == ORIGINAL[:ORIGINAL.index("\n# teaching file server")]
    assert set(remote(ini)) == {"PACS"}


def test_remove_all_then_add(ini: Path) -> None:
    config_edit.remove_remote_ae(ini, "TEACHING")
    config_edit.remove_remote_ae(ini, "PACS")
    assert remote(ini) == {}
    config_edit.save_remote_ae(ini, RemoteAE("PACS", "10.0.0.5", 104, True))
    assert remote(ini) == {"PACS": RemoteAE("PACS", "10.0.0.5", 104, True)}
    assert ini.read_text() == ORIGINAL[:ORIGINAL.index("# the PACS")] + \
        "[ae:PACS]\nhost = 10.0.0.5\nport = 104\nforward = yes\n"


def test_remove_keeps_a_comment_separated_by_a_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "echoes.ini"
    head = "[echoes]\nstore_port = 14000\nmwl_port = 14001\n\n# remote AEs follow\n\n"
    path.write_text(head + "[ae:A]\nhost = a\nport = 1\n\n[ae:B]\nhost = b\nport = 2\n")
    config_edit.remove_remote_ae(path, "A")
    assert path.read_text() == head + "[ae:B]\nhost = b\nport = 2\n"
    config_edit.remove_remote_ae(path, "B")
    assert path.read_text() == "[echoes]\nstore_port = 14000\nmwl_port = 14001\n\n" \
                               "# remote AEs follow\n"


def test_remove_unknown_ae(ini: Path) -> None:
    with pytest.raises(UnknownAE, match="no AE GONE"):
        config_edit.remove_remote_ae(ini, "GONE")
    assert ini.read_text() == ORIGINAL


def test_remove_is_case_sensitive(ini: Path) -> None:
    with pytest.raises(UnknownAE):
        config_edit.remove_remote_ae(ini, "pacs")


# -- [echoes] keys ---------------------------------------------------------------------


def test_set_option_after_its_commented_out_line(ini: Path) -> None:
    config_edit.set_option(ini, "http_password_hash", "scrypt:32768:8:1$salt$abc")
    assert ini.read_text() == ORIGINAL.replace(
        ";http_password_hash =      ; set with: echoes passwd\n",
        ";http_password_hash =      ; set with: echoes passwd\n"
        "http_password_hash = scrypt:32768:8:1$salt$abc\n")
    assert config_module.load(ini).http_password_hash == "scrypt:32768:8:1$salt$abc"


def test_set_option_replaces_the_line_keeping_its_comment(ini: Path) -> None:
    config_edit.set_option(ini, "retry_interval", "60")
    assert ini.read_text() == ORIGINAL.replace(
        "retry_interval = 30        ; seconds",
        "retry_interval = 60        ; seconds")
    assert config_module.load(ini).retry_interval == 60


def test_set_option_new_key_at_end_of_echoes(ini: Path) -> None:
    config_edit.set_option(ini, "http_user", "radadmin")
    assert ini.read_text() == ORIGINAL.replace(
        "max_attempts = 20          ; then the job is 'failed' until retried by hand\n",
        "max_attempts = 20          ; then the job is 'failed' until retried by hand\n"
        "http_user = radadmin\n")
    assert config_module.load(ini).http_user == "radadmin"


def test_set_option_twice_replaces(ini: Path) -> None:
    config_edit.set_option(ini, "http_user", "one")
    config_edit.set_option(ini, "http_user", "two")
    assert ini.read_text().count("http_user") == 1
    assert config_module.load(ini).http_user == "two"


def test_set_option_without_echoes_section(tmp_path: Path) -> None:
    path = tmp_path / "echoes.ini"
    path.write_text("# only AEs here\n[ae:A]\nhost = 10.0.0.1\nport = 104\n")
    config_edit.set_option(path, "http_port", "8181")
    assert path.read_text() == ("# only AEs here\n[ae:A]\nhost = 10.0.0.1\nport = 104\n"
                                "\n[echoes]\nhttp_port = 8181\n")
    assert config_module.load(path).http_port == 8181


@pytest.mark.parametrize("key, value, message", [
    ("no_such_key", "1", "no_such_key: unknown key"),
    ("http_port", "eighty", "http_port: must be a whole number"),
    ("http_port", "14000", "http_port: must differ"),
    ("http_user", "two words", "http_user: must be 1-64 printable characters"),
    ("http_user", "a\nb", "http_user: must be one line"),
    ("http_password_hash", "x #y", "must not hold ';' or '#'"),
])
def test_set_option_refused(ini: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigEditError, match=message):
        config_edit.set_option(ini, key, value)
    assert ini.read_text() == ORIGINAL


# -- the file as a file ------------------------------------------------------------------


def test_mode_is_kept(ini: Path) -> None:
    os.chmod(ini, 0o640)
    config_edit.save_remote_ae(ini, RemoteAE("NEW", "10.0.0.9", 104, False))
    assert stat.S_IMODE(ini.stat().st_mode) == 0o640
    os.chmod(ini, 0o600)
    config_edit.set_option(ini, "http_user", "someone")
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert sorted(p.name for p in ini.parent.iterdir()) == ["echoes.ini"]


def test_symlinked_config_edits_the_target(ini: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.ini"
    link.symlink_to(ini)
    config_edit.set_option(link, "http_user", "someone")
    assert link.is_symlink()
    assert config_module.load(ini).http_user == "someone"


def _add_many(path: str, prefix: str, count: int, ready, go) -> None:
    ready.set()
    go.wait(30)
    for n in range(count):
        config_edit.save_remote_ae(Path(path), RemoteAE(f"{prefix}{n}", f"10.0.{n}.1", 104 + n,
                                                        n % 2 == 0))


def test_concurrent_editors_from_two_processes_all_land(ini: Path) -> None:
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    workers = []
    for prefix in ("LEFT", "RIGHT"):
        ready = context.Event()
        workers.append((context.Process(target=_add_many,
                                        args=(str(ini), prefix, 30, ready, go)), ready))
    for worker, ready in workers:
        worker.start()
        assert ready.wait(30)
    go.set()
    for n in range(10):
        config_edit.set_option(ini, "http_user", f"meanwhile{n}")
    for worker, _ready in workers:
        worker.join(60)
        assert worker.exitcode == 0
    aes = remote(ini)
    for prefix in ("LEFT", "RIGHT"):
        for n in range(30):
            assert aes[f"{prefix}{n}"] == RemoteAE(f"{prefix}{n}", f"10.0.{n}.1", 104 + n,
                                                   n % 2 == 0)
    assert config_module.load(ini).http_user == "meanwhile9"
    remaining = iter(lines_of(ini))
    assert all(line in remaining for line in ORIGINAL.splitlines(keepends=True))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_owner_is_kept_when_root(ini: Path) -> None:
    os.chown(ini, 4321, 4322)
    config_edit.set_option(ini, "http_user", "someone")
    assert (ini.stat().st_uid, ini.stat().st_gid) == (4321, 4322)
