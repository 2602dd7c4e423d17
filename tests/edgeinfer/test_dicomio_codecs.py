"""The imagecodecs decoder plugin (edgeinfer/dicomio/codecs.py) gives what pydicom's own plugins give.

Compared on every file of pydicom's corpus in a transfer syntax it decodes, and on phantoms
encoded here in each of them (8 to 16 bits, signed and unsigned, one and three samples); the
intake asks it first and falls back to pydicom's plugins when it refuses a frame.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edgeinfer.dicomio import codecs, decode_frame
from edgeinfer.errors import CorruptDicomError
from edgeinfer.phantom.dicom import compress

pytest.importorskip("imagecodecs")
CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


def _ts(path: Path):
    try:
        ds = pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 - the corpus holds files that are not DICOM on purpose
        return None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts if ts in codecs.DECODER_DEPENDENCIES and "PixelData" in ds else None


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CORPUS_FILES = sorted(p.name for p in CORPUS.rglob("*") if p.is_file() and _ts(p))


def _both(ds, index=0):
    """(pydicom's plugins, this plugin): each an array or the exception it raised."""
    out = []
    for plugin in ("", codecs.PLUGIN):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(pixel_array(ds, index=index, **({"decoding_plugin": plugin} if plugin else {})))
        except Exception as exc:  # noqa: BLE001 - compared below
            out.append(exc)
    return out


def test_the_plugin_is_registered_for_every_syntax_it_claims():
    assert codecs._REGISTERED == frozenset(codecs.DECODER_DEPENDENCIES)
    assert all(codecs.preferred(ts) == codecs.PLUGIN for ts in codecs.DECODER_DEPENDENCIES)
    assert codecs.preferred(ExplicitVRLittleEndian) == ""
    assert len(CORPUS_FILES) >= 20  # RLE, lossless JPEG, JPEG-LS and JPEG 2000 files: the comparison below is not empty


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_the_plugin_decodes_pydicom_s_corpus_as_pydicom_does(name):
    ds = pydicom.dcmread(next(CORPUS.rglob(name)))
    ref, got = _both(ds)
    if isinstance(ref, Exception):  # a file no decoder reads: this one refuses it too
        assert isinstance(got, Exception)
        return
    assert not isinstance(got, Exception), got
    assert (got.dtype, got.shape) == (ref.dtype, ref.shape)
    assert np.array_equal(got, ref)


def _phantom(ts, bits: int, signed: bool, samples: int) -> tuple[pydicom.Dataset, np.ndarray]:
    rng = np.random.default_rng(bits * 10 + signed + samples)
    rows, cols = 67, 90  # odd: no decoder gets an easy size
    y, x = np.mgrid[0:rows, 0:cols]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    smooth = lo + (hi - lo) * (0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 7.0))
    arr = (smooth + rng.normal(0, (hi - lo) / 50, smooth.shape)).clip(lo, hi)
    dtype = np.dtype(f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}")
    arr = arr.astype(dtype)
    if samples == 3:
        arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = arr.tobytes()
    kw = {"jls_error": 2} if ts == JPEGLSNearLossless else {"j2k_psnr": [60]} if ts == JPEG2000 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compress(ds, ts, arr, **kw)
    return ds, arr


PHANTOMS = [(ts, bits, signed, samples)
            for ts in (RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000)
            for bits, signed, samples in ((8, False, 1), (12, False, 1), (12, True, 1), (16, False, 1),
                                          (16, True, 1), (8, False, 3))
            if not (ts in (JPEGLSLossless, JPEGLSNearLossless) and signed)  # pyjpegls will not encode signed
            and not (ts == JPEGLosslessSV1 and samples == 3)]  # imagecodecs encodes grey lossless JPEG only


@pytest.mark.parametrize("ts,bits,signed,samples", PHANTOMS,
                         ids=[f"{t.name}-{b}bit-{'signed' if s else 'unsigned'}-{n}" for t, b, s, n in PHANTOMS])
def test_the_plugin_decodes_phantoms_as_pydicom_does(ts, bits, signed, samples):
    ds, original = _phantom(ts, bits, signed, samples)
    ref, got = _both(ds)
    assert not isinstance(ref, Exception) and not isinstance(got, Exception), (ref, got)
    assert (got.dtype, got.shape) == (ref.dtype, ref.shape) and np.array_equal(got, ref)
    if ts in (RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        assert np.array_equal(got, original)  # and lossless is lossless


def test_the_intake_asks_the_plugin_first(monkeypatch):
    import imagecodecs

    calls = []
    real = imagecodecs.dicomrle_decode
    monkeypatch.setattr(imagecodecs, "dicomrle_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = pydicom.dcmread(CORPUS / "MR_small_RLE.dcm")
    assert np.array_equal(decode_frame(ds), pixel_array(ds)) and calls == [1]


def _rle_with_segments(ds, frame: bytes) -> pydicom.Dataset:
    ds = pydicom.dcmread(CORPUS / "MR_small_RLE.dcm") if ds is None else ds
    ds.PixelData = encapsulate([frame])
    return ds


def test_a_frame_the_plugin_refuses_is_decoded_by_pydicom_s_plugins():
    """A segment with bytes after its last run (non-conformant, but pylibjpeg-rle reads it):
    imagecodecs refuses the frame, and the image still decodes."""
    ds = pydicom.dcmread(CORPUS / "MR_small_RLE.dcm")
    want = pixel_array(ds)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1) + bytes([5, 1, 2, 3, 4, 5, 6])
    ds = _rle_with_segments(ds, frame)
    with pytest.raises(RuntimeError, match=codecs.PLUGIN):
        pixel_array(ds, decoding_plugin=codecs.PLUGIN)
    assert np.array_equal(decode_frame(ds), want)


def test_rle_segments_that_hold_too_little_are_refused_not_shortened():
    """imagecodecs returns what a truncated segment holds; the plugin refuses it, as pydicom's do."""
    ds = pydicom.dcmread(CORPUS / "MR_small_RLE.dcm")
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    offsets = struct.unpack("<16I", frame[:64])
    ds = _rle_with_segments(ds, frame[: (offsets[2] + len(frame)) // 2])  # half of the last segment
    with pytest.raises(RuntimeError, match="decode to 6144 bytes; the frame needs 8192"):
        pixel_array(ds, decoding_plugin=codecs.PLUGIN)
    with pytest.raises(CorruptDicomError, match="could not be decoded, the frame is damaged"):
        decode_frame(ds)
