"""A pydicom decoder plugin backed by imagecodecs, whose decoders run without holding the GIL.

pydicom's plugins for compressed Pixel Data (pylibjpeg-rle, pylibjpeg-libjpeg,
pylibjpeg-openjpeg) hold Python's GIL while they decode, so intake threads decoding compressed
images take turns, and inference waits for them too. imagecodecs wraps the same kinds of
libraries (OpenJPEG, CharLS, libjpeg-turbo, its own PackBits) and releases the GIL in each decode.
``benchmarks/codec_bench.py`` on the build box (AMD EPYC, 2 cores, one 2816×2304 12-bit phantom,
one run; ``benchmarks/results/codecs.md``), decode_frame with pydicom's plugins against this one:

=====================  ==========================  ==========================
transfer syntax        pydicom's plugins           this plugin
                       (1 thread; 2 threads / 1)   (1 thread; 2 threads / 1)
=====================  ==========================  ==========================
RLE Lossless           26 ms; 0.98x                27 ms; 2.00x
JPEG baseline (8 bit)  40 ms; 0.88x                7.7 ms; 1.41x
JPEG extended (12 bit) 130 ms; 0.98x               35 ms; 1.92x
JPEG lossless (SV1)    209 ms; 0.91x               40 ms; 1.88x
JPEG-LS lossless       499 ms; 0.99x               131 ms; 1.95x
JPEG 2000 lossless     792 ms; 0.99x               423 ms; 0.98x (one image on both cores)
=====================  ==========================  ==========================

The plugin is added to pydicom's decoders for these transfer syntaxes, under :data:`PLUGIN`,
when this module is imported; pydicom's own plugins stay as they are and keep their order.
:func:`preferred` names it for the frames the intake asks it to decode first. It hands pydicom
what pydicom's pylibjpeg plugin hands it for the same frame (the same bytes, the same changes
to the decoding options), so pydicom's own steps after decoding (sign correction, colour space,
reshaping) are the same; ``tests/edgeinfer/test_dicomio_codecs.py`` compares the two on every
such file of pydicom's corpus and on phantoms. A frame the plugin refuses is decoded again by
pydicom's plugins (:func:`edgeinfer.dicomio.decode_frame`), so no decoder's gap loses an image.

The plugin is in pydicom's decoders for the whole process, so pydicom may hand it a frame that
edgeinfer's checks never saw. It checks what the C decoders trust before calling them: an RLE
header's segment offsets (:func:`rle_header_problem`) and a JPEG or JPEG 2000 frame's own size
(:func:`encoded_dimensions`) against the image's. ``tests/edgeinfer/fuzz_codecs.py`` feeds it
damaged frames in every syntax; it found both of those gaps, and a crash in imagecodecs' own
lossless JPEG decoder, which is why lossless JPEG goes to libjpeg-turbo instead. Grey lossy JPEG goes
to libjpeg-turbo as well; its values differ from pylibjpeg's libjpeg by a few grey levels (their
inverse DCTs round differently), which the tests bound and ``benchmarks/preprocess_agreement.py``
carries through to the decisions.

JPEG 2000 can also be decoded at reduced resolution, outside pydicom's plugin interface, which has
no such request: :func:`decode_j2k_reduced` (Pillow's OpenJPEG, the one library here that exposes
OpenJPEG's "reduce"), when ``edgeinfer.dicomio.decode_frame`` is told how small the frame may come
back. :func:`j2k_header` and :func:`reduction_levels` decide how many levels may be left out; a
frame Pillow refuses is decoded in full, which gives the verdict.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom import uid
from pydicom.pixels import get_decoder
from pydicom.pixels.common import PhotometricInterpretation as PI

from .._lazy import module_present
from ..errors import CorruptDicomError
from ..sysinfo import usable_cpus
from .quiet import _outside_boundary

if TYPE_CHECKING:
    import numpy as np

#: the name the plugin has in pydicom's decoders
PLUGIN = "edgeinfer-imagecodecs"

RLE = frozenset({uid.RLELossless})
#: grey lossless JPEG (process 14, any predictor), by libjpeg-turbo (imagecodecs' own lossless JPEG
#: decoder, jpegsof3, crashed on a damaged frame in the fuzz run)
_JPEG_LOSSLESS = frozenset({uid.JPEGLossless, uid.JPEGLosslessSV1})
#: grey lossy JPEG (8-bit baseline, 12-bit extended), by libjpeg-turbo too: about 4x faster than
#: pylibjpeg's libjpeg, and its IDCT gives values within a grey level or two of libjpeg's (both are
#: conformant; JPEG does not fix the inverse DCT's rounding). Colour lossy JPEG stays with pydicom's
#: plugins, whose colour-space handling (YBR_FULL_422 and the JFIF/Adobe markers) libjpeg-turbo's
#: own guess would not match
_JPEG_LOSSY = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit})
_JPEG_LS = frozenset(uid.JPEGLSTransferSyntaxes)
#: JPEG 2000 Part 1 (pydicom has no decoder for Part 2; High-Throughput JPEG 2000 stays with pylibjpeg)
JPEG_2000 = frozenset({uid.JPEG2000Lossless, uid.JPEG2000})

#: pydicom's plugin interface: what the plugin needs, per transfer syntax
DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2024.9.22",)
                        for ts in RLE | _JPEG_LOSSLESS | _JPEG_LOSSY | _JPEG_LS | JPEG_2000}


def is_available(ts: str) -> bool:
    """pydicom's plugin interface: whether this plugin can decode ``ts`` here."""
    return ts in DECODER_DEPENDENCIES and module_present("imagecodecs")


def preferred(ts: str) -> str:
    """The plugin to ask first for a frame in transfer syntax ``ts``: :data:`PLUGIN`, or "" (pydicom's order)."""
    return PLUGIN if ts in _REGISTERED else ""


def _as_frame(arr, runner) -> memoryview:
    """A decoded array as pydicom takes a frame: its bytes, and Bits Allocated as the array holds them
    (8 for a precision up to 8 bits, 16 up to 16, as the pylibjpeg plugin sets it)."""
    import numpy as np

    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return memoryview(np.ascontiguousarray(arr)).cast("B")


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


def _siz(frame: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(SIZ marker offset, Xsiz, Ysiz, XOsiz, YOsiz, Csiz) of a JPEG 2000 frame, or None without a
    whole SIZ up to Csiz. Raises CorruptDicomError for a JP2 box structure that cannot be walked."""
    o = _jp2_codestream_offset(frame)
    if frame[o : o + 4] != b"\xff\x4f\xff\x51" or o + 42 > len(frame):
        return None
    o += 2  # at the SIZ marker
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[o + 6 : o + 22])
    components, = struct.unpack(">H", frame[o + 38 : o + 40])
    return o, xsiz, ysiz, xosiz, yosiz, components


def encoded_dimensions(frame: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG/JPEG-LS SOF or a JPEG 2000 SIZ segment, or None (pure).

    The intake checks them against the header before any decoder allocates
    (``decode._check_encoded_frame``), and so does the plugin, which pydicom may call without it.
    """
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
    siz = _siz(frame)
    if siz is None:
        return None
    _, xsiz, ysiz, xosiz, yosiz, components = siz
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components


def rle_header_problem(frame: bytes, segments: int) -> str | None:
    """What is wrong with an RLE frame's 64-byte header for ``segments`` segments, or None (pure).

    PS3.5 Annex G: the number of segments, then 15 offsets; the first segment starts at byte 64
    and each one after the one before, inside the frame. imagecodecs reads segments where the
    offsets say without checking them (an offset past the end crashed it in the fuzz run), so the
    plugin decodes no frame whose header fails this.
    """
    if len(frame) < 64:
        return f"the frame is {len(frame)} bytes, shorter than the 64-byte RLE header"
    header = struct.unpack("<16I", frame[:64])
    if header[0] != segments:
        return f"the RLE header has {header[0]} segments; the image needs {segments}"
    offsets = header[1 : 1 + segments]
    if offsets[0] != 64:
        return f"the first RLE segment starts at byte {offsets[0]}, not 64"
    ends = (*offsets[1:], len(frame))
    for i, (start, end) in enumerate(zip(offsets, ends), 1):
        if not start < end <= len(frame):
            return f"RLE segment {i} runs from byte {start} to {end} of a {len(frame)}-byte frame"
    return None


def _frame_header_problem(frame: bytes, runner) -> str | None:
    """Why a JPEG, JPEG-LS or JPEG 2000 frame's own header does not describe the image, or None."""
    try:
        dims = encoded_dimensions(frame)
    except CorruptDicomError as exc:  # a JP2 box structure that cannot be walked
        return str(exc)
    if dims is None:
        return "the frame has no readable SOF or SIZ header"
    if dims != (runner.rows, runner.columns, runner.samples_per_pixel):
        return (f"the frame's header says {dims[1]} x {dims[0]} x {dims[2]}; the image is "
                f"{runner.columns} x {runner.rows} x {runner.samples_per_pixel}")
    return None


def _decode_frame(src: bytes, runner) -> memoryview | bytes:
    """pydicom's plugin interface: one encoded frame -> its decoded bytes, as the pylibjpeg plugin returns them."""
    import imagecodecs

    ts = runner.transfer_syntax
    if ts not in RLE:  # the decoders allocate what the frame's header says: it must be the image's size
        problem = _frame_header_problem(src, runner)
        if problem:
            raise ValueError(problem)
    if ts in RLE:
        out = _rle(src, runner.rows * runner.columns, runner.samples_per_pixel, runner.bits_allocated)
        runner.set_option("planar_configuration", 1)  # one plane per sample, as the segments are
        return out
    if ts in _JPEG_LOSSLESS or ts in _JPEG_LOSSY:
        if runner.samples_per_pixel != 1:  # libjpeg-turbo would guess a colour space; pydicom's plugins do not
            raise ValueError(f"{PLUGIN} decodes grey JPEG only")
        with _outside_boundary():
            arr = imagecodecs.jpeg8_decode(src)  # libjpeg-turbo: lossless (SOF3) at 2 to 16 bits, lossy at 8 and 12
        return _as_frame(arr, runner)
    if ts in _JPEG_LS:
        with _outside_boundary():
            arr = imagecodecs.jpegls_decode(src)
        runner.set_option("planar_configuration", 0)
        return _as_frame(arr, runner)
    if ts in JPEG_2000:
        with _outside_boundary():  # OpenJPEG splits one image over the usable cores, as OpenCV's resize does
            arr = imagecodecs.jpeg2k_decode(src, numthreads=usable_cpus())
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)  # the decoder undid the transform
        return _as_frame(arr, runner)
    raise ValueError(f"{PLUGIN} does not decode {ts.name}")


def _rle(src: bytes, pixels: int, samples: int, bits_allocated: int) -> bytes:
    """An RLE frame's decoded bytes: one plane per sample, each little-endian. Checks the header
    before imagecodecs reads it, and the length after. Raises ValueError (or imagecodecs' error)."""
    import imagecodecs

    if bits_allocated % 8:
        raise ValueError(f"RLE with {bits_allocated} bits allocated is not byte-aligned")
    itemsize = bits_allocated // 8
    problem = rle_header_problem(src, samples * itemsize)
    if problem:
        raise ValueError(problem)
    with _outside_boundary():  # the decode releases the GIL; other intake threads may decode too
        out = imagecodecs.dicomrle_decode(src, f"<u{itemsize}")
    expected = pixels * samples * itemsize
    if len(out) != expected:  # imagecodecs returns what the segments hold, even too little
        raise ValueError(f"the RLE segments decode to {len(out)} bytes; the frame needs {expected}")
    return out


def decode_rle_grey(frame: bytes, rows: int, cols: int, bits_allocated: int, signed: bool) -> "np.ndarray":
    """A grey RLE frame's stored values, viewed in imagecodecs' output (read-only, no copy): what
    pydicom's ``pixel_array`` gives with this plugin, without pydicom copying the frame out of the
    Pixel Data and the result into its own array. Raises where the plugin refuses the frame."""
    import numpy as np

    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    return np.frombuffer(_rle(frame, rows * cols, 1, bits_allocated), dtype).reshape(rows, cols)


def _register() -> frozenset:
    """Add the plugin to pydicom's decoder of each transfer syntax it decodes here; the ones it was added to."""
    if not module_present("imagecodecs"):
        return frozenset()
    done = set()
    for ts in DECODER_DEPENDENCIES:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:  # this pydicom has no decoder for it
            continue
        if PLUGIN not in decoder.available_plugins:
            try:
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
            except ValueError:  # already there, unavailable
                continue
        if PLUGIN in decoder.available_plugins:
            done.add(ts)
    return frozenset(done)


_REGISTERED = _register()


# --- JPEG 2000 at reduced resolution -------------------------------------------------------------
# A JPEG 2000 codestream is a wavelet pyramid: its lower resolutions are decoded without touching the
# code-blocks of the higher ones (measured: a quarter of the time at half the size, a fifteenth at a
# quarter). imagecodecs and pylibjpeg do not expose OpenJPEG's "reduce"; Pillow does (Jpeg2KImageFile.reduce),
# with the OpenJPEG it ships. Pillow holds the GIL while it decodes, so OpenJPEG's own threads share the
# image instead: OpenJPEG reads OPJ_NUM_THREADS when a decoder is created, and Pillow sets no count.
os.environ.setdefault("OPJ_NUM_THREADS", str(usable_cpus()))


@dataclass(frozen=True)
class J2KHeader:
    """What a JPEG 2000 main header says about the image (:func:`j2k_header`)."""

    height: int
    width: int
    components: int
    precision: int        # bits of the first component
    signed: bool          # of the first component
    subsampled: bool      # the first component is sampled at less than every grid point
    offset: bool          # the image starts away from the reference grid's origin
    levels: int | None    # wavelet decomposition levels (COD, and any COC, of the main header)


def j2k_header(frame: bytes) -> J2KHeader | None:
    """The SIZ and COD (and COC) segments of a JPEG 2000 frame's main header, or None without a SIZ (pure).

    Raises CorruptDicomError for a JP2 box structure that cannot be walked."""
    siz = _siz(frame)
    if siz is None or siz[0] + 43 > len(frame):  # and the first component's Ssiz, XRsiz, YRsiz
        return None
    o, xsiz, ysiz, xosiz, yosiz, components = siz
    lsiz, = struct.unpack(">H", frame[o + 2 : o + 4])
    ssiz, xrsiz, yrsiz = frame[o + 40 : o + 43]
    levels = None
    pos, n = o + 2 + lsiz, len(frame)
    while pos + 4 <= n:  # the main header's marker segments, up to the first tile
        marker, length = struct.unpack(">HH", frame[pos : pos + 4])
        if marker in (0xFF90, 0xFFD9) or marker >> 8 != 0xFF or length < 2:
            break
        if marker == 0xFF52 and pos + 10 <= n:  # COD: NL follows Scod and SGcod
            levels = frame[pos + 9] if levels is None else min(levels, frame[pos + 9])
        elif marker == 0xFF53:  # COC: component index is 1 byte below 257 components, else 2
            at = pos + (6 if components < 257 else 7)
            if at < n:
                levels = frame[at] if levels is None else min(levels, frame[at])
        pos += 2 + length
    return J2KHeader(max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components, (ssiz & 0x7F) + 1,
                     bool(ssiz & 0x80), (xrsiz, yrsiz) != (1, 1), bool(xosiz or yosiz), levels)


def reduced_shape(height: int, width: int, levels: int) -> tuple[int, int]:
    """The image's size with ``levels`` resolution levels left out, as OpenJPEG decodes it (pure)."""
    return -(-height >> levels), -(-width >> levels)


def reduction_levels(header: J2KHeader | None, rows: int, cols: int, bits_stored: int, signed: bool,
                     at_least: tuple[int, int]) -> int:
    """How many resolution levels a JPEG 2000 decode may leave out (pure): the most at which the image
    stays at least ``at_least`` (height, width) and both sides divide by 2**levels (each reduced pixel
    then stands for a whole block, and Pillow's size for the reduced image is OpenJPEG's), for a grey
    image whose codestream describes exactly what the data set does; 0 (decode in full) otherwise."""
    if (header is None or header.levels is None or header.components != 1 or header.subsampled or header.offset
            or (header.height, header.width) != (rows, cols) or header.precision != bits_stored
            or header.signed != signed or header.precision > 16):
        return 0
    levels = 0
    while levels < header.levels:
        p = 1 << (levels + 1)
        if rows % p or cols % p or rows // p < at_least[0] or cols // p < at_least[1]:
            break
        levels += 1
    return levels


def reduced_decoder_available() -> bool:
    return module_present("PIL")


def decode_j2k_reduced(frame: bytes, levels: int, header: J2KHeader, dtype) -> "np.ndarray":
    """A grey JPEG 2000 frame decoded with ``levels`` resolution levels left out, as stored values of
    ``dtype``, each at the centre of the block of 2**levels x 2**levels pixels it stands for.

    Pillow hands back unsigned values scaled to 8 or 16 bits (signed ones offset by half their range);
    that is undone exactly. A wavelet low-pass sample at level r is centred on pixel 2**r * n, not on
    the middle of its block as a block mean is, so the image is moved by (2**r - 1) / 2 pixels with
    linear interpolation (OpenCV's, rounded to integers): at a sharp edge that cuts the difference
    from block means about four times (``tests/edgeinfer/test_dicomio_codecs.py``). Raises OSError or
    ValueError when Pillow cannot decode the frame.
    """
    import cv2
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(frame), formats=("JPEG2000",)) as im:
        im.reduce = levels
        im.load()
        arr = np.asarray(im)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"Pillow decoded the frame to {arr.dtype}; 8- or 16-bit unsigned values were expected")
    if arr.shape != reduced_shape(header.height, header.width, levels):
        raise ValueError(f"the reduced image is {arr.shape}, not {reduced_shape(header.height, header.width, levels)}")
    shift = 8 * arr.dtype.itemsize - header.precision
    values = arr >> shift if shift else arr
    # sample at n + (1 - 2**-r) / 2 of the reduced grid: a multiple of 1/32, which OpenCV's integer
    # interpolation represents exactly; edge pixels are repeated past the image
    at = (1 - 2.0 ** -levels) / 2
    moved = cv2.warpAffine(values, np.float32([[1, 0, at], [0, 1, at]]), (values.shape[1], values.shape[0]),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    if header.signed:
        return (moved.astype(np.int32) - (1 << (header.precision - 1))).astype(dtype)
    return moved.astype(dtype, copy=False)
