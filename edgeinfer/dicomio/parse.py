"""The untrusted-bytes parser: the file is read once, into memory, and parsed from there.

Files that are not DICOM are told apart before pydicom sees them; a deflated data set is
inflated here in bounded chunks; pydicom's public ``read_dataset`` runs on a buffer that
caps the number of reads, under a guard that stops on out-of-order top-level tags; and
the result is checked for completeness (pydicom accepts a cut file silently).
"""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib

from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset as _pd_read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from ..errors import CorruptDicomError, InputError, NotDicomError, TooLargeError, UnreadableError
from .common import _MiB, ReadLimits, _fmt_bytes, _ReadBudgetExceeded, _with_study
from .quiet import _library_quiet

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
#: file name of the in-memory buffer; pydicom appends it to the EOF warning it swallows
_BUFFER_NAME = "<edgeinfer-dicomio-buffer>"


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
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableError("not a regular file (it changed while being read), so it was not read")
            # ask for the size the file has (+1 to see growth), not for the limit: read(n) sets
            # aside n bytes first, and n = 2 GiB costs more than reading a 10 MB image
            cap = limits.max_file_bytes + 1
            data = fh.read(min(st.st_size + 1, cap))
            if len(data) > st.st_size and len(data) < cap:  # it grew since fstat: read on, up to the limit
                data += fh.read(cap - len(data))
    except MemoryError as exc:
        raise TooLargeError("not enough memory to read the file") from exc
    except PermissionError as exc:
        raise UnreadableError("permission denied: the file cannot be read") from exc
    except OSError as exc:
        raise UnreadableError("the file cannot be read (I/O error)") from exc
    if len(data) > limits.max_file_bytes:
        raise TooLargeError(f"file is above the {_fmt_bytes(limits.max_file_bytes)} limit")
    return data


_PIXEL_DATA = 0x7FE00010


class _TrackedBuffer(io.BytesIO):
    """BytesIO that remembers its last read and caps the number of reads.

    The top-level value of native Pixel Data (defined length, announced by :class:`_TopLevelGuard`
    through :meth:`view_next`) comes back as a read-only ``memoryview`` of the file's bytes instead
    of a copy: for a 10-20 MB image that copy (and the page faults of its fresh allocation) cost as
    much as parsing the header. pydicom keeps the view as the element's value and reads native pixels
    through the buffer protocol; the view keeps the file's bytes alive, as the copy did its own.
    Every other read (encapsulated frames, which pydicom parses as a stream, and values nested in
    sequences included) returns bytes, as before.
    """

    def __init__(self, data: bytes):
        super().__init__(data)
        self._view = memoryview(data)
        self._view_length: int | None = None
        self.name = _BUFFER_NAME
        self.size = len(data)
        self.last_read = -1
        self.reads = 0

    def view_next(self, length: int) -> None:
        """The next read, if it asks for exactly ``length`` bytes, returns a view."""
        self._view_length = length

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads += 1
        if self.reads > _MAX_READ_CALLS:
            raise _ReadBudgetExceeded()
        wanted, self._view_length = self._view_length, None
        if wanted is not None and size == wanted:
            start = self.tell()
            end = min(start + size, self.size)
            self.seek(end)
            self.last_read = end - start
            return self._view[start:end]  # type: ignore[return-value]
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
    """``stop_when`` for the top-level data set: tags must ascend; no group 0000/FFFE. It also tells
    the buffer that a defined-length Pixel Data value comes next (:meth:`_TrackedBuffer.view_next`)."""

    def __init__(self, buf: _TrackedBuffer | None = None) -> None:
        self.buf = buf
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
        if tag == _PIXEL_DATA and length != _UNDEFINED and self.buf is not None:
            self.buf.view_next(length)
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
        guard = _TopLevelGuard(buf)
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


# --- routing headers of instances received over the network -------------------------------------------
#: a received deflated data set is inflated only this far to read its routing header
ROUTING_INFLATE_BYTES = 4 * _MiB
#: the routing header ends with group 0040 (Requested Procedure Priority is its last element used)
_ROUTING_LAST_TAG = 0x0040FFFF


def routing_header(data: bytes, specific_tags=None, inflate_limit: int = ROUTING_INFLATE_BYTES,
                   with_prefix: bool = False):
    """The header elements up to group 0040 of an instance held in memory, for routing it (study, series,
    SOP Instance UID, modality, priority): no pixel data, and a deflated data set is inflated only as far
    as ``inflate_limit`` (zlib's output bound), never whole, so a deflate bomb costs megabytes, not
    gigabytes. Not the hardened reader's checks (that runs when the image is read for inference); this
    one must not wait for the one-thread-at-a-time library boundary either, so it takes no lock.
    Raises what pydicom raises on garbage; the caller refuses such an instance.

    ``with_prefix``: also return the instance's bytes up to the end of that header, a Part 10 file of its
    own (preamble, file meta, the elements read): what is kept of each instance for its study's report,
    so that the report never reads the image again. None for a deflated data set (its bytes are not the
    elements'). Returns ``(dataset, prefix)`` then.
    """
    buf = _TrackedBuffer(data)
    if len(data) >= 132 and data[128:132] == b"DICM":
        buf.seek(132)
    meta = _read_meta(buf)
    start = buf.tell()
    implicit, little, ts = _dataset_encoding(meta, data[start : start + 6])
    if ts == DeflatedExplicitVRLittleEndian:
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(memoryview(data)[start:], inflate_limit)
    else:
        body = memoryview(data)[start:]
    from pydicom.tag import Tag

    tags = [Tag(t) for t in specific_tags] if specific_tags else None  # keywords -> tags, as dcmread does
    fp = io.BytesIO(body)
    ds = _pd_read_dataset(fp, implicit, little, specific_tags=tags,
                          stop_when=lambda tag, vr, length: tag > _ROUTING_LAST_TAG)
    if not with_prefix:
        return ds
    # pydicom leaves the stream at the first element it did not read
    return ds, (None if ts == DeflatedExplicitVRLittleEndian else bytes(data[:start + fp.tell()]))
