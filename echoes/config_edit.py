"""Changing the INI file from a program: remote AEs (the Browser) and ``[echoes]`` keys.

The configuration file is the admin's: its comments, blank lines, key order
and spelling (``yes`` or ``true``) say things configparser cannot write back.
So the file is edited as text: find the lines configparser reads a section or
key from, replace, insert or remove only those, and leave every other byte
alone.  A new section goes at the end, after a blank line.

Nothing is written that the server would not load: the edited text is parsed
exactly as :func:`echoes.config.load` parses the file and validated by
:func:`echoes.config.from_parser`; and, to be sure the text edit did what was
meant, its raw values must equal the old ones with only the asked change made
(a value holding `` ;`` would otherwise turn silently into a comment).  Any
problem raises :class:`ConfigEditError`, one line for the admin, and the file
stays as it was.

Writers are serialised with ``flock`` on the configuration file itself (taken
again if an editor replaced the file meanwhile), the text is re-read under the
lock, and the new file replaces the old atomically (temporary file in the same
folder with the same permission bits and owner, fsync, rename, fsync of the
folder): a running server's reloader sees the old file or the new one, whole.
"""

from __future__ import annotations

import configparser
import fcntl
import io
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from echoes import config as config_module
from echoes.config import ConfigError, RemoteAE
from echoes.storage import durable

#: configparser's own patterns (RawConfigParser._SECT_TMPL and _OPT_TMPL with
#: the default delimiters), so lines are classified as it classifies them.
_SECTION = re.compile(r"\[(?P<header>.+)\]")
_OPTION = re.compile(r"(?P<option>.*?)\s*(?P<vi>[=:])\s*(?P<value>.*)$")
_NONSPACE = re.compile(r"\S")
_COMMENT_PREFIXES = ("#", ";")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_HOST_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?\Z")


class ConfigEditError(ConfigError):
    """An edit that cannot be made; the message is one line for the admin."""


class UnknownAE(ConfigEditError):
    """The AE to edit or remove is not in the file."""


# -- where configparser finds things ---------------------------------------------


@dataclass
class _Option:
    """One key: its first line and its last continuation line."""

    first: int
    last: int
    indent: int


@dataclass
class _Section:
    """One ``[name]`` section: header line, lines up to the next header."""

    name: str
    header: int
    end: int  # exclusive: the next header, or the number of lines
    options: dict[str, _Option] = field(default_factory=dict)
    #: full-line comments in the span: line number -> the comment's text
    comments: dict[int, str] = field(default_factory=dict)

    @property
    def last_content(self) -> int:
        """The header or the last line of the last key."""
        return max([self.header, *(option.last for option in self.options.values())])


def _split_lines(text: str) -> list[str]:
    """Lines with their endings, split where a file read in text mode splits them."""
    return _LINE.findall(text)


def _comment_start(line: str) -> int | None:
    """Where configparser's comment starts in ``line`` (None: no comment).

    The loop of ``RawConfigParser._read``, quirks included: a full-line
    comment starts with ``#`` or ``;``; an inline one is ``#`` or ``;`` at the
    start or after whitespace, looked for one occurrence of each prefix at a
    time (so ``a;b ;c #d`` has its comment at ``#``, not at `` ;``).
    """
    if line.strip().startswith(_COMMENT_PREFIXES):
        return 0
    found: int | None = None
    positions = {prefix: -1 for prefix in _COMMENT_PREFIXES}
    while found is None and positions:
        following = {}
        for prefix, index in positions.items():
            index = line.find(prefix, index + 1)
            if index == -1:
                continue
            following[prefix] = index
            if index == 0 or line[index - 1].isspace():
                found = index if found is None else min(found, index)
        positions = following
    return found


def _body(line: str) -> str:
    """The line without its ending and its comment."""
    line = line.rstrip("\r\n")
    start = _comment_start(line)
    return line if start is None else line[:start]


def _scan(lines: list[str]) -> list[_Section]:
    """The sections and keys of ``lines``, located as configparser reads them.

    A mirror of ``RawConfigParser._read`` (empty lines in values allowed, the
    default) that records line numbers instead of values.  Lines configparser
    would reject are skipped: validation reports them.
    """
    sections: list[_Section] = []
    current: _Section | None = None
    option: _Option | None = None
    indent_level = 0
    for number, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        value = _body(line).strip()
        if not value:
            if current is not None and _comment_start(line) == 0:
                current.comments[number] = line.strip()
            continue
        first_nonspace = _NONSPACE.search(line)
        indent = first_nonspace.start() if first_nonspace else 0
        if current is not None and option is not None and indent > indent_level:
            option.last = number
            continue
        indent_level = indent
        header = _SECTION.match(value)
        if header:
            if current is not None:
                current.end = number
            current = _Section(header.group("header"), number, len(lines))
            sections.append(current)
            option = None
            continue
        match = _OPTION.match(value)
        if current is None or not match or not match.group("option"):
            option = None
            continue
        name = match.group("option").rstrip().lower()
        option = _Option(number, number, indent)
        current.options.setdefault(name, option)
    return sections


def _find(sections: list[_Section], name: str) -> _Section | None:
    return next((section for section in sections if section.name == name), None)


def _ae_sections(sections: list[_Section]) -> dict[str, _Section]:
    """AE title -> its section, titles read as config.from_parser reads them."""
    found: dict[str, _Section] = {}
    for section in sections:
        if section.name.startswith("ae:"):
            try:
                found.setdefault(config_module.parse_ae_title(section.name[3:]), section)
            except ValueError:
                continue
    return found


def _newline(lines: list[str]) -> str:
    """The file's own line ending, for the lines we add."""
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith(("\n", "\r")):
            return line[-1]
    return "\n"


# -- line edits (pure: lists of lines in, lists of lines out) ---------------------


def _with_value(line: str, value: str) -> str:
    """``line`` (a ``key = value`` line) with its value replaced, comment kept in its column."""
    ending = line[len(line.rstrip("\r\n")):]
    text = line[: len(line) - len(ending)]
    start = _comment_start(text)
    body, comment = (text, "") if start is None else (text[:start], text[start:])
    match = re.match(r"(\s*.*?\s*[=:][ \t]*)", body)
    assert match is not None  # _scan found a key on this line
    prefix = match.group(1)
    if not comment:
        return f"{prefix}{value}{ending}"
    padding = max(1, len(body) - len(prefix) - len(value))
    return f"{prefix}{value}{' ' * padding}{comment}{ending}"


def _with_header(line: str, name: str) -> str:
    """A section header line naming ``name`` instead, comment kept in its column."""
    ending = line[len(line.rstrip("\r\n")):]
    text = line[: len(line) - len(ending)]
    start = _comment_start(text)
    body, comment = (text, "") if start is None else (text[:start], text[start:])
    opening, closing = body.index("["), body.rindex("]")
    new_body = f"{body[:opening]}[{name}]{body[closing + 1:]}"
    if not comment:
        return f"{new_body.rstrip()}{ending}"
    padding = max(1, len(body) - len(new_body.rstrip()))
    return f"{new_body.rstrip()}{' ' * padding}{comment}{ending}"


def _set_keys(lines: list[str], section: _Section, values: dict[str, str],
              after: dict[str, int] | None = None) -> list[str]:
    """``section``'s keys set to ``values``: lines replaced in place, new keys
    after ``after[key]`` (a line number) or at the end of the section.
    """
    newline = _newline(lines)
    replaced: dict[int, str] = {}
    dropped: set[int] = set()
    inserted: dict[int, list[str]] = {}
    indent = " " * max((o.indent for o in section.options.values()), default=0)
    for key, value in values.items():
        option = section.options.get(key)
        if option is not None:
            replaced[option.first] = _with_value(lines[option.first], value)
            dropped.update(range(option.first + 1, option.last + 1))
            continue
        where = (after or {}).get(key, section.last_content)
        inserted.setdefault(where, []).append(f"{indent}{key} = {value}{newline}")
    result: list[str] = []
    for number, line in enumerate(lines):
        if number not in dropped:
            line = replaced.get(number, line)
            if number in inserted and not line.endswith(("\n", "\r")):
                line += newline  # the last line of a file without a final newline
            result.append(line)
        result.extend(inserted.get(number, []))
    return result


def _append_section(lines: list[str], name: str, values: dict[str, str]) -> list[str]:
    """``lines`` and a new section at the end, after a blank line."""
    newline = _newline(lines)
    result = list(lines)
    if result and not result[-1].endswith(("\n", "\r")):
        result[-1] += newline
    if result and result[-1].strip():
        result.append(newline)
    result.append(f"[{name}]{newline}")
    result.extend(f"{key} = {value}{newline}" for key, value in values.items())
    return result


def _removal_span(lines: list[str], sections: list[_Section], section: _Section) -> range:
    """The lines that go with ``section``.

    A comment block directly above a header (no blank line between) is about
    that section: removing a section takes its own such block, its header,
    keys and the comments among and after them, and the blank lines that
    followed it; it leaves the block directly above the next section's header.
    Removing the last section also takes the blank lines before it, so the
    file does not end in blank lines.
    """
    end = section.end
    following = section.end < len(lines)
    while following and end - 1 > section.last_content and (end - 1) in section.comments:
        end -= 1  # the comment block directly above the next header stays
    position = sections.index(section)
    floor = sections[position - 1].last_content if position else -1
    start = section.header
    while start - 1 > floor and _comment_start(lines[start - 1].rstrip("\r\n")) == 0:
        start -= 1  # its own comment block, directly above its header
    if not following:
        while start > 0 and start - 1 > floor and not lines[start - 1].strip():
            start -= 1
    return range(start, end)


# -- checks of what is asked ---------------------------------------------------------


def _check_value(name: str, value: str) -> str:
    """``value`` as it will be written, or ConfigEditError if an INI line cannot hold it."""
    value = value.strip()
    if any(c in value for c in "\r\n") or any(ord(c) < 32 and c != "\t" for c in value):
        raise ConfigEditError(f"{name}: must be one line without control characters")
    if _comment_start(f"x {value}") is not None:
        raise ConfigEditError(f"{name}: must not hold ';' or '#' after a space "
                              "(the INI file would read the rest as a comment)")
    return value


def _check_host(host: str) -> str:
    host = _check_value("host", host)
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOST_NAME.match(host) or host.replace(".", "").isdigit():
        raise ConfigEditError(f"host: not an IP address or host name: {host!r}")
    return host


def _check_title(title: str) -> str:
    try:
        title = config_module.parse_ae_title(title)
    except ValueError as exc:
        raise ConfigEditError(f"AE title {exc}") from None
    _check_value("AE title", title)
    return title


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _ae_values(ae: RemoteAE) -> dict[str, str]:
    """The section's keys as written for ``ae``."""
    if isinstance(ae.port, bool):
        raise ConfigEditError(f"port: must be a whole number, got {ae.port!r}")
    return {"host": _check_host(str(ae.host)), "port": _check_value("port", str(ae.port)),
            "forward": _yes_no(bool(ae.forward)), "tls": _yes_no(bool(ae.tls)),
            **_routing_values(ae)}


def _routing_values(ae: RemoteAE) -> dict[str, str]:
    """The routing rule keys as written for ``ae`` (issue 20; lists space-separated)."""
    return {"forward_modalities": _check_value("forward_modalities",
                                               " ".join(ae.forward_modalities)),
            "forward_calling_aes": _check_value("forward_calling_aes",
                                                " ".join(ae.forward_calling_aes)),
            "forward_when": _check_value("forward_when", str(ae.forward_when)),
            "stable_study_seconds": _check_value("stable_study_seconds",
                                                 str(ae.stable_study_seconds))}


def _is_default(key: str, value: str) -> bool:
    """Whether ``value`` says what leaving ``key`` out of a section says."""
    default = config_module.AE_KEYS[key][1]
    return default is not None and _same(key, default, value)


# -- reading, validating, writing ----------------------------------------------------

Raw = dict[str, dict[str, str]]


def _parse(text: str, path: Path) -> configparser.ConfigParser:
    parser = config_module.new_parser()
    try:  # newline=None: lines split as when the file is read
        parser.read_file(io.StringIO(text, newline=None), source=str(path))
    except configparser.Error as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigEditError(f"{path}: cannot parse: {one_line}") from None
    return parser


def _raw(parser: configparser.ConfigParser) -> Raw:
    return {name: dict(parser.items(name, raw=True)) for name in parser.sections()}


def _parse_current(text: str, path: Path) -> configparser.ConfigParser:
    """The file as it is; ConfigEditError when it does not parse (no edit can be checked)."""
    try:
        return _parse(text, path)
    except ConfigEditError as exc:
        raise ConfigEditError(f"the file has a problem to fix by hand first: {exc}") from None


def _validate(path: Path, before: str, after: str, expect: Callable[[Raw], Raw]) -> None:
    """Raise ConfigEditError unless ``after`` loads and differs from ``before`` as meant."""
    old = _raw(_parse_current(before, path))
    parser = _parse(after, path)
    new = _raw(parser)
    try:
        config_module.from_parser(parser, path)
    except ConfigEditError:
        raise
    except ConfigError as exc:
        raise ConfigEditError(str(exc)) from None
    wanted = expect(old)
    if new != wanted:
        names = sorted(n for n in set(new) | set(wanted) if new.get(n) != wanted.get(n))
        raise ConfigEditError(f"[{names[0] if names else '?'}]: the change cannot be written "
                              "to the INI file as asked")


@contextmanager
def _locked(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    """The file's text and stat, under an exclusive flock of the file itself.

    An editor that took the lock before us replaced the file: the lock we
    then get is on the old inode, so look again until the lock is on the file
    the path names.
    """
    while True:
        try:
            try:
                fd = os.open(path, os.O_RDWR)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY)  # flock needs no write access
        except FileNotFoundError:
            raise ConfigEditError(f"{path}: configuration file not found") from None
        except OSError as exc:
            raise ConfigEditError(f"{path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                named = os.stat(path)
            except FileNotFoundError:
                continue
            if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigEditError(f"{path}: not UTF-8 text ({exc.reason})") from None
            yield text, held
            return
        finally:
            os.close(fd)


def _write_atomically(path: Path, text: str, like: os.stat_result) -> None:
    """Replace ``path`` with ``text``: same mode (and owner when we can), durable."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, stat.S_IMODE(like.st_mode))
        try:
            os.fchown(fd, like.st_uid if os.geteuid() == 0 else -1, like.st_gid)
        except PermissionError:
            pass  # not root and not in the file's group: keep ours
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    durable.fsync_dir(path.parent)


def _edit(config_path: Path | str,
          change: Callable[[str, list[str], list[_Section]], tuple[list[str], Callable]]) -> None:
    """Lock, re-read, apply ``change`` to the lines, validate, write if different."""
    path = Path(os.path.realpath(config_path))  # a symlinked config: edit its target
    with _locked(path) as (text, like):
        lines = _split_lines(text)
        new_lines, expect = change(text, lines, _scan(lines))
        new_text = "".join(new_lines)
        _validate(path, text, new_text, expect)
        if new_text != text:
            _write_atomically(path, new_text, like)


# -- the interface -------------------------------------------------------------------


def save_remote_ae(config_path: Path, ae: RemoteAE, replacing: str | None = None) -> None:
    """Add ``[ae:TITLE]`` (``replacing`` None) or change the section of AE ``replacing``.

    Editing may rename the section to ``ae.title``.  Only keys whose value
    changes are rewritten (``forward = true`` stays as written when forward
    is still on); keys the section lacks are added after its last key.
    Raises UnknownAE when ``replacing`` is not configured, ConfigEditError
    when the title is taken by another section or the result would not load.
    """
    title = _check_title(ae.title)
    values = _ae_values(ae)

    def change(text: str, lines: list[str], sections: list[_Section]):
        by_title = _ae_sections(sections)
        if replacing is None:
            if title in by_title:
                raise ConfigEditError(f"AE {title} already exists")
            new_name = f"ae:{title}"
            written = {k: v for k, v in values.items()
                       if k in ("host", "port", "forward") or not _is_default(k, v)}

            def add(old: Raw) -> Raw:
                return {**old, new_name: written}

            return _append_section(lines, new_name, written), add
        section = by_title.get(replacing)
        if section is None:
            raise UnknownAE(f"no AE {replacing} in {config_path}")
        if title != replacing and title in by_title:
            raise ConfigEditError(f"AE {title} already exists")
        old_section = _parse_current(text, Path(config_path))[section.name]
        touched = {}
        for key, value in values.items():  # absent forward/tls: their default, "no"
            current = old_section.get(key, config_module.AE_KEYS[key][1])
            if current is None or not _same(key, current, value):
                touched[key] = value
        edited = _set_keys(lines, section, touched)
        new_name = section.name if title == replacing else f"ae:{title}"
        if new_name != section.name:
            edited[section.header] = _with_header(edited[section.header], new_name)

        def edit(old: Raw) -> Raw:
            result = {name: items for name, items in old.items() if name != section.name}
            result[new_name] = {**old[section.name], **touched}
            return result

        return edited, edit

    _edit(config_path, change)


def remove_remote_ae(config_path: Path, title: str) -> None:
    """Delete the section of AE ``title`` and its lines; UnknownAE if there is none.

    The comment block directly above its header (no blank line between) and
    the comments inside the section go with it; the block directly above the
    next section's header stays.
    """

    def change(text: str, lines: list[str], sections: list[_Section]):
        section = _ae_sections(sections).get(title.strip())
        if section is None:
            raise UnknownAE(f"no AE {title} in {config_path}")
        span = _removal_span(lines, sections, section)
        edited = lines[:span.start] + lines[span.stop:]

        def drop(old: Raw) -> Raw:
            return {name: items for name, items in old.items() if name != section.name}

        return edited, drop

    _edit(config_path, change)


def set_option(config_path: Path, key: str, value: str) -> None:
    """Set ``key`` in ``[echoes]``: its line is replaced, or the key added.

    A new key goes right after a commented-out ``;key = ...`` line of
    ``[echoes]`` if there is one (where the admin's template documents it),
    else after the section's last key; a missing ``[echoes]`` section is
    appended.  Raises ConfigEditError for an unknown key or a bad value.
    """
    set_options(config_path, {key: value})


def set_options(config_path: Path, values: dict[str, str]) -> None:
    """Several ``[echoes]`` keys in one atomic edit (``echoes passwd --user``)."""
    checked = {}
    for key, value in values.items():
        if key not in config_module.KEYS:
            raise ConfigEditError(f"{key}: unknown key")
        checked[key] = _check_value(key, value)

    def change(text: str, lines: list[str], sections: list[_Section]):
        section = _find(sections, "echoes")

        def update(old: Raw) -> Raw:
            return {**old, "echoes": {**old.get("echoes", {}), **checked}}

        if section is None:
            return _append_section(lines, "echoes", checked), update
        after = {}
        for key in checked:
            pattern = re.compile(rf"[;#]\s*{re.escape(key)}\s*[=:]", re.IGNORECASE)
            commented = [n for n, comment in section.comments.items() if pattern.match(comment)]
            if commented:
                after[key] = commented[-1]
        return _set_keys(lines, section, checked, after), update

    _edit(config_path, change)


def _same(key: str, written: str, value: str) -> bool:
    """Whether ``written`` already says ``value`` (``true`` says ``yes``)."""
    parse = config_module.AE_KEYS[key][0]
    try:
        return parse(written) == parse(value)
    except ValueError:
        return False

