"""Thumbnails: the arithmetic on arrays, then whole files from pydicom and made here."""

from __future__ import annotations

import io
import logging
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from echoes.web.thumbnail import (
    auto_window,
    pick_frame,
    placeholder,
    render,
    rescale,
    window,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd test files


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(png(data)).astype(int)


def rendered(name: str, size: int = 128) -> np.ndarray:
    return pixels(render(TEST_FILES / name, size))


def write(path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2",
          bits_stored: int = 16, **attributes: object) -> Path:
    """A secondary-capture-like object with these pixels, in Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Secret^Patient"
    ds.set_pixel_data(frames, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# The arithmetic.

@pytest.mark.parametrize(("count", "index"), [(-1, 0), (0, 0), (1, 0), (2, 1), (3, 1), (30, 15)])
def test_pick_frame_is_the_middle(count: int, index: int) -> None:
    assert pick_frame(count) == index


def test_linear_window_follows_the_standard() -> None:
    # PS3.3 C.11.2.1.2.1 with c=100, w=200: x <= 0 -> 0, x > 199 -> 255, in between linear.
    values = np.array([-10.0, 0.0, 100.0, 199.0, 200.0, 1000.0])
    assert window(values, 100, 200).tolist() == [0, 0, 128, 255, 255, 255]
    assert window(values, 100, 1).tolist() == [0, 0, 255, 255, 255, 255]  # a threshold


def test_other_voi_functions() -> None:
    values = np.array([0.0, 100.0, 200.0])
    assert window(values, 100, 200, "LINEAR_EXACT").tolist() == [0, 128, 255]
    sigmoid = window(np.array([-100.0, 100.0, 300.0]), 100, 200, "SIGMOID").tolist()
    assert sigmoid[0] < 10 and sigmoid[1] == 128 and sigmoid[2] > 245  # soft, never clipped
    assert window(values, 100, 200, "NO_SUCH").tolist() == window(values, 100, 200).tolist()
    with pytest.raises(ValueError):
        window(values, 100, 0)


def test_auto_window_spans_the_1st_to_99th_percentile() -> None:
    values = np.arange(1001, dtype=np.float32)
    grey = window(values, *auto_window(values))
    assert (grey[:11] == 0).all() and (grey[-11:] == 255).all()
    assert 120 <= grey[500] <= 135


def test_auto_window_keeps_a_small_detail_and_blacks_out_a_flat_image() -> None:
    sparse = np.zeros(2000, dtype=np.float32)
    sparse[:3] = 1.0  # under 1%: the percentiles alone would see a flat image
    assert window(sparse, *auto_window(sparse))[:3].tolist() == [255, 255, 255]
    flat = np.full(100, 42.0, dtype=np.float32)
    assert (window(flat, *auto_window(flat)) == 0).all()
    nan = np.full(10, np.nan, dtype=np.float32)
    assert (window(nan, *auto_window(nan)) == 0).all()


def test_rescale() -> None:
    stored = np.array([0, 1024, 2048], dtype=np.uint16)
    assert rescale(stored, 1.0, -1024.0).tolist() == [-1024, 0, 1024]
    assert rescale(stored, 0.5, 0.0).dtype == np.float32


# Grey images from pydicom's files.

def test_ct_without_window_tags_still_looks_like_a_ct() -> None:
    image = png(render(TEST_FILES / "CT_small.dcm"))
    assert image.mode == "L" and image.size == (128, 128)
    grey = np.asarray(image)
    assert grey.std() > 40 and len(np.unique(grey)) > 100


def test_longest_side_fits_and_small_images_are_not_enlarged() -> None:
    assert png(render(TEST_FILES / "JPEG2000.dcm")).size == (32, 128)  # 256 x 1024
    assert png(render(TEST_FILES / "CT_small.dcm", 64)).size == (64, 64)
    assert png(render(TEST_FILES / "MR_small.dcm", 128)).size == (64, 64)


@pytest.mark.parametrize("twin", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_expb.dcm"])
def test_lossless_and_uncompressed_twins_render_the_same(twin: str) -> None:
    original = rendered("MR_small.dcm")
    assert original.std() > 40
    assert (rendered(twin) == original).all()


def test_deflated_and_12_bit_jpeg_extended() -> None:
    assert rendered("image_dfl.dcm").std() > 20
    jpeg = rendered("JPGExtended.dcm")
    j2k = rendered("JPEG2000.dcm")  # the same NM image, JPEG 2000 compressed
    assert jpeg.std() > 20
    assert np.corrcoef(jpeg.ravel(), j2k.ravel())[0, 1] > 0.9


# Colour from pydicom's files: the same test card in many encodings.

@pytest.mark.parametrize(("twin", "tolerance"), [
    ("SC_rgb_dcmtk_+eb+cr.dcm", 1),           # JPEG baseline, RGB
    ("SC_rgb_jpeg_dcmtk.dcm", 1),             # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4),        # JPEG baseline, YBR_FULL_422
    ("SC_ybr_full_422_uncompressed.dcm", 1),  # native YBR_FULL_422
    ("SC_rgb_jpeg_gdcm.dcm", 0),              # JPEG lossless
    ("SC_rgb_gdcm_KY.dcm", 0),                # JPEG 2000
    ("SC_rgb_jls_lossy_line.dcm", 1),         # JPEG-LS near-lossless
    ("SC_rgb_rle_16bit.dcm", 0),
    ("SC_rgb_rle_32bit.dcm", 0),
])
def test_colour_encodings_render_the_same_rgb(twin: str, tolerance: float) -> None:
    reference = png(render(TEST_FILES / "SC_rgb_rle.dcm"))
    assert reference.mode == "RGB"
    assert np.abs(rendered(twin) - np.asarray(reference).astype(int)).mean() <= tolerance


def test_colour_multiframe_shows_the_second_of_two() -> None:
    # pydicom's 2-frame test card has the inverted card as its second frame.
    inverted = 255 - rendered("SC_rgb_rle.dcm")
    assert np.abs(rendered("SC_rgb_rle_2frame.dcm") - inverted).mean() < 1


def test_palette_colour_is_applied() -> None:
    image = png(render(TEST_FILES / "examples_palette.dcm"))
    assert image.mode == "RGB"
    rgb = np.asarray(image).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 5  # not a grey image


# Grey images made here, where the answer is known.

def test_the_files_window_maps_known_values(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 199, 300]], dtype=np.uint16)
    path = write(tmp_path / "w.dcm", stored, WindowCenter=[100, 40], WindowWidth=[200, 400])
    assert pixels(render(path)).tolist() == [[0, 128, 255, 255]]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 199, 300]], dtype=np.uint16)
    path = write(tmp_path / "m1.dcm", stored, "MONOCHROME1", WindowCenter=100, WindowWidth=200)
    assert pixels(render(path)).tolist() == [[255, 127, 0, 0]]


def voi_lut_item(first: int, data: list[int], bits: int = 16) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(data), first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def test_voi_lut_sequence_is_applied_without_a_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3, 9]], dtype=np.uint16)
    lut = voi_lut_item(0, [0, 1000, 3000, 4000])  # 9 is past the end: the last entry
    path = write(tmp_path / "lut.dcm", stored, VOILUTSequence=[lut])
    assert pixels(render(path)).tolist() == [[0, 64, 191, 255, 255]]
    offset = write(tmp_path / "first.dcm", stored, VOILUTSequence=[voi_lut_item(2, [100, 200])])
    assert pixels(render(offset)).tolist() == [[0, 0, 0, 255, 255]]  # below first: first entry


def test_a_window_wins_over_a_voi_lut(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 199, 300]], dtype=np.uint16)
    path = write(tmp_path / "both.dcm", stored, WindowCenter=100, WindowWidth=200,
                 VOILUTSequence=[voi_lut_item(0, [4000, 0, 0, 0])])
    assert pixels(render(path)).tolist() == [[0, 128, 255, 255]]


def test_an_unusable_voi_lut_falls_back_to_the_automatic_window(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (4, 1))
    path = write(tmp_path / "bad.dcm", stored, VOILUTSequence=[voi_lut_item(0, [0, 1], bits=3)])
    image = pixels(render(path))
    assert image.min() == 0 and image.max() == 255


def test_presentation_lut_shape_inverse(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 199, 300]], dtype=np.uint16)
    inverse = write(tmp_path / "inv.dcm", stored, WindowCenter=100, WindowWidth=200,
                    PresentationLUTShape="INVERSE")
    assert pixels(render(inverse)).tolist() == [[255, 127, 0, 0]]
    # MONOCHROME1 is INVERSE by definition: inverted once, not twice.
    m1 = write(tmp_path / "m1.dcm", stored, "MONOCHROME1", WindowCenter=100, WindowWidth=200,
               PresentationLUTShape="INVERSE")
    assert pixels(render(m1)).tolist() == [[255, 127, 0, 0]]
    identity = write(tmp_path / "id.dcm", stored, WindowCenter=100, WindowWidth=200,
                     PresentationLUTShape="IDENTITY")
    assert pixels(render(identity)).tolist() == [[0, 128, 255, 255]]


def test_rescale_comes_before_the_window(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100]], dtype=np.uint16)
    path = write(tmp_path / "r.dcm", stored, RescaleSlope=2, RescaleIntercept=-100,
                 WindowCenter=0, WindowWidth=200, VOILUTFunction="LINEAR_EXACT")
    assert pixels(render(path)).tolist() == [[0, 128, 255]]


def test_signed_pixels(tmp_path: Path) -> None:
    stored = np.array([[-1000, 0, 1000]], dtype=np.int16)
    windowed = write(tmp_path / "s.dcm", stored, WindowCenter=0, WindowWidth=2000,
                     VOILUTFunction="LINEAR_EXACT")
    assert pixels(render(windowed)).tolist() == [[0, 128, 255]]
    automatic = write(tmp_path / "a.dcm", stored)
    assert pixels(render(automatic)).tolist() == [[0, 128, 255]]


def test_pixel_padding_does_not_drag_the_automatic_window(tmp_path: Path) -> None:
    stored = np.full((16, 16), -2000, dtype=np.int16)
    stored[:, 8:] = np.linspace(0, 1000, 16 * 8).reshape(16, 8).astype(np.int16)
    padded = pixels(render(write(tmp_path / "p.dcm", stored, PixelPaddingValue=-2000)))
    assert padded[:, 8:].min() <= 5 and padded[:, 8:].max() == 255
    unpadded = pixels(render(write(tmp_path / "u.dcm", stored)))
    assert unpadded[:, 8:].min() > 100  # what the padding would have done


@pytest.mark.parametrize("compressed", [False, True])
def test_multiframe_shows_the_middle_frame(tmp_path: Path, compressed: bool) -> None:
    frames = np.stack([np.full((4, 4), value, dtype=np.uint16) for value in (0, 1000, 2000)])
    path = write(tmp_path / "mf.dcm", frames, WindowCenter=1000, WindowWidth=2000)
    if compressed:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert (pixels(render(path)) == 128).all()  # frame 2 of 3; frames 1 and 3 give 0 and 255


def test_enhanced_objects_window_from_functional_groups(tmp_path: Path) -> None:
    def group(center: float, intercept: float) -> Dataset:
        voi, transform, item = Dataset(), Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 200
        transform.RescaleSlope, transform.RescaleIntercept = 1, intercept
        item.FrameVOILUTSequence, item.PixelValueTransformationSequence = [voi], [transform]
        return item

    frames = np.array([[[0, 0, 0, 0]], [[100, 200, 299, 400]]], dtype=np.uint16)
    path = write(tmp_path / "enh.dcm", frames, SharedFunctionalGroupsSequence=[group(100, -100)])
    assert pixels(render(path)).tolist() == [[0, 128, 255, 255]]
    only_second_frame = Dataset()
    path = write(tmp_path / "enh2.dcm", frames, SharedFunctionalGroupsSequence=[group(0, 0)],
                 PerFrameFunctionalGroupsSequence=[only_second_frame, group(100, -100)])
    assert pixels(render(path)).tolist() == [[0, 128, 255, 255]]


def test_a_large_multiframe_is_not_read_whole(tmp_path: Path) -> None:
    frames = np.broadcast_to(np.arange(48, dtype=np.uint16)[:, None, None], (48, 512, 512))
    path = write(tmp_path / "big.dcm", np.ascontiguousarray(frames), WindowCenter=24,
                 WindowWidth=2, VOILUTFunction="LINEAR_EXACT")
    assert path.stat().st_size > 24 * 2**20
    tracemalloc.start()
    try:
        grey = pixels(render(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (grey == 128).all()  # frame 25 of 48 holds 24, the window's center
    assert peak < 6 * 2**20


# What cannot be shown.

@pytest.mark.parametrize(("name", "label"), [("reportsi.dcm", "SR"), ("rtplan.dcm", "RTPLAN"),
                                             ("waveform_ecg.dcm", "ECG"),
                                             ("rtstruct.dcm", "RTSTRUCT")])  # no file meta
def test_objects_without_pixels_get_their_modality(name: str, label: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert render(TEST_FILES / name) == placeholder(label)
    assert not [r for r in caplog.records if r.name.startswith("echoes")]


def test_object_without_pixels_or_modality(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.104.1", generate_uid()
    ds.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    assert render(tmp_path / "pdf.dcm") == placeholder("no pixels")


def _garbage(tmp_path: Path) -> Path:
    (tmp_path / "x.dcm").write_bytes(os.urandom(4000))
    return tmp_path / "x.dcm"


def _preamble_then_garbage(tmp_path: Path) -> Path:
    (tmp_path / "x.dcm").write_bytes(bytes(128) + b"DICM" + os.urandom(4000))
    return tmp_path / "x.dcm"


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "x.dcm").write_bytes(b"")
    return tmp_path / "x.dcm"


def _truncated_ct(tmp_path: Path) -> Path:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    (tmp_path / "x.dcm").write_bytes(data[: len(data) * 2 // 3])
    return tmp_path / "x.dcm"


def _unsupported_photometric(tmp_path: Path) -> Path:
    path = write(tmp_path / "x.dcm", np.zeros((2, 2, 3), dtype=np.uint8), "RGB", 8)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("make", [
    _garbage, _preamble_then_garbage, _empty, _truncated_ct, _unsupported_photometric,
    lambda tmp_path: TEST_FILES / "MR_truncated.dcm",
    lambda tmp_path: TEST_FILES / "JPEG-lossy.dcm",  # a JPEG stream no decoder accepts
    lambda tmp_path: tmp_path / "missing.dcm",
], ids=["garbage", "preamble", "empty", "truncated", "hsv", "mr_truncated", "bad_jpeg",
        "missing"])
def test_undecodable_gives_a_placeholder_and_one_log_line(
        tmp_path: Path, make: Callable[[Path], Path], caplog: pytest.LogCaptureFixture) -> None:
    path = make(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert render(path) == placeholder("cannot decode")
    assert [(r.name, r.levelno) for r in caplog.records] == [("echoes.thumbnail", logging.WARNING)]
    message = caplog.records[0].getMessage()
    assert str(path) in message
    assert "CompressedSamples" not in message and "Secret" not in message  # patient names


def test_placeholder_is_a_grey_square_with_a_label() -> None:
    image = png(placeholder("cannot decode"))
    assert image.mode == "L" and image.size == (128, 128)
    grey = np.asarray(image)
    assert grey[0, 0] == 128 and grey.max() > 200
    assert placeholder("SR") != placeholder("KO")
    assert png(placeholder("\x00\u00e9" + "W" * 80, 24)).size == (24, 24)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        render(TEST_FILES / "CT_small.dcm", 0)
    with pytest.raises(ValueError):
        placeholder("SR", 0)


def test_pydicom_logs_normally_outside_render(caplog: pytest.LogCaptureFixture) -> None:
    render(TEST_FILES / "JPEG-lossy.dcm")  # pydicom's decoder errors are dropped in there
    with caplog.at_level(logging.WARNING):
        logging.getLogger("pydicom").warning("outside")
        logging.getLogger("pydicom.pixels.decoders.base").error("outside too")
    from_pydicom = [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert from_pydicom == ["outside", "outside too"]
