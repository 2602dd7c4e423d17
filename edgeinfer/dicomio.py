"""Hardened DICOM reading: one file in, a validated dataset (or one clear rejection) out.

This is the boundary between untrusted files and the rest of the runtime. Everything
that can go wrong with a file surfaces here as one of edgeinfer's ``InputError``
subclasses with a reason a radiographer can act on; no pydicom, zlib, struct or OS
exception escapes for bad input. The original is chained (``raise ... from``) so that a
bug in *our* code is still findable in a traceback; a library exception is chained as
a ``_LibraryError`` stand-in that keeps its type and traceback but withholds its
message, because pydicom quotes header values in messages (``BytesLengthException:
... received b'<value>'``).

What is checked, in order (see RELIABILITY.md items 1-8, 21):

``read_dataset``
    1. the file is a regular file no bigger than ``max_file_bytes``; it is read
       once, into memory, and parsed from there;
    2. 0-byte, text, archive, image-format and random files are ``NotDicomError``.
       A file without the 128-byte preamble + ``DICM`` is only parsed when its first
       bytes look like a DICOM element (group 0002/0004/0008); pydicom's ``force=True``
       would happily return a junk or empty dataset instead;
    3. Deflated Explicit VR Little Endian is inflated here, not by pydicom (which
       inflates everything in one call): the file meta is read first, then the
       dataset is inflated in bounded chunks and refused (``TooLargeError``) beyond
       ``max_inflated_bytes`` or when it expands more than ``_DEFLATE_MAX_RATIO``
       times past ``_DEFLATE_RATIO_FLOOR`` bytes (a 400 MB zero bomb is refused in
       tens of milliseconds);
    4. the data set is parsed with pydicom's public ``read_dataset`` plus guards:
       top-level tags must ascend (a stream of zeros or garbage stops parsing instead
       of looping over millions of empty elements), a data set may not start with
       group 0000, and parsing is capped at ``_MAX_READ_CALLS`` buffer reads;
    5. completeness: pydicom silently accepts a file cut inside an element header or
       value, or inside encapsulated pixel data; we check that the last top-level
       element ends exactly at the end of the buffer, that its value is complete, and
       that pydicom did not swallow an ``EOFError``;
    6. no pixel data: ``NotApplicable`` named after the SOP class (structured report,
       RT plan, waveform, DICOMDIR...) -- unless the object is an image SOP class or
       has Rows/Columns, then the missing pixels make it ``CorruptDicomError``;
    7. image geometry: Rows, Columns, Bits Allocated/Stored, High Bit, Samples per
       Pixel, Pixel Representation, Photometric Interpretation, Number of Frames
       must be present, parseable and consistent;
    8. the pixel budget (Rows*Columns*frames*samples <= ``max_pixels``) before any
       decode; native pixel data must be at least as long as the geometry needs
       (a cut in the pixels is caught here, not at decode); encapsulated pixel data
       must start with an item;
    9. the technical elements preprocessing needs (rescale, VOI, padding, LUT
       sequences) are converted and must hold numbers where numbers are due (pydicom's
       default mode hands back the *string* for an invalid IS/DS); the identification
       groups 0008/0010/0020 (patient, study, series) are converted too, so that a
       later access neither fails nor echoes a header value in a library warning (an
       element there that cannot be converted at all is removed, logged by tag).

``decode_frame``
    geometry and budget again, frame index, decoder availability
    (``UnsupportedError`` naming the transfer syntax and the missing plugins), the
    frame's JPEG/JPEG-LS/JPEG 2000 header dimensions against Rows/Columns and the
    budget *before* the decoder allocates anything (a JP2 box of length 0 is refused
    here: pydicom 3.0.2's ``get_j2k_parameters`` loops forever on one), then pydicom's
    decoder; plugin failures are summarised (all "not supported" -> Unsupported,
    otherwise Corrupt); a Rust decoder panic (pylibjpeg-rle, ``PanicException``, a
    BaseException) is contained; the result is checked for shape and returned in
    native byte order (pydicom returns big endian arrays for big endian files).

Patient data: pydicom echoes header values in warnings and log records (invalid VR
values, for instance). All library work here runs inside ``_library_quiet()``: warnings
are recorded and dropped, and records from the pydicom/plugin loggers are dropped while
the current thread is inside the boundary. Reasons only ever contain technical values
(Rows, Bits Allocated, transfer syntax and SOP class names). Our own log records carry
the path and a category, nothing else.

Thread-safety: ``warnings.catch_warnings`` changes process-wide state before Python 3.14;
a multi-threaded service should also install a process-wide
``warnings.filterwarnings("ignore", module="pydicom")``.
"""
from __future__ import annotations

import io
import logging
import math
import numbers
import operator
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pydicom
import pydicom.config
import pydicom.pixels  # noqa: F401  (creates the decoder loggers we quieten)
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset as _pd_read_dataset
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as _pd_pixel_array
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from .errors import (
    CorruptDicomError,
    InputError,
    InvalidUIDError,
    NotApplicable,
    NotDicomError,
    TooLargeError,
    UnreadableError,
    UnsupportedError,
)
from .vr import valid_uid

__all__ = [
    "ReadLimits",
    "read_dataset",
    "decode_frame",
    "number_of_frames",
    "pixel_notes",
    "describe_transfer_syntax",
]

log = logging.getLogger(__name__)
_THIS_FILE = os.path.abspath(__file__)

_MiB = 1024**2

#: a deflated data set may not expand more than this many times ...
_DEFLATE_MAX_RATIO = 200
#: ... once it is bigger than this (small, highly compressible sets are normal)
_DEFLATE_RATIO_FLOOR = 64 * _MiB
_DEFLATE_IN_CHUNK = 256 * 1024
_DEFLATE_OUT_CHUNK = 4 * _MiB
#: parsing stops (CorruptDicomError) after this many reads from the buffer: real files
#: need ~2 reads per element; a stream of millions of empty elements does not end
_MAX_READ_CALLS = 1_000_000

_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
_ITEM_LE = b"\xfe\xff\x00\xe0"
_IDENTIFICATION_GROUPS = (0x0008, 0x0010, 0x0020)
#: file name of the in-memory buffer; pydicom appends it to the EOF warning it swallows
_BUFFER_NAME = "<edgeinfer-dicomio-buffer>"

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


@dataclass(frozen=True)
class ReadLimits:
    max_file_bytes: int = 2 * 1024**3  # refuse bigger files before reading
    max_pixels: int = 64 * 1024**2  # Rows*Columns*frames*samples budget, checked BEFORE any decode
    max_inflated_bytes: int = 512 * 1024**2  # Deflated Explicit VR LE: bounded inflation

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels", "max_inflated_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ReadLimits.{name} must be a positive int, got {value!r}")


_DEFAULT_LIMITS = ReadLimits()


# --- keeping library chatter (which may echo header values) inside the boundary -------
_quiet_state = threading.local()
_LIBRARY_LOGGER_PREFIXES = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "rle", "PIL", "gdcm", "jpeg_ls", "jpegls")
_filtered_loggers: set[str] = set()
_filter_lock = threading.Lock()
_seen_logger_count = -1


class _DropInsideBoundary(logging.Filter):
    """Drops library log records emitted by a thread that is inside ``_library_quiet``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet_state, "depth", 0)


_DROP_FILTER = _DropInsideBoundary()


def _install_logger_filters() -> None:
    global _seen_logger_count
    manager = logging.Logger.manager
    if len(manager.loggerDict) == _seen_logger_count:
        return
    with _filter_lock:
        names = [n for n in list(manager.loggerDict) if n.split(".")[0] in _LIBRARY_LOGGER_PREFIXES]
        for name in names:
            if name not in _filtered_loggers:
                logging.getLogger(name).addFilter(_DROP_FILTER)
                _filtered_loggers.add(name)
        _seen_logger_count = len(manager.loggerDict)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    logging.getLogger(_name)
_install_logger_filters()


@contextmanager
def _library_quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Record (and drop) every warning and drop library log records in this block."""
    _install_logger_filters()
    _quiet_state.depth = getattr(_quiet_state, "depth", 0) + 1
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        _quiet_state.depth -= 1
        _install_logger_filters()  # loggers created while decoding (lazy plugin imports)


# --- small helpers ------------------------------------------------------------------------
def _safe_uid(value: object) -> str:
    """A UID for a message, or a placeholder if it is not a plain dotted-decimal UID."""
    text = str(value).strip().rstrip("\x00")
    return text if valid_uid(text) else "(malformed UID)"


def _uid(value: object) -> UID:
    """A UID from a header value, without pydicom's validation warning (it quotes the value)."""
    return UID(str(value).strip().rstrip("\x00"), validation_mode=pydicom.config.IGNORE)


def _uid_name(value: object) -> str:
    """Human name of a UID, or the UID itself when pydicom does not know it."""
    uid = _uid(value)
    name = uid.name
    if name and name != str(uid):
        return name
    return _safe_uid(uid)


def _clean_text(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = "".join(ch for ch in text if 32 <= ord(ch) < 127)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt_bytes(n: int) -> str:
    return f"{n / _MiB:.0f} MB" if n >= _MiB else f"{n} bytes"


def _is_input_failure(exc: BaseException) -> bool:
    """Exceptions that mean "this input is bad", as opposed to interrupts and exits.

    Decoders written in Rust (pylibjpeg-rle) raise pyo3's ``PanicException`` on some
    damaged data; it derives from BaseException, so ``except Exception`` (pydicom's
    plugin fallback included) lets it through.
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _parse_error(exc: BaseException, where: str) -> InputError:
    """Map a library exception raised on malformed input to an InputError."""
    if type(exc).__name__ == "PanicException":
        return CorruptDicomError(f"{where}: the decoder crashed on this data (damaged file)")
    if isinstance(exc, MemoryError):
        return TooLargeError(f"{where}: not enough memory (the file is too large for this device)")
    if isinstance(exc, RecursionError):
        return CorruptDicomError(f"{where}: sequences are nested too deeply (damaged file)")
    if isinstance(exc, _ReadBudgetExceeded):
        return CorruptDicomError(f"{where}: far too many data elements (damaged file or attack)")
    if isinstance(exc, (EOFError, struct.error, OSError)):
        return CorruptDicomError(f"{where}: the file is cut short (truncated) or damaged")
    if isinstance(exc, zlib.error):
        return CorruptDicomError(f"{where}: the compressed (deflated) data is damaged")
    if isinstance(exc, UnicodeError):
        return CorruptDicomError(f"{where}: a text element has invalid characters (damaged file)")
    return CorruptDicomError(f"{where}: the file is damaged and could not be parsed")


class _LibraryError(Exception):
    """Stands in, as ``__cause__``, for a library exception raised on malformed input.

    Library messages may echo header values ("invalid literal for int(): '<value>'"),
    and a chained cause is printed with every traceback. The stand-in keeps the type
    and the traceback (where it happened) and withholds the message.
    """


def _cause(exc: BaseException) -> BaseException:
    """``exc`` itself if it was raised in this module (a bug of ours), else a stand-in."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == _THIS_FILE:
        return exc
    stand_in = _LibraryError(
        f"{type(exc).__module__}.{type(exc).__qualname__} raised in a library "
        "(message withheld: it may contain header values)"
    )
    return stand_in.with_traceback(exc.__traceback__)


def _reject(path: object, err: InputError) -> InputError:
    log.debug("%s: rejected (%s)", path, err.code)
    return err


# --- reading the bytes ----------------------------------------------------------------------
def _folder_problem(path: str) -> InputError:
    """Why a folder handed to the reader is not an image: it could not be listed, or it is a link."""
    if os.path.islink(path):
        return NotDicomError("a link to a folder; links to folders are not followed inside a folder",
                             hint="pass the folder it points to as an input of its own")
    try:
        with os.scandir(path):
            pass
    except PermissionError:
        return UnreadableError("folder cannot be read (permission denied), so nothing inside it was triaged",
                               hint="give the user running edgeinfer read and execute permission on it")
    except OSError:
        return UnreadableError("folder cannot be read (I/O error), so nothing inside it was triaged")
    return NotDicomError("this is a folder, not a file")


def _read_bytes(path: str, limits: ReadLimits) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        kind = "a link to a missing file" if os.path.islink(path) else "file not found"
        raise UnreadableError(f"{kind} (unreadable)") from exc
    except PermissionError as exc:
        raise UnreadableError("permission denied: the file cannot be read") from exc
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
        raise UnreadableError("the file cannot be read (I/O error)") from exc
    if stat.S_ISDIR(st.st_mode):
        raise _folder_problem(path)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        raise UnreadableError(f"not a regular file ({kind}), so it was not read")
    if st.st_size > limits.max_file_bytes:
        raise TooLargeError(
            f"file is {_fmt_bytes(st.st_size)}, above the {_fmt_bytes(limits.max_file_bytes)} limit"
        )
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat above must not hang the batch
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise UnreadableError("not a regular file (it changed while being read), so it was not read")
            data = fh.read(limits.max_file_bytes + 1)
    except MemoryError as exc:
        raise TooLargeError("not enough memory to read the file") from exc
    except PermissionError as exc:
        raise UnreadableError("permission denied: the file cannot be read") from exc
    except OSError as exc:
        raise UnreadableError("the file cannot be read (I/O error)") from exc
    if len(data) > limits.max_file_bytes:
        raise TooLargeError(f"file is above the {_fmt_bytes(limits.max_file_bytes)} limit")
    return data


class _ReadBudgetExceeded(Exception):
    pass


class _TrackedBuffer(io.BytesIO):
    """BytesIO that remembers its last read and caps the number of reads."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.name = _BUFFER_NAME
        self.size = len(data)
        self.last_read = -1
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads += 1
        if self.reads > _MAX_READ_CALLS:
            raise _ReadBudgetExceeded()
        data = super().read(size)
        self.last_read = len(data)
        return data


_TEXT_BYTES = set(range(32, 127)) | {9, 10, 12, 13}
_MAGIC = (
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"GIF8", "a GIF image"),
    (b"BM", None),  # too short a signature to name
)


def _what_is_it(data: bytes) -> str:
    for magic, name in _MAGIC:
        if name and data.startswith(magic):
            return f"not a DICOM file (it is {name})"
    head = data[:1024]
    if head.strip(b"\x00") == b"":
        return "not a DICOM file (it contains only zero bytes)"
    try:
        head.decode("utf-8")
        looks_text = True
    except UnicodeDecodeError as exc:
        looks_text = exc.start >= len(head) - 4  # a multi-byte character cut at 1024
    if looks_text and sum(b in _TEXT_BYTES for b in head) >= 0.9 * len(head):
        return "not a DICOM file (it looks like a text file)"
    return "not a DICOM file (no DICOM header and no recognisable DICOM content)"


def _plausible_headerless(data: bytes) -> bool:
    """Does a file without preamble start like a DICOM data set (group 0002/0004/0008)?"""
    if len(data) < 8:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", data[:4])
        if group in (0x0002, 0x0004, 0x0008) and element < 0x1000:
            return True
    return False


# --- parsing --------------------------------------------------------------------------------
def _not_group_2(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _read_meta(buf: _TrackedBuffer) -> FileMetaDataset:
    """File meta (group 0002), as pydicom's private ``_read_file_meta_info`` does."""
    start = buf.tell()
    meta = FileMetaDataset(_pd_read_dataset(buf, False, True, stop_when=_not_group_2))
    meta.set_original_encoding(False, True, "iso8859")
    if len(meta):
        try:
            meta[next(iter(meta.keys()))]
        except NotImplementedError:  # file meta written in implicit VR (pydicom #503)
            buf.seek(start)
            meta = FileMetaDataset(_pd_read_dataset(buf, True, True, stop_when=_not_group_2))
            meta.set_original_encoding(True, True, "iso8859")
    return meta


class _TopLevelGuard:
    """``stop_when`` for the top-level data set: tags must ascend; no group 0000/FFFE."""

    def __init__(self) -> None:
        self.last = -1
        self.calls = 0
        self.stopped_at: int | None = None

    def __call__(self, tag: int, vr: str | None, length: int) -> bool:
        self.calls += 1
        tag = tag.real  # a plain int: BaseTag's comparison operators are slow
        group = tag >> 16
        # pydicom calls us twice with the first tag (VR sniffing, then the first element)
        repeated_first = tag == self.last and self.calls == 2
        if group in (0x0000, 0xFFFE) or (tag <= self.last and not repeated_first):
            self.stopped_at = tag
            return True
        self.last = tag
        return False


def _inflate(data: memoryview, limits: ReadLimits) -> bytes:
    """Bounded inflation of a deflated data set (raw deflate, PS3.5 A.5)."""
    decomp = zlib.decompressobj(-zlib.MAX_WBITS)
    out: list[bytes] = []
    total = 0
    pos = 0
    cap = limits.max_inflated_bytes
    while not decomp.eof:
        if decomp.unconsumed_tail:
            chunk = decomp.unconsumed_tail
        elif pos < len(data):
            chunk = data[pos : pos + _DEFLATE_IN_CHUNK]
            pos += len(chunk)
        else:
            break
        piece = decomp.decompress(chunk, _DEFLATE_OUT_CHUNK)
        total += len(piece)
        consumed = pos - len(decomp.unconsumed_tail)
        if total > cap:
            raise TooLargeError(
                f"deflated data set inflates beyond the {_fmt_bytes(cap)} limit (deflate bomb?)"
            )
        if total > min(_DEFLATE_RATIO_FLOOR, cap) and total > _DEFLATE_MAX_RATIO * max(consumed, 1):
            raise TooLargeError(
                f"deflated data set expands more than {_DEFLATE_MAX_RATIO} times "
                f"({_fmt_bytes(total)} from {_fmt_bytes(consumed)} and growing): deflate bomb"
            )
        out.append(piece)
    if not decomp.eof:  # the stream has no end marker
        raise CorruptDicomError("the deflated data set is cut short (truncated)")
    return b"".join(out)


def _dataset_encoding(meta: FileMetaDataset, head: bytes) -> tuple[bool, bool, str | None]:
    """(implicit VR, little endian, transfer syntax UID or None) as pydicom's read_partial.

    ``head`` is the first bytes of the data set (used when there is no transfer syntax).
    """
    ts = meta.get("TransferSyntaxUID", None)
    ts = str(ts).strip().rstrip("\x00") if ts else None
    if not ts:
        head = head[:6]
        if len(head) < 6:
            return True, True, None
        group, _, vr = struct.unpack("<HH2s", head)
        from pydicom.values import converters

        if vr.decode("latin-1") in converters:
            return False, group < 1024, None
        return True, True, None
    if ts == ImplicitVRLittleEndian:
        return True, True, ts
    if ts == ExplicitVRBigEndian:
        return False, False, ts
    if ts in PrivateTransferSyntaxes:
        private = PrivateTransferSyntaxes[PrivateTransferSyntaxes.index(ts)]
        return private.is_implicit_VR, private.is_little_endian, ts
    return False, True, ts  # explicit LE, deflated (after inflation) and every encapsulated TS


def _element_end(elem: object) -> tuple[int | None, bool]:
    """(offset just after the element's value or None if unknown, value complete?)"""
    if isinstance(elem, RawDataElement):
        if elem.value_tell is None:
            return None, True
        if elem.length == _UNDEFINED:
            value = elem.value or b""
            return elem.value_tell + len(value) + 8, True  # + sequence delimiter item
        complete = elem.value is None or len(elem.value) >= elem.length
        return elem.value_tell + elem.length, complete
    return None, True  # undefined-length sequence parsed by pydicom up to its delimiter


def _parse(data: bytes, limits: ReadLimits, path: str) -> FileDataset:
    n = len(data)
    if n == 0:
        raise NotDicomError("file is empty (0 bytes)")
    has_preamble = n >= 132 and data[128:132] == b"DICM"
    if not has_preamble:
        if 128 < n < 132 and b"DICM".startswith(data[128:]) and not data[:128].strip(b"\x00"):
            raise CorruptDicomError("file is cut short (truncated inside the DICOM header)")
        if not _plausible_headerless(data):
            raise NotDicomError(_what_is_it(data))

    with _library_quiet() as caught:
        buf = _TrackedBuffer(data)
        preamble = None
        if has_preamble:
            preamble = data[:128]
            buf.seek(132)
        meta = _read_meta(buf)
        meta_end = buf.tell()
        for elem in meta.values():
            end, complete = _element_end(elem)
            if not complete:
                raise CorruptDicomError("file is cut short (truncated inside the file meta header)")

        implicit, little, ts = _dataset_encoding(meta, data[meta_end : meta_end + 6])
        if meta_end >= n:
            if has_preamble or len(meta):
                raise CorruptDicomError("file is cut short: it has a DICOM header but no data set")
            raise NotDicomError("not a DICOM file (empty data set)")

        start = meta_end
        if ts == DeflatedExplicitVRLittleEndian:
            data = _inflate(memoryview(data)[meta_end:], limits)
            buf = _TrackedBuffer(data)
            n, start = len(data), 0
            if n == 0:
                raise CorruptDicomError("the deflated data set is empty")

        # (no BytesIO.getbuffer() here: it would copy the whole file)
        head = data[start : start + 4]
        if len(head) == 4 and struct.unpack("<>"[not little] + "H", head[:2])[0] == 0:
            raise CorruptDicomError(
                "the data set starts with group 0000 (zero bytes or a network command), not an image"
            )
        guard = _TopLevelGuard()
        ds = _pd_read_dataset(buf, implicit, little, stop_when=guard)

        # -- completeness: pydicom accepts a cut file silently -------------------------
        if any(_BUFFER_NAME in str(w.message) for w in caught):
            raise CorruptDicomError("file is cut short (truncated): an element has no end")
        if len(ds) == 0:
            if has_preamble or len(meta):
                raise CorruptDicomError("the data set is empty or unreadable")
            raise NotDicomError("not a DICOM file (empty data set)")
        last = ds.get_item(next(reversed(list(ds.keys()))))
        end, complete = _element_end(last)
        if guard.stopped_at is not None:
            raise CorruptDicomError(
                f"unreadable data after byte {buf.tell()}: elements out of order or garbage (damaged file)"
            )
        if not complete or (end is not None and end != n) or (end is None and buf.last_read != 0):
            # the header was read: name the study, so it still goes to a human read
            raise _with_study(CorruptDicomError("file is cut short (truncated) or has trailing garbage"), ds)

        read_implicit, read_little = ds.original_encoding
        if read_implicit is None:
            read_implicit, read_little = implicit, little
        fds = FileDataset(path, ds, preamble=preamble, file_meta=meta,
                          is_implicit_VR=read_implicit, is_little_endian=read_little)
        fds.set_original_encoding(read_implicit, read_little, ds.original_character_set)
        if not ts:
            if read_implicit and not read_little:
                raise CorruptDicomError("implicit VR big endian is not a valid DICOM encoding")
            fds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if read_implicit
                else ExplicitVRLittleEndian if read_little else ExplicitVRBigEndian
            )
        return fds


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
    geom = _Geometry(rows, cols, samples, bits_allocated, bits_stored, frames, photometric)
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


def _check_pixels(ds: Dataset, limits: ReadLimits) -> tuple[_Geometry, bool]:
    found = _pixel_element(ds)
    if found is None:
        _reject_non_image(ds)
        raise CorruptDicomError("pixel data is missing")  # not reached: the line above raises
    tag, elem = found
    geom = _geometry(ds, limits, float_pixels=tag != 0x7FE00010)
    encapsulated, available = _pixel_value_info(elem)
    ts = _ts_uid(ds)
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


def _with_study(err: InputError, ds: Dataset | None) -> InputError:
    """Attach the StudyInstanceUID when the header was readable: a failed image must still send
    its study to a human read (the triage worklist marks that study INDETERMINATE)."""
    if ds is not None and err.study_uid is None and not isinstance(err, NotApplicable):
        try:
            with _library_quiet():
                uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        except Exception:
            uid = ""
        if uid and valid_uid(uid):
            err.study_uid = uid
    return err


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


_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"


def _jp2_codestream_offset(frame: bytes) -> int:
    """Offset of the J2K codestream in a frame that may carry a (non-conformant) JP2 header.

    Walks the boxes as pydicom's ``get_j2k_parameters`` does, but refuses a box of
    length 0 before the codestream box: pydicom 3.0.2 loops forever on one.
    """
    if not frame.startswith(_JP2_SIGNATURE):
        return 0
    offset, total = 12, len(frame)
    while offset < total:
        length = int.from_bytes(frame[offset : offset + 4], "big")
        if frame[offset + 4 : offset + 8] == b"jp2c":
            return offset + 8
        if length < 8:  # 0 ("to the end") or 1 (64-bit length) before the codestream
            raise CorruptDicomError("the JPEG 2000 frame has a malformed JP2 box structure (damaged)")
        offset += length
    raise CorruptDicomError("the JPEG 2000 frame has no codestream (damaged)")


def _encoded_dimensions(frame: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG/JPEG-LS SOF or a JPEG 2000 SIZ segment."""
    if frame[:2] == b"\xff\xd8":
        offset, n = 2, len(frame)
        while offset + 4 <= n:
            if frame[offset] != 0xFF:  # junk between segments: decoders such as
                offset += 1  # libjpeg-turbo skip it, so look past it too
                continue
            marker = frame[offset + 1]
            if marker == 0xFF:  # fill byte
                offset += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                offset += 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan / end of image before any SOF
                return None
            length = struct.unpack(">H", frame[offset + 2 : offset + 4])[0]
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
                if offset + 10 > n:
                    return None
                height, width = struct.unpack(">HH", frame[offset + 5 : offset + 9])
                return height, width, frame[offset + 9]
            offset += 2 + length
        return None
    o = _jp2_codestream_offset(frame)
    if frame[o : o + 4] == b"\xff\x4f\xff\x51" and o + 42 <= len(frame):
        o += 2  # at the SIZ marker
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[o + 6 : o + 22])
        components = struct.unpack(">H", frame[o + 38 : o + 40])[0]
        return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components
    return None


def _check_encoded_frame(ds: Dataset, geom: _Geometry, index: int, limits: ReadLimits) -> None:
    """Locate the frame and check its codestream header before any decoder allocates."""
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
    dims = _encoded_dimensions(frame)
    if dims is None:
        return
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


def decode_frame(ds: Dataset, index: int = 0, limits: ReadLimits = _DEFAULT_LIMITS) -> np.ndarray:
    """Decode one frame's stored values (no rescale / VOI), shape (rows, cols[, samples]).

    Colour data in YBR_FULL/YBR_FULL_422 comes back as RGB, as from pydicom's
    ``pixel_array``. The array is in native byte order.
    """
    index = operator.index(index)
    try:
        with _library_quiet():
            return _decode(ds, index, limits)
    except InputError as err:
        raise _with_study(err, ds)
    except BaseException as exc:
        if not _is_input_failure(exc):
            raise
        raise _with_study(_parse_error(exc, "pixel data could not be decoded"), ds) from _cause(exc)


def _decode(ds: Dataset, index: int, limits: ReadLimits) -> np.ndarray:
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
            f"pixel data compressed as {ts_name} cannot be decoded here (no decoder for this "
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
        _check_encoded_frame(ds, geom, index, limits)
    try:
        arr = _pd_pixel_array(ds, index=index)
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
