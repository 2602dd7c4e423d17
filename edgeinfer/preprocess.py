"""DICOM pixels -> model tensor, driven by the bundle's preprocessing spec.

This is the only implementation: training (export/), calibration, validation, preview
and the runtime all reach :func:`preprocess_pixels` through :mod:`edgeinfer.intake`, which
reads and decodes; this module never touches files. The stages:

1. modality LUT: RescaleSlope/RescaleIntercept (or a Modality LUT Sequence, via pydicom);
2. VOI: the header's VOI LUT, the header's window preset, the bundle's fixed window, or an
   automatic percentile window, in the order ``window.sources`` gives; output in [0, 1]. A
   source whose output has no usable contrast (:data:`MIN_CONTRAST`) is passed over for the
   next one, and the window record lists it under ``rejected``;
3. MONOCHROME1 inversion, pixel padding set to background;
4. resize with OpenCV (optionally keeping the aspect ratio, letterboxed);
5. normalisation ``(x - mean) / std`` and channel replication.

Stage 2 agrees with pydicom's ``apply_modality_lut``/``apply_voi_lut`` (tests check it): our
output equals pydicom's rescaled from its output range to [0, 1].

Implementation version (:data:`PREPROCESS_IMPL`)
------------------------------------------------
``"1"`` mapped every pixel at full resolution (modality LUT, window in float32, inversion,
padding) and then resized to the target. It is kept, verbatim, as the test oracle
(``tests/oracle_preprocess.py``), not as a runtime path. ``"2"`` did the float work at the
resolution the model needs (below). ``"3"`` (this module) is ``"2"`` plus one step: a large
image is first halved (see *Halving first*). Numbers change only for images that are halved.

* **The window is chosen as before.** Every decision (which source, the ``rejected`` list,
  the automatic window's percentiles, each refusal and its message) is made on the pixels
  version 1 sampled (the contrast sample of about 512 x 512, the automatic window's 1-in-N
  sample of about a million non-padding pixels), mapped pointwise: the same numbers as
  mapping every pixel and then sampling. The checks version 1 made on every pixel (a rescale
  that leaves the float32 range, a window whose output is not finite) are made on the
  image's extreme values, which decide them because both maps are monotonic.
* **Resolution is reduced before the float work.** With ``interpolation: area`` and an image
  at least as large as the (letterboxed) target on both axes, the stored values are
  converted to float32, clipped to the range of input values outside which the chosen
  window is constant, box-averaged with ``cv2.resize(INTER_AREA)`` to :data:`REDUCE_FACTOR`
  times the target size (an axis already smaller keeps its size), then rescaled, windowed and
  inverted, and finally averaged ``REDUCE_FACTOR`` x ``REDUCE_FACTOR`` down to the target.
  Pixel padding is averaged alongside: a box becomes the window of the mean of its
  non-padding pixels times its non-padding fraction (version 1: padding is 0 after windowing,
  then averaged). A Modality LUT Sequence (a table of any shape) is applied to every pixel
  first. Other interpolations (``linear``, ``cubic``, ``nearest``) and images smaller than the
  target on an axis are not reduced: for them version 2 computes what version 1 did, value
  for value.

**How far from version 1.** Area averages of area averages over boxes that tile each other are
the single area average, and a linear window is linear once its input is clipped to its
ramp, so for a rescale (or a Modality LUT) and a ``LINEAR``/``LINEAR_EXACT`` window
(header, fixed or automatic) version 2 equals version 1 up to float32 rounding: measured
|display difference| <= 4e-7 on phantoms and pydicom's test images (test tolerance 1e-5).
Where the map is curved the box mean is mapped instead of each pixel, so the difference is
the map's curvature over one intermediate box (half a target pixel on a side), at edges
inside the map's range: a VOI LUT (also applied to the box mean rounded to
an integer; clipped to the LUT's input range and its constant ends first) measured <= 0.05
(mean per image <= 1.3e-3) with a gamma-0.7 LUT over a phantom's whole range; SIGMOID
<= 0.025. A threshold window (width <= 1, a binary image) or a SIGMOID far narrower than the
image's local contrast is applied to box means too: a box that straddles the threshold gets 0
or 1 instead of the share of its pixels above it (on pure noise: max 0.57, mean 0.08).

**Halving first (version 3).** OpenCV's general area average costs about 9 ms of one core on a
9-megapixel image; its 2 x 2 path is vectorised and costs a quarter of that. So, before the area
average to twice the target, an image whose sides are both even is halved (2 x 2 block means, in
float32, after the clipping above) while at least :data:`BLOCK_MARGIN` (2) blocks remain for each
intermediate pixel on each axis: a 3000 x 3000 image for a 224 x 224 model is halved once
(1500 x 1500, then 448 x 448), a 2500 x 2048 one for 256 x 256 once. An average of block means
equals the single average only where the boxes' edges fall between blocks; where one falls inside
a block, that block's part counts at the block's mean. For a linear window that is the whole
difference from version 1: measured max |display difference| 0.0046 on phantoms (mean per image
<= 3e-4), 0.029 on pydicom's test images (a 512 x 512 CT reduced to 48 x 48, at a bone edge);
test bounds 0.05 and 1e-3. Images with an odd side, or too small to keep two blocks per pixel,
are not halved, and give version 2's numbers.

**Reduced-resolution decoding (version 4).** A JPEG 2000 codestream is a wavelet pyramid, and its
lower resolutions decode without the code-blocks of the higher ones (measured: a quarter of the
time at half the size, a fifteenth at a quarter). Version 4 is version 3 plus this: the intake asks the decoder for a grey JPEG
2000 frame at no less than :data:`DECODE_MARGIN` times the size the stored values are averaged to
(:func:`decode_size`), and the decoder leaves out as many whole levels as that allows (each halves
both sides; only while both sides divide evenly). The reduced image is a wavelet low-pass, not a
block mean, so the decoder moves it onto the blocks' centres (``edgeinfer.dicomio.codecs``), and
the margin leaves an area average of at least 2 x 2 reduced pixels after it. Not reduced: images
whose window will be the automatic one (its percentiles come from single pixels; a smoothed image
has narrower tails), images with a Modality LUT Sequence or with pixel padding to exclude (found by
exact value), and every other transfer syntax. ``decode_size`` decides; a 2500 x 2048 image for a
256 x 256 model decodes at 1250 x 1024. Measured against version 1 on JPEG 2000 phantoms (lossless
and 10:1; header window, VOI LUT, SIGMOID, signed; the bundle's spec and a letterboxed 3-channel
one): max |display difference| 0.0075, mean per image <= 6e-4, inside version 3's halving bounds,
which the tests hold it to.

``tests/edgeinfer/test_preprocess_fast.py`` asserts these bounds and that the shipped model's
decisions are unchanged.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from .errors import PreprocessError
from .vr import shown_photometric

#: Which preprocessing implementation this is (see the module docstring): "1" mapped every pixel
#: at full resolution, "2" reduces resolution before windowing, "3" halves large images first, "4"
#: decodes JPEG 2000 at reduced resolution. A bundle records the version it was validated with, so a
#: change of the numbers a model sees is visible.
PREPROCESS_IMPL = "4"
#: The fast path box-averages the stored image to this many times the target size (per axis)
#: before windowing; the last step is then an exact REDUCE_FACTOR x REDUCE_FACTOR average.
REDUCE_FACTOR = 2
#: Before that, the image is halved (2 x 2 block means, OpenCV's vectorised path, a quarter of the cost
#: of the general one at full resolution) while at least this many blocks remain for every pixel of
#: the intermediate image on each axis (:func:`_halvings`).
BLOCK_MARGIN = 2
#: A JPEG 2000 frame may be decoded at reduced resolution, but at no less than this many times the size
#: the stored values are averaged to (:func:`decode_size`): a wavelet low-pass is not a block mean, and
#: the area average after it must be wide enough to hide the difference.
DECODE_MARGIN = 2

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


@dataclass(frozen=True)
class PreprocessSpec:
    target_size: tuple[int, int]  # (height, width)
    window_sources: tuple[str, ...] = ("voi_lut", "header", "auto")
    window_center: float | None = None
    window_width: float | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    preset_index: int = 0
    monochrome1: str = "invert"
    pixel_padding: str = "exclude"
    multiframe: str = "first"
    keep_aspect: bool = False
    interpolation: str = "area"
    mean: float = 0.0
    std: float = 1.0
    channels: int = 1

    @classmethod
    def from_manifest(cls, pp: dict) -> "PreprocessSpec":
        w = pp.get("window", {})
        norm = pp.get("normalize", {"mean": 0.0, "std": 1.0})
        return cls(
            target_size=(int(pp["target_size"][0]), int(pp["target_size"][1])),
            window_sources=tuple(w.get("sources", cls.window_sources)),
            window_center=w.get("center"), window_width=w.get("width"),
            percentiles=tuple(w.get("percentiles", cls.percentiles)),
            preset_index=int(w.get("preset_index", 0)),
            monochrome1=pp.get("monochrome1", cls.monochrome1),
            pixel_padding=pp.get("pixel_padding", cls.pixel_padding),
            multiframe=pp.get("multiframe", cls.multiframe),
            keep_aspect=bool(pp.get("keep_aspect", False)),
            interpolation=pp.get("interpolation", cls.interpolation),
            mean=float(norm["mean"]), std=float(norm["std"]),
            channels=int(pp.get("channels", 1)),
        )

    def to_manifest(self) -> dict:
        window: dict[str, Any] = {"sources": list(self.window_sources),
                                  "percentiles": list(self.percentiles), "preset_index": self.preset_index}
        if self.window_center is not None:
            window.update(center=self.window_center, width=self.window_width)
        return {"window": window, "monochrome1": self.monochrome1, "pixel_padding": self.pixel_padding,
                "multiframe": self.multiframe, "target_size": list(self.target_size),
                "keep_aspect": self.keep_aspect, "interpolation": self.interpolation,
                "normalize": {"mean": self.mean, "std": self.std}, "channels": self.channels}

    def digest(self) -> str:
        """Stable hash of the spec: calibration caches and records are keyed on it."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Window:
    source: str          # voi_lut | header | fixed | auto
    center: float
    width: float
    function: str = "LINEAR"

    def as_dict(self) -> dict:
        return {"source": self.source, "center": round(self.center, 3), "width": round(self.width, 3),
                "function": self.function}


@dataclass
class Prepared:
    tensor: np.ndarray            # (channels, H, W) float32, what the model sees
    display: np.ndarray           # (H, W) float32 in [0, 1], before normalisation (for preview)
    window: dict
    frame: int
    inverted: bool
    source_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)


# --- stage 0: which frame --------------------------------------------------------------------
def select_frame(n_frames: int, spec: PreprocessSpec) -> int:
    if n_frames <= 1:
        return 0
    if spec.multiframe == "reject":
        raise PreprocessError(f"multi-frame image ({n_frames} frames); this model reads single images")
    return 0 if spec.multiframe == "first" else n_frames // 2


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


def _has_modality_table(ds) -> bool:
    return "ModalityLUTSequence" in ds and bool(len(ds.ModalityLUTSequence))


def _rescale(ds) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent; refuses values that are not numbers
    and a slope that is 0 in float32."""
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    slope = 1.0 if slope in (None, "") else _number(slope, "RescaleSlope")
    intercept = 0.0 if intercept in (None, "") else _number(intercept, "RescaleIntercept")
    if abs(slope) < float(np.finfo(np.float32).smallest_subnormal):  # 0 in float32
        raise PreprocessError(f"RescaleSlope is {slope:g}, so every pixel would have the same value",
                              hint="check the scanner's DICOM export")
    return slope, intercept


def modality_lut(stored: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality values (float32)."""
    if _has_modality_table(ds):
        from pydicom.pixels import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        except Exception as exc:  # malformed LUT: a reason, not a traceback
            raise PreprocessError("the Modality LUT in the header is malformed") from exc
    slope, intercept = _rescale(ds)
    out = stored.astype(np.float32, copy=True)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused just below
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
    # integers times a finite slope can reach inf only if |slope| * largest + |intercept| does:
    # only then (or for float pixel data) is the result scanned, so the common case costs nothing
    if not _rescale_stays_finite(stored.dtype, slope, intercept) and not np.isfinite(out).all():
        if np.issubdtype(stored.dtype, np.integer) or np.isfinite(stored).all():
            raise PreprocessError(f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} take pixel values "
                                  f"beyond {_F32_MAX:.3g}, the largest this runtime computes with",
                                  hint="check the scanner's DICOM export")
        raise PreprocessError("pixel values are not finite (the pixel data holds NaN or infinity)",
                              hint="check the scanner's DICOM export")
    return out


def _rescale_stays_finite(dtype: np.dtype, slope: float, intercept: float) -> bool:
    """Does every value of the integer type ``dtype`` stay inside float32 under the rescale? (False
    for float data: its values are not bounded by the type.)"""
    if not np.issubdtype(dtype, np.integer):
        return False
    info = np.iinfo(dtype)
    return abs(slope) * max(-int(info.min), int(info.max)) + abs(intercept) < _F32_MAX


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


def auto_window(frame: "_Frame", percentiles: tuple[float, float]) -> Window:
    """The automatic window from a sample of the non-padding modality values
    (:meth:`_Frame.auto_base`: every N-th, about a million, as version 1 took them); the
    percentiles come from a histogram of the stored integers when they can (:func:`_percentiles`)."""
    base = frame.auto_base()
    if base.size == 0:
        raise PreprocessError("the image holds only padding pixels")
    got = frame.percentiles(base, tuple(percentiles))
    lo, hi = got if got is not None else np.percentile(frame.values(base), percentiles)
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
    """Apply the header's VOI LUT Sequence through pydicom; output in [0, 1].

    Entries of 8 to 16 bits are scaled by 2**bits - 1 (pydicom 3 applies 8 and 10..16; a LUT it
    refuses is passed over). Version 1 scaled other depths, which pydicom never applied, by the
    largest output over the image; version 2 passes them over too.
    """
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    from pydicom.pixels import apply_voi_lut

    try:
        item = ds.VOILUTSequence[min(index, len(ds.VOILUTSequence) - 1)]
        bits = int(item.LUTDescriptor[2])
        if not 8 <= bits <= 16:
            return None
        # the LUT's input range is 16-bit: clipping far outside it changes no output and keeps
        # the cast to int64 from overflowing (modality values can reach 3.4e38)
        stored = np.rint(np.clip(values, -2.0**31, 2.0**31)).astype(np.int64)
        out = apply_voi_lut(stored, ds, index=min(index, len(ds.VOILUTSequence) - 1), prefer_lut=True)
    except Exception:
        return None  # malformed LUT: fall through to the next source
    return np.clip(np.asarray(out, dtype=np.float32) / np.float32(2 ** bits - 1), 0.0, 1.0)


def _lut_or_refuse(values: np.ndarray, ds, index: int) -> np.ndarray:
    """:func:`_voi_lut` once it has been chosen (it applied to the sample, so it applies)."""
    out = _voi_lut(values, ds, index)
    if out is None:
        raise PreprocessError("the VOI LUT in the header could not be applied")
    return out


def _window_span(w: Window) -> tuple[float, float] | None:
    """Modality values below and above which :func:`apply_window` gives 0 and 1. None for
    SIGMOID (never constant) and a threshold (width <= 1: a step, not a ramp)."""
    c, width = w.center, w.width
    with np.errstate(over="ignore"):
        ramp = np.float32(width) > 1  # as apply_window decides it
    if w.function == "LINEAR_EXACT":
        lo, hi = c - width / 2, c + width / 2
    elif w.function == "LINEAR" and ramp:
        lo, hi = c - 0.5 - (width - 1) / 2, c - 0.5 + (width - 1) / 2
    else:
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _voi_lut_span(ds, index: int) -> tuple[float, float] | None:
    """Modality values outside which the VOI LUT's output (scaled to [0, 1]) is constant: inputs
    below the LUT's first entry get the first entry, above its last the last (PS3.3
    C.11.2.1.1, as pydicom applies it), and runs of equal outputs at either end of the table
    widen that. Found by applying the LUT to each of its entries' inputs (at most 65,536)."""
    try:
        desc = ds.VOILUTSequence[min(index, len(ds.VOILUTSequence) - 1)].LUTDescriptor
        first, n = int(desc[1]), int(desc[0]) or 2**16
    except Exception:
        return None
    table = _voi_lut(np.arange(first, first + n), ds, index)
    if table is None or (table == table[0]).all():
        return None
    lo = int(np.flatnonzero(table != table[0])[0]) - 1    # entries 0..lo give the first output
    hi = int(np.flatnonzero(table != table[-1])[-1]) + 1  # entries hi.. give the last
    return float(first + lo), float(first + hi)


#: the widest range of stored integers counted in a histogram (more: the sample is sorted instead)
_HISTOGRAM_RANGE = 1 << 20


def _percentiles(base: np.ndarray, q: tuple[float, ...], to_values: Callable[[np.ndarray], np.ndarray],
                 direction: int) -> np.ndarray | None:
    """``np.percentile(to_values(base), q)`` without sorting the sample, or None when that does not apply.

    ``base`` holds stored integers and ``to_values`` maps them pointwise, never decreasing
    (``direction`` 1: a rescale with a positive slope, then a window) or never increasing (-1). The
    order statistics of the values are then those of ``base``, mapped: they are read off a
    histogram of ``base`` (O(n), no sort), mapped, and interpolated as numpy's default ('linear')
    method does, which gives the same numbers up to float rounding. None for float data, a range
    wider than :data:`_HISTOGRAM_RANGE`, an empty sample, an unknown direction, or values that are
    not finite at the sample's extremes (the caller then sorts, and sees them).
    """
    if direction == 0 or base.size == 0 or not np.issubdtype(base.dtype, np.integer) or base.dtype.itemsize > 4:
        return None
    flat = np.ascontiguousarray(base.reshape(-1))  # a strided sample is read faster once copied
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= _HISTOGRAM_RANGE:
        return None
    ends = to_values(np.array([lo, hi], dtype=base.dtype))
    if not np.isfinite(ends).all():
        return None
    cum = np.cumsum(_counts(flat, lo, hi))
    n = flat.size
    virtual = (n - 1) * (np.asarray(q, dtype=np.float64) / 100.0)
    below = np.floor(virtual).astype(np.int64)
    ranks = np.concatenate([below, np.minimum(below + 1, n - 1)])
    if direction < 0:
        ranks = n - 1 - ranks
    stats = np.searchsorted(cum, ranks, side="right") + lo  # the ranks-th smallest (counted from lo)
    vals = to_values(stats.astype(base.dtype)).astype(np.float64)
    a, b = vals[:len(q)], vals[len(q):]
    t = virtual - below
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _counts(flat: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """How many of ``flat`` (integers, contiguous, all in lo..hi) equal lo, lo + 1, ..., hi.

    8- and 16-bit samples are counted by OpenCV's ``calcHist`` (a few times faster than
    ``np.bincount``; signed 16-bit is shifted to unsigned, which keeps the order; its float32 counts
    are exact below 2**24 values); anything else by ``np.bincount`` from ``lo`` (the counts never
    span more than :data:`_HISTOGRAM_RANGE` bins, even for uint32 data near 4e9)."""
    if flat.size < 1 << 24 and flat.dtype in (np.uint8, np.uint16, np.int16):
        shift = 1 << 15 if flat.dtype == np.int16 else 0
        if shift:
            flat = flat.view(np.uint16) ^ np.uint16(shift)
        hist = cv2.calcHist([flat.reshape(1, -1)], [0], None, [hi - lo + 1], [lo + shift, hi + shift + 1])
        return hist.reshape(-1).astype(np.int64)
    return np.bincount(flat if lo == 0 else flat.astype(np.int64) - lo, minlength=hi - lo + 1)


def _sample_steps(shape: tuple[int, ...]) -> tuple[int, int]:
    """Row and column strides of the contrast sample (about 512 x 512 pixels)."""
    sy, sx = (max(1, -(-n // _CONTRAST_SIDE)) for n in shape[:2])
    return sy, sx


def _spread(sample: np.ndarray | Callable[[], np.ndarray], sample_mask: np.ndarray | None,
            everything: Callable[[], np.ndarray],
            fast: Callable[[tuple[float, ...]], np.ndarray | None] | None = None) -> float:
    """Spread between the 1st and 99th percentiles of the non-padding pixels of a contrast
    sample (``everything``: every non-padding pixel, used when the sample holds none); NaN when
    the sample holds a non-finite value. ``sample`` may be a callable that computes it, and
    ``fast`` gives the two percentiles from the stored integers (:func:`_percentiles`) or None."""
    if fast is not None:
        got = fast(CONTRAST_PERCENTILES)
        if got is not None:
            return float(got[1] - got[0])
    if callable(sample):
        sample = sample()
    if sample_mask is not None:
        sample = sample[~sample_mask]
        if sample.size == 0:  # the sample fell on padding only: use every non-padding pixel
            sample = everything()
    if not np.isfinite(sample).all():
        return math.nan
    lo, hi = np.percentile(sample, CONTRAST_PERCENTILES)
    return float(hi - lo)


def contrast(shown: np.ndarray, mask: np.ndarray | None) -> float:
    """Spread between the 1st and 99th percentiles of the windowed non-padding pixels, measured on
    a strided sample (about 512 x 512); NaN when the sample holds a non-finite value."""
    sy, sx = _sample_steps(shown.shape)
    return _spread(shown[::sy, ::sx], None if mask is None else mask[::sy, ::sx], lambda: shown[~mask])


def _flat(sample, sample_mask: np.ndarray | None, everything: Callable[[], np.ndarray],
          fast: Callable[[tuple[float, ...]], np.ndarray | None] | None = None) -> str | None:
    """None if the windowed image has usable contrast, else why not (no header text in it)."""
    spread = _spread(sample, sample_mask, everything, fast)
    if math.isnan(spread):
        return "gives values that are not finite"
    if spread < MIN_CONTRAST:
        return f"leaves the image flat (spread {spread:.2g} < {MIN_CONTRAST:g})"
    return None


def _type_range(dtype: np.dtype) -> np.ndarray:
    """The smallest and the largest value of an integer type, in that type."""
    info = np.iinfo(dtype)
    return np.array([info.min, info.max], dtype=dtype)


def _extremes(a: np.ndarray) -> np.ndarray:
    """The smallest and the largest value of ``a`` (NaN if it holds one), in its dtype."""
    return np.array([a.min(), a.max()], dtype=a.dtype)


_SCRATCH = threading.local()
#: the largest float32 scratch image a thread keeps between images (16 MP, 64 MB); larger ones
#: get a fresh array each time
_SCRATCH_MAX = 16 * 1024 * 1024


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` that this thread reuses from one image to the next.

    A fresh 20-36 MB array for every full-detector image costs about as much in page faults
    (the allocator hands such blocks back to the system when they are freed) as converting the
    pixels into it. Only the full-resolution conversion uses it: what is returned from here on
    is a new, small array.
    """
    n = int(np.prod(shape))
    if n > _SCRATCH_MAX:
        return np.empty(shape, np.float32)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.buf = np.empty(n, np.float32)
    return buf[:n].reshape(shape)


class _Frame:
    """One frame's modality values, computed only where they are needed: on the samples the
    window is chosen from, on the reduced image, and (rarely) on every pixel.

    A rescale (slope, intercept) is linear, so it is applied after the reduction (it commutes
    with averaging); a Modality LUT Sequence is a table of any shape, so it is applied to every
    pixel first. Construction refuses what :func:`modality_lut` refuses over the whole image.
    """

    def __init__(self, stored: np.ndarray, ds, mask: np.ndarray | None):
        self.ds, self.mask = ds, mask
        self.table = _has_modality_table(ds)
        if self.table:
            self.base = modality_lut(stored, ds)
            self._extremes = None
        else:
            # the rescale is monotonic: if any pixel leaves the float32 range (or is not
            # finite), an extreme one does, so this refuses exactly what mapping every pixel would.
            # Integers whose whole type range maps inside float32 cannot: then nothing is scanned
            self.base = stored
            self._extremes = None
            if not _rescale_stays_finite(stored.dtype, *_rescale(ds)):
                self._extremes = _extremes(stored)
                modality_lut(self._extremes, ds)

    def values(self, part: np.ndarray) -> np.ndarray:
        """Modality values of some of ``base`` (pixels, or box means of them)."""
        return part if self.table else modality_lut(part, self.ds)

    @functools.cached_property
    def direction(self) -> int:
        """1 if modality values grow with the stored ones, -1 if they fall, 0 if unknown (a table)."""
        return 0 if self.table else (1 if _rescale(self.ds)[0] > 0 else -1)

    def percentiles(self, base: np.ndarray, q: tuple[float, ...],
                    shade: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray | None:
        """``np.percentile(shade(values(base)), q)`` from a histogram (:func:`_percentiles`), or None.
        ``shade`` must not decrease (a window does; a VOI LUT need not, so it is never passed)."""
        to_values = self.values if shade is None else (lambda part: shade(self.values(part)))
        return _percentiles(base, q, to_values, self.direction)

    def sample_base(self) -> np.ndarray:
        """The contrast sample's stored values (non-padding only), on version 1's grid."""
        sy, sx = _sample_steps(self.base.shape)
        part = self.base[::sy, ::sx]
        return part if self.mask is None else part[~self.mask[::sy, ::sx]]

    @functools.cached_property
    def sample(self) -> np.ndarray:
        """The contrast sample's modality values on version 1's grid (computed once, when needed)."""
        sy, sx = _sample_steps(self.base.shape)
        return self.values(self.base[::sy, ::sx])

    @property
    def sample_mask(self) -> np.ndarray | None:
        sy, sx = _sample_steps(self.base.shape)
        return None if self.mask is None else self.mask[::sy, ::sx]

    def nonpadding(self) -> np.ndarray:
        return self.values(self.base[~self.mask])

    def auto_base(self) -> np.ndarray:
        """The automatic window's sample of stored values: every N-th non-padding pixel, about a million."""
        chosen = self.base if self.mask is None else self.base[~self.mask]
        step = max(1, chosen.size // 1_000_000)
        return chosen.reshape(-1)[::step]

    def auto_sample(self) -> np.ndarray:
        """The automatic window's sample (modality values)."""
        return self.values(self.auto_base())

    def extremes(self) -> np.ndarray:
        """Modality values of the smallest and largest non-padding pixel."""
        if self.mask is None and self._extremes is not None:
            return self.values(self._extremes)
        return self.values(_extremes(self.base if self.mask is None else self.base[~self.mask]))

    def finite_through(self, shade: Callable[[np.ndarray], np.ndarray]) -> bool:
        """Does ``shade`` (a window: monotonic) give finite values at every non-padding pixel? A window
        of finite modality values is finite or not whatever the value (NaN comes from its centre and
        width, not from the pixel), so the ends of the stored type's range answer for the integers
        there, without a scan; a table, float data or a failure there look at the image's extremes."""
        if not self.table and self._extremes is None:  # integers whose type range maps inside float32
            if np.isfinite(shade(self.values(_type_range(self.base.dtype)))).all():
                return True
        return bool(np.isfinite(shade(self.extremes())).all())

    def reduced(self, size: tuple[int, int],
                span: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Modality values box-averaged to ``size`` (height, width), over non-padding pixels only,
        and each box's non-padding fraction (None without padding).

        ``span``: the modality values outside which the window is constant. Pixels are clipped to
        it before they are averaged, so that a box the window clips in part averages what the
        window shows, not what lies beyond it. At the image's own size nothing is averaged, and
        nothing is clipped: the values are version 1's.
        """
        rh, rw = size
        if (rh, rw) == self.base.shape:
            x = self.base.astype(np.float32, copy=False)
            area = None
        else:
            x = _scratch(self.base.shape)  # clipped in place below; area() makes new arrays
            np.copyto(x, self.base, casting="unsafe")
            if span is not None:
                lo, hi = self._base_span(span)
                np.clip(x, lo, hi, out=x)
            halvings = _halvings(self.base.shape, size)

            def area(a: np.ndarray) -> np.ndarray:
                for _ in range(halvings):  # 2 x 2 means: a quarter of the general path's cost
                    a = cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA)
                return a if a.shape == (rh, rw) else cv2.resize(a, (rw, rh), interpolation=cv2.INTER_AREA)

        if self.mask is None:
            return self.values(x if area is None else area(x)), None
        keep = (~self.mask).astype(np.float32)
        kept = keep if area is None else area(keep)
        sums = x * keep if area is None else area(x * keep)
        means = np.divide(sums, kept, out=np.zeros_like(sums), where=kept > 0)
        return self.values(means), kept

    def _base_span(self, span: tuple[float, float]) -> tuple[float, float]:
        """A span of modality values as a span of ``base`` values (the rescale inverted)."""
        if self.table:
            return span
        slope, intercept = _rescale(self.ds)
        lo, hi = ((v - intercept) / slope for v in span)
        return min(lo, hi), max(lo, hi)


def voi(frame: _Frame, ds, spec: PreprocessSpec
        ) -> tuple[Callable[[np.ndarray], np.ndarray], dict, tuple[float, float] | None]:
    """Choose the first of ``spec.window_sources`` that is present and gives usable contrast.

    Returns the chosen map (modality values -> [0, 1]), the window record, and the range of
    modality values outside which the map is constant (None if it has none). Every decision is
    made on ``frame``'s samples: the same pixels, so the same choice, record and refusals, as
    mapping the whole image and sampling it.
    """
    mask = frame.mask
    if mask is not None and mask.all():
        raise PreprocessError("the image holds only padding pixels")
    sample_mask = frame.sample_mask
    reasons: list[str] = []   # why each source tried was not used, in order
    rejected: list[str] = []  # those that were applied but gave no usable contrast
    for source in spec.window_sources:
        if source == "voi_lut":
            out = _voi_lut(frame.sample, ds, spec.preset_index)
            if out is None:
                reasons.append("no usable VOI LUT in the header")
                continue
            shade, span = functools.partial(_lut_or_refuse, ds=ds, index=spec.preset_index), \
                _voi_lut_span(ds, spec.preset_index)
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
                    w = auto_window(frame, spec.percentiles)
                except PreprocessError as exc:
                    rejected.append(f"auto window: {exc.reason}")
                    reasons.append(rejected[-1])
                    continue
            shade, span = functools.partial(apply_window, w=w), _window_span(w)
            out = lambda: shade(frame.sample)  # noqa: E731 - computed only if the histogram cannot answer
            what, window = f"{source} window c={w.center:g} w={w.width:g}", w.as_dict()
        else:
            continue
        fast = None
        if source != "voi_lut" and (sample_mask is None or not sample_mask.all()):
            fast = functools.partial(frame.percentiles, frame.sample_base(), shade=shade)
        why = _flat(out, sample_mask, lambda: shade(frame.nonpadding()), fast)
        if why is None:
            if rejected:
                window["rejected"] = rejected
            return shade, window, span
        rejected.append(f"{what} {why}")
        reasons.append(rejected[-1])
    if not rejected:
        raise PreprocessError("no window could be chosen: " + "; ".join(reasons),
                              hint="add 'auto' to the bundle's preprocessing.window.sources")
    hint = ("the image itself may be blank: check it on a viewer" if "auto" in spec.window_sources else
            "check the image on a viewer, or add 'auto' to the bundle's preprocessing.window.sources")
    raise PreprocessError("no usable contrast after windowing: " + "; ".join(reasons), hint=hint)


# --- stages 3-5 --------------------------------------------------------------------------------
def _fitted(shape: tuple[int, ...], spec: PreprocessSpec) -> tuple[int, int]:
    """(height, width) the image is resized to: the target, or with ``keep_aspect`` the largest
    size of the image's aspect ratio that fits in it."""
    th, tw = spec.target_size
    if not spec.keep_aspect:
        return th, tw
    h, w = shape[:2]
    scale = min(th / h, tw / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _letterbox(small: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    th, tw = spec.target_size
    if small.shape[:2] == (th, tw):
        return small
    nh, nw = small.shape[:2]
    out = np.zeros((th, tw), dtype=small.dtype)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def resize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``img`` resized to the target with the spec's interpolation (letterboxed with ``keep_aspect``)."""
    nh, nw = _fitted(img.shape, spec)
    return _letterbox(cv2.resize(img, (nw, nh), interpolation=_INTERP[spec.interpolation]), spec)


def _reduced_size(shape: tuple[int, ...], fitted: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """Size the image is box-averaged to before windowing: :data:`REDUCE_FACTOR` times the fitted
    size, capped at the image's own; the image's own size (no reduction) for interpolations other
    than area and for images smaller than the target on an axis (OpenCV does not average then)."""
    h, w = shape[:2]
    nh, nw = fitted
    if spec.interpolation != "area" or h < nh or w < nw:
        return h, w
    return min(h, REDUCE_FACTOR * nh), min(w, REDUCE_FACTOR * nw)


def _halvings(shape: tuple[int, ...], size: tuple[int, int]) -> int:
    """How many times the image is first halved on both axes (2 x 2 block means, OpenCV's vectorised
    integer-factor path): while both sides are even and at least :data:`BLOCK_MARGIN` times ``size``
    remains on each axis."""
    h, w = shape[:2]
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= BLOCK_MARGIN * size[0] and w // 2 >= BLOCK_MARGIN * size[1]:
        h, w, n = h // 2, w // 2, n + 1
    return n


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
    its own size (see *Reduced-resolution decoding* above). What :func:`preprocess_pixels` averages it
    to first, when the stored values are averaged at all (``area``) and only averaged: not with a
    Modality LUT Sequence, which must see single pixels, nor with pixel padding to exclude, which is
    found by exact value, nor when the window will be the automatic one, whose percentiles come from
    single pixels (a smaller image has narrower tails)."""
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
