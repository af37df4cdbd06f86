"""DICOMweb's pure pieces: QIDO parameters, DICOM JSON, Accept negotiation, multipart framing.

No Flask, no socket: each rule in microseconds.  The end-to-end behaviour
(dicomweb-client against a running echoes) is in tests/e2e/test_dicomweb.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP

import pytest

from echoes.index.base import IMAGE, SERIES, STUDY
from echoes.web.dicomweb import dicom_json, media, multipart, qido

# -- QIDO parameters -------------------------------------------------------------------


def test_keyword_and_tag_name_the_same_attribute() -> None:
    by_keyword = qido.parse(STUDY, [("PatientName", "DOE*")])
    by_tag = qido.parse(STUDY, [("00100010", "DOE*")])
    assert by_keyword.filters == by_tag.filters == {"PatientName": "DOE*"}


def test_unknown_parameter_is_refused_by_name() -> None:
    with pytest.raises(qido.BadQuery, match="unknown query parameter: PatientNme"):
        qido.parse(STUDY, [("PatientNme", "x")])
    with pytest.raises(qido.BadQuery, match="unknown query parameter: 99999999"):
        qido.parse(STUDY, [("99999999", "x")])


def test_attribute_the_index_cannot_match_is_refused_by_name() -> None:
    with pytest.raises(qido.BadQuery, match="SliceThickness cannot be matched"):
        qido.parse(IMAGE, [("SliceThickness", "1")])
    with pytest.raises(qido.BadQuery, match="SOPInstanceUID cannot be matched at STUDY"):
        qido.parse(STUDY, [("SOPInstanceUID", "1.2")])


def test_sequence_matching_is_refused() -> None:
    with pytest.raises(qido.BadQuery, match="sequence matching"):
        qido.parse(STUDY, [("00081032.00080100", "X")])


def test_uid_lists_by_comma_backslash_or_repetition() -> None:
    search = qido.parse(STUDY, [("StudyInstanceUID", "1.2,1.3"),
                                ("StudyInstanceUID", "1.4\\1.5")])
    assert search.filters == {"StudyInstanceUID": "1.2\\1.3\\1.4\\1.5"}


def test_a_repeated_non_uid_attribute_is_refused() -> None:
    with pytest.raises(qido.BadQuery, match="PatientID is given 2 times"):
        qido.parse(STUDY, [("PatientID", "1"), ("PatientID", "2")])


def test_path_uids_cannot_be_widened_by_the_query() -> None:
    search = qido.parse(SERIES, [("StudyInstanceUID", "9.9")], {"StudyInstanceUID": "1.2"})
    assert search.filters["StudyInstanceUID"] == "1.2"


def test_limit_offset_and_their_errors() -> None:
    search = qido.parse(STUDY, [("limit", "10"), ("offset", "5")])
    assert (search.limit, search.offset) == (10, 5)
    assert qido.parse(STUDY, [("limit", "0")]).limit is None
    for name, value in (("limit", "-1"), ("offset", "x"), ("limit", "")):
        with pytest.raises(qido.BadQuery, match=name):
            qido.parse(STUDY, [(name, value)])


def test_fuzzymatching_is_ignored_with_a_warning() -> None:
    assert qido.parse(STUDY, [("fuzzymatching", "true")]).warnings == (qido.FUZZY_WARNING,)
    assert qido.parse(STUDY, [("fuzzymatching", "false")]).warnings == ()
    with pytest.raises(qido.BadQuery, match="fuzzymatching"):
        qido.parse(STUDY, [("fuzzymatching", "maybe")])


def test_includefield_adds_fields_all_means_everything() -> None:
    plain = qido.parse(STUDY, [])
    assert plain.fields is not None and "PatientName" in plain.fields
    assert "StudyDescription" in plain.fields and "size" not in plain.fields
    more = qido.parse(SERIES, [("includefield", "00180015,PatientName"),
                               ("includefield", "SeriesDate")])
    assert more.fields is not None
    assert {"BodyPartExamined", "PatientName", "SeriesDate"} <= more.fields
    assert qido.parse(IMAGE, [("includefield", "all")]).fields is None
    with pytest.raises(qido.BadQuery, match="unknown includefield: Nothing"):
        qido.parse(STUDY, [("includefield", "Nothing")])


def test_matched_keys_are_returned() -> None:
    search = qido.parse(IMAGE, [("Modality", "CT")])
    assert search.fields is not None and "Modality" in search.fields


def test_series_answers_carry_study_attributes_only_when_asked() -> None:
    plain = qido.parse(SERIES, [])
    assert not qido.needs_study(plain)
    asked = qido.parse(SERIES, [("PatientName", "DOE*")])
    assert qido.needs_study(asked) and qido.needs_study(qido.parse(SERIES, [("includefield",
                                                                            "all")]))
    series = [{"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1", "Modality": "CT"}]
    joined = qido.with_study(series, [{"StudyInstanceUID": "1.1", "PatientName": "DOE^J",
                                       "NumberOfInstances": 3, "size": 1}])
    [answer] = qido.page(asked, joined)
    assert answer["PatientName"] == "DOE^J" and answer["Modality"] == "CT"
    assert "NumberOfInstances" not in answer and "size" not in answer


def studies(n: int) -> list[dict]:
    return [{"StudyInstanceUID": f"1.{i}", "StudyDate": f"202601{i + 10:02d}",
             "StudyTime": "", "NumberOfSeries": 1, "NumberOfInstances": 2, "size": 9}
            for i in range(n)]


def test_pages_are_stable_and_do_not_overlap() -> None:
    docs = studies(7)
    first = qido.page(qido.parse(STUDY, [("limit", "3")]), list(reversed(docs)))
    second = qido.page(qido.parse(STUDY, [("limit", "3"), ("offset", "3")]), docs)
    rest = qido.page(qido.parse(STUDY, [("offset", "6")]), docs)
    uids = [d["StudyInstanceUID"] for d in first + second + rest]
    assert uids == [d["StudyInstanceUID"] for d in docs]


def test_answers_name_the_counts_and_keep_no_private_fields() -> None:
    [answer] = qido.page(qido.parse(STUDY, [("includefield", "all")]), studies(1))
    assert answer["NumberOfStudyRelatedSeries"] == 1
    assert answer["NumberOfStudyRelatedInstances"] == 2
    assert "size" not in answer and "NumberOfSeries" not in answer


def test_instances_sort_by_number_as_numbers() -> None:
    docs = [{"StudyInstanceUID": "1", "SeriesInstanceUID": "2", "SOPInstanceUID": f"3.{n}",
             "InstanceNumber": str(n)} for n in (10, 9, 1)]
    answers = qido.page(qido.parse(IMAGE, []), docs)
    assert [a["InstanceNumber"] for a in answers] == ["1", "9", "10"]


# -- DICOM JSON ----------------------------------------------------------------------


def test_dicom_json_vr_value_and_tag_order() -> None:
    out = dicom_json.to_dicom_json({"StudyInstanceUID": "1.2", "PatientID": "P1",
                                    "path": "x", "PatientSex": ""})
    assert list(out) == ["00100020", "00100040", "0020000D"]
    assert out["0020000D"] == {"vr": "UI", "Value": ["1.2"]}
    assert out["00100040"] == {"vr": "CS"}  # empty: no Value


def test_person_names_are_objects_with_groups() -> None:
    out = dicom_json.to_dicom_json({"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"})
    assert out["00100010"] == {"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]}
    assert dicom_json.to_dicom_json({"PatientName": "DOE^JANE"})["00100010"]["Value"] == [
        {"Alphabetic": "DOE^JANE"}]


def test_numbers_are_json_numbers_and_multiple_values_split() -> None:
    out = dicom_json.to_dicom_json({"Rows": "512", "InstanceNumber": "7",
                                    "ModalitiesInStudy": ["CT", "PR"],
                                    "NumberOfStudyRelatedSeries": 3})
    assert out["00280010"] == {"vr": "US", "Value": [512]}
    assert out["00200013"] == {"vr": "IS", "Value": [7]}
    assert out["00080061"] == {"vr": "CS", "Value": ["CT", "PR"]}
    assert out["00201206"] == {"vr": "IS", "Value": [3]}
    assert dicom_json.element("DS", "1.5\\2")["Value"] == [1.5, 2]


def test_only_the_keywords_asked_for() -> None:
    out = dicom_json.to_dicom_json({"PatientID": "P", "PatientName": "N"}, ["PatientID", "Rows"])
    assert list(out) == ["00100020"]


# -- Accept --------------------------------------------------------------------------------

DICOM = 'multipart/related; type="application/dicom"'


@pytest.mark.parametrize(("header", "expected"), [
    (None, ["1.2.840.10008.1.2.1"]),
    ("*/*", ["1.2.840.10008.1.2.1"]),
    (DICOM, ["1.2.840.10008.1.2.1"]),
    (DICOM + "; transfer-syntax=*", ["*"]),
    (f'{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.70; q=0.5, {DICOM}; transfer-syntax=*',
     ["*", "1.2.840.10008.1.2.4.70"]),
    ("application/dicom+json", []),
    ('multipart/related; type="image/jpeg"', []),
    (DICOM + "; q=0", []),
])
def test_dicom_syntaxes_from_accept(header: str | None, expected: list[str]) -> None:
    assert media.dicom_syntaxes(header) == expected


def test_json_and_octet_stream_accept() -> None:
    assert media.json_acceptable(None) and media.json_acceptable("application/dicom+json")
    assert media.json_acceptable("text/html, */*;q=0.1")
    assert not media.json_acceptable("application/dicom+xml")
    assert media.octet_stream_syntaxes('multipart/related; type="application/octet-stream"')
    assert not media.octet_stream_syntaxes("image/png")


# -- multipart -----------------------------------------------------------------------------


def test_multipart_frames_parts_a_mime_parser_reads_back() -> None:
    boundary = multipart.new_boundary()
    parts = [({"Content-Type": "application/dicom"}, [b"abc", b"", b"def"]),
             ({"Content-Type": "application/dicom"}, iter([b"\r\n--x\r\n"]))]
    body = b"".join(multipart.stream(parts, boundary))
    head = f"Content-Type: {multipart.content_type('application/dicom', boundary)}\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head.encode() + body)
    assert [p.get_payload(decode=True) for p in message.iter_parts()] == [b"abcdef",
                                                                          b"\r\n--x\r\n"]


def test_multipart_is_lazy_one_part_at_a_time() -> None:
    opened: list[int] = []

    def body(n: int):
        opened.append(n)
        yield b"x" * n

    parts = (({"Content-Type": "a/b"}, body(n)) for n in (1, 2))
    chunks = multipart.stream(parts, "B")
    assert next(chunks).startswith(b"--B\r\n") and opened == []
    assert next(chunks) == b"x" and opened == [1]


def test_file_chunks_reads_a_range_lazily_and_closes() -> None:
    handle = io.BytesIO(bytes(range(256)) * 10)
    chunks = multipart.file_chunks(lambda: handle, start=10, length=1000, chunk=300)
    data = list(chunks)
    assert [len(c) for c in data] == [300, 300, 300, 100]
    assert b"".join(data) == (bytes(range(256)) * 10)[10:1010]
    assert handle.closed


def test_file_chunks_refuses_a_short_file() -> None:
    with pytest.raises(OSError, match="early"):
        list(multipart.file_chunks(lambda: io.BytesIO(b"abc"), length=10))


def test_body_length_is_the_length_stream_writes() -> None:
    boundary = multipart.new_boundary()
    bodies = [b"", b"x" * 7, b"\r\n--y" * 100]
    headers = [{"Content-Type": f"application/dicom; transfer-syntax=1.2.{n}"}
               for n in range(len(bodies))]
    written = b"".join(multipart.stream(zip(headers, ([b] for b in bodies), strict=True), boundary))
    counted = multipart.body_length(zip(headers, map(len, bodies), strict=True), boundary)
    assert counted == len(written)


def test_file_chunks_refuses_a_file_replaced_since_it_was_counted(tmp_path) -> None:
    path = tmp_path / "object.dcm"
    path.write_bytes(b"new copy, longer")
    assert b"".join(multipart.file_chunks(lambda: open(path, "rb"), whole=16)) == \
        b"new copy, longer"
    with pytest.raises(OSError, match="changed size"):
        next(multipart.file_chunks(lambda: open(path, "rb"), whole=8))


# -- which bytes a retrieve sends (the sender's route table, asked per object) --------------

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT, JPEG_70, JPEG_57, JPEG_50 = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.50")


def planned(stored: str, wanted: list[str]) -> tuple[str, str] | None:
    from echoes.web.dicomweb.routes import plan

    chosen = plan({"SOPClassUID": CT, "TransferSyntaxUID": stored}, wanted)
    if chosen is None:
        return None
    syntax, route = chosen
    return syntax, "stored" if route is None else route.kind


@pytest.mark.parametrize(("stored", "wanted", "expected"), [
    (JPEG_70, ["*"], (JPEG_70, "stored")),
    (EXPLICIT, [EXPLICIT], (EXPLICIT, "stored")),
    (JPEG_70, [EXPLICIT], (EXPLICIT, "decompress")),
    (IMPLICIT, [EXPLICIT], (EXPLICIT, "reencode")),
    (JPEG_70, [JPEG_57], (JPEG_57, "relabel")),
    (JPEG_70, [JPEG_50], None),
    (JPEG_70, [JPEG_50, EXPLICIT], (EXPLICIT, "decompress")),
    (JPEG_50, [JPEG_50, EXPLICIT], (JPEG_50, "stored")),
])
def test_retrieve_plan_uses_the_senders_routes(stored: str, wanted: list[str],
                                               expected: tuple[str, str] | None) -> None:
    assert planned(stored, wanted) == expected


def test_frame_numbers() -> None:
    from echoes.web.dicomweb.routes import frame_numbers

    assert frame_numbers("3,1,2") == [3, 1, 2]
    for bad in ("0", "1,,2", "a", "-1", ""):
        with pytest.raises(ValueError, match="frames"):
            frame_numbers(bad)


# -- multipart.split (STOW-RS bodies) -----------------------------------------------------


def _parts_of(body: bytes, boundary: str = "b0undary", size: int = 7) -> list[tuple]:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return [(headers, b"".join(data)) for headers, data in multipart.split(chunks, boundary)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100000])
def test_split_reads_what_stream_writes_whatever_the_chunking(size: int) -> None:
    payloads = [b"\r\n--b0undar" * 3, b"", b"x" * 1000, b"--b0undary" + b"\r\n-"]
    parts = [({"Content-Type": "application/dicom"}, [p[:5], p[5:]]) for p in payloads]
    body = b"".join(multipart.stream(parts, "b0undary"))
    got = _parts_of(b"preamble\r\n" + body, size=size)
    assert [data for _, data in got] == payloads
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in got)


def test_split_takes_a_part_without_headers_and_padding_after_the_delimiter() -> None:
    body = b"--b0undary  \r\n\r\nabc\r\n--b0undary--\r\n"
    assert _parts_of(body) == [({}, b"abc")]


@pytest.mark.parametrize("body", [
    b"",                                            # empty
    b"just some bytes, no delimiter at all",        # not multipart
    b"--b0undary\r\nContent-Type: x\r\n\r\nabc",    # no close delimiter
    b"--b0undary\r\nno colon here\r\n\r\nabc\r\n--b0undary--",  # a bad header
    b"--b0undary",                                  # ends after the delimiter
])
def test_split_refuses_what_is_not_multipart(body: bytes) -> None:
    with pytest.raises(multipart.BadMultipart):
        _parts_of(body)


def test_split_refuses_a_missing_boundary() -> None:
    with pytest.raises(multipart.BadMultipart):
        list(multipart.split([b"--\r\n"], ""))


def test_split_holds_one_chunk_at_a_time() -> None:
    """A big part is handed on as it arrives: no chunk handed on is much larger than
    the chunks read, and the buffer never holds the whole part."""
    chunk = b"\x01" * 65536
    read = 0

    def body() -> Iterator[bytes]:
        nonlocal read
        yield b"--b0undary\r\n\r\n"
        for _ in range(64):
            read += 1
            yield chunk
        yield b"\r\n--b0undary--"

    _, data = next(multipart.split(body(), "b0undary"))
    sizes = []
    for piece in data:
        sizes.append(len(piece))
        assert read <= len(sizes) + 1  # handed on before the next chunk is read
    assert sum(sizes) == 64 * 65536
    assert max(sizes) <= 65536 + 20


def test_media_parameters_unquotes() -> None:
    assert multipart.media_parameters(
        'Multipart/Related; type="application/dicom"; boundary=abc') == (
        "multipart/related", {"type": "application/dicom", "boundary": "abc"})


# -- rendered: Accept and window ----------------------------------------------------------


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "jpeg"), ("*/*", "jpeg"), ("image/*", "jpeg"), ("image/png", "png"),
    ("image/png, image/jpeg;q=0.5", "png"), ("image/gif, image/jpeg;q=0.1", "jpeg"),
    ("image/gif", None), ("application/dicom", None), ("image/jpeg;q=0, image/png", "png"),
])
def test_rendered_format_follows_accept(accept: str | None, expected: str | None) -> None:
    assert media.rendered_format(accept) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("40,400", (40.0, 400.0, "LINEAR")), ("-600, 1500, linear",
                                                        (-600.0, 1500.0, "LINEAR")),
    ("0,1,SIGMOID", (0.0, 1.0, "SIGMOID")), ("1.5,2.5,linear-exact", (1.5, 2.5, "LINEAR_EXACT")),
])
def test_window_parameter_parses(text: str | None, expected: tuple | None) -> None:
    assert media.parse_window(text) == expected


@pytest.mark.parametrize("text", ["40", "a,b", "40,0", "40,-1", "40,400,cubic", "1,2,3,4",
                                  "nan,400", "40,inf"])
def test_window_parameter_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="window="):
        media.parse_window(text)
