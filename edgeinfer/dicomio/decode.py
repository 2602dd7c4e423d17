"""Decoding one frame: transfer syntax and decoder availability, the frame's codestream
header (JPEG, JPEG-LS, JPEG 2000 dimensions) checked before a decoder allocates, pydicom's
decoder with plugin failures summarised, and the result checked for shape.
"""
from __future__ import annotations

import operator
from typing import Callable

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as _pd_pixel_array

from ..errors import CorruptDicomError, InputError, TooLargeError, UnsupportedError
from . import codecs
from .codecs import encoded_dimensions
from .checks import _Geometry, _check_pixels, _pixel_element, _raw_value, _ts_uid
from .common import (
    _DEFAULT_LIMITS,
    ReadLimits,
    _cause,
    _clean_text,
    _is_input_failure,
    _parse_error,
    _safe_uid,
    _with_study,
)
from .quiet import _library_quiet


def decodes(transfer_syntax: str) -> bool:
    """Whether pixel data in ``transfer_syntax`` is decoded here: a native (uncompressed) one, or a compressed
    one with a decoder plugin installed. A transfer syntax newer than pydicom (JPEG XL in pydicom 3.0) is not."""
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return False
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def describe_transfer_syntax(ds: Dataset) -> str:
    """Human name of the data set's transfer syntax, e.g. "JPEG 2000 Image Compression"."""
    with _library_quiet():
        uid = _ts_uid(ds)
    if uid is None:
        return "unknown transfer syntax (none in the file meta)"
    name = uid.name
    if not name or name == str(uid):
        return f"unknown transfer syntax {_safe_uid(uid)}"
    if uid.is_valid and uid.type and uid.type != "Transfer Syntax":
        return f"{name} (not a transfer syntax)"
    return name


#: plugin failures that mean "this variant is not implemented", not "this data is damaged"
_UNSUPPORTED_WORDS = ("does not support", "not supported", "unsupported")


def _plugin_failures(exc: BaseException) -> list[tuple[str, str]]:
    lines = str(exc).splitlines()[1:]
    failures = []
    for line in lines:
        name, sep, message = line.strip().partition(": ")
        if sep:
            failures.append((_clean_text(name, 40), _clean_text(message)))
    return failures


def _check_encoded_frame(ds: Dataset, geom: _Geometry, index: int, limits: ReadLimits) -> bytes:
    """Locate the frame and check its codestream header before any decoder allocates; the frame."""
    found = _pixel_element(ds)
    if found is None:
        raise CorruptDicomError("pixel data is missing")
    value = _raw_value(found[1])
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frame = get_frame(value, index, extended_offsets=extended, number_of_frames=geom.frames)
    except Exception as exc:
        raise CorruptDicomError(
            f"frame {index} cannot be located in the compressed pixel data (damaged or cut short)"
        ) from _cause(exc)
    if not frame:
        raise CorruptDicomError(f"frame {index} of the compressed pixel data is empty")
    dims = encoded_dimensions(frame)
    if dims is None:
        return frame
    height, width, components = dims
    if height * width * max(components, 1) > limits.max_pixels:
        raise TooLargeError(
            f"compressed frame declares {width} x {height} x {components}, above the "
            f"{limits.max_pixels:,} value budget"
        )
    if height and (height, width) != (geom.rows, geom.cols):
        raise CorruptDicomError(
            f"compressed frame is {width} x {height} but the header says {geom.cols} x {geom.rows}"
        )
    return frame


def _decode_reduced(frame: bytes, geom: _Geometry, at_least: tuple[int, int]) -> np.ndarray | None:
    """A JPEG 2000 frame decoded at the lowest resolution level that is still ``at_least`` (height,
    width), or None: not JPEG 2000 at a size that allows it, or a frame Pillow does not decode (the
    full decode then decides, and says what is wrong)."""
    if geom.samples != 1 or geom.bits_allocated not in (8, 16):
        return None
    header = codecs.j2k_header(frame)
    levels = codecs.reduction_levels(header, geom.rows, geom.cols, geom.bits_stored, geom.signed, at_least)
    if not levels:
        return None
    # the itemsize the full decode gives: what the codestream's precision needs (codecs._as_frame)
    dtype = np.dtype(f"{'i' if geom.signed else 'u'}{1 if header.precision <= 8 else 2}")
    try:
        return codecs.decode_j2k_reduced(frame, levels, header, dtype)
    except Exception:  # noqa: BLE001 - an optional shortcut: the full decode gives the verdict
        return None


def _decode_direct(frame: bytes, geom: _Geometry, ts) -> np.ndarray | None:
    """A grey RLE frame decoded by the plugin's own decoder, without pydicom's copies in between, or
    None: anything else, or a frame the plugin refuses (pydicom's plugins then decide, as always)."""
    if ts not in codecs.RLE or codecs.preferred(ts) != codecs.PLUGIN or geom.samples != 1 \
            or geom.bits_allocated not in (8, 16):
        return None
    try:
        return codecs.decode_rle_grey(frame, geom.rows, geom.cols, geom.bits_allocated, geom.signed)
    except Exception:  # noqa: BLE001 - as the plugin's refusal: pydicom's plugins give the verdict
        return None


def _unused_bits_clear(arr: np.ndarray, bits_stored: int) -> bool:
    """Is every value of ``arr`` what pydicom's correction of the bits above ``bits_stored`` would leave
    it (masked for unsigned data, sign-extended for signed)? That holds exactly when each value lies in
    the range ``bits_stored`` bits can hold. One pass (OpenCV's min/max where it takes the type)."""
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return True
    signed = arr.dtype.kind == "i"
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    flat = arr.reshape(1, -1) if arr.flags.c_contiguous else None
    if flat is not None and arr.dtype.isnative and arr.dtype in (np.uint8, np.int8, np.uint16, np.int16):
        low, high = cv2.minMaxLoc(flat)[:2]
    else:
        low, high = arr.min(), arr.max()
    return lo <= int(low) and int(high) <= hi


def decode_frame(ds: Dataset, index: int = 0, limits: ReadLimits = _DEFAULT_LIMITS, *,
                 at_least: Callable[[tuple[int, int]], tuple[int, int] | None] | None = None) -> np.ndarray:
    """Decode one frame's stored values (no rescale / VOI), shape (rows, cols[, samples]).

    ``at_least``: given the image's (rows, columns), the (height, width) the caller needs at the least,
    or None for the image's own size. A grey JPEG 2000 frame may then come back smaller than the image,
    with whole wavelet resolution levels left out (each halves both sides; ``codecs.reduction_levels``),
    never smaller than that; everything else comes back at the image's size.

    Colour data in YBR_FULL/YBR_FULL_422 comes back as RGB, as from pydicom's
    ``pixel_array``. The array is in native byte order. Uncompressed little-endian pixel data
    comes back as a read-only view of the data set's Pixel Data (no copy), and grey RLE as a
    read-only view of the decoder's output: copy it to change it.
    """
    index = operator.index(index)
    try:
        with _library_quiet():
            return _decode(ds, index, limits, at_least)
    except InputError as err:
        raise _with_study(err, ds)
    except BaseException as exc:
        if not _is_input_failure(exc):
            raise
        raise _with_study(_parse_error(exc, "pixel data could not be decoded"), ds) from _cause(exc)


def _decode(ds: Dataset, index: int, limits: ReadLimits,
            at_least: Callable[[tuple[int, int]], tuple[int, int] | None] | None = None) -> np.ndarray:
    geom, encapsulated = _check_pixels(ds, limits)
    if not 0 <= index < geom.frames:
        raise CorruptDicomError(f"frame {index} was requested but the image has {geom.frames} frame(s)")
    ts = _ts_uid(ds)
    if ts is None:
        raise CorruptDicomError("the transfer syntax is unknown (no file meta)")
    ts_name = describe_transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnsupportedError(
            f"pixel data compressed as {ts_name} is stored but not analysed here (no decoder for this "
            "transfer syntax); the study needs a human read"
        ) from _cause(exc)
    if not decoder.is_available:
        missing = "; ".join(_clean_text(m, 80) for m in decoder.missing_dependencies)
        raise UnsupportedError(
            f"pixel data compressed as {ts_name} cannot be decoded here: no decoder plugin is "
            f"installed ({missing or 'none registered'}); the study needs a human read",
            hint="install one of the listed plugins",
        )
    if encapsulated:
        frame = _check_encoded_frame(ds, geom, index, limits)
        needed = at_least((geom.rows, geom.cols)) if at_least is not None and ts in codecs.JPEG_2000 else None
        if needed is not None and codecs.reduced_decoder_available():
            arr = _decode_reduced(frame, geom, needed)
            if arr is not None:
                return arr
        arr = _decode_direct(frame, geom, ts)
        if arr is not None:
            return arr
    # bits above Bits Stored: pydicom masks them (sign-extends signed data) in a copy of the whole
    # frame. They are almost always clean already, so native data is viewed as it is and copied only
    # when a value lies outside what Bits Stored can hold (_unused_bits_clear)
    uncorrected = not encapsulated and geom.bits_stored < geom.bits_allocated
    # compressed frames go to the plugin whose decoder releases the GIL first (codecs.py); if it
    # refuses one, pydicom's own plugins try it in their order
    first = codecs.preferred(ts) if encapsulated else ""
    try:
        try:
            # view_only: native pixel data is viewed in place, not copied (10 MB for a DX image)
            arr = _pd_pixel_array(ds, index=index, view_only=True,
                                  **({"decoding_plugin": first} if first else {}),
                                  **({"correct_unused_bits": False} if uncorrected else {}))
        except RuntimeError:
            if not first:
                raise
            arr = _pd_pixel_array(ds, index=index, view_only=True)
        if uncorrected and not _unused_bits_clear(arr, geom.bits_stored):
            arr = _pd_pixel_array(ds, index=index, view_only=True)
    except RuntimeError as exc:
        failures = _plugin_failures(exc)
        if not failures:
            raise
        summary = "; ".join(f"{name}: {msg}" for name, msg in failures)
        if all(any(w in msg.lower() for w in _UNSUPPORTED_WORDS) for _, msg in failures):
            raise UnsupportedError(
                f"pixel data compressed as {ts_name} uses a variant no installed decoder "
                f"supports ({summary}); the study needs a human read"
            ) from _cause(exc)
        raise CorruptDicomError(
            f"compressed pixel data ({ts_name}) could not be decoded, the frame is damaged ({summary})"
        ) from _cause(exc)
    expected = (geom.rows, geom.cols) if geom.samples == 1 else (geom.rows, geom.cols, geom.samples)
    if arr.shape != expected:
        raise CorruptDicomError(
            f"decoded frame has shape {tuple(arr.shape)} but the header says {expected}"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr
