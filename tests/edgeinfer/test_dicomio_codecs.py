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
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edgeinfer.dicomio import codecs, decode_frame, read_dataset
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
    path = next(CORPUS.rglob(name))
    ds = pydicom.dcmread(path)
    ref, got = _both(ds)
    if isinstance(ref, Exception):  # a file no decoder reads: this one refuses it too
        assert isinstance(got, Exception)
        return
    ts = ds.file_meta.TransferSyntaxUID
    if isinstance(got, Exception):  # refused by design (colour JPEG): the intake falls back
        assert ts in (JPEGLossless, JPEGLosslessSV1, *LOSSY_JPEG) and ds.SamplesPerPixel == 3, got
        assert "grey JPEG only" in str(got)
        got = decode_frame(read_dataset(path))
        assert (got.dtype, got.shape) == (ref.dtype, ref.shape) and np.array_equal(got, ref)
        return
    assert (got.dtype, got.shape) == (ref.dtype, ref.shape)
    assert_as_pydicom(got, ref, ts)


#: lossy JPEG: libjpeg-turbo's inverse DCT rounds differently from pydicom's libjpeg (both conform)
LOSSY_JPEG = (JPEGBaseline8Bit, JPEGExtended12Bit)


def assert_as_pydicom(got: np.ndarray, ref: np.ndarray, ts) -> None:
    """The same values; for lossy JPEG within 4 grey levels, half of one on average (measured: 1-3; signed
    values, coded as bit patterns that jump at zero, differ most)."""
    if ts not in LOSSY_JPEG:
        assert np.array_equal(got, ref)
        return
    diff = np.abs(got.astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 4 and diff.mean() <= 0.5, (diff.max(), diff.mean())


def _phantom(ts, bits: int, signed: bool, samples: int, shape=(67, 90)) -> tuple[pydicom.Dataset, np.ndarray]:
    rng = np.random.default_rng(bits * 10 + signed + samples)
    rows, cols = shape  # by default odd: no decoder gets an easy size
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
            for ts in (RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
                       *LOSSY_JPEG)
            for bits, signed, samples in ((8, False, 1), (12, False, 1), (12, True, 1), (16, False, 1),
                                          (16, True, 1), (8, False, 3))
            if not (ts in (JPEGLSLossless, JPEGLSNearLossless) and signed)  # pyjpegls will not encode signed
            and not (ts in (JPEGLosslessSV1, *LOSSY_JPEG) and samples == 3)  # compress writes grey JPEG only
            and not (ts == JPEGBaseline8Bit and bits > 8)]  # baseline holds 8 bits (16 -> 12: compress shifts)


@pytest.mark.parametrize("ts,bits,signed,samples", PHANTOMS,
                         ids=[f"{t.name}-{b}bit-{'signed' if s else 'unsigned'}-{n}" for t, b, s, n in PHANTOMS])
def test_the_plugin_decodes_phantoms_as_pydicom_does(ts, bits, signed, samples):
    ds, original = _phantom(ts, bits, signed, samples)
    ref, got = _both(ds)
    assert not isinstance(ref, Exception) and not isinstance(got, Exception), (ref, got)
    assert (got.dtype, got.shape) == (ref.dtype, ref.shape)
    assert_as_pydicom(got, ref, ts)
    if ts in (RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        assert np.array_equal(got, original)  # and lossless is lossless


def test_the_intake_asks_the_plugin_first(monkeypatch):
    import imagecodecs

    calls = []
    real = imagecodecs.dicomrle_decode
    monkeypatch.setattr(imagecodecs, "dicomrle_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = pydicom.dcmread(CORPUS / "MR_small_RLE.dcm")
    assert np.array_equal(decode_frame(ds), pixel_array(ds)) and calls == [1]


@pytest.mark.parametrize("bits,signed,samples", [(8, False, 1), (12, False, 1), (12, True, 1), (16, False, 1),
                                                 (16, True, 1), (8, False, 3)])
def test_grey_rle_skips_pydicom_s_copies_and_gives_its_array(bits, signed, samples, monkeypatch):
    """decode_frame decodes a grey RLE frame with the plugin's decoder itself (pydicom would copy the
    frame out and the result into its own array); colour still goes through pydicom. Same array."""
    import edgeinfer.dicomio.decode as decode_module

    ds, original = _phantom(RLELossless, bits, signed, samples)
    want = pixel_array(ds)
    calls = []
    real = decode_module._pd_pixel_array
    monkeypatch.setattr(decode_module, "_pd_pixel_array", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = decode_frame(ds)
    assert (got.dtype, got.shape) == (want.dtype, want.shape) and np.array_equal(got, want)
    assert np.array_equal(got, original) and bool(calls) == (samples == 3)


def _rle_with_segments(ds, frame: bytes) -> pydicom.Dataset:
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


def _rle_frame(segments: int, offsets, length: int) -> bytes:
    head = struct.pack("<16I", segments, *offsets, *([0] * (15 - len(offsets))))
    return head + bytes(length - 64)


@pytest.mark.parametrize("frame, segments, why", [
    (bytes(40), 1, "shorter than the 64-byte RLE header"),
    (_rle_frame(3, (64, 100, 200), 300), 2, "has 3 segments; the image needs 2"),
    (_rle_frame(2, (80, 100), 300), 2, "starts at byte 80, not 64"),
    (_rle_frame(2, (64, 64), 300), 2, "segment 1 runs from byte 64 to 64"),
    (_rle_frame(2, (64, 50), 300), 2, "segment 1 runs from byte 64 to 50"),
    (_rle_frame(2, (64, 301), 300), 2, "segment 1 runs from byte 64 to 301"),
    (_rle_frame(3, (64, 0xFFFFFFFF, 0xFFFFFFFF), 664), 3, "segment 1 runs from byte 64 to 4294967295"),
])
def test_rle_headers_that_point_outside_the_frame_are_refused(frame, segments, why):
    assert why in codecs.rle_header_problem(frame, segments)


def test_a_valid_rle_header_has_no_problem():
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle_16bit.dcm")
    assert codecs.rle_header_problem(get_frame(ds.PixelData, 0, number_of_frames=1), 6) is None
    assert codecs.rle_header_problem(_rle_frame(2, (64, 100), 300), 2) is None


def test_a_frame_whose_header_is_not_the_image_s_size_is_refused_before_decoding(monkeypatch):
    """The decoders allocate what the frame says; pydicom may call the plugin without the intake's checks."""
    import imagecodecs

    ds = pydicom.dcmread(CORPUS / "JPEG2000.dcm")
    ds.Rows = ds.Rows // 2
    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", lambda *a, **k: pytest.fail("decoded a frame of the wrong size"))
    with pytest.raises(RuntimeError, match="the frame's header says"):
        pixel_array(ds, decoding_plugin=codecs.PLUGIN)


def test_fuzz_codecs_short_run(tmp_path):
    """A few seconds of damaged frames in every syntax, straight to the plugin (tests/edgeinfer/fuzz_codecs.py).
    Before the offsets were checked, RLE headers pointing past the frame crashed imagecodecs; the
    crash input is kept as a seed, so this run replays it first."""
    import subprocess
    import sys

    pytest.importorskip("atheris")
    harness = Path(__file__).with_name("fuzz_codecs.py")
    seeds, work = tmp_path / "seeds", tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, str(harness), "--seeds", str(seeds)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and len(list(seeds.iterdir())) >= 15, out.stderr[-2000:]
    rle = codecs_index(RLELossless)
    offsets_past_the_end = struct.pack("<16I", 3, 64, 0xFFFFFFFF, 0xFFFFFFFF, *([0] * 12)) + bytes(600)
    (seeds / "rle-offsets-past-the-end").write_bytes(bytes([rle, 3]) + offsets_past_the_end)
    # through sh (as test_dicomio's fuzz run): libFuzzer's -rss_limit_mb would otherwise count pytest's memory
    cmd = [sys.executable, str(harness), "-max_total_time=5", "-rss_limit_mb=1024", "-timeout=5",
           "-print_final_stats=1", str(work), str(seeds)]
    result = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', *cmd], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    tail = "\n".join(result.stderr.splitlines()[-40:])
    assert result.returncode == 0, f"fuzzer found a problem:\n{tail}"
    assert "stat::number_of_executed_units" in result.stderr, tail


def codecs_index(ts) -> int:
    """The first byte of a fuzz input that chooses ``ts`` (fuzz_codecs.SYNTAXES order)."""
    return sorted(codecs.DECODER_DEPENDENCIES, key=str).index(ts)


def test_without_imagecodecs_pydicom_s_plugins_decode_everything():
    """imagecodecs missing (a device that did not install it): no plugin, and compressed images still decode."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["imagecodecs"] = None  # as if not installed: find_spec and import both fail
import numpy as np, pydicom
from pydicom.pixels import pixel_array
from edgeinfer.dicomio import codecs, decode_frame, read_dataset
assert codecs._REGISTERED == frozenset() and codecs.preferred(pydicom.uid.RLELossless) == ""
for name in ("MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm"):
    path = {str(CORPUS)!r} + "/" + name
    assert np.array_equal(decode_frame(read_dataset(path)), pixel_array(pydicom.dcmread(path))), name
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- JPEG 2000 at reduced resolution -------------------------------------------------------------
def _j2k(arr: np.ndarray, bits: int, level: int = 0, **kw) -> bytes:
    import imagecodecs

    return imagecodecs.jpeg2k_encode(arr, level=level, codecformat="j2k", bitspersample=bits, **kw)


def test_the_main_header_gives_precision_sign_and_wavelet_levels():
    arr = np.zeros((400, 300), np.int16)
    h = codecs.j2k_header(_j2k(arr, 12, resolutions=4))
    assert h == codecs.J2KHeader(400, 300, 1, 12, True, False, False, 3)
    import imagecodecs

    boxed = imagecodecs.jpeg2k_encode(np.zeros((8, 8), np.uint8), level=0, codecformat="jp2")
    assert codecs.j2k_header(boxed).levels is not None and codecs.j2k_header(boxed).precision == 8
    assert codecs.j2k_header(b"\xff\xd8\xff\xc3") is None  # not JPEG 2000
    cut = _j2k(arr, 12)[:52]  # SIZ whole, COD cut off
    assert codecs.j2k_header(cut).levels is None


GREY_16 = codecs.J2KHeader(2500, 2048, 1, 16, False, False, False, 5)


@pytest.mark.parametrize("header,rows,cols,bits,signed,at_least,levels", [
    (GREY_16, 2500, 2048, 16, False, (1024, 1024), 1),     # 1250 x 1024; 625 x 512 is too small
    (GREY_16, 2500, 2048, 16, False, (512, 512), 2),       # 3 would not divide 2500
    (GREY_16, 2500, 2048, 16, False, (2500, 2048), 0),
    (GREY_16, 2500, 2048, 16, False, (1, 1), 2),
    (codecs.J2KHeader(4096, 4096, 1, 16, False, False, False, 5), 4096, 4096, 16, False, (1, 1), 5),  # all levels
    (codecs.J2KHeader(2370, 1950, 1, 16, False, False, False, 5), 2370, 1950, 16, False, (1, 1), 1),
    (codecs.J2KHeader(2999, 2048, 1, 16, False, False, False, 5), 2999, 2048, 16, False, (1, 1), 0),  # odd
    (GREY_16, 2500, 2048, 12, False, (1, 1), 0),            # the codestream's precision is not Bits Stored
    (GREY_16, 2500, 2048, 16, True, (1, 1), 0),             # nor its sign the Pixel Representation
    (GREY_16, 2048, 2500, 16, False, (1, 1), 0),            # nor its size the image's
    (codecs.J2KHeader(2500, 2048, 3, 8, False, False, False, 5), 2500, 2048, 8, False, (1, 1), 0),  # colour
    (codecs.J2KHeader(2500, 2048, 1, 16, False, True, False, 5), 2500, 2048, 16, False, (1, 1), 0),  # subsampled
    (codecs.J2KHeader(2500, 2048, 1, 16, False, False, True, 5), 2500, 2048, 16, False, (1, 1), 0),  # offset
    (codecs.J2KHeader(2500, 2048, 1, 16, False, False, False, None), 2500, 2048, 16, False, (1, 1), 0),
    (None, 2500, 2048, 16, False, (1, 1), 0),
])
def test_reduction_levels(header, rows, cols, bits, signed, at_least, levels):
    assert codecs.reduction_levels(header, rows, cols, bits, signed, at_least) == levels


@pytest.mark.parametrize("bits,signed", [(2, False), (8, False), (8, True), (12, False), (12, True), (15, True),
                                         (16, False), (16, True)])
@pytest.mark.parametrize("reversible", [True, False], ids=["lossless", "lossy"])
def test_the_reduced_decoder_undoes_pillow_s_scaling_exactly(bits, signed, reversible):
    """At level 0 (nothing left out, nothing moved) it gives imagecodecs' full decode, value for value."""
    import imagecodecs

    rng = np.random.default_rng(bits)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    dtype = np.dtype(f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}")
    frame = _j2k(rng.integers(lo, hi + 1, (37, 29)).astype(dtype), bits,
                 **({} if reversible else {"reversible": False, "level": 20}))
    got = codecs.decode_j2k_reduced(frame, 0, codecs.j2k_header(frame), dtype)
    want = imagecodecs.jpeg2k_decode(frame)
    assert got.dtype == want.dtype == dtype and np.array_equal(got, want)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_a_reduced_image_stands_on_its_blocks_centres(levels):
    """A ramp: the wavelet low-pass of a linear image is the image sampled at 2**r * n, which is
    (2**r - 1) / 2 pixels before the middle of its block; the decoder moves it there, so each pixel
    is its block's mean (to rounding). Without the move every pixel would be 4 * (2**r - 1) / 2 low."""
    y, x = np.mgrid[:128, :192]
    ramp = (1000 + 4 * x + 3 * y).astype(np.uint16)
    frame = _j2k(ramp, 16)
    got = codecs.decode_j2k_reduced(frame, levels, codecs.j2k_header(frame), np.uint16)
    p = 1 << levels
    means = ramp.reshape(128 // p, p, 192 // p, p).mean(axis=(1, 3))
    inner = (slice(2, -2), slice(2, -2))  # near the edges the wavelet's mirrored extension bends the ramp
    assert got.shape == means.shape and np.abs(got[inner] - means[inner]).max() <= 0.5


def _j2k_dataset(rows, cols, samples=1):
    return _phantom(JPEG2000Lossless, 12, False, samples, shape=(rows, cols))


def test_decode_frame_leaves_levels_out_only_for_grey_jpeg_2000_and_only_when_asked():
    ds, arr = _j2k_dataset(512, 384)
    assert decode_frame(ds, at_least=lambda shape: (100, 90)).shape == (128, 96)   # 64 x 48 is too small
    assert decode_frame(ds, at_least=lambda shape: (300, 90)).shape == (512, 384)  # half is too small
    assert np.array_equal(decode_frame(ds), arr)
    assert np.array_equal(decode_frame(ds, at_least=lambda shape: None), arr)
    seen = []
    decode_frame(ds, at_least=lambda shape: seen.append(shape))
    assert seen == [(512, 384)]
    for other in (RLELossless, JPEGLSLossless):
        ds, arr = _phantom(other, 12, False, 1, shape=(512, 384))
        assert np.array_equal(decode_frame(ds, at_least=lambda shape: (1, 1)), arr)
    ds, arr = _j2k_dataset(64, 48, samples=3)
    assert decode_frame(ds, at_least=lambda shape: (1, 1)).shape == (64, 48, 3)


def test_without_pillow_jpeg_2000_decodes_in_full(monkeypatch):
    monkeypatch.setattr(codecs, "reduced_decoder_available", lambda: False)
    ds, arr = _j2k_dataset(512, 384)
    assert np.array_equal(decode_frame(ds, at_least=lambda shape: (1, 1)), arr)


def test_a_frame_the_reduced_decoder_refuses_gets_the_full_decode_s_verdict(monkeypatch):
    ds, _ = _j2k_dataset(512, 384)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # cut short
    refused = []
    real = codecs.decode_j2k_reduced

    def spy(*args):
        try:
            return real(*args)
        except Exception as exc:
            refused.append(exc)
            raise

    monkeypatch.setattr(codecs, "decode_j2k_reduced", spy)
    outcomes = []
    for at_least in (None, lambda shape: (1, 1)):
        try:
            outcomes.append(("decoded", decode_frame(ds, at_least=at_least).shape))
        except CorruptDicomError as exc:
            outcomes.append((type(exc), str(exc)))
    assert len(refused) == 1 and outcomes[0] == outcomes[1], (refused, outcomes)
    assert "damaged" in outcomes[0][1]
