"""Stage 2, VOI: the window (:class:`Window`), DICOM's window functions (:func:`apply_window`), the
header's VOI LUT, the automatic window, and the choice among the spec's ``window.sources``
(:func:`voi`), made on samples of the frame (:class:`~.frame._Frame`)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import PreprocessError
from .spec import PreprocessSpec
from .stats import _flat

if TYPE_CHECKING:
    from .frame import _Frame


@dataclass(frozen=True)
class Window:
    source: str          # voi_lut | header | fixed | auto
    center: float
    width: float
    function: str = "LINEAR"

    def as_dict(self) -> dict:
        return {"source": self.source, "center": round(self.center, 3), "width": round(self.width, 3),
                "function": self.function}


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
