"""The test oracle: edgeinfer's preprocessing as it was before the fast path (implementation "1").

Moved here verbatim from ``edgeinfer/preprocess.py`` (git history: the commit before
``PREPROCESS_IMPL = "2"``); only the data classes are imported from the runtime module. It maps
every pixel at full resolution: modality LUT -> window in float32 -> MONOCHROME1 inversion ->
padding set to 0 -> ``cv2.resize`` to the target -> normalisation. Tests compare the runtime's
:func:`edgeinfer.preprocess.preprocess_pixels` with :func:`preprocess_pixels` here; nothing in
``edgeinfer`` may import this module: there is one runtime implementation.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from edgeinfer.errors import PreprocessError
from edgeinfer.preprocess import Prepared, PreprocessSpec, Window
from edgeinfer.vr import shown_photometric

IMPL = "1"

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
           "nearest": cv2.INTER_NEAREST}
_F32_MAX = float(np.finfo(np.float32).max)

#: Usable contrast after windowing: the spread between the 1st and 99th percentiles of the
#: windowed non-padding pixels, as a fraction of the output range [0, 1], must reach this.
#: 0.02 is about 5 of 256 display grey levels; below it the model sees one flat value (a
#: header width of 1e6 over 12-bit data gives 0.004; 1e9, 1e308, or a window or VOI LUT that
#: lies wholly above or below the pixels give 0). What legitimate images reach: 40 phantoms
#: (MONOCHROME1 and 2, 12-16 bits, with and without rescale and window presets) and a VOI LUT
#: variant of each: 0.69 or more; pydicom's greyscale test images: 0.07 or more (a 16x16 MR
#: thumbnail whose preset is 11 times wider than its data), 3.5 times the threshold; three
#: 16x16 CT thumbnails there whose soft-tissue preset lies below all their pixels give 0 and
#: now fall back to the automatic window. The 1..99 percentiles ignore a few saturated or
#: outlying pixels (markers, collimator edges), not a region of anatomy.
MIN_CONTRAST = 0.02
CONTRAST_PERCENTILES = (1.0, 99.0)
#: contrast is measured on a strided sample of at most about this many pixels a side (a few ms)
_CONTRAST_SIDE = 512


# --- stage 1: modality LUT -------------------------------------------------------------------
def _number(value: Any, what: str) -> float:
    try:
        if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            value = value[0]
        x = float(value)
    except (TypeError, ValueError, IndexError):
        raise PreprocessError(f"{what} is not a number", hint="check the scanner's DICOM export") from None
    if not math.isfinite(x):
        raise PreprocessError(f"{what} is {x}, not a finite number")
    return x


def modality_lut(stored: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality values (float32)."""
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        from pydicom.pixels import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        except Exception as exc:  # malformed LUT: a reason, not a traceback
            raise PreprocessError("the Modality LUT in the header is malformed") from exc
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    slope = 1.0 if slope in (None, "") else _number(slope, "RescaleSlope")
    intercept = 0.0 if intercept in (None, "") else _number(intercept, "RescaleIntercept")
    if abs(slope) < float(np.finfo(np.float32).smallest_subnormal):  # 0 in float32
        raise PreprocessError(f"RescaleSlope is {slope:g}, so every pixel would have the same value",
                              hint="check the scanner's DICOM export")
    out = stored.astype(np.float32, copy=True)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused just below
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
    # integers times a finite slope can reach inf only if |slope| * largest + |intercept| does:
    # only then (or for float pixel data) is the result scanned, so the common case costs nothing
    exact = np.issubdtype(stored.dtype, np.integer)
    peak = max(-int(np.iinfo(stored.dtype).min), int(np.iinfo(stored.dtype).max)) if exact else math.inf
    if abs(slope) * peak + abs(intercept) >= _F32_MAX and not np.isfinite(out).all():
        if exact or np.isfinite(stored).all():
            raise PreprocessError(f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} take pixel values "
                                  f"beyond {_F32_MAX:.3g}, the largest this runtime computes with",
                                  hint="check the scanner's DICOM export")
        raise PreprocessError("pixel values are not finite (the pixel data holds NaN or infinity)",
                              hint="check the scanner's DICOM export")
    return out


def padding_mask(stored: np.ndarray, ds, spec: PreprocessSpec) -> np.ndarray | None:
    """True where the stored value is PixelPaddingValue (or within its range limit)."""
    if spec.pixel_padding != "exclude" or "PixelPaddingValue" not in ds:
        return None
    try:
        pad = int(_number(ds.PixelPaddingValue, "PixelPaddingValue"))
        limit = ds.get("PixelPaddingRangeLimit", None)
        hi = pad if limit in (None, "") else int(_number(limit, "PixelPaddingRangeLimit"))
    except PreprocessError:
        return None
    lo, hi = min(pad, hi), max(pad, hi)
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


# --- stage 2: VOI ----------------------------------------------------------------------------
def _header_window(ds, index: int) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        centers = ds.WindowCenter if ds["WindowCenter"].VM > 1 else [ds.WindowCenter]
        widths = ds.WindowWidth if ds["WindowWidth"].VM > 1 else [ds.WindowWidth]
        i = min(index, len(centers) - 1, len(widths) - 1)
        c, w = float(centers[i]), float(widths[i])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if not (math.isfinite(c) and math.isfinite(w)) or w < 1:
        return None
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        func = "LINEAR"
    return Window("header", c, w, func)


def auto_window(values: np.ndarray, mask: np.ndarray | None, percentiles: tuple[float, float]) -> Window:
    sample = values if mask is None else values[~mask]
    if sample.size == 0:
        raise PreprocessError("the image holds only padding pixels")
    # a strided sample keeps this O(1M) on full-detector images; percentiles are robust to it
    step = max(1, sample.size // 1_000_000)
    lo, hi = np.percentile(sample.reshape(-1)[::step], percentiles)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PreprocessError("pixel values are not finite after the modality LUT")
    if hi <= lo:
        raise PreprocessError("the image is uniform (no contrast to read)")
    return Window("auto", float(lo + hi) / 2.0, float(hi - lo), "LINEAR_EXACT")


def apply_window(values: np.ndarray, w: Window) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window functions, output in [0, 1] float32.

    A centre or width beyond the float32 range becomes inf, and SIGMOID's exp overflows far from
    the centre: the results are then 0, 0.5, 1 (right, but flat) or NaN (inf - inf). Those
    overflows are silenced here; :func:`voi` refuses an output that is flat or not finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = values.astype(np.float32, copy=False)
        c, width = np.float32(w.center), np.float32(w.width)
        if w.function == "SIGMOID":
            out = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / width))
            return out.astype(np.float32)
        if w.function == "LINEAR_EXACT":
            out = (x - c) / width + np.float32(0.5)
        else:  # LINEAR
            if width <= 1:  # a threshold
                return (x > c - 0.5).astype(np.float32)
            out = (x - (c - np.float32(0.5))) / (width - np.float32(1)) + np.float32(0.5)
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _voi_lut(values: np.ndarray, ds, index: int) -> np.ndarray | None:
    """Apply the header's VOI LUT Sequence through pydicom; output in [0, 1]."""
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    from pydicom.pixels import apply_voi_lut

    try:
        item = ds.VOILUTSequence[min(index, len(ds.VOILUTSequence) - 1)]
        bits = int(item.LUTDescriptor[2])
        # the LUT's input range is 16-bit: clipping far outside it changes no output and keeps
        # the cast to int64 from overflowing (modality values can reach 3.4e38)
        stored = np.rint(np.clip(values, -2.0**31, 2.0**31)).astype(np.int64)
        out = apply_voi_lut(stored, ds, index=min(index, len(ds.VOILUTSequence) - 1), prefer_lut=True)
    except Exception:
        return None  # malformed LUT: fall through to the next source
    top = float(2 ** bits - 1) if 8 <= bits <= 16 else float(np.max(out)) or 1.0
    return np.clip(np.asarray(out, dtype=np.float32) / np.float32(top), 0.0, 1.0)


def contrast(shown: np.ndarray, mask: np.ndarray | None) -> float:
    """Spread between the 1st and 99th percentiles of the windowed non-padding pixels, measured on
    a strided sample (about 512 x 512); NaN when the sample holds a non-finite value."""
    sy, sx = (max(1, -(-n // _CONTRAST_SIDE)) for n in shown.shape[:2])
    sample = shown[::sy, ::sx]
    if mask is not None:
        sample = sample[~mask[::sy, ::sx]]
        if sample.size == 0:  # the sample fell on padding only: use every non-padding pixel
            sample = shown[~mask]
    if not np.isfinite(sample).all():
        return math.nan
    lo, hi = np.percentile(sample, CONTRAST_PERCENTILES)
    return float(hi - lo)


def _flat(shown: np.ndarray, mask: np.ndarray | None) -> str | None:
    """None if the windowed image has usable contrast, else why not (no header text in it)."""
    spread = contrast(shown, mask)
    if math.isnan(spread):
        return "gives values that are not finite"
    if spread < MIN_CONTRAST:
        return f"leaves the image flat (spread {spread:.2g} < {MIN_CONTRAST:g})"
    return None


def voi(values: np.ndarray, ds, spec: PreprocessSpec, mask: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Window with the first of ``spec.window_sources`` that is present and gives usable contrast."""
    if mask is not None and mask.all():
        raise PreprocessError("the image holds only padding pixels")
    reasons: list[str] = []   # why each source tried was not used, in order
    rejected: list[str] = []  # those that were applied but gave no usable contrast
    for source in spec.window_sources:
        if source == "voi_lut":
            out = _voi_lut(values, ds, spec.preset_index)
            if out is None:
                reasons.append("no usable VOI LUT in the header")
                continue
            what, window = "VOI LUT", {"source": "voi_lut"}
        elif source in ("header", "fixed", "auto"):
            if source == "header":
                w = _header_window(ds, spec.preset_index)
                if w is None:
                    reasons.append("no usable window preset in the header")
                    continue
            elif source == "fixed":
                w = Window("fixed", float(spec.window_center), float(spec.window_width))
            else:
                try:
                    w = auto_window(values, mask, spec.percentiles)
                except PreprocessError as exc:
                    rejected.append(f"auto window: {exc.reason}")
                    reasons.append(rejected[-1])
                    continue
            out = apply_window(values, w)
            what, window = f"{source} window c={w.center:g} w={w.width:g}", w.as_dict()
        else:
            continue
        why = _flat(out, mask)
        if why is None:
            if rejected:
                window["rejected"] = rejected
            return out, window
        rejected.append(f"{what} {why}")
        reasons.append(rejected[-1])
    if not rejected:
        raise PreprocessError("no window could be chosen: " + "; ".join(reasons),
                              hint="add 'auto' to the bundle's preprocessing.window.sources")
    hint = ("the image itself may be blank: check it on a viewer" if "auto" in spec.window_sources else
            "check the image on a viewer, or add 'auto' to the bundle's preprocessing.window.sources")
    raise PreprocessError("no usable contrast after windowing: " + "; ".join(reasons), hint=hint)


# --- stages 3-5 --------------------------------------------------------------------------------
def resize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    th, tw = spec.target_size
    interp = _INTERP[spec.interpolation]
    h, w = img.shape[:2]
    if not spec.keep_aspect:
        return cv2.resize(img, (tw, th), interpolation=interp)
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((th, tw), dtype=img.dtype)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def preprocess_pixels(stored: np.ndarray, ds, spec: PreprocessSpec, *, frame: int = 0,
                      shape: tuple[int, int] | None = None) -> Prepared:
    """One decoded frame of stored values plus its header -> :class:`Prepared`."""
    # the runtime's signature; the oracle is always handed the frame at its own size
    assert shape is None or tuple(shape) == stored.shape[:2], "the oracle preprocesses full-size frames only"
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
    values = modality_lut(stored, ds)
    shown, window = voi(values, ds, spec, mask)
    inverted = photometric == "MONOCHROME1" and spec.monochrome1 == "invert"
    if inverted:
        shown = 1.0 - shown
    if mask is not None:
        shown[mask] = 0.0
    if not np.isfinite(shown).all():
        raise PreprocessError("pixel values are not finite after windowing")

    display = resize(np.ascontiguousarray(shown, dtype=np.float32), spec)
    x = (display - np.float32(spec.mean)) / np.float32(spec.std)
    tensor = np.broadcast_to(x, (spec.channels, *x.shape)).astype(np.float32, copy=True) \
        if spec.channels > 1 else x[None].astype(np.float32, copy=False)
    return Prepared(tensor=tensor, display=display, window=window, frame=frame, inverted=inverted,
                    source_shape=tuple(stored.shape))
