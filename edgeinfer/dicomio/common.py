"""What the parser, the image checks and the decoder share: the limits, message helpers
(UIDs and sizes shown without header values) and the mapping of a library exception on
malformed input to one of edgeinfer's ``InputError`` subclasses.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..errors import CorruptDicomError, InputError, NotApplicable, TooLargeError
from ..vr import valid_uid
from .quiet import _library_quiet

#: one logger for the whole package, named as when dicomio was a single module
log = logging.getLogger(__package__)
#: ``_cause`` treats an exception raised in any module of this package as a bug of ours
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_MiB = 1024**2


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
    """``exc`` itself if it was raised in this package (a bug of ours), else a stand-in."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == _PACKAGE_DIR:
        return exc
    stand_in = _LibraryError(
        f"{type(exc).__module__}.{type(exc).__qualname__} raised in a library "
        "(message withheld: it may contain header values)"
    )
    return stand_in.with_traceback(exc.__traceback__)


def _reject(path: object, err: InputError) -> InputError:
    log.debug("%s: rejected (%s)", path, err.code)
    return err


#: raised by parse's ``_TrackedBuffer``; defined here so that ``_parse_error`` can map it
class _ReadBudgetExceeded(Exception):
    pass


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
