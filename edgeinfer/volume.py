"""A CT or MR series as a volume: its slices ordered along their normal, the geometry checked, the modality
values (HU for CT) stacked slice by slice.

:func:`plan_series` is pure (headers in, an order and notes out): every slice must share one orientation,
size and pixel spacing, and its position must move along the slice normal only. Refused with a reason
(:class:`~edgeinfer.errors.SeriesError`), never silently resampled: mixed orientations, a gantry tilt (the
positions drift in-plane from slice to slice), slices of different sizes or spacings, fewer than two
slices. Said, and kept going: a duplicated position (one slice kept, the others listed), a gap (a spacing
more than 1.5 times the series' usual one: a slice missing), slices that arrived in any order.

:func:`read_volume` reads the files through the checked reader (``edgeinfer.dicomio``), plans, then
allocates the volume once and decodes one slice at a time into it (the modality LUT from
``edgeinfer.preprocess``): the memory held is the volume plus one slice in flight.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import SeriesError

#: two positions closer than this share of the usual spacing are the same slice
DUPLICATE_TOLERANCE = 0.05
#: a spacing more than this many times the usual one is a gap
GAP_FACTOR = 1.5
#: orientation cosines that differ by more than this are another orientation
ORIENTATION_TOLERANCE = 1e-3
#: in-plane drift (mm per mm along the normal) beyond which the series is tilted or sheared
TILT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SliceHeader:
    """What the geometry needs of one slice."""

    key: str                                   # the path (or any label for messages)
    sop_uid: str
    orientation: tuple[float, ...]             # ImageOrientationPatient: row and column direction cosines
    position: tuple[float, float, float]       # ImagePositionPatient: the first pixel's centre, mm
    shape: tuple[int, int]                     # rows, columns
    spacing: tuple[float, float]               # PixelSpacing: between rows, between columns, mm

    @classmethod
    def of(cls, ds, key: str) -> "SliceHeader":
        try:
            return cls(key, str(ds.SOPInstanceUID), tuple(float(v) for v in ds.ImageOrientationPatient),
                       tuple(float(v) for v in ds.ImagePositionPatient), (int(ds.Rows), int(ds.Columns)),
                       tuple(float(v) for v in ds.PixelSpacing))
        except (AttributeError, TypeError, ValueError):
            raise SeriesError("a slice has no usable Image Orientation, Image Position or Pixel Spacing (Patient)",
                              hint="a volume needs the image plane module on every slice") from None


@dataclass
class SeriesPlan:
    """The slices to use, in order along the normal (indices into the headers), and what was noticed."""

    order: list[int]
    positions: list[float]                     # along the normal, mm, ascending
    normal: tuple[float, float, float]
    slice_spacing: float                       # the usual spacing between slices, mm
    spacing: tuple[float, float]
    shape: tuple[int, int]
    duplicates: list[str] = field(default_factory=list)     # keys left out: another slice has their position
    gaps: list[tuple[float, float]] = field(default_factory=list)   # (position before, position after), mm
    notes: list[str] = field(default_factory=list)


def plan_series(headers: Sequence[SliceHeader]) -> SeriesPlan:
    """Order ``headers`` along their normal and check that they make one volume (see the module's text)."""
    if len(headers) < 2:
        raise SeriesError(f"a volume needs at least 2 slices; the series has {len(headers)}")
    first = headers[0]
    iop = np.array(first.orientation, np.float64)
    if iop.shape != (6,):
        raise SeriesError("Image Orientation (Patient) must hold 6 values")
    mixed = sum(1 for h in headers if np.abs(np.array(h.orientation) - iop).max() > ORIENTATION_TOLERANCE)
    if mixed:
        raise SeriesError(f"the series mixes image orientations ({mixed} of {len(headers)} slices differ from the "
                          "first)", hint="choose a series of one orientation, e.g. the axial reconstruction")
    sizes = {(h.shape, h.spacing) for h in headers}
    if len(sizes) > 1:
        raise SeriesError(f"the slices differ in size or pixel spacing ({len(sizes)} kinds)",
                          hint="a volume needs one grid; check that the series was not assembled from two")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not (abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(col) - 1) < 1e-2 and abs(row @ col) < 1e-2):
        raise SeriesError("Image Orientation (Patient) is not two orthogonal unit vectors")
    normal /= np.linalg.norm(normal)
    pos = np.array([h.position for h in headers], np.float64)
    along = pos @ normal
    idx = np.argsort(along, kind="stable")
    along, pos = along[idx], pos[idx]
    # whatever moves from slice to slice other than along the normal is a tilt (or a shear)
    drift = (pos - pos[0]) - np.outer(along - along[0], normal)
    extent = max(along[-1] - along[0], 1e-6)
    if np.linalg.norm(drift, axis=1).max() / extent > TILT_TOLERANCE and np.linalg.norm(drift, axis=1).max() > 0.05:
        raise SeriesError(f"the slices drift in-plane by {np.linalg.norm(drift, axis=1).max():.1f} mm over "
                          f"{extent:.0f} mm along the normal: a gantry tilt or a sheared series",
                          hint="have the scanner send a reconstruction corrected for the tilt; the runtime does "
                               "not resample it silently")
    steps = np.diff(along)
    usual = float(np.median(steps[steps > 1e-6])) if (steps > 1e-6).any() else 0.0
    if usual <= 0:
        raise SeriesError("every slice of the series has the same position")
    keep, duplicates = [0], []
    for i in range(1, len(along)):
        if along[i] - along[keep[-1]] < DUPLICATE_TOLERANCE * usual:
            duplicates.append(headers[int(idx[i])].key)
        else:
            keep.append(i)
    kept = along[keep]
    gaps = [(float(a), float(b)) for a, b in zip(kept[:-1], kept[1:]) if b - a > GAP_FACTOR * usual]
    plan = SeriesPlan([int(idx[i]) for i in keep], [float(v) for v in kept], tuple(float(v) for v in normal), usual,
                      first.spacing, first.shape, duplicates, gaps)
    if duplicates:
        plan.notes.append(f"{len(duplicates)} slice(s) repeat the position of another; one of each kept")
    for a, b in gaps:
        plan.notes.append(f"a gap of {b - a:.2f} mm between the slices at {a:.2f} and {b:.2f} mm (usual spacing "
                          f"{usual:.2f} mm): a slice may be missing")
    return plan


@dataclass
class Volume:
    """Modality values (slices, rows, columns), float32 (with a ``transform``: what it made of each slice,
    (..., slices, rows, columns)), slices ascending along ``normal`` at ``positions`` (mm along it);
    ``sop_uids``: the source slices used, in order (their positions: ``plan.positions``)."""

    values: np.ndarray
    plan: SeriesPlan
    sop_uids: list[str]
    positions: list[float] = field(default_factory=list)

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        dz = self.positions[1] - self.positions[0] if len(self.positions) > 1 else self.plan.slice_spacing
        return float(dz), self.plan.spacing[0], self.plan.spacing[1]


def read_volume(paths: Sequence[str | os.PathLike], limits=None, *, pixel_mm: float | None = None,
                slice_mm: float | None = None, headers: Sequence | None = None,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Volume:
    """The volume of the series in ``paths`` (one series; any order). InputError subclasses for a file that
    cannot be read and :class:`SeriesError` for a geometry the runtime refuses, each with its reason.

    ``pixel_mm``: each slice is resampled in-plane to this pixel size as it is read (OpenCV, area averaging
    when shrinking), so the volume is held at the model's resolution only; ``Volume.voxel_mm`` then says the
    size used. ``slice_mm``: slices every ``slice_mm`` along the normal from the first, each interpolated
    linearly between the two source slices around it as they stream past (two source slices held, never
    the source volume); across a gap the interpolation spans it (the gap is in ``plan.notes``).

    ``headers``: the files' headers when the caller has read them already (same order as ``paths``), so that
    each file is parsed once more, for its pixels, not twice. ``transform``: applied to each slice of the
    volume as it is made (modality values, rows x cols -> any (..., rows, cols) array, e.g. HU windows as
    channels): ``Volume.values`` is then (..., slices, rows, cols) and the modality values are never held
    for the whole volume."""
    import cv2

    from . import dicomio
    from .preprocess import modality_lut

    limits = limits or dicomio.ReadLimits()
    if headers is None:
        headers = [_header(p, limits) for p in paths]                        # no pixel data held
    elif len(headers) != len(paths):
        raise ValueError(f"{len(headers)} headers for {len(paths)} paths")
    headers = [SliceHeader.of(h, os.fspath(p)) for h, p in zip(headers, paths)]
    plan = plan_series(headers)
    rows, cols = plan.shape
    if pixel_mm is not None:
        if not pixel_mm > 0:
            raise ValueError(f"pixel_mm must be positive, got {pixel_mm!r}")
        rows = max(1, round(rows * plan.spacing[0] / pixel_mm))
        cols = max(1, round(cols * plan.spacing[1] / pixel_mm))
    targets = list(plan.positions)
    if slice_mm is not None:
        if not slice_mm > 0:
            raise ValueError(f"slice_mm must be positive, got {slice_mm!r}")
        n = int(np.floor((plan.positions[-1] - plan.positions[0]) / slice_mm + 1e-6)) + 1
        targets = [plan.positions[0] + j * slice_mm for j in range(n)]
    out = None
    prev: tuple[float, np.ndarray] | None = None
    j = 0

    def put(j: int, values: np.ndarray) -> None:
        nonlocal out
        made = np.asarray(transform(values) if transform is not None else values, np.float32)
        if out is None:          # allocated once, at the size of what the transform gives
            out = np.empty((*made.shape[:-2], len(targets), rows, cols), np.float32)
        out[..., j, :, :] = made

    for k, i in enumerate(plan.order):
        ds = dicomio.read_dataset(paths[i], limits)                               # one slice in flight
        values = modality_lut(dicomio.decode_frame(ds, 0, limits), ds)
        if values.shape != (rows, cols):
            shrink = rows < values.shape[0]
            values = cv2.resize(values, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        z = plan.positions[k]
        while j < len(targets) and targets[j] <= z + 1e-6:   # every target up to this slice: between prev and it
            if prev is None or z - prev[0] < 1e-9:
                put(j, values)
            else:
                w = (targets[j] - prev[0]) / (z - prev[0])
                put(j, (1 - w) * prev[1] + w * values)
            j += 1
        prev = (z, values)
    if (rows, cols) != plan.shape:
        plan.spacing = (plan.spacing[0] * plan.shape[0] / rows, plan.spacing[1] * plan.shape[1] / cols)
        plan.shape = (rows, cols)
    return Volume(out, plan, [headers[i].sop_uid for i in plan.order], [float(t) for t in targets])


def windows(values: np.ndarray, levels: Sequence[tuple[float, float]]) -> np.ndarray:
    """Modality values -> one channel per (centre, width) window, linear, clipped to [0, 1]: (channels, *shape)
    float32 (e.g. brain 40/80 and subdural 80/200 for a head CT). In place in the output: no temporaries."""
    out = np.empty((len(levels), *values.shape), np.float32)
    for c, (centre, width) in enumerate(levels):
        if not width > 0:
            raise ValueError(f"window {centre}/{width}: the width must be positive")
        np.subtract(values, centre - width / 2, out=out[c])
        out[c] *= np.float32(1.0 / width)
        np.clip(out[c], 0, 1, out=out[c])
    return out


def _header(path, limits):
    """The header of one file, without its pixel data; a file pydicom cannot parse gets the checked reader's
    verdict (an InputError with its reason)."""
    import pydicom

    from . import dicomio
    from .dicomio.quiet import _library_quiet

    try:
        with _library_quiet():
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the checked reader says what is wrong, or reads it after all
        return dicomio.read_dataset(path, limits)


# --- which series of a study -------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesRule:
    """Which series of a study a volume model takes (a bundle's ``series`` rules): the modality, words the
    Image Type must hold (``AXIAL``; a scout says ``LOCALIZER``), the orientation, kernels or descriptions
    to avoid (a bone reconstruction), a slice thickness range and the fewest slices."""

    modalities: tuple[str, ...] = ("CT",)
    image_type: tuple[str, ...] = ("AXIAL",)
    orientation: str = "axial"                          # axial | coronal | sagittal | any
    avoid: tuple[str, ...] = ("bone", "lung", "h70", "b70", "sharp")   # in the kernel or the description
    thickness: tuple[float, float] = (0.5, 5.0)
    min_slices: int = 10


_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}


def _why_not(headers: Sequence, rule: SeriesRule) -> str | None:
    """Why this series (headers of its slices) is not the one, or None when it fits ``rule``."""
    ds = headers[0]
    modality = str(ds.get("Modality", "") or "")
    if modality not in rule.modalities:
        return f"modality {modality or 'missing'}, not {'/'.join(rule.modalities)}"
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    missing = [w for w in rule.image_type if w.upper() not in image_type]
    if missing:
        return f"Image Type lacks {', '.join(missing)}" + (" (a localizer)" if "LOCALIZER" in image_type else "")
    text = " ".join(str(ds.get(k, "") or "") for k in ("ConvolutionKernel", "SeriesDescription")).lower()
    hit = next((w for w in rule.avoid if w in text), None)
    if hit:
        return f"a '{hit}' reconstruction"
    try:
        thickness = float(ds.SliceThickness)
    except (AttributeError, TypeError, ValueError):
        return "no Slice Thickness"
    if not rule.thickness[0] <= thickness <= rule.thickness[1]:
        return f"slices of {thickness:g} mm, outside {rule.thickness[0]:g}-{rule.thickness[1]:g} mm"
    if len(headers) < rule.min_slices:
        return f"{len(headers)} slice(s), fewer than {rule.min_slices}"
    if rule.orientation != "any":
        try:
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        except (AttributeError, TypeError, ValueError):
            return "no Image Orientation (Patient)"
        normal = np.cross(iop[:3], iop[3:])
        if abs(normal[_AXES[rule.orientation]]) < np.cos(np.radians(15)) * np.linalg.norm(normal):
            return f"not {rule.orientation}"
    return None


def choose_series(series: dict[str, Sequence], rule: SeriesRule) -> tuple[str | None, dict[str, str]]:
    """The series (by Series Instance UID, headers of its slices) that ``rule`` takes, and why each other
    one was passed over. Of several that fit, the one with the most slices (then the lowest Series Number)."""
    fits, passed = [], {}
    for uid, headers in series.items():
        why = _why_not(headers, rule) if headers else "no slices"
        if why is None:
            fits.append(uid)
        else:
            passed[uid] = why
    if not fits:
        return None, passed
    best = max(fits, key=lambda u: (len(series[u]), -int(series[u][0].get("SeriesNumber", 0) or 0)))
    for uid in fits:
        if uid != best:
            passed[uid] = f"another series fits too; the one with more slices ({len(series[best])}) is used"
    return best, passed
