"""A pydicom decoder plugin backed by imagecodecs, whose decoders run without holding the GIL.

pydicom's plugins for compressed Pixel Data (pylibjpeg-rle, pylibjpeg-libjpeg,
pylibjpeg-openjpeg) hold Python's GIL while they decode, so intake threads decoding compressed
images take turns, and inference waits for them too. imagecodecs wraps the same kinds of
libraries (OpenJPEG, CharLS, jpegsof3, its own PackBits) and releases the GIL in each decode. Measured on
the build box (AMD EPYC, 2 cores, one run; a 2048×2048 12-bit image, decode time and the speed-up
of two threads over one):

======================  ===================  ==================
transfer syntax         pylibjpeg            imagecodecs
======================  ===================  ==================
RLE Lossless (3000²)    23 ms, 0.87x         19 ms, 1.75x
JPEG lossless (SV1)     121 ms, 0.99x        36 ms, 1.95x
JPEG-LS lossless        281 ms, 1.00x        59 ms, 1.95x
JPEG 2000 lossless      423 ms, 0.98x        424 ms, 1.98x
======================  ===================  ==================

The plugin is added to pydicom's decoders for these transfer syntaxes, under :data:`PLUGIN`,
when this module is imported; pydicom's own plugins stay as they are and keep their order.
:func:`preferred` names it for the frames the intake asks it to decode first. It hands pydicom
what pydicom's pylibjpeg plugin hands it for the same frame (the same bytes, the same changes
to the decoding options), so pydicom's own steps after decoding (sign correction, colour space,
reshaping) are the same; ``tests/edgeinfer/test_dicomio_codecs.py`` compares the two on every
such file of pydicom's corpus and on phantoms. A frame the plugin refuses is decoded again by
pydicom's plugins (:func:`edgeinfer.dicomio.decode_frame`), so no decoder's gap loses an image.
"""
from __future__ import annotations

from pydicom import uid
from pydicom.pixels import get_decoder
from pydicom.pixels.common import PhotometricInterpretation as PI

from .._lazy import module_present
from .quiet import _outside_boundary

#: the name the plugin has in pydicom's decoders
PLUGIN = "edgeinfer-imagecodecs"

_RLE = frozenset({uid.RLELossless})
#: lossless JPEG (process 14, any predictor); lossy JPEG stays with pydicom's plugins, whose IDCT
#: and colour handling differ from libjpeg-turbo's by a grey level or more
_JPEG_LOSSLESS = frozenset({uid.JPEGLossless, uid.JPEGLosslessSV1})
_JPEG_LS = frozenset(uid.JPEGLSTransferSyntaxes)
#: JPEG 2000 Part 1 (pydicom has no decoder for Part 2; High-Throughput JPEG 2000 stays with pylibjpeg)
_JPEG_2000 = frozenset({uid.JPEG2000Lossless, uid.JPEG2000})

#: pydicom's plugin interface: what the plugin needs, per transfer syntax
DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2024.9.22",) for ts in _RLE | _JPEG_LOSSLESS | _JPEG_LS | _JPEG_2000}


def is_available(ts: str) -> bool:
    """pydicom's plugin interface: whether this plugin can decode ``ts`` here."""
    return ts in DECODER_DEPENDENCIES and module_present("imagecodecs")


def preferred(ts: str) -> str:
    """The plugin to ask first for a frame in transfer syntax ``ts``: :data:`PLUGIN`, or "" (pydicom's order)."""
    return PLUGIN if ts in _REGISTERED else ""


def _container_bits(itemsize: int) -> int:
    return 8 * itemsize


def _decode_frame(src: bytes, runner) -> memoryview | bytes:
    """pydicom's plugin interface: one encoded frame -> its decoded bytes, as the pylibjpeg plugin returns them."""
    import imagecodecs
    import numpy as np

    ts = runner.transfer_syntax
    if ts in _RLE:
        if runner.bits_allocated % 8:
            raise ValueError(f"RLE with {runner.bits_allocated} bits allocated is not byte-aligned")
        dtype = np.dtype(f"<u{runner.bits_allocated // 8}")
        with _outside_boundary():  # the decode releases the GIL; other intake threads may decode too
            out = imagecodecs.dicomrle_decode(src, dtype)
        expected = runner.rows * runner.columns * runner.samples_per_pixel * dtype.itemsize
        if len(out) != expected:  # imagecodecs returns what the segments hold, even too little
            raise ValueError(f"the RLE segments decode to {len(out)} bytes; the frame needs {expected}")
        runner.set_option("planar_configuration", 1)  # one plane per sample, as the segments are
        return out
    if ts in _JPEG_LOSSLESS:
        with _outside_boundary():
            arr = imagecodecs.ljpeg_decode(src)
        if runner.samples_per_pixel > 1:
            runner.set_option("planar_configuration", 0)  # a JPEG decoder gives pixels interleaved
        runner.set_option("bits_allocated", _container_bits(arr.dtype.itemsize))
        return memoryview(np.ascontiguousarray(arr)).cast("B")
    if ts in _JPEG_LS:
        with _outside_boundary():
            arr = imagecodecs.jpegls_decode(src)
        runner.set_option("planar_configuration", 0)
        runner.set_option("bits_allocated", _container_bits(arr.dtype.itemsize))
        return memoryview(np.ascontiguousarray(arr)).cast("B")
    if ts in _JPEG_2000:
        with _outside_boundary():
            arr = imagecodecs.jpeg2k_decode(src)
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)  # the decoder undid the transform
        runner.set_option("bits_allocated", _container_bits(arr.dtype.itemsize))
        return memoryview(np.ascontiguousarray(arr)).cast("B")
    raise ValueError(f"{PLUGIN} does not decode {ts.name}")


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
