"""edgeinfer.dicomio: the hardened DICOM reader.

Every file is read or cleanly rejected (pydicom's corpus, non-DICOM files, truncation,
unsupported transfer syntaxes, the pixel budget, deflate bombs, inconsistent image
attributes, missing or short pixel data, non-image objects, decoding), and no header
value (patient data) reaches a message, warning or log record; docs/RELIABILITY.md lists
each behaviour with its test.

Inputs are pydicom's shipped test files plus small files generated here. No file in
this module needs a network or a GPU; the whole module runs in well under a minute on
two cores.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels import get_decoder
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from edgeinfer import dicomio
from edgeinfer.dicomio import (
    ReadLimits,
    decode_frame,
    describe_transfer_syntax,
    number_of_frames,
    read_dataset,
)
from edgeinfer.errors import (
    CorruptDicomError,
    InputError,
    NotApplicable,
    NotDicomError,
    TooLargeError,
    UnreadableError,
    UnsupportedError,
)

CORPUS_ROOT = Path(pydicom.__file__).parent / "data" / "test_files"
CANARIES = ("CANARY^SECRET", "CANARY-ID-123", "CANARY")


# --- helpers ---------------------------------------------------------------------------
def corpus_files() -> list[Path]:
    """Every regular file in pydicom's test corpus: walked, plus get_testdata_files()."""
    found = {p for p in CORPUS_ROOT.rglob("*") if p.is_file()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found |= {Path(p) for p in get_testdata_files() if os.path.isfile(p)}
    return sorted(found)


def corpus(name: str) -> Path:
    return Path(get_testdata_file(name))


def image_ds(
    *,
    rows: int = 8,
    cols: int = 8,
    frames: int = 1,
    bits: int = 16,
    samples: int = 1,
    photometric: str | None = None,
    ts: str = ExplicitVRLittleEndian,
    sop: str = CTImageStorage,
    pixel_bytes: bytes | None = None,
) -> Dataset:
    """A small, valid image data set (stored values 0..250 repeating)."""
    ds = Dataset()
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "T-1"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric or ("MONOCHROME2" if samples == 1 else "RGB")
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if pixel_bytes is None:
        order = ">" if ts == ExplicitVRBigEndian else "<"
        values = np.arange(rows * cols * frames * samples) % 251
        pixel_bytes = values.astype(f"{order}u{bits // 8}").tobytes()
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@contextlib.contextmanager
def pydicom_silenced():
    """Building deliberately invalid test files makes pydicom warn and log the values
    (canaries included); keep that out of the suite's logs and warnings."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def save(ds: Dataset, path: Path) -> Path:
    with pydicom_silenced():
        ds.save_as(path, enforce_file_format=True)
    return path


def meta_bytes(ts: str, sop: str = SecondaryCaptureImageStorage) -> bytes:
    """Preamble, 'DICM' and a file meta group for transfer syntax ``ts``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def explicit_le(ds: Dataset) -> bytes:
    """``ds`` encoded as an Explicit VR Little Endian data set (no meta)."""
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def top_level_ends(data: bytes) -> tuple[int | None, set[int]]:
    """(end of the pixel data element, ends of all top-level elements) of a file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    ends, pixel_end = set(), None
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement):
            continue
        if elem.length == 0xFFFFFFFF:
            end = elem.value_tell + len(elem.value) + 8
        else:
            end = elem.value_tell + elem.length
        ends.add(end)
        if tag == 0x7FE00010:
            pixel_end = end
    return pixel_end, ends


def complete_prefixes(data: bytes) -> set[int]:
    """Cut lengths at which a prefix of ``data`` is itself a complete image file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(data[meta_end:])
        stream_end = len(data) - len(inflater.unused_data)
        return set(range(stream_end, len(data) + 1))
    pixel_end, ends = top_level_ends(data)
    if pixel_end is None:
        return set()
    return {e for e in ends if e >= pixel_end} | {len(data)}


def expect_rejection(path: Path, exc_type=InputError, *, decode: bool = True, limits=ReadLimits()):
    """read (and decode) ``path``; return the InputError, which must be ``exc_type``."""
    with pytest.raises(InputError) as info:
        ds = read_dataset(path, limits)
        if decode:
            decode_frame(ds, 0, limits)
    assert isinstance(info.value, exc_type), f"{type(info.value).__name__}: {info.value}"
    assert info.value.reason and isinstance(info.value.reason, str)
    return info.value


# --- 1. every file of pydicom's corpus: read (and decode) or a clean rejection -----------
CORPUS = corpus_files()

#: pinned outcomes for files whose classification matters (None: reads and decodes)
EXPECTED = {
    "CT_small.dcm": None,
    "MR_small_RLE.dcm": None,
    "JPEG2000.dcm": None,
    "SC_rgb_jpeg_dcmtk.dcm": None,
    "MR_small_jpeg_ls_lossless.dcm": None,
    "image_dfl.dcm": None,
    "MR_small_bigendian.dcm": None,
    "SC_ybr_full_422_uncompressed.dcm": None,
    "rtplan.dcm": NotApplicable,
    "rtstruct.dcm": NotApplicable,
    "test-SR.dcm": NotApplicable,
    "reportsi.dcm": NotApplicable,
    "waveform_ecg.dcm": NotApplicable,
    "ExplVR_LitEndNoMeta.dcm": NotApplicable,
    "rtplan_truncated.dcm": CorruptDicomError,
    "MR_truncated.dcm": CorruptDicomError,
    "badVR.dcm": CorruptDicomError,
    # its scan header has invalid SOS parameters that pydicom's JPEG plugins refuse; libjpeg-turbo
    # (edgeinfer's plugin) reads past them to the image of its fixed copy (test below)
    "JPEG-lossy.dcm": None,
    "JPEG2000-embedded-sequence-delimiter.dcm": TooLargeError,
    "README.txt": NotDicomError,
    "zipMR.gz": NotDicomError,
    "crayons.icc": NotDicomError,
    "no_meta.dcm": NotDicomError,
    "test1.json": NotDicomError,
}


def test_corpus_is_there():
    assert len(CORPUS) > 150, "pydicom's test corpus is missing or incomplete"
    names = {p.name for p in CORPUS}
    assert set(EXPECTED) <= names


def corpus_id(path: Path) -> str:
    return str(path.relative_to(CORPUS_ROOT)) if path.is_relative_to(CORPUS_ROOT) else str(path)


@pytest.mark.parametrize("path", CORPUS, ids=[corpus_id(p) for p in CORPUS])
def test_corpus_file_reads_or_is_rejected_cleanly(path):
    try:
        ds = read_dataset(path)
        arr = decode_frame(ds, 0)
    except InputError as err:
        outcome = type(err)
        assert err.reason
    else:
        outcome = None
        assert isinstance(arr, np.ndarray) and arr.ndim in (2, 3)
        assert arr.shape[:2] == (ds.Rows, ds.Columns)
        assert arr.dtype.isnative
        assert ds.PixelData is not None  # present, not decoded away
    if path.name in EXPECTED and path.parent == CORPUS_ROOT:
        expected = EXPECTED[path.name]
        assert outcome is expected, f"{path.name}: expected {expected}, got {outcome}"


def test_a_lossy_jpeg_with_a_bad_scan_header_decodes_as_its_fixed_copy():
    """pydicom's corpus: JPEG-lossy.dcm differs from JPGExtended.dcm, its fixed copy, in one byte of the
    scan header; pydicom's own plugins refuse it, edgeinfer's gives exactly the fixed copy's image."""
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    damaged = decode_frame(read_dataset(root / "JPEG-lossy.dcm"))
    fixed = decode_frame(read_dataset(root / "JPGExtended.dcm"))
    assert damaged.shape == (1024, 256) and np.array_equal(damaged, fixed)


def test_corpus_sweep_summary_and_timing():
    """One pass over the whole corpus: a listing of every escape, and the time it takes."""
    escaped, outcomes = [], {}
    start = time.perf_counter()
    for path in CORPUS:
        try:
            ds = read_dataset(path)
            decode_frame(ds, 0)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except InputError as err:
            outcomes[err.code] = outcomes.get(err.code, 0) + 1
        except Exception as exc:  # noqa: BLE001 - this is what we are testing for
            escaped.append(f"{corpus_id(path)}: {type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    print(f"\ncorpus sweep: {len(CORPUS)} files in {elapsed:.2f} s: {outcomes}")
    assert not escaped, "exceptions escaped the reader:\n" + "\n".join(escaped)
    assert outcomes.get("ok", 0) >= 80


# --- 2. not DICOM at all -------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    err = expect_rejection(path, NotDicomError)
    assert "empty" in err.reason


def test_text_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("Patient notes: nothing to see here.\n" * 20)
    err = expect_rejection(path, NotDicomError)
    assert "text" in err.reason


@pytest.mark.parametrize("size", [1, 7, 131, 132, 1000, 65536])
def test_random_bytes(tmp_path, size):
    rng = random.Random(size)
    path = tmp_path / "random.bin"
    path.write_bytes(bytes(rng.getrandbits(8) for _ in range(size)))
    expect_rejection(path, NotDicomError)


def test_random_bytes_after_a_valid_header(tmp_path):
    """'DICM' and a plausible start do not make random bytes an image."""
    rng = random.Random(7)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    for i, body in enumerate([noise, b"\x08\x00\x05\x00CS\x0a\x00" + noise]):
        path = tmp_path / f"r{i}.dcm"
        path.write_bytes(meta_bytes(ExplicitVRLittleEndian) + body)
        expect_rejection(path)
        path.write_bytes(body)
        expect_rejection(path)


def test_other_formats_are_named(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 64)
    assert "gzip" in expect_rejection(path, NotDicomError).reason
    path.write_bytes(b"%PDF-1.7\n" + b"x" * 300)
    assert "PDF" in expect_rejection(path, NotDicomError).reason


def test_header_only_and_empty_dataset(tmp_path):
    """force=True would return an empty data set for these; we refuse them."""
    path = tmp_path / "preamble_only.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    expect_rejection(path, CorruptDicomError)
    path.write_bytes(meta_bytes(ExplicitVRLittleEndian))
    err = expect_rejection(path, CorruptDicomError)
    assert "no data set" in err.reason
    path.write_bytes(b"\0" * 200)
    expect_rejection(path, NotDicomError)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # what we guard against: force=True makes an empty data set of an empty file,
        # and a "Command Group Length" data set of 200 zero bytes
        assert len(pydicom.dcmread(io.BytesIO(b""), force=True)) == 0
        assert len(pydicom.dcmread(io.BytesIO(b"\0" * 200), force=True)) == 1


def test_missing_file_directory_and_fifo(tmp_path):
    assert "not found" in expect_rejection(tmp_path / "nope.dcm", UnreadableError).reason
    expect_rejection(tmp_path, NotDicomError)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "FIFO" in expect_rejection(fifo, UnreadableError).reason  # must not block on open()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        assert "socket" in expect_rejection(tmp_path / "sock", UnreadableError).reason
    finally:
        sock.close()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    assert "link to a folder" in expect_rejection(tmp_path / "link", NotDicomError).reason
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.dcm")
    assert "missing file" in expect_rejection(tmp_path / "dangling", UnreadableError).reason


def test_file_size_limit(tmp_path):
    err = expect_rejection(corpus("CT_small.dcm"), TooLargeError, limits=ReadLimits(max_file_bytes=1000))
    assert "limit" in err.reason


def test_native_pixels_are_decoded_without_a_copy():
    """Uncompressed little-endian pixels come back as a read-only view of the Pixel Data (a DX image
    is 10 MB); big-endian ones as a native-order copy."""
    ds = read_dataset(corpus("CT_small.dcm"))
    arr = decode_frame(ds)
    assert np.shares_memory(arr, np.frombuffer(ds.PixelData, np.uint8)) and not arr.flags.writeable
    big = decode_frame(read_dataset(corpus("MR_small_bigendian.dcm")))
    assert big.dtype.isnative and np.array_equal(big, decode_frame(read_dataset(corpus("MR_small.dcm"))))


def test_native_pixels_are_a_view_of_the_file_s_bytes_and_compressed_ones_are_bytes(tmp_path):
    """Native Pixel Data is a read-only memoryview of the bytes read from the file (no second copy): the
    pixels are pydicom's, and a copy of the value is the file's pixel bytes. Encapsulated Pixel Data,
    which pydicom parses as a stream of fragments, stays bytes, and a large RLE image decodes as
    pydicom decodes it."""
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(corpus("CT_small.dcm"))
    pixels = np.random.default_rng(7).integers(0, 4096, (1024, 768), dtype=np.int16)  # CT_small: signed
    ds.Rows, ds.Columns, ds.PixelData = 1024, 768, pixels.tobytes()
    ds.save_as(tmp_path / "big.dcm")
    got = read_dataset(tmp_path / "big.dcm")
    assert isinstance(got.PixelData, memoryview) and got.PixelData.readonly
    assert bytes(got.PixelData) == pixels.tobytes() and np.array_equal(decode_frame(got), pixels)

    ds.compress(RLELossless, pixels)
    ds.save_as(tmp_path / "big-rle.dcm")
    assert (tmp_path / "big-rle.dcm").stat().st_size > 1024 * 1024  # noise: RLE barely compresses it
    got = read_dataset(tmp_path / "big-rle.dcm")
    assert isinstance(got.PixelData, bytes) and np.array_equal(decode_frame(got), pixels)


@pytest.mark.parametrize("signed", [False, True])
def test_bits_above_bits_stored_are_corrected_as_pydicom_does_and_copied_only_then(tmp_path, signed):
    """12 bits stored in 16: clean high bits give a view of the file's pixels; any pixel with set (or, for
    signed data, wrongly extended) high bits gives pydicom's corrected copy of the whole frame."""
    ds = pydicom.dcmread(corpus("CT_small.dcm"))
    dtype = np.int16 if signed else np.uint16
    rng = np.random.default_rng(11)
    clean = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, (64, 48)).astype(dtype)
    ds.Rows, ds.Columns, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 64, 48, 12, 11, int(signed)
    for name, arr in (("clean", clean), ("dirty", clean.copy())):
        if name == "dirty":
            arr.view(np.uint16)[5, 7] |= 0x7000   # an overlay-style bit pattern above bit 11
        ds.PixelData = arr.tobytes()
        ds.save_as(tmp_path / f"{name}.dcm")
        got = decode_frame(read_dataset(tmp_path / f"{name}.dcm"))
        want = pydicom.dcmread(tmp_path / f"{name}.dcm").pixel_array  # pydicom corrects unused bits
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got.flags.writeable is (name == "dirty")  # the read-only view, or a corrected copy
    assert np.array_equal(got, clean)  # the correction restores the stored 12-bit value


def test_a_file_that_grew_after_stat_is_read_whole_up_to_the_limit(tmp_path, monkeypatch):
    """The reader asks for the size stat reported (plus one byte, to see growth), not for the limit;
    a file that is longer by the time it is read is read on, and refused past the limit."""
    from edgeinfer.dicomio import parse

    path = tmp_path / "grown.dcm"
    shutil.copy(corpus("CT_small.dcm"), path)
    size = path.stat().st_size

    def older(st):  # what stat said before the file grew to its present size
        fields = list(st)[:10]
        fields[6] = 100  # st_size
        return os.stat_result(fields)

    class StatBeforeGrowth:
        def __getattr__(self, name):
            return getattr(os, name)

        def stat(self, p, *args, **kwargs):
            return older(os.stat(p, *args, **kwargs))

        def fstat(self, fd):
            return older(os.fstat(fd))

    monkeypatch.setattr(parse, "os", StatBeforeGrowth())
    assert decode_frame(read_dataset(path)).shape == (128, 128)
    err = expect_rejection(path, TooLargeError, limits=ReadLimits(max_file_bytes=size - 1))
    assert "limit" in err.reason


# --- 3. truncation sweeps ------------------------------------------------------------------
SWEEP_FILES = [
    "CT_small.dcm",  # native, explicit VR LE
    "MR_small_implicit.dcm",  # native, implicit VR
    "ExplVR_BigEnd.dcm",  # native, big endian, RGB
    "MR_small_RLE.dcm",  # RLE, with trailing padding after the pixel data
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",  # multi-frame RLE
    "image_dfl.dcm",  # deflated
    "rtplan.dcm",  # not an image
    "rtstruct.dcm",  # no preamble, no file meta
]


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_truncation_sweep(tmp_path, name):
    data = corpus(name).read_bytes()
    allowed = complete_prefixes(data)
    path = tmp_path / name
    problems = []
    for cut in range(0, len(data), 16):
        path.write_bytes(data[:cut])
        try:
            ds = read_dataset(path)
            decode_frame(ds, number_of_frames(ds) - 1)
        except InputError:
            continue
        except Exception as exc:  # noqa: BLE001
            problems.append(f"cut {cut}: escaped {type(exc).__name__}: {exc}")
            continue
        if cut not in allowed:
            problems.append(f"cut {cut}: accepted a truncated file")
    assert not problems, f"{name} ({len(data)} bytes):\n" + "\n".join(problems[:30])


def test_truncation_in_native_pixels_is_caught_at_read(tmp_path):
    data = corpus("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:-1000])
    err = expect_rejection(path, CorruptDicomError, decode=False)
    assert "cut short" in err.reason


def test_truncation_right_after_a_complete_image_is_fine(tmp_path):
    """MR_small_RLE has trailing padding after its pixel data: dropping it loses nothing."""
    data = corpus("MR_small_RLE.dcm").read_bytes()
    pixel_end, _ = top_level_ends(data)
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:pixel_end])
    full = decode_frame(read_dataset(corpus("MR_small_RLE.dcm")))
    assert np.array_equal(decode_frame(read_dataset(path)), full)
    for cut in (pixel_end - 4, pixel_end - 8, pixel_end + 3):  # delimiter length / tag / header
        path.write_bytes(data[:cut])
        expect_rejection(path, CorruptDicomError)


# --- 5. pixel budget -------------------------------------------------------------------------
def test_huge_dimensions_rejected_before_decode(tmp_path):
    path = save(image_ds(rows=65535, cols=65535, pixel_bytes=b"\0" * 16), tmp_path / "huge.dcm")
    start = time.perf_counter()
    err = expect_rejection(path, TooLargeError)
    assert time.perf_counter() - start < 0.5
    assert "65535" in err.reason and "budget" in err.reason


def test_many_frames_rejected_before_decode(tmp_path):
    ds = image_ds(rows=512, cols=512, pixel_bytes=b"\0" * 16)
    ds.NumberOfFrames = 100_000
    expect_rejection(save(ds, tmp_path / "frames.dcm"), TooLargeError)


def test_custom_pixel_budget(tmp_path):
    path = save(image_ds(rows=64, cols=64), tmp_path / "ok.dcm")
    assert decode_frame(read_dataset(path)).shape == (64, 64)
    expect_rejection(path, TooLargeError, limits=ReadLimits(max_pixels=64 * 63))
    ds = read_dataset(path)
    with pytest.raises(TooLargeError):
        decode_frame(ds, 0, ReadLimits(max_pixels=100))


def test_compressed_frame_header_checked_against_budget_and_rows(tmp_path, monkeypatch):
    """A J2K header that claims a bigger image than Rows x Columns is refused before decoding."""
    ds = read_dataset(corpus("JPEG2000.dcm"))
    ds.Rows = 512  # really 1024 x 256
    with pytest.raises(CorruptDicomError, match="compressed frame is 256 x 1024"):
        decode_frame(ds)
    ds = read_dataset(corpus("JPEG2000.dcm"))
    ds.Rows, ds.Columns = 16, 16  # the header is within budget, the codestream is not
    with pytest.raises(TooLargeError, match="compressed frame declares 256 x 1024"):
        decode_frame(ds, 0, ReadLimits(max_pixels=1000))


@pytest.mark.parametrize("junk", [b"", b"\x00junk\x01"])
def test_jpeg_sof_bigger_than_the_header_is_refused_before_decode(junk):
    """A JPEG frame whose SOF claims 60000 x 60000 in a 100 x 100 image (a decoder
    would allocate for the SOF); junk before the marker is skipped by libjpeg-turbo."""
    ds = read_dataset(corpus("SC_rgb_jpeg_dcmtk.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    sof = frame.find(b"\xff\xc0")
    assert sof > 0 and struct.unpack(">HH", frame[sof + 5 : sof + 9]) == (100, 100)
    frame = frame[:2] + junk + frame[2 : sof + 5] + struct.pack(">HH", 60000, 60000) + frame[sof + 9 :]
    ds.PixelData = encapsulate([frame])
    with pytest.raises(TooLargeError, match="60000 x 60000"):
        decode_frame(ds)


def test_jp2_box_of_length_zero_does_not_hang(tmp_path):
    """pydicom 3.0.2's get_j2k_parameters loops forever on a JP2 box of length 0."""
    ds = read_dataset(corpus("JPEG2000.dcm"))
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x00ftyp" + frame
    ds.PixelData = encapsulate([jp2])
    path = save(ds, tmp_path / "jp2.dcm")
    start = time.perf_counter()
    err = expect_rejection(path, CorruptDicomError)
    assert "JP2 box" in err.reason
    assert time.perf_counter() - start < 1.0


# --- 6. deflate --------------------------------------------------------------------------
def deflated_file(path: Path, header: Dataset | None, zero_megabytes: int, pixel_header: bool) -> Path:
    """A Deflated Explicit VR LE file: optional header elements, then ``zero_megabytes`` MB
    of zeros (as the value of a Pixel Data element if ``pixel_header``).

    The zeros are never materialised: with a full flush, every 1 MB block of zeros
    compresses to the same bytes, which are repeated.
    """
    mb = 1 << 20
    prefix = explicit_le(header) if header is not None else b""
    if pixel_header:
        prefix += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, zero_megabytes * mb)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * mb) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(b"\0" * mb) + comp.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    tail = comp.flush()
    body = head + block * zero_megabytes + tail
    if zero_megabytes <= 4:  # check the construction where it is cheap
        inflated = zlib.decompress(body, -zlib.MAX_WBITS)
        assert len(inflated) == len(prefix) + zero_megabytes * mb
    path.write_bytes(meta_bytes(DeflatedExplicitVRLittleEndian) + body)
    return path


def test_deflate_bomb_of_zeros_rejected_fast(tmp_path):
    path = deflated_file(tmp_path / "bomb.dcm", None, 400, pixel_header=False)
    assert path.stat().st_size < 600_000  # 400 MB once inflated
    start = time.perf_counter()
    err = expect_rejection(path, TooLargeError)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"bomb took {elapsed:.2f} s"
    assert "deflate bomb" in err.reason


def test_deflate_bomb_with_a_plausible_header_rejected_fast(tmp_path):
    header = image_ds(rows=10240, cols=10240, pixel_bytes=b"")
    del header.PixelData
    path = deflated_file(tmp_path / "bomb2.dcm", header, 200, pixel_header=True)
    start = time.perf_counter()
    expect_rejection(path, TooLargeError)
    assert time.perf_counter() - start < 1.0


def test_deflate_limit_is_configurable(tmp_path):
    header = image_ds(rows=1024, cols=1024, pixel_bytes=b"")
    del header.PixelData
    path = deflated_file(tmp_path / "big.dcm", header, 2, pixel_header=True)
    ds = read_dataset(path)  # 2 MB of zeros is a valid (black) 1024 x 1024 image
    assert decode_frame(ds).max() == 0
    err = expect_rejection(path, TooLargeError, limits=ReadLimits(max_inflated_bytes=1 << 20))
    assert "inflates beyond" in err.reason


def test_deflated_roundtrip_and_damage(tmp_path):
    ds = image_ds(rows=32, cols=32, ts=DeflatedExplicitVRLittleEndian)
    path = save(ds, tmp_path / "dfl.dcm")
    arr = decode_frame(read_dataset(path))
    assert np.array_equal(arr, (np.arange(32 * 32) % 251).reshape(32, 32))
    data = bytearray(path.read_bytes())
    data[-40:-20] = b"\xff" * 20
    path.write_bytes(bytes(data))
    expect_rejection(path)


def test_zero_stream_after_valid_meta_is_not_parsed_forever(tmp_path):
    path = tmp_path / "zeros.dcm"
    path.write_bytes(meta_bytes(ExplicitVRLittleEndian) + b"\0" * (16 << 20))
    start = time.perf_counter()
    expect_rejection(path, CorruptDicomError)
    assert time.perf_counter() - start < 1.0


def test_garbage_after_valid_elements(tmp_path):
    ds = image_ds()
    good = explicit_le(ds)
    path = tmp_path / "garbage.dcm"
    # an element with a smaller tag after the pixel data (out of order)
    trailer = struct.pack("<HH2sH", 0x0008, 0x0020, b"DA", 8) + b"20240101"
    path.write_bytes(meta_bytes(ExplicitVRLittleEndian) + good + trailer)
    assert "out of order" in expect_rejection(path, CorruptDicomError).reason
    path.write_bytes(meta_bytes(ExplicitVRLittleEndian) + good + b"\x01\x02\x03")
    expect_rejection(path, CorruptDicomError)


def test_nested_zero_stream_hits_the_read_cap(tmp_path, monkeypatch):
    """Zeros inside an undefined-length sequence item are parsed element by element;
    the read cap ends it (lowered here to keep the test fast)."""
    monkeypatch.setattr(dicomio.parse, "_MAX_READ_CALLS", 20_000)
    ds = image_ds()
    body = explicit_le(ds)
    seq = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    path = tmp_path / "nested.dcm"
    path.write_bytes(meta_bytes(ExplicitVRLittleEndian) + seq + item + b"\0" * (1 << 20) + body)
    err = expect_rejection(path, CorruptDicomError)
    assert "too many data elements" in err.reason


# --- 7. inconsistent image attributes -------------------------------------------------------
@pytest.mark.parametrize(
    "change, words",
    [
        ({"BitsStored": 17}, "Bits Stored (17)"),
        ({"BitsAllocated": 12}, "Bits Allocated (12)"),
        ({"HighBit": 16}, "High Bit (16)"),
        ({"Rows": 0}, "0 rows"),
        ({"SamplesPerPixel": 3}, "Samples per Pixel (3)"),
        ({"PixelRepresentation": 2}, "Pixel Representation (2)"),
        ({"Rows": None}, "Rows (0028,0010) is missing"),
        ({"BitsAllocated": None}, "Bits Allocated (0028,0100) is missing"),
        ({"PhotometricInterpretation": None}, "Photometric Interpretation"),
        ({"NumberOfFrames": "-3"}, "negative"),
    ],
)
def test_inconsistent_attributes(tmp_path, change, words):
    ds = image_ds()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    err = expect_rejection(save(ds, tmp_path / "bad.dcm"), CorruptDicomError)
    assert words in err.reason


def test_attribute_damage_after_reading_is_caught_at_decode(tmp_path):
    ds = read_dataset(save(image_ds(), tmp_path / "ok.dcm"))
    ds.BitsStored = 20
    with pytest.raises(CorruptDicomError, match="Bits Stored"):
        decode_frame(ds)
    ds = read_dataset(save(image_ds(), tmp_path / "ok.dcm"))
    ds.PixelData = bytes(ds.PixelData)[:10]  # (read_dataset gives a view; pydicom assigns bytes)
    with pytest.raises(CorruptDicomError, match="cut short"):
        decode_frame(ds)
    ds = read_dataset(save(image_ds(), tmp_path / "ok.dcm"))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(CorruptDicomError, match="transfer syntax"):
        decode_frame(ds)


def test_retired_sample_counts_are_unsupported(tmp_path):
    ds = image_ds(samples=1)
    ds.SamplesPerPixel = 4
    ds.PhotometricInterpretation = "ARGB"
    expect_rejection(save(ds, tmp_path / "argb.dcm"), UnsupportedError)


# --- 8. pixel data missing or short -----------------------------------------------------------
def test_missing_pixel_data_in_an_image(tmp_path):
    ds = image_ds()
    del ds.PixelData
    err = expect_rejection(save(ds, tmp_path / "nopix.dcm"), CorruptDicomError)
    assert "pixel data is missing" in err.reason


@pytest.mark.parametrize("frames", [1, 3])
def test_short_native_pixel_data(tmp_path, frames):
    ds = image_ds(rows=16, cols=16, frames=frames)
    ds.PixelData = ds.PixelData[:-64]
    err = expect_rejection(save(ds, tmp_path / "short.dcm"), CorruptDicomError, decode=False)
    assert "cut short" in err.reason


def test_padded_pixel_data_is_fine(tmp_path):
    ds = image_ds(rows=3, cols=3, bits=8)  # 9 bytes, written padded to 10
    arr = decode_frame(read_dataset(save(ds, tmp_path / "odd.dcm")))
    assert arr.shape == (3, 3)


def encapsulated_file(path: Path, ts: str, value: bytes) -> Path:
    """An 8x8 image whose undefined-length Pixel Data value is ``value`` (+ delimiter)."""
    header = image_ds(rows=8, cols=8)
    del header.PixelData
    pixel = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + value
    pixel += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(meta_bytes(ts) + explicit_le(header) + pixel)
    return path


def test_encapsulated_without_frames(tmp_path):
    rle = "1.2.840.10008.1.2.5"
    path = encapsulated_file(tmp_path / "noitems.dcm", rle, b"\x01" * 64)
    assert "no frames" in expect_rejection(path, CorruptDicomError).reason
    empty_bot = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    path = encapsulated_file(tmp_path / "nofrag.dcm", rle, empty_bot)
    expect_rejection(path, CorruptDicomError)
    path = encapsulated_file(tmp_path / "native.dcm", ExplicitVRLittleEndian, empty_bot * 4)
    assert "not stored as uncompressed" in expect_rejection(path, CorruptDicomError).reason


def test_rle_decoder_panic_is_contained(tmp_path):
    """Damaged RLE can make pylibjpeg-rle (Rust) panic: a BaseException, not an Exception."""
    ds = read_dataset(corpus("MR_small_RLE.dcm"))
    frame = bytearray(pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1))
    rng = random.Random(3)
    outcomes = set()
    for trial in range(40):
        damaged = bytearray(frame)
        for _ in range(8):
            damaged[rng.randrange(64, len(damaged))] = rng.getrandbits(8)
        ds.PixelData = encapsulate([bytes(damaged)])
        try:
            arr = decode_frame(ds)
            outcomes.add("ok")
            assert arr.shape == (64, 64)
        except InputError as err:
            outcomes.add(err.code)
    assert outcomes <= {"ok", "corrupt"}


def test_damaged_compressed_frame_is_corrupt(tmp_path):
    data = bytearray(corpus("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    sos = data.rfind(b"\xff\xda")
    data[sos + 20 : sos + 400] = b"\xff\xd9" * 190  # EOI markers in the scan
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data))
    try:
        arr = decode_frame(read_dataset(path))
    except InputError as err:
        assert isinstance(err, (CorruptDicomError, UnsupportedError)), err
    else:  # some decoders conceal errors; the result must still be well formed
        assert arr.shape == (100, 100, 3)


# --- non-image objects ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, words",
    [
        ("rtplan.dcm", "RT plan"),
        ("test-SR.dcm", "structured report"),
        ("reportsi.dcm", "structured report"),
        ("waveform_ecg.dcm", "waveform"),
        ("rtstruct.dcm", "RT structure set"),
        ("dicomdirtests/DICOMDIR", "DICOMDIR"),
    ],
)
def test_non_image_corpus_files_are_skipped(name, words):
    err = expect_rejection(CORPUS_ROOT / name, NotApplicable, decode=False)
    assert words in err.reason
    assert err.code == "not-applicable"


@pytest.mark.parametrize(
    "sop, words",
    [
        (KeyObjectSelectionDocumentStorage, "key object selection"),
        (GrayscaleSoftcopyPresentationStateStorage, "presentation state"),
        (BasicTextSRStorage, "structured report"),
        ("1.2.826.0.1.3680043.9.9999.42", "no pixel data"),
    ],
)
def test_non_image_sop_classes(tmp_path, sop, words):
    ds = Dataset()
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "CANARY^SECRET"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    err = expect_rejection(save(ds, tmp_path / "x.dcm"), NotApplicable, decode=False)
    assert words in err.reason
    assert "CANARY" not in str(err)


# --- decoding --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, reference",
    [
        ("SC_rgb_jpeg_dcmtk.dcm", None),  # JPEG baseline: libjpeg
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS: libjpeg
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000: openjpeg
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_implicit.dcm", "MR_small.dcm"),
    ],
)
def test_decode_matches_uncompressed_reference(name, reference):
    arr = decode_frame(read_dataset(corpus(name)))
    assert arr.dtype.isnative
    if reference:
        assert np.array_equal(arr, decode_frame(read_dataset(corpus(reference))))


def test_jpeg_decodes_through_pylibjpeg(monkeypatch):
    ds = read_dataset(corpus("SC_rgb_jpeg_dcmtk.dcm"))
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    assert "pylibjpeg" in decoder.available_plugins
    calls = []
    original = decoder._available["pylibjpeg"]

    def spy(src, runner):
        calls.append(len(src))
        return original(src, runner)

    monkeypatch.setitem(decoder._available, "pylibjpeg", spy)
    arr = decode_frame(ds)
    assert calls, "the pylibjpeg plugin was not used"
    assert arr.shape == (100, 100, 3) and arr.dtype == np.uint8
    assert describe_transfer_syntax(ds) == "JPEG Baseline (Process 1)"


def test_multiframe_index(tmp_path):
    ds = read_dataset(corpus("SC_rgb_rle_2frame.dcm"))
    assert number_of_frames(ds) == 2
    first, second = decode_frame(ds, 0), decode_frame(ds, 1)
    assert first.shape == second.shape == (100, 100, 3)
    assert not np.array_equal(first, second)
    for bad in (2, -1):
        with pytest.raises(CorruptDicomError, match="frame"):
            decode_frame(ds, bad)
    native = read_dataset(save(image_ds(rows=4, cols=5, frames=3), tmp_path / "mf.dcm"))
    values = (np.arange(60) % 251).reshape(3, 4, 5)
    for i in range(3):
        assert np.array_equal(decode_frame(native, i), values[i])


def test_number_of_frames_edge_cases():
    ds = Dataset()
    assert number_of_frames(ds) == 1
    ds.NumberOfFrames = 0
    assert number_of_frames(ds) == 1
    ds.NumberOfFrames = 7
    assert number_of_frames(ds) == 7


def test_headerless_implicit_image_is_accepted(tmp_path):
    ds = image_ds(ts=ImplicitVRLittleEndian)
    del ds.file_meta
    path = tmp_path / "raw.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x08\x00"  # no preamble, no meta
    read = read_dataset(path)
    assert describe_transfer_syntax(read) == "Implicit VR Little Endian"
    assert np.array_equal(decode_frame(read), (np.arange(64) % 251).reshape(8, 8))


def test_headerless_big_endian(tmp_path):
    ds = image_ds(ts=ExplicitVRBigEndian)
    del ds.file_meta
    path = tmp_path / "rawbe.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, enforce_file_format=False)
    read = read_dataset(path)
    assert describe_transfer_syntax(read) == "Explicit VR Big Endian"
    arr = decode_frame(read)
    assert arr.dtype.isnative
    assert np.array_equal(arr, (np.arange(64) % 251).reshape(8, 8))


# --- 4. unsupported transfer syntaxes -----------------------------------------------------
def test_unknown_private_transfer_syntax(tmp_path):
    data = corpus("MR_small_RLE.dcm").read_bytes()
    rle = b"1.2.840.10008.1.2.5\x00"
    private = b"1.2.826.0.1.99.77.5\x00"  # same length: the meta group length stays right
    assert data.count(rle) == 1 and len(rle) == len(private)
    path = tmp_path / "private.dcm"
    path.write_bytes(data.replace(rle, private))
    ds = read_dataset(path)  # valid DICOM ...
    assert describe_transfer_syntax(ds) == "unknown transfer syntax 1.2.826.0.1.99.77.5"
    with pytest.raises(UnsupportedError) as info:  # ... that cannot be decoded here
        decode_frame(ds)
    assert "1.2.826.0.1.99.77.5" in info.value.reason
    assert "human read" in info.value.reason
    assert info.value.code == "unsupported"


def test_transfer_syntax_without_any_decoder(tmp_path):
    ds = read_dataset(corpus("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel decoder
    path = save(ds, tmp_path / "mpeg2.dcm")
    err = expect_rejection(path, UnsupportedError)
    assert "MPEG2 Main Profile / Main Level" in err.reason


def test_decoder_plugins_missing(monkeypatch):
    """JPEG-LS with every plugin unavailable (as on a device without pylibjpeg-libjpeg)."""
    ds = read_dataset(corpus("MR_small_jpeg_ls_lossless.dcm"))
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setitem(decoder._unavailable, "pylibjpeg", ("pylibjpeg", "pylibjpeg-libjpeg"))
    with pytest.raises(UnsupportedError) as info:
        decode_frame(ds)
    reason = info.value.reason
    assert "JPEG-LS Lossless Image Compression" in reason
    assert "human read" in reason
    assert "pylibjpeg" in reason  # the missing plugins are listed


def test_all_plugins_fail_with_not_supported(monkeypatch):
    ds = read_dataset(corpus("SC_rgb_jpeg_dcmtk.dcm"))
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)

    def refuse(src, runner):
        raise ValueError("this plugin does not support the data")

    from edgeinfer.dicomio import codecs

    # every plugin refuses, edgeinfer's (asked first for grey JPEG) included
    monkeypatch.setattr(decoder, "_available", {codecs.PLUGIN: refuse, "one": refuse, "two": refuse})
    with pytest.raises(UnsupportedError) as info:
        decode_frame(ds)
    assert "one: this plugin does not support" in info.value.reason


# --- 21. canary PHI -------------------------------------------------------------------------
def raw_element(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element written as is: no validation or conversion of ``value``."""
    return RawDataElement(pydicom.tag.Tag(tag), vr, len(value), value, 0, False, True)


def canary_ds(*, invalid_is: bool = True, **kw) -> Dataset:
    ds = image_ds(**kw)
    ds.PatientName = "CANARY^SECRET"
    ds.PatientID = "CANARY-ID-123"
    ds.OtherPatientIDs = "CANARY-ID-123"
    ds.InstitutionName = "CANARY^SECRET"
    with pydicom.config.disable_value_validation():
        ds.PatientBirthDate = "CANARY^SECRET"  # invalid DA
        ds.PatientAge = "CANARY-ID-123"  # invalid AS
        ds.StudyDate = "CANARY-ID-123"  # invalid DA
        ds.AccessionNumber = "CANARY-ID-123-TOO-LONG-FOR-SH"  # invalid SH
    block = ds.private_block(0x0029, "EDGEINFER TEST", create=True)
    block.add_new(0x10, "LO", "CANARY^SECRET")
    if invalid_is:  # pydicom's IS conversion warns *and* raises with the value
        ds[0x00200013] = raw_element(0x00200013, "IS", b"CANARY-ID-123 ")  # Instance Number
    return ds


def canary_files(tmp_path: Path) -> list[Path]:
    files = [save(canary_ds(), tmp_path / "valid.dcm")]
    ds = canary_ds()
    ds.SpecificCharacterSet = "CANARY^SECRET"  # unknown charset: pydicom warns with it
    files.append(save(ds, tmp_path / "charset.dcm"))
    ds = canary_ds()
    ds[0x00280008] = raw_element(0x00280008, "IS", b"CANARY-ID-123 ")  # Number of Frames
    files.append(save(ds, tmp_path / "frames.dcm"))
    ds = canary_ds()
    ds.BitsStored = 17
    files.append(save(ds, tmp_path / "bits.dcm"))
    ds = canary_ds()
    ds[0x00281053] = raw_element(0x00281053, "DS", b"CANARY")  # Rescale Slope
    files.append(save(ds, tmp_path / "slope.dcm"))
    data = files[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 50])
    files.append(tmp_path / "cut.dcm")
    ds = canary_ds()
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    files.append(save(ds, tmp_path / "sr.dcm"))
    ds = canary_ds(ts=ImplicitVRLittleEndian, invalid_is=False)
    del ds.file_meta
    path = tmp_path / "headerless.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    files.append(path)
    jpeg = pydicom.dcmread(corpus("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg.PatientName = "CANARY^SECRET"
    with pydicom.config.disable_value_validation():
        jpeg.PatientBirthDate = "CANARY-ID-123"
    frame = bytearray(jpeg.PixelData)
    frame[-300:-200] = b"\x00" * 100
    jpeg.PixelData = bytes(frame)
    files.append(save(jpeg, tmp_path / "jpeg.dcm"))
    return files


def test_canary_phi_never_escapes(tmp_path, caplog, capsys):
    with pydicom_silenced():
        files = canary_files(tmp_path)
    capsys.readouterr()
    caplog.clear()  # building the files logged canaries (pydicom validates on assignment)
    messages: list[str] = []
    caplog.set_level(logging.DEBUG)
    for name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils", "edgeinfer"):
        caplog.set_level(logging.DEBUG, logger=name)
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom.config.debug(True, default_handler=False)  # pydicom now logs every value it reads
    outcomes = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for path in files:
                try:
                    ds = read_dataset(path)
                    decode_frame(ds)
                    # later access by other modules: converted in the boundary, so silent
                    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientAge",
                                    "StudyDate", "AccessionNumber", "OtherPatientIDs",
                                    "InstanceNumber"):
                        ds.get(keyword)
                    outcomes[path.name] = "ok"
                except InputError as err:
                    outcomes[path.name] = err.code
                    messages += [str(err), err.reason, err.hint or "", repr(err)]
                    messages.append("".join(traceback.format_exception(err)))
    finally:
        pydicom.config.debug(False, default_handler=False)
        pydicom_logger.setLevel(level)
    messages += [str(w.message) for w in caught]
    messages += [r.getMessage() for r in caplog.records] + [caplog.text]
    out = capsys.readouterr()
    messages += [out.out, out.err]
    leaks = [m for m in messages if any(c in m for c in CANARIES)]
    assert not leaks, f"canary leaked: {leaks[:3]}"
    assert outcomes == {
        "valid.dcm": "ok",
        "charset.dcm": "ok",
        "frames.dcm": "corrupt",
        "bits.dcm": "corrupt",
        "slope.dcm": "corrupt",
        "cut.dcm": "corrupt",
        "sr.dcm": "not-applicable",
        "headerless.dcm": "ok",
        "jpeg.dcm": outcomes.get("jpeg.dcm"),  # damaged JPEG: ok (concealed) or corrupt
    }, outcomes


def test_canary_control_pydicom_itself_echoes_values(tmp_path):
    """Why the boundary exists: plain pydicom puts the invalid value in a warning."""
    with pydicom_silenced():
        path = save(canary_ds(), tmp_path / "valid.dcm")
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True  # only the warning is looked at
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pydicom.dcmread(path).InstanceNumber
    finally:
        logger.disabled = disabled
    if not any("CANARY" in str(w.message) for w in caught):
        pytest.skip("this pydicom version no longer echoes invalid values in warnings")


def test_library_cause_is_chained_without_its_message(tmp_path):
    with pydicom_silenced():
        ds = canary_ds()
    ds.SmallestImagePixelValue = 0x5858
    path = save(ds, tmp_path / "smallest.dcm")
    # a US value of odd length: pydicom raises BytesLengthException quoting the raw bytes
    good = b"\x28\x00\x06\x01US\x02\x00XX"
    bad = b"\x28\x00\x06\x01US\x0d\x00CANARY-ID-123"
    data = path.read_bytes()
    assert data.count(good) == 1
    path.write_bytes(data.replace(good, bad))
    with pytest.raises(CorruptDicomError) as info:
        read_dataset(path)
    assert "SmallestImagePixelValue" in info.value.reason
    cause = info.value.__cause__
    assert cause is not None and "message withheld" in str(cause)
    assert cause.__traceback__ is not None  # where it happened is still visible
    assert "CANARY" not in "".join(traceback.format_exception(info.value))


def test_unparseable_identification_element_is_dropped(tmp_path, caplog):
    """A broken element in groups 0008/0010/0020 does not cost the image; it is removed
    (logged by tag) so that a later access cannot raise with its value."""
    with pydicom_silenced():
        ds = canary_ds()
    ds.InStackPositionNumber = 0x58585858
    path = save(ds, tmp_path / "stack.dcm")
    good = b"\x20\x00\x57\x90UL\x04\x00XXXX"
    bad = b"\x20\x00\x57\x90UL\x05\x00CANAR"  # UL of odd length: pydicom raises
    data = path.read_bytes()
    assert data.count(good) == 1
    path.write_bytes(data.replace(good, bad))
    caplog.clear()  # building the file logged canaries (pydicom validates on assignment)
    caplog.set_level(logging.DEBUG, logger="edgeinfer")
    read = read_dataset(path)
    assert "InStackPositionNumber" not in read
    assert read.PatientID == "CANARY-ID-123"  # the rest is intact
    assert decode_frame(read).shape == (8, 8)
    assert "(0020,9057)" in caplog.text and "CANAR" not in caplog.text


# --- 1. fuzzing (short run; a long one on demand: see fuzz_dicomio.py) ---------------------
def test_fuzz_short_run(tmp_path):
    pytest.importorskip("atheris")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for path in CORPUS:
        if path.stat().st_size <= 64 * 1024:
            shutil.copy(path, seeds / f"{len(list(seeds.iterdir())):03d}_{path.name}")
    harness = Path(__file__).with_name("fuzz_dicomio.py")
    cmd = [sys.executable, str(harness), "-max_total_time=5", "-rss_limit_mb=1024", "-timeout=5",
           "-print_final_stats=1", str(tmp_path / "work"), str(seeds)]
    (tmp_path / "work").mkdir()
    shm = Path("/dev/shm")
    before = set(shm.glob("fuzz_dicomio_*"))
    # through sh, which forks the harness: Linux carries ru_maxrss across fork + exec, and
    # libFuzzer's -rss_limit_mb reads ru_maxrss, so a harness started straight from this (by
    # then large) pytest process would count the whole test run's memory as its own
    result = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', *cmd], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    tail = "\n".join(result.stderr.splitlines()[-40:])
    assert result.returncode == 0, f"fuzzer found a problem:\n{tail}"
    assert "Done" in result.stderr or "stat::number_of_executed_units" in result.stderr, tail
    # the harness's scratch file must not outlive it (libFuzzer exits without running ``finally``)
    left = sorted(str(p) for p in set(shm.glob("fuzz_dicomio_*")) - before)
    assert not left, f"the fuzz run left scratch files behind: {left}"


def test_the_quiet_boundary_holds_when_threads_read_at_once(tmp_path, capfd):
    """warnings.catch_warnings swaps process-wide state; interleaved by threads it can leave a warning shown
    with a patient's value. The boundary is held by one thread at a time: no canary escapes, and the
    warning filters are exactly as before once every thread is done."""
    with pydicom_silenced():
        files = canary_files(tmp_path)
    capfd.readouterr()
    before = list(warnings.filters)
    assert _in_threads([lambda: _read_all(files, 15)] * 6) == []
    out, err = capfd.readouterr()
    assert not any(c in out + err for c in CANARIES), (out + err)[-2000:]
    assert warnings.filters == before


def _read_all(files, passes: int) -> None:
    """Read and decode every file ``passes`` times; a rejection is an answer, anything else escapes."""
    for _ in range(passes):
        for f in files:
            try:
                decode_frame(read_dataset(f), 0)
            except InputError:
                pass


def _in_threads(targets, timeout: float = 120) -> list[BaseException]:
    """Run each target in a thread of its own, all at once; what they raised (each must end in time)."""
    import threading

    errors: list[BaseException] = []

    def guarded(target):
        def run():
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - returned to the test
                errors.append(exc)
        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_stepping_out_of_the_boundary_puts_the_process_state_back_and_keeps_recording():
    """A codec's decode runs outside the boundary (other threads may enter); warnings before and
    after it are still recorded into the same lists, nested boundaries included."""
    from edgeinfer.dicomio.quiet import _boundary_lock, _library_quiet, _outside_boundary

    shown, filters = warnings.showwarning, list(warnings.filters)
    with _library_quiet() as outer:
        warnings.warn("outer before")
        with _library_quiet() as inner:
            warnings.warn("inner before")
            with _outside_boundary():
                assert warnings.showwarning is shown and warnings.filters == filters  # the process's own
                assert not _boundary_lock.locked()  # another thread may enter now
                with _library_quiet() as between:  # a boundary entered out here is one of its own
                    assert _boundary_lock.locked()
                    warnings.warn("between")
                assert warnings.showwarning is shown and warnings.filters == filters
            warnings.warn("inner after")
        warnings.warn("outer after")
    assert [str(w.message) for w in outer] == ["outer before", "outer after"]
    assert [str(w.message) for w in inner] == ["inner before", "inner after"]
    assert [str(w.message) for w in between] == ["between"]
    assert warnings.showwarning is shown and warnings.filters == filters
    with _outside_boundary():  # outside any boundary: nothing to step out of
        pass


def test_intake_threads_decode_compressed_frames_at_once_and_the_boundary_holds(tmp_path, capfd, monkeypatch):
    """Two threads are inside imagecodecs' RLE decode at the same time (a barrier that needs both
    would time out otherwise), while other threads read files whose headers make pydicom warn
    with a patient's value: no canary escapes and the warning state is as before."""
    import threading

    import imagecodecs
    from pydicom.uid import RLELossless

    with pydicom_silenced():
        files = canary_files(tmp_path)
        ds = canary_ds(invalid_is=False)
        ds.SpecificCharacterSet = "CANARY^SECRET"  # pydicom warns with it while reading this RLE file
        ds.Rows, ds.Columns = 64, 64
        ds.compress(RLELossless, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096)
        rle = save(ds, tmp_path / "rle.dcm")
    barrier = threading.Barrier(2, timeout=30)
    met, real = [], imagecodecs.dicomrle_decode

    def both_inside(*a, **k):
        if len(met) < 2:
            met.append(barrier.wait())  # returns once the other thread is inside a decode too
        return real(*a, **k)

    monkeypatch.setattr(imagecodecs, "dicomrle_decode", both_inside)
    capfd.readouterr()
    shown, before = warnings.showwarning, list(warnings.filters)
    decoded: list[np.ndarray] = []

    def decoder():
        for _ in range(5):
            decoded.append(decode_frame(read_dataset(rle), 0))

    assert _in_threads([decoder] * 2 + [lambda: _read_all(files, 5)] * 3) == []
    out, err = capfd.readouterr()
    assert sorted(met) == [0, 1]  # both decoders were inside imagecodecs at once
    assert len(decoded) == 10 and all(np.array_equal(a, decoded[0]) for a in decoded)
    assert not any(c in out + err for c in CANARIES), (out + err)[-2000:]
    assert warnings.showwarning is shown and warnings.filters == before
