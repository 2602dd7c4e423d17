"""atheris harness for the imagecodecs decoder plugin (edgeinfer/dicomio/codecs.py): damaged frames
in every transfer syntax it decodes.

The plugin is registered with pydicom for the whole process, so any pydicom call that falls back
through the plugins can hand it a damaged frame, past edgeinfer's own checks. This harness does
exactly that: the first bytes of an input choose the transfer syntax and the image (rows, columns,
bits, samples), the rest is the frame, and pydicom decodes it with the plugin alone. Any exception
is a clean refusal; a crash (a signal: the codecs are C) is the finding. It found that imagecodecs
reads RLE segments wherever the header's offsets point (``codecs.rle_header_problem`` now checks
them first). JPEG 2000 frames also go through ``decode_frame`` asking for the smallest size, which
sends them to Pillow's OpenJPEG at reduced resolution first.

Seeds: each syntax's encoding of a small phantom, written by ``--seeds DIR``. Short run:
``tests/edgeinfer/test_dicomio_codecs.py::test_fuzz_codecs_short_run``. Long run on demand::

    python tests/edgeinfer/fuzz_codecs.py --seeds /tmp/codecs-seeds
    python tests/edgeinfer/fuzz_codecs.py -rss_limit_mb=1024 -timeout=5 -max_total_time=600 \\
        /tmp/codecs-corpus /tmp/codecs-seeds
"""
from __future__ import annotations

import os
import sys
import warnings

import atheris

with atheris.instrument_imports(include=["edgeinfer"]):
    import numpy as np
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.pixels import pixel_array

    from edgeinfer.dicomio import codecs, decode_frame

#: every syntax the plugin decodes, or those whose name contains $FUZZ_CODECS_ONLY (one codec at a time)
SYNTAXES = [ts for ts in sorted(codecs.DECODER_DEPENDENCIES, key=str) if os.environ.get("FUZZ_CODECS_ONLY", "") in ts.name]
#: (rows, columns, bits allocated, bits stored, samples): small, so one input stays fast
SHAPES = ((16, 16, 8, 8, 1), (17, 23, 16, 12, 1), (32, 8, 16, 16, 1), (9, 9, 8, 8, 3), (12, 10, 16, 16, 3),
          (64, 48, 16, 16, 1))  # the last: JPEG 2000 with a few wavelet levels to leave out


def dataset(ts, shape, frame: bytes | None) -> pydicom.Dataset:
    rows, cols, allocated, stored, samples = shape
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, 0
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frame is not None:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True  # encapsulated, as read from a file (decode_frame checks it)
    return ds


def test_one_input(data: bytes) -> None:
    if len(data) < 4:  # a frame of at least 2 bytes (pydicom's smallest fragment)
        return
    ts, shape = SYNTAXES[data[0] % len(SYNTAXES)], SHAPES[data[1] % len(SHAPES)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixel_array(dataset(ts, shape, data[2:]), decoding_plugin=codecs.PLUGIN)
        except Exception:  # noqa: BLE001 - a refusal, whatever its kind, is what damaged data should get
            pass
        if ts in codecs.JPEG_2000:  # and through the intake's decode at reduced resolution (Pillow's OpenJPEG)
            try:
                decode_frame(dataset(ts, shape, data[2:]), at_least=lambda size: (1, 1))
            except Exception:  # noqa: BLE001 - as above
                pass


def write_seeds(folder: str) -> None:
    """One valid input per (syntax, shape) the encoders can write: a phantom's frame behind its two choice bytes."""
    from pathlib import Path

    from pydicom.encaps import get_frame

    from edgeinfer.phantom.dicom import compress

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, ts in enumerate(SYNTAXES):
        for j, shape in enumerate(SHAPES):
            rows, cols, allocated, stored, samples = shape
            pixels = rng.integers(0, 2 ** stored, size=(rows, cols, samples)[: 3 if samples > 1 else 2])
            pixels = pixels.astype(np.uint8 if allocated == 8 else np.uint16)
            ds = dataset(ts, shape, None)
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            try:
                if ts in codecs.JPEG_2000:  # pydicom's OpenJPEG encoder asks for more levels than 16 pixels hold
                    import imagecodecs

                    frame = imagecodecs.jpeg2k_encode(pixels, level=0 if ts == pydicom.uid.JPEG2000Lossless else 20,
                                                      reversible=ts == pydicom.uid.JPEG2000Lossless,
                                                      codecformat="j2k", bitspersample=stored)
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        compress(ds, ts, pixels)
                    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
            except Exception:  # noqa: BLE001 - no encoder for this combination (colour lossless JPEG, ...)
                continue
            (out / f"seed-{i}-{j}").write_bytes(bytes([i, j]) + frame)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(sys.argv[2])
        sys.exit(0)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
