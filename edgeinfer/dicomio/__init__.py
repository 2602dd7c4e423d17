"""Hardened DICOM reading: one file in, a validated dataset (or one clear rejection) out.

This is the boundary between untrusted files and the rest of the runtime. Everything
that can go wrong with a file surfaces here as one of edgeinfer's ``InputError``
subclasses with a reason a radiographer can act on; no pydicom, zlib, struct or OS
exception escapes for bad input. The original is chained (``raise ... from``) so that a
bug in *our* code is still findable in a traceback; a library exception is chained as
a ``_LibraryError`` stand-in that keeps its type and traceback but withholds its
message, because pydicom quotes header values in messages (``BytesLengthException:
... received b'<value>'``).

What is checked, in order (see docs/RELIABILITY.md):

``read_dataset``
    1. the file is a regular file no bigger than ``max_file_bytes``; it is read
       once, into memory, and parsed from there (native Pixel Data stays a
       read-only view of those bytes, not a second copy);
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
    Bits above Bits Stored are cleared (sign-extended for signed data) as pydicom
    does, in a copy, only when a value has one set; otherwise native pixels are a
    read-only view.

Patient data: pydicom echoes header values in warnings and log records (invalid VR
values, for instance). All library work here runs inside ``_library_quiet()``: warnings
are recorded and dropped, and records from the pydicom/plugin loggers are dropped while
the current thread is inside the boundary. Reasons only ever contain technical values
(Rows, Bits Allocated, transfer syntax and SOP class names). Our own log records carry
the path and a category, nothing else.

Thread-safety: ``warnings.catch_warnings`` changes process-wide state before Python 3.14;
a multi-threaded service should also install a process-wide
``warnings.filterwarnings("ignore", module="pydicom")``.

Modules: ``quiet`` (library warnings and log records), ``common`` (``ReadLimits``, message
helpers, library exceptions to ``InputError``), ``parse`` (bytes, deflate, pydicom parse,
completeness), ``checks`` (image checks and ``read_dataset``), ``decode``
(``decode_frame``, ``describe_transfer_syntax``). Each imports only those before it.
"""
from __future__ import annotations

from .checks import number_of_frames, pixel_notes, read_dataset
from .common import ReadLimits
from .decode import decode_frame, decodes, describe_transfer_syntax

__all__ = [
    "ReadLimits",
    "read_dataset",
    "decode_frame",
    "decodes",
    "number_of_frames",
    "pixel_notes",
    "describe_transfer_syntax",
]
