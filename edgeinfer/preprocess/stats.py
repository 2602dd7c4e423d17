"""What the window is chosen on: the contrast of a windowed sample (:data:`MIN_CONTRAST`), and
percentiles of a sample read off a histogram of the stored integers (:func:`_percentiles`) where
they can be, instead of sorting it."""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

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
