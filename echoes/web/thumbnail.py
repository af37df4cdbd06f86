"""Thumbnails for the Browser: one small PNG per series, drawn from one archived object.

The Browser puts many thumbnails on a page, from every kind of object the archive
accepts, so :func:`render` never raises for what it finds in a file: an object without
pixels gets a grey :func:`placeholder` naming its modality (a user scanning a study wants
to see "SR" or "KO" there, not a hole), and one it cannot decode gets "cannot decode" and
one WARNING line with the file and the reason. Archive paths hold only UIDs, and the
reason is a decoder's message, so the log carries no patient data.

Objects can be huge (cine, tomosynthesis, a 1 GB multi-frame), so only the header and the
middle frame are read: ``pydicom.pixels.pixel_array(path, index=...)`` seeks to that one
frame in the file, native or encapsulated. Deflated and meta-less files cannot be read in
place; they are read whole, and only below ``IN_MEMORY_LIMIT``.

Grey images go through the chain a viewer applies (PS3.3 C.11: Modality LUT, VOI window
or else VOI LUT, then MONOCHROME1 or Presentation LUT Shape INVERSE inverted), so the
thumbnail looks like the image the user will open.
Files without a window get the 1st-99th percentile of their values instead: a CT without
window tags still looks like a CT rather than a black square.

The arithmetic lives in pure helpers (:func:`window`, :func:`auto_window`,
:func:`rescale`, :func:`pick_frame`) that take arrays and numbers, so tests check it in
microseconds without files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

log = logging.getLogger("echoes.thumbnail")

#: Files that must be read whole (deflated, no file meta) are refused above this size.
IN_MEMORY_LIMIT = 256 * 2**20
#: The automatic window looks at the values this far in from either end (percent).
PERCENTILES = (1.0, 99.0)
#: ... sampled on a grid of at most about this many points a side (16k values: < 1 ms).
STATS_SIDE = 128
PLACEHOLDER_GREY = 128
PLACEHOLDER_INK = 235
LABEL_CHARS = 16
#: zlib level 1: half the encoding time of the default 6 for ~10% more bytes on a thumbnail.
PNG_COMPRESS_LEVEL = 1

#: pydicom's guess at a meta-less file's encoding (implicit VR, little endian) -> its syntax.
_GUESSED_SYNTAX = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}

#: Where an enhanced (functional group) object keeps what a classic image has at top level.
_FUNCTIONAL_GROUP = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
    "VOILUTFunction": "FrameVOILUTSequence",
}

#: (center, width, VOI LUT Function) of a window, in modality (rescaled) units.
Window = tuple[float, float, str]

_rendering: ContextVar[bool] = ContextVar("echoes_thumbnail_rendering", default=False)


class _QuietWhileRendering(logging.Filter):
    """Drops pydicom's own records while this thread renders a thumbnail.

    A decoder plugin that fails logs its full traceback at ERROR, even when the next
    plugin succeeds, and header oddities log a WARNING each: a page of thumbnails would
    bury the log. :func:`render` reports what matters in its one line. Everything pydicom
    logs outside :func:`render` (the ingester, the store SCP) passes untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not _rendering.get()


@contextlib.contextmanager
def pydicom_quiet() -> Iterator[None]:
    """pydicom's records dropped in this thread meanwhile (rendering here, and DICOMweb's
    conversions, which report a failure in one line of their own)."""
    token = _rendering.set(True)
    try:
        yield
    finally:
        _rendering.reset(token)


_QUIET = _QuietWhileRendering()
for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name).addFilter(_QUIET)  # the loggers pydicom 3 reads pixels with


def render(path: Path, size: int = 128, fmt: str = "png") -> bytes:
    """PNG (or ``fmt="jpeg"``) bytes of a thumbnail (longest side <= size) of the object at path.

    Never raises for bad or odd data: returns :func:`placeholder` with a short reason
    instead, because one broken object must not break a page of thumbnails. Images smaller
    than ``size`` are not enlarged (the page scales them; the PNG stays honest). ValueError
    only for a ``size`` below 1, which is the caller's mistake, not the file's.
    """
    _check_size(size)
    path = Path(path)
    try:
        with pydicom_quiet():
            header = _read_header(path)
            if "Rows" not in header or "Columns" not in header:
                return placeholder(str(header.get("Modality") or "no pixels"), size, fmt)
            image = _image(path, header, size, pick_frame(_frame_count(header)), None)
    except Exception as exc:  # the boundary: whatever the file holds, the page gets a PNG
        log.warning("no thumbnail for %s: %s", path, _reason(exc))
        return placeholder("cannot decode", size, fmt)
    return encode(image, fmt)


class NotAnImage(ValueError):
    """The object holds no pixels (an SR, a KO, a PDF): there is nothing to render."""


def render_frame(path: Path, index: int, voi: tuple[float, float, str] | None = None
                 ) -> Image.Image:
    """Frame ``index`` (0-based) of the object at full size, as a viewer shows it: DICOMweb's
    ``rendered`` (PS3.18 8.3.5), through the same chain as the thumbnails.

    ``voi`` (center, width, function) in modality (rescaled) units replaces the file's own
    window, as PS3.18's ``window`` parameter asks.  Unlike :func:`render` this raises:
    :class:`NotAnImage`, IndexError for a frame beyond the last, anything a decoder raises.
    """
    path = Path(path)
    with pydicom_quiet():
        header = _read_header(path)
        if "Rows" not in header or "Columns" not in header:
            raise NotAnImage(f"a {header.get('Modality') or 'non-image'} object has no pixels")
        count = _frame_count(header)
        if not 0 <= index < count:
            raise IndexError(f"frame {index + 1} asked for, the object has {count} frame(s)")
        side = max(int(header.Rows), int(header.Columns))
        return _image(path, header, side, index, voi)


#: Output format -> Pillow's writer arguments (JPEG at quality 90: a viewer's default).
_WRITERS: dict[str, dict[str, object]] = {
    "png": {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL},
    "jpeg": {"format": "JPEG", "quality": 90},
}


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    """PNG or JPEG bytes of an 8-bit grey or RGB image."""
    buffer = io.BytesIO()
    image.save(buffer, **_WRITERS[fmt])  # type: ignore[arg-type]
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def placeholder(label: str, size: int = 128, fmt: str = "png") -> bytes:
    """PNG of a neutral grey square with a short label (e.g. "SR", "no pixels", "cannot decode").

    Grey so that it reads as "nothing to show" next to real images, with the label so the
    user knows whether to expect a report or a broken file. Cached: a page of SR series
    asks for the same few squares again and again.
    """
    _check_size(size)
    text = _printable(label)
    image = Image.new("L", (size, size), PLACEHOLDER_GREY)
    draw = ImageDraw.Draw(image)
    font = _fitting_font(draw, text, size)
    draw.text((size / 2, size / 2), text, fill=PLACEHOLDER_INK, font=font, anchor="mm")
    return encode(image, fmt)


def pick_frame(number_of_frames: int) -> int:
    """Index of the middle frame (the later one for an even count; 0 for nonsense counts).

    The middle of a cine loop or a volume is the most representative frame; the first is
    often a scout or a blank run-in.
    """
    return max(number_of_frames, 0) // 2


def rescale(pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Stored values -> modality values (PS3.3 C.11.1: e.g. Hounsfield units for CT), float32.

    float32 rather than float64: half the memory and time, and display needs no more.
    """
    values = pixels.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"
           ) -> np.ndarray:
    """Modality values -> 8-bit grey through a VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    The standard's own formulas, so a thumbnail matches what a conformant viewer shows for
    the same Window Center/Width; an unknown VOI LUT Function falls back to LINEAR as the
    standard says it defaults. ``width`` must be > 0.
    """
    if not width > 0:
        raise ValueError(f"window width {width} is not > 0")
    voi = _VOI_FUNCTIONS.get(function.strip().upper(), _linear)
    with np.errstate(invalid="ignore", over="ignore"):
        fraction = np.nan_to_num(voi(values, center, width), nan=0.0)
    return (fraction * 255 + 0.5).astype(np.uint8)


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) for :func:`window` when the file has none: 1st-99th percentile.

    Percentiles, not min/max, so a few hot pixels or a metal implant do not flatten the
    rest. If they coincide (a small segment on a blank frame) min/max is used so the
    detail does not vanish; a truly flat image comes out black, as viewers show it.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        finite = np.zeros(1, dtype=np.float32)
    low, high = (float(v) for v in np.percentile(finite, PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return low + 1.0, 1.0
    return (low + high + 1.0) / 2.0, high - low + 1.0  # maps low to 0 and high to 255


def _linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    if width <= 1:  # the standard's formula degenerates to a threshold at center - 0.5
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def _sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


#: (0028,1056) VOI LUT Function -> fraction of the output range, 0..1.
_VOI_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "LINEAR": _linear,
    "LINEAR_EXACT": _linear_exact,
    "SIGMOID": _sigmoid,
}


def _read_header(path: Path) -> Dataset:
    """Everything before the pixel data, if the file holds a DICOM object at all.

    pydicom reads garbage as a "dataset" of an odd element or two (with force, or after a
    'DICM' prefix), so a read counts only if it found a SOP Class UID, which every object
    has. Meta-less files are read too: old archives are full of them.
    """
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "SOPClassUID" not in header and "MediaStorageSOPClassUID" not in header.file_meta:
        raise InvalidDicomError("no SOP Class UID: not a DICOM object")
    return header


def _image(path: Path, header: Dataset, size: int, index: int,
           voi: tuple[float, float, str] | None) -> Image.Image:
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    convert = _CONVERTERS.get(photometric)
    if convert is None:
        raise ValueError(f"photometric interpretation {photometric!r} is not supported")
    image = convert(_decode(path, header, index), header, index, size, voi)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _frame_count(header: Dataset) -> int:
    value = header.get("NumberOfFrames")
    return 1 if value in (None, "") else int(value)


def _decode(path: Path, header: Dataset, index: int) -> np.ndarray:
    """The one frame, read from the file in place whenever the transfer syntax allows.

    A small file the in-place reader refuses gets a second try read whole: dcmread sniffs
    an encoding that contradicts the file meta (implicit VR under an explicit syntax) and
    copes with odd fragment layouts, which the in-place reader takes at their word.
    """
    syntax = header.file_meta.get("TransferSyntaxUID")
    if not syntax or syntax == DeflatedExplicitVRLittleEndian:
        return _decode_whole(path, index)
    try:
        return pixel_array(path, index=index)
    except Exception as in_place:
        if path.stat().st_size > IN_MEMORY_LIMIT:
            raise
        try:
            return _decode_whole(path, index)
        except Exception:
            raise in_place from None


def _decode_whole(path: Path, index: int) -> np.ndarray:
    """The frame from the file read into memory: for deflated and meta-less files."""
    size = path.stat().st_size
    if size > IN_MEMORY_LIMIT:
        raise ValueError(f"{size} bytes to read whole (deflated or no file meta), "
                         f"limit {IN_MEMORY_LIMIT}")
    dataset = pydicom.dcmread(path, force=True)
    if not dataset.file_meta.get("TransferSyntaxUID"):
        dataset.file_meta.TransferSyntaxUID = _GUESSED_SYNTAX[dataset.original_encoding]
    return pixel_array(dataset, index=index)


# Converters: decoded frame -> 8-bit Pillow image ("L" or "RGB"), chosen by
# (0028,0004) Photometric Interpretation in _CONVERTERS below.

def _monochrome2(pixels: np.ndarray, header: Dataset, index: int, size: int,
                 voi: Window | None) -> Image.Image:
    """Lowest value black, unless (2050,0020) Presentation LUT Shape says INVERSE
    (PS3.3 C.11.6: some CR and DX, and presentation-ready images, are stored so).
    """
    grey = _grey(pixels, header, index, size, voi)
    inverse = str(header.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    return Image.fromarray(255 - grey if inverse else grey)


def _monochrome1(pixels: np.ndarray, header: Dataset, index: int, size: int,
                 voi: Window | None) -> Image.Image:
    """MONOCHROME1 shows its lowest value white (PS3.3 C.7.6.3.1.2): CR, DX, mammography.

    Its Presentation LUT Shape is INVERSE by definition: not a second inversion.
    """
    return Image.fromarray(255 - _grey(pixels, header, index, size, voi))


def _rgb(pixels: np.ndarray, header: Dataset, index: int, size: int,
         voi: Window | None) -> Image.Image:
    return Image.fromarray(_colour_8bit(pixels, int(header.get("BitsStored") or 8)))


def _palette(pixels: np.ndarray, header: Dataset, index: int, size: int,
             voi: Window | None) -> Image.Image:
    rgb = apply_color_lut(pixels, header)[..., :3]  # drop an alpha palette, if any
    return Image.fromarray(_colour_8bit(rgb, 8 * rgb.itemsize))


#: pydicom hands YBR_FULL(_422) over as RGB already (pixel_array with raw=False), and the
#: JPEG 2000 decoders undo YBR_ICT/YBR_RCT, so all of those arrive here as RGB.
_CONVERTERS: dict[str, Callable[[np.ndarray, Dataset, int, int, Window | None],
                               Image.Image]] = {
    "MONOCHROME1": _monochrome1,
    "MONOCHROME2": _monochrome2,
    "RGB": _rgb,
    "YBR_FULL": _rgb,
    "YBR_FULL_422": _rgb,
    "YBR_ICT": _rgb,
    "YBR_RCT": _rgb,
    "PALETTE COLOR": _palette,
}


def _grey(pixels: np.ndarray, header: Dataset, index: int, size: int,
          voi: Window | None = None) -> np.ndarray:
    """Stored grey frame -> windowed 8-bit array, shrunk to about twice the thumbnail.

    ``voi``, when given, is the window to use instead of the file's own.
    """
    if pixels.ndim != 2:
        raise ValueError(f"a grey frame of shape {pixels.shape}")
    values = _modality_values(pixels, header, index)
    file_window = voi or _file_window(header, index)
    if file_window is None and header.get("VOILUTSequence"):
        with contextlib.suppress(ValueError, KeyError, AttributeError, IndexError,
                                 NotImplementedError, TypeError):
            return _voi_lut(_shrink(values, size), header)
        # a LUT pydicom cannot apply: the automatic window below, as without one
    if file_window is None:
        padding = _first_number(header.get("PixelPaddingValue"))
        center, width = auto_window(_stats_sample(values, pixels, padding))
        function = "LINEAR"
    else:
        center, width, function = file_window
    return window(_shrink(values, size), center, width, function)


def _voi_lut(values: np.ndarray, header: Dataset) -> np.ndarray:
    """The file's first VOI LUT (PS3.3 C.11.2), its output range stretched to 0-255.

    For files that carry a LUT instead of Window Center/Width (CR and DX
    often do); a file with both is windowed, as most viewers do by default.
    """
    item = header.VOILUTSequence[0]
    entries, first = (int(item.LUTDescriptor[0]) or 2**16), int(item.LUTDescriptor[1])
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), header)
    mapped = apply_voi(np.rint(values).astype(np.int64), header)
    return stretch(mapped, float(table.min()), float(table.max()))


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low``..``high`` onto 0..255 (clipped); a flat range gives black."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _modality_values(pixels: np.ndarray, header: Dataset, index: int) -> np.ndarray:
    if header.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels, header).astype(np.float32)
    slope = _first_number(_frame_value(header, "RescaleSlope", index))
    intercept = _first_number(_frame_value(header, "RescaleIntercept", index))
    return rescale(pixels, slope or 1.0, intercept or 0.0)


def _file_window(header: Dataset, index: int) -> tuple[float, float, str] | None:
    """The file's first window, or None when absent or unusable (width not > 0)."""
    center = _first_number(_frame_value(header, "WindowCenter", index))
    width = _first_number(_frame_value(header, "WindowWidth", index))
    if center is None or width is None or width <= 0:
        return None
    function = str(_frame_value(header, "VOILUTFunction", index) or "LINEAR")
    return center, width, function


def _frame_value(header: Dataset, keyword: str, index: int) -> object:
    """A classic top-level value, else the frame's own functional group, else the shared one."""
    value = header.get(keyword)
    if value not in (None, ""):
        return value
    groups: list[Dataset] = []
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    macro = _FUNCTIONAL_GROUP.get(keyword, "")
    for group in groups:
        items = group.get(macro)
        if items and items[0].get(keyword) not in (None, ""):
            return items[0].get(keyword)
    return None


def _first_number(value: object) -> float | None:
    """The first value of a possibly multi-valued DS/IS/US element; None if not a number."""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _stats_sample(values: np.ndarray, stored: np.ndarray, padding: float | None
                  ) -> np.ndarray:
    """A grid sample of the values, without Pixel Padding Value (the area outside a CT's
    field of view would otherwise pull the automatic window down to -2000)."""
    step = max(1, math.ceil(max(values.shape) / STATS_SIDE))
    sample = values[::step, ::step]
    if padding is None:
        return sample
    keep = stored[::step, ::step] != padding
    return sample[keep] if keep.any() else sample


def _shrink(values: np.ndarray, size: int) -> np.ndarray:
    """Box-average down to about twice the thumbnail before windowing: a 512x512 CT is
    windowed at 256x256, a 4k mammogram never whole in float64."""
    factor = max(values.shape) // (2 * size)
    if factor < 2:
        return values
    return np.asarray(Image.fromarray(values).reduce(factor))


def _colour_8bit(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"a colour frame of shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    shifted = pixels >> max(bits_stored - 8, 0)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"thumbnail size {size} is not >= 1")


def _printable(label: str) -> str:
    """Labels can come from the file (Modality): keep them short and plain ASCII."""
    text = "".join(ch for ch in str(label) if " " <= ch <= "~").strip()
    return text[:LABEL_CHARS] or "?"


@functools.lru_cache(maxsize=32)
def _font(points: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=points)


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, size: int
                  ) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font up to size/9 in which the label fits the square with a margin."""
    points = max(6, size // 9)
    font = _font(points)
    while points > 6 and draw.textlength(text, font=font) > size * 0.9:
        points -= 1
        font = _font(points)
    return font


def _reason(exc: BaseException) -> str:
    """One short line: the exception's type and its message's first 200 characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200]
