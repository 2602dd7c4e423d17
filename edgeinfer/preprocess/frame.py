"""One frame's modality values (:class:`_Frame`), computed only where they are needed: on the samples
the window is chosen from, on the image box-averaged before the float work (*Resolution is reduced
before the float work* and *Halving first* in the package docstring), and rarely on every pixel."""
from __future__ import annotations

import functools
import threading
from typing import Callable

import cv2
import numpy as np

from .geometry import _halvings
from .modality import _has_modality_table, _rescale, _rescale_stays_finite, modality_lut
from .stats import _percentiles, _sample_steps


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
