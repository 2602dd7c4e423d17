"""Stages 0 and 1: which frame of a multi-frame image is read, the modality LUT (RescaleSlope and
RescaleIntercept, or a Modality LUT Sequence) with what it refuses, and the pixel padding mask."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import PreprocessError
from .spec import PreprocessSpec

_F32_MAX = float(np.finfo(np.float32).max)


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
