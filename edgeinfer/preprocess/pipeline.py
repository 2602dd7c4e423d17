"""The whole path: :func:`preprocess_pixels` (one decoded frame and its header -> the model's tensor,
stages 1 to 5) and :func:`decode_size` (how small the intake may decode a JPEG 2000 frame for it)."""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import PreprocessError
from ..vr import shown_photometric
from .frame import _Frame
from .geometry import _INTERP, DECODE_MARGIN, _fitted, _letterbox, _reduced_size
from .modality import _has_modality_table, padding_mask
from .spec import Prepared, PreprocessSpec
from .window import _header_window, voi


def _first_window_source(ds, spec: PreprocessSpec) -> str | None:
    """The first of the spec's window sources the header can supply (without looking at the pixels,
    which may still reject it for flat contrast), "fixed" or "auto"; None if none can."""
    for source in spec.window_sources:
        if source == "voi_lut" and "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            return source
        if source == "header" and _header_window(ds, spec.preset_index) is not None:
            return source
        if source in ("fixed", "auto"):
            return source
    return None


def decode_size(shape: tuple[int, int], ds, spec: PreprocessSpec) -> tuple[int, int] | None:
    """The smallest (height, width) a frame of ``shape`` may be decoded at for this spec, or None: at
    its own size (see *Reduced-resolution decoding* in the package docstring). What
    :func:`preprocess_pixels` averages it to first, when the stored values are averaged at all
    (``area``) and only averaged: not with a Modality LUT Sequence, which must see single pixels, nor
    with pixel padding to exclude, which is found by exact value, nor when the window will be the
    automatic one, whose percentiles come from single pixels (a smaller image has narrower tails)."""
    if _has_modality_table(ds) or (spec.pixel_padding == "exclude" and "PixelPaddingValue" in ds):
        return None
    if _first_window_source(ds, spec) == "auto":
        return None
    rh, rw = _reduced_size(shape, _fitted(shape, spec), spec)
    size = min(shape[0], DECODE_MARGIN * rh), min(shape[1], DECODE_MARGIN * rw)
    return None if size == tuple(shape[:2]) else size


def preprocess_pixels(stored: np.ndarray, ds, spec: PreprocessSpec, *, frame: int = 0,
                      shape: tuple[int, int] | None = None) -> Prepared:
    """One decoded frame of stored values plus its header -> :class:`Prepared`. ``shape``: the image's
    (height, width) when ``stored`` was decoded smaller (:func:`decode_size`)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper()
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        raise PreprocessError(f"colour image ({shown_photometric(photometric)}); "
                              "this model reads greyscale radiographs")
    if stored.ndim != 2:
        raise PreprocessError(f"expected a 2-D greyscale frame, found shape {tuple(stored.shape)}")
    if min(stored.shape) < 2:
        raise PreprocessError(f"image is only {stored.shape[0]}x{stored.shape[1]} pixels")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PreprocessError(f"photometric interpretation {shown_photometric(photometric)} is not greyscale; "
                              "this model reads MONOCHROME1 and MONOCHROME2 images")

    mask = padding_mask(stored, ds, spec)
    pixels = _Frame(stored, ds, mask)
    shade, window, span = voi(pixels, ds, spec)
    inverted = photometric == "MONOCHROME1" and spec.monochrome1 == "invert"
    # version 1 checked every windowed non-padding pixel: a window gives a value that is not
    # finite only at an extreme modality value (it is monotonic); a VOI LUT's output always is
    if window["source"] != "voi_lut" and not pixels.finite_through(shade):
        raise PreprocessError("pixel values are not finite after windowing")

    shape = tuple(shape or stored.shape[:2])
    fitted = _fitted(shape, spec)
    values, kept = pixels.reduced(_reduced_size(stored.shape, fitted, spec), span)
    shown = shade(values)
    if inverted:
        shown = 1.0 - shown
    if kept is not None:  # padding is background (0): weigh each pixel by its non-padding share
        shown = np.where(kept > 0, shown * kept, np.float32(0.0))
    if not np.isfinite(shown).all():
        raise PreprocessError("pixel values are not finite after windowing")

    small = cv2.resize(np.ascontiguousarray(shown, dtype=np.float32), (fitted[1], fitted[0]),
                       interpolation=_INTERP[spec.interpolation])
    display = _letterbox(small, spec)
    x = (display - np.float32(spec.mean)) / np.float32(spec.std)
    tensor = np.broadcast_to(x, (spec.channels, *x.shape)).astype(np.float32, copy=True) \
        if spec.channels > 1 else x[None].astype(np.float32, copy=False)
    return Prepared(tensor=tensor, display=display, window=window, frame=frame, inverted=inverted,
                    source_shape=shape)
