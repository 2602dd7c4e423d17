"""Image checks on a parsed data set, and ``read_dataset`` (parse, then check).

Geometry (Rows, Columns, bits, samples, photometric interpretation, frames) must be
present, parseable and consistent and within the pixel budget; native pixel data must be
long enough and encapsulated pixel data must start with an item; objects without pixel
data are rejected by kind; technical and identification elements are converted inside the
quiet boundary; the identifying UIDs must follow the UID grammar.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from ..errors import (
    CorruptDicomError,
    InputError,
    InvalidUIDError,
    NotApplicable,
    TooLargeError,
    UnsupportedError,
)
from ..vr import valid_uid
from .common import (
    _DEFAULT_LIMITS,
    ReadLimits,
    _cause,
    _is_input_failure,
    _parse_error,
    _reject,
    _uid,
    _uid_name,
    _with_study,
    log,
)
from .parse import _UNDEFINED, _parse, _read_bytes
from .quiet import _library_quiet

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
_ITEM_LE = b"\xfe\xff\x00\xe0"
_IDENTIFICATION_GROUPS = (0x0008, 0x0010, 0x0020)

#: technical elements that must hold numbers (VR IS, DS, US, SS)
_NUMERIC_KEYWORDS = frozenset({
    "SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns", "NumberOfFrames",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth",
})
#: technical elements converted (and so validated) inside the boundary
_TECHNICAL_KEYWORDS = (
    "SOPClassUID",
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
)


# --- image checks -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    frames: int
    photometric: str
    signed: bool = False  # Pixel Representation 1

    @property
    def pixels(self) -> int:
        return self.rows * self.cols * self.frames * self.samples


def _optional_int(ds: Dataset, keyword: str, label: str) -> int | None:
    """A single whole number from a technical element, None when absent or empty."""
    try:
        value = ds.get(keyword, None)
    except Exception as exc:
        raise CorruptDicomError(f"the {label} value cannot be read (damaged element)") from _cause(exc)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        raise CorruptDicomError(f"{label} has several values, one is expected")
    try:
        as_float = float(value)
        as_int = int(as_float)
    except (TypeError, ValueError, OverflowError):
        raise CorruptDicomError(f"{label} is not a number") from None  # its message quotes the value
    if as_int != as_float:
        raise CorruptDicomError(f"{label} is not a whole number")
    return as_int


def _required_int(ds: Dataset, keyword: str, label: str) -> int:
    value = _optional_int(ds, keyword, label)
    if value is None:
        raise CorruptDicomError(f"{label} is missing")
    return value


def number_of_frames(ds: Dataset) -> int:
    """Number of frames: 1 when absent, empty or 0 (as pydicom does).

    Raises CorruptDicomError when the value is not a whole number or negative.
    """
    with _library_quiet():
        n = _optional_int(ds, "NumberOfFrames", "Number of Frames (0028,0008)")
    if n is None or n == 0:
        return 1
    if n < 0:
        raise CorruptDicomError(f"Number of Frames (0028,0008) is negative ({n})")
    return n


def _geometry(ds: Dataset, limits: ReadLimits, *, float_pixels: bool = False) -> _Geometry:
    rows = _required_int(ds, "Rows", "Rows (0028,0010)")
    cols = _required_int(ds, "Columns", "Columns (0028,0011)")
    bits_allocated = _required_int(ds, "BitsAllocated", "Bits Allocated (0028,0100)")
    bits_stored = _optional_int(ds, "BitsStored", "Bits Stored (0028,0101)")
    if bits_stored is None:
        if not float_pixels:  # float pixel data has no Bits Stored
            raise CorruptDicomError("Bits Stored (0028,0101) is missing")
        bits_stored = bits_allocated
    high_bit = _optional_int(ds, "HighBit", "High Bit (0028,0102)")
    samples = _optional_int(ds, "SamplesPerPixel", "Samples per Pixel (0028,0002)")
    samples = 1 if samples is None else samples
    pixel_rep = _optional_int(ds, "PixelRepresentation", "Pixel Representation (0028,0103)") or 0
    frames = number_of_frames(ds)
    try:
        photometric = ds.get("PhotometricInterpretation", None)
    except Exception as exc:
        raise CorruptDicomError("the Photometric Interpretation value cannot be read") from _cause(exc)
    photometric = str(photometric or "").strip().upper()

    if rows <= 0 or cols <= 0:
        raise CorruptDicomError(f"image has {rows} rows and {cols} columns")
    if bits_allocated != 1 and (bits_allocated <= 0 or bits_allocated % 8 or bits_allocated > 64):
        raise CorruptDicomError(f"Bits Allocated ({bits_allocated}) must be 1 or a multiple of 8 up to 64")
    if not 1 <= bits_stored <= bits_allocated:
        raise CorruptDicomError(
            f"Bits Stored ({bits_stored}) is inconsistent with Bits Allocated ({bits_allocated})"
        )
    if high_bit is not None and not 0 <= high_bit < bits_allocated:
        raise CorruptDicomError(f"High Bit ({high_bit}) is inconsistent with Bits Allocated ({bits_allocated})")
    if pixel_rep not in (0, 1):
        raise CorruptDicomError(f"Pixel Representation ({pixel_rep}) must be 0 or 1")
    if samples in (2, 4):
        raise UnsupportedError(f"{samples} samples per pixel (retired colour format) is not supported")
    if samples not in (1, 3):
        raise CorruptDicomError(f"Samples per Pixel ({samples}) must be 1 or 3")
    if not photometric:
        raise CorruptDicomError("Photometric Interpretation (0028,0004) is missing")
    mono = photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR"
    colour = photometric.startswith(("RGB", "YBR"))
    if (mono and samples != 1) or (colour and samples != 3):
        raise CorruptDicomError(
            f"Samples per Pixel ({samples}) does not match the photometric interpretation"
        )
    geom = _Geometry(rows, cols, samples, bits_allocated, bits_stored, frames, photometric, pixel_rep == 1)
    if geom.pixels > limits.max_pixels:
        raise TooLargeError(
            f"image is {cols} x {rows} x {frames} frame(s) x {samples} sample(s) = {geom.pixels:,} values, "
            f"above the {limits.max_pixels:,} budget"
        )
    return geom


def _pixel_element(ds: Dataset) -> tuple[int, object] | None:
    for tag in _PIXEL_TAGS:
        if tag in ds:
            return tag, ds.get_item(tag)
    return None


def _pixel_value_info(elem: object) -> tuple[bool, int]:
    """(encapsulated?, available byte count) without converting the element."""
    if isinstance(elem, RawDataElement):
        value = elem.value or b""
        return elem.length == _UNDEFINED, len(value)
    value = getattr(elem, "value", None) or b""
    return bool(getattr(elem, "is_undefined_length", False)), len(value)


def _raw_value(elem: object) -> bytes:
    value = elem.value if isinstance(elem, RawDataElement) else getattr(elem, "value", None)
    return bytes(value or b"") if not isinstance(value, bytes) else value


def _ts_uid(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    try:
        ts = meta.get("TransferSyntaxUID", None) if meta is not None else None
    except Exception:
        return None
    if not ts:
        return None
    return _uid(ts)


#: transfer syntaxes newer than this pydicom (3.0) that a modality may send (PS3.5 Annex A), by name
NEWER_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
                           "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
                           "1.2.840.10008.1.2.4.112": "JPEG XL",
                           "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression"}


def _check_pixels(ds: Dataset, limits: ReadLimits) -> tuple[_Geometry, bool]:
    found = _pixel_element(ds)
    if found is None:
        _reject_non_image(ds)
        raise CorruptDicomError("pixel data is missing")  # not reached: the line above raises
    tag, elem = found
    ts = _ts_uid(ds)
    if ts is not None and ts.is_valid and not ts.is_private and not ts.is_transfer_syntax:
        # newer than this pydicom (JPEG XL in pydicom 3.0): its pixel data cannot even be framed, so say so
        # before a size check calls it damaged
        name = NEWER_TRANSFER_SYNTAXES.get(str(ts), "unknown here")
        raise UnsupportedError(f"pixel data in transfer syntax {ts} ({name}) is stored but not analysed here "
                               "(no decoder for it); the study needs a human read")
    geom = _geometry(ds, limits, float_pixels=tag != 0x7FE00010)
    encapsulated, available = _pixel_value_info(elem)
    if ts is not None and ts.is_transfer_syntax and ts.is_encapsulated != encapsulated:
        expected = "compressed (encapsulated)" if ts.is_encapsulated else "uncompressed (native)"
        raise CorruptDicomError(
            f"the pixel data is not stored as {expected}, as its transfer syntax "
            f"({_uid_name(ts)}) requires"
        )
    if encapsulated:
        value = _raw_value(elem)
        if value[:4] != _ITEM_LE or len(value) < 16:
            raise CorruptDicomError("the compressed pixel data has no frames (damaged)")
        return geom, True
    expected = _native_bytes(geom)
    if available < expected:
        raise CorruptDicomError(
            f"pixel data is {available:,} bytes but the image needs {expected:,}: "
            "the file is cut short (truncated) or damaged"
        )
    return geom, False


def _native_bytes(geom: _Geometry) -> int:
    """Bytes of uncompressed pixel data the header describes (without the even-length pad byte)."""
    if geom.bits_allocated == 1:
        return math.ceil(geom.pixels / 8)
    expected = geom.pixels * (geom.bits_allocated // 8)
    return expected // 3 * 2 if geom.photometric == "YBR_FULL_422" else expected


def pixel_notes(ds: Dataset, limits: ReadLimits = _DEFAULT_LIMITS) -> list[str]:
    """What a reader of the result should know about the pixel data that does not stop the image.

    Today: surplus uncompressed pixel data (for example Number of Frames 1 over three frames'
    worth of bytes, or Bits Allocated 8 over 16-bit data). Only the part the header describes
    is used; the note says so, because the header may be wrong about the image.
    """
    with _library_quiet():
        geom, encapsulated = _check_pixels(ds, limits)
        if encapsulated:
            return []
        _, available = _pixel_value_info(_pixel_element(ds)[1])
    expected = _native_bytes(geom)
    surplus = available - expected - (expected % 2)  # an odd length is padded to even: not surplus
    if surplus <= 0:
        return []
    return [f"pixel data holds {available:,} bytes but Rows x Columns x Number of Frames x Bits Allocated "
            f"describe {expected:,}; only those were used (check the header: the image may be misread)"]


_NON_IMAGE_KINDS = (
    ("sr storage", "structured report"),
    ("key object selection", "key object selection document"),
    ("presentation state", "presentation state"),
    ("rt ion plan", "RT plan"),
    ("rt plan", "RT plan"),
    ("rt structure set", "RT structure set"),
    ("rt beams treatment record", "RT treatment record"),
    ("treatment record", "RT treatment record"),
    ("waveform", "waveform"),
    ("media storage directory", "DICOMDIR"),
    ("encapsulated pdf", "encapsulated PDF"),
    ("encapsulated cda", "encapsulated document"),
    ("raw data", "raw data"),
    ("spectroscopy", "spectroscopy data"),
    ("registration", "spatial registration"),
    ("segmentation", "segmentation without pixel data"),
)


def _sop_class(ds: Dataset) -> UID | None:
    for source, keyword in ((ds, "SOPClassUID"), (getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")):
        if source is None:
            continue
        try:
            value = source.get(keyword, None)
        except Exception:
            continue
        if value:
            return _uid(value)
    return None


def _reject_non_image(ds: Dataset) -> None:
    sop = _sop_class(ds)
    name = _uid_name(sop) if sop else ""
    lowered = name.lower()
    if "image storage" in lowered or "Rows" in ds or "Columns" in ds:
        raise CorruptDicomError(
            f"pixel data is missing from an image ({name or 'unknown SOP class'}): the file is damaged or cut short"
        )
    for needle, kind in _NON_IMAGE_KINDS:
        if needle in lowered:
            raise NotApplicable(f"not an image: {kind} ({name}), nothing to score")
    if name:
        raise NotApplicable(f"not an image: no pixel data ({name}), nothing to score")
    raise NotApplicable("not an image: no pixel data and no SOP class, nothing to score")


def _convert_elements(ds: Dataset, path: str) -> None:
    """Convert technical and identification elements inside the quiet boundary.

    Conversion is where pydicom validates values and warns with the value in the
    message; a converted element is cached in the data set, so later accesses by other
    modules neither warn nor fail. A technical element that cannot be parsed rejects
    the file. An identification element (groups 0008, 0010, 0020) that cannot be
    parsed is removed (logged by tag only): the image is still usable, and a later
    access must not raise with the value in its message.
    """
    for keyword in _TECHNICAL_KEYWORDS:
        try:
            value = ds.get(keyword, None)
        except Exception as exc:
            raise CorruptDicomError(f"the {keyword} element cannot be parsed (damaged file)") from _cause(exc)
        if keyword in _NUMERIC_KEYWORDS and value is not None and value != "":
            # in pydicom's default (warn) mode an invalid IS/DS value comes back as str
            values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
            if not all(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in values):
                raise CorruptDicomError(f"the {keyword} value is not a number (damaged file)")
    for tag in list(ds.keys()):
        if tag >> 16 not in _IDENTIFICATION_GROUPS:
            continue
        try:
            ds[tag]
        except Exception:
            del ds[tag]
            log.debug("%s: removed unparseable element (%04X,%04X)", path, tag >> 16, tag & 0xFFFF)


#: the UIDs that place an image in the worklist; each must be a UID or absent
_IDENTITY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _check_identity(ds: Dataset) -> None:
    """Refuse an image whose identifying UIDs break the UID grammar (the value is never shown)."""
    for keyword in _IDENTITY_UIDS:
        value = ds.get(keyword, None)
        text = "" if value is None else str(value).strip(" \x00")
        if text and not valid_uid(text):
            raise InvalidUIDError(f"{keyword} is not a valid UID (digits and dots, at most 64 characters), "
                                  "so the image cannot be placed in a study; the value is not shown",
                                  hint="correct the scanner's or archive's DICOM export")


# --- public API ---------------------------------------------------------------------------
def read_dataset(path: os.PathLike | str, limits: ReadLimits = _DEFAULT_LIMITS) -> pydicom.Dataset:
    """Read and validate one file. Returns a dataset whose pixel data is present but not decoded.

    Native (uncompressed) Pixel Data is a read-only ``memoryview`` of the file's bytes, not a copy of
    them: ``bytes(ds.PixelData)`` makes a copy, which a dataset must hold before it is deep-copied or
    pickled (memoryviews are neither). Encapsulated (compressed) Pixel Data is bytes.

    Raises only edgeinfer ``InputError`` subclasses for bad input:
    ``NotDicomError``, ``CorruptDicomError``, ``TooLargeError``, ``NotApplicable``
    (valid DICOM that is not an image), and ``UnsupportedError`` for a retired
    2- or 4-sample colour format.
    """
    path_str = os.fspath(path)
    if isinstance(path_str, bytes):
        path_str = os.fsdecode(path_str)
    ds = None
    try:
        data = _read_bytes(path_str, limits)
        ds = _parse(data, limits, path_str)
        del data
        with _library_quiet():
            if _pixel_element(ds) is None:
                _reject_non_image(ds)
            _check_pixels(ds, limits)
            _convert_elements(ds, path_str)
            _check_identity(ds)
        return ds
    except InputError as err:
        raise _reject(path_str, _with_study(err, ds))
    except BaseException as exc:  # anything pydicom/zlib/struct raises on malformed input
        if not _is_input_failure(exc):
            raise
        raise _reject(path_str, _with_study(_parse_error(exc, "file could not be read"), ds)) from _cause(exc)
