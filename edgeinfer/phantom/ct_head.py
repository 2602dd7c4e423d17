"""Synthetic non-contrast head CT series ("CT phantoms") with intracranial bleeds, their masks and volumes.

``edgeinfer phantom OUT --kind ct-head --n N --seed S`` writes N studies, each one axial series of
single-frame CT Image Storage instances, the ground-truth bleed mask beside it (``mask.npy``: slices x rows x
columns, uint8, slices in the order of ``ImagePositionPatient``'s z) and a ``labels.csv`` with the bleed's
kind and volume in mL.

How a head is made
------------------
Everything is described in millimetres in the patient frame (x to the patient's left, y to posterior, z to
superior) and rendered slice by slice at the voxel centres, so the mask and the images agree exactly:

* the head: a scalp (+40 HU), a skull shell 5-8 mm thick (cortical bone, 700-1500 HU, denser at its
  surfaces), a 1-3 mm CSF rim (0-10 HU) and brain parenchyma with grey (34-42 HU) and white (22-30 HU)
  matter from a smooth random field, two lateral ventricles and a third ventricle (CSF);
* acquisition: cupping (the centre a few HU darker, beam hardening), streaks near the skull base, and
  Gaussian noise of 3-7 HU;
* mimics in normal and abnormal studies: a calcified pineal gland, choroid plexus calcifications, a dense
  vessel (60-70 HU);
* bleeds (``BLEEDS``): ``iph`` an intraparenchymal lobulated blob, ``sdh`` a crescent along the inner table
  of the skull, ``sah`` a thin layer over the brain's surface; 50-90 HU (some faint ones closer to
  grey matter), volumes log-uniform from 0.1 to 80 mL (a thin layer is smaller), and studies with none.

Geometry: 512 x 512 (or ``size``) pixels, a field of view of 210-250 mm (0.41-0.49 mm pixels), slice
thickness 0.625, 1.25, 2.5 or 5 mm with contiguous slices, ``ImageOrientationPatient`` axial, one Frame of
Reference per study. Stored values are either signed (intercept 0) or unsigned 12-bit (intercept -1024).
Determinism as for the radiographs: the same seed writes the same files.
"""
from __future__ import annotations

import datetime as _dt
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from .._io import atomic_write
from ..errors import UsageError
from .dicom import _INSTITUTIONS, _ds, _uid, file_meta
from .generator import write_labels

CT_SOP_CLASS = CTImageStorage
BLEEDS = ("iph", "sdh", "sah")
THICKNESSES = (0.625, 1.25, 2.5, 5.0)
#: columns of a CT phantom set's ``labels.csv``, in order
CT_LABELS_COLUMNS = ("study_uid", "series_uid", "folder", "label", "finding", "volume_ml", "slices",
                     "slice_thickness", "pixel_spacing", "mask")


@dataclass
class HeadCT:
    """One study: the slices (complete datasets, ascending z), the bleed mask (slices, rows, cols), the truth."""

    datasets: list[Dataset]
    mask: np.ndarray
    finding: str
    volume_ml: float
    study_uid: str
    series_uid: str
    thickness: float
    spacing: float
    details: dict = field(default_factory=dict)


def _ellipsoid(X, Y, z, c, r):
    """(x/rx)^2 + ... at the slice's voxel centres: < 1 inside."""
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def _smooth_field(rng, shape, sigma_px: float) -> np.ndarray:
    """A smooth random field in [-1, 1] of ``shape`` (rows, cols)."""
    small = rng.standard_normal((max(8, shape[0] // 8), max(8, shape[1] // 8))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(0.5, sigma_px / 8))
    big = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return big / (np.abs(big).max() + 1e-6)


def _plan_bleed(rng, kind: str, head: dict) -> dict:
    """Where and how big: a target volume (mL) log-uniform in 0.1-80 (a thin layer: 0.1-20), a contrast."""
    top = 20.0 if kind == "sah" else 80.0
    volume = float(math.exp(rng.uniform(math.log(0.1), math.log(top))))
    faint = rng.random() < 0.15
    hu = float(rng.uniform(46, 55) if faint else rng.uniform(55, 90))
    ax, ay, az = head["brain"]
    side = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "iph":
        r = (3 * volume * 1000 / (4 * math.pi)) ** (1 / 3)
        e = rng.uniform(0.7, 1.3, 3)
        e /= np.prod(e) ** (1 / 3)
        c = (side * rng.uniform(0.15, 0.5) * ax, rng.uniform(-0.4, 0.4) * ay, rng.uniform(0.0, 0.5) * az)
        return {"kind": kind, "hu": hu, "centre": c, "radii": tuple(float(r * k) for k in e), "target_ml": volume,
                "lobes": rng.uniform(0, 2 * math.pi, 3), "lobe_depth": float(rng.uniform(0.05, 0.2))}
    # sdh / sah: a layer of some thickness over a patch of the brain's surface, around a direction
    theta = float(rng.uniform(-0.6, 0.6) + (0 if side > 0 else math.pi))   # azimuth (0: patient's left)
    phi = float(rng.uniform(0.1, 0.7))                                      # elevation
    area = 4 * math.pi * ((ax * ay * az) ** (2 / 3))                          # the brain's surface, roughly
    thick = float(rng.uniform(1.0, 2.5)) if kind == "sah" else float(np.clip(volume * 1000 / (0.15 * area), 2, 18))
    spread = float(np.clip(volume * 1000 / (thick * area), 0.01, 0.3))      # share of the surface covered
    return {"kind": kind, "hu": hu, "theta": theta, "phi": phi, "thick": thick, "spread": spread, "target_ml": volume}


def _bleed_mask(b: dict, X, Y, z, head: dict, inside_brain: np.ndarray, brain_q: np.ndarray) -> np.ndarray:
    if b["kind"] == "iph":
        c, r = b["centre"], b["radii"]
        q = _ellipsoid(X, Y, z, c, r)
        ang = np.arctan2(Y - c[1], X - c[0])
        wobble = 1 + b["lobe_depth"] * sum(np.sin((k + 2) * ang + p) for k, p in enumerate(b["lobes"])) / 3
        return (q < wobble ** 2) & inside_brain
    ax, ay, az = head["brain"]
    # direction of each voxel from the centre, against the bleed's direction
    nx, ny, nz = X / ax, Y / ay, z / az
    norm = np.sqrt(nx ** 2 + ny ** 2 + nz ** 2) + 1e-6
    d = (math.cos(b["phi"]) * math.cos(b["theta"]), math.cos(b["phi"]) * math.sin(b["theta"]), math.sin(b["phi"]))
    cos_angle = (nx * d[0] + ny * d[1] + nz * d[2]) / norm
    patch = cos_angle > 1 - 2 * b["spread"]
    depth = (1 - np.sqrt(np.clip(brain_q, 0, None))) * min(ax, ay)            # mm below the brain's surface
    return inside_brain & patch & (depth < b["thick"])


def make_head_ct(rng: np.random.Generator, *, index: int, finding: str | None = None, size: int = 512,
                 thickness: float | None = None, slices: int | None = None) -> HeadCT:
    """One head CT study. ``finding``: None (drawn: half with a bleed), "none" or one of :data:`BLEEDS`.
    ``slices``: exactly this many contiguous slices, centred on the head (a longer scan range: the slices
    past the skull hold air and scalp), e.g. 300 slices of 0.625 mm; default: the head from skull base to
    vertex."""
    if finding is None:
        finding = "none" if rng.random() < 0.5 else BLEEDS[int(rng.integers(len(BLEEDS)))]
    if finding not in ("none", *BLEEDS):
        raise ValueError(f"finding must be None, 'none' or one of {BLEEDS}, got {finding!r}")
    token = f"{int(rng.integers(0, 2**62)):x}"
    thickness = float(thickness if thickness is not None else rng.choice(THICKNESSES, p=(0.25, 0.25, 0.25, 0.25)))
    fov = float(rng.uniform(210, 250))
    spacing = fov / size
    skull = (float(rng.uniform(68, 78)), float(rng.uniform(86, 96)), float(rng.uniform(80, 90)))
    bone = float(rng.uniform(5, 8))
    rim = float(rng.uniform(1, 3))
    brain = tuple(s - bone - rim for s in skull)
    head = {"skull": skull, "brain": brain}
    grey, white = float(rng.uniform(34, 42)), float(rng.uniform(22, 30))
    noise = float(rng.uniform(3, 7))
    unsigned = rng.random() < 0.5
    bleed = _plan_bleed(rng, finding, head) if finding != "none" else None
    pineal = rng.random() < 0.6
    vessel = rng.random() < 0.4
    vessel_x = float(rng.uniform(-20, 20))

    z0 = -0.45 * skull[2]
    n = int((0.97 * skull[2] - z0) // thickness) + 1
    if slices is not None:
        z0 -= (int(slices) - n) * thickness / 2
        n = int(slices)
    zs = z0 + thickness * np.arange(n)
    coords = (np.arange(size) - (size - 1) / 2) * spacing
    X, Y = np.meshgrid(coords, coords)                     # rows: y (anterior at the top), columns: x
    R2 = (X / skull[0]) ** 2 + (Y / skull[1]) ** 2
    gw = [_smooth_field(rng, (size, size), 24 / spacing) for _ in range(3)]

    mask = np.zeros((n, size, size), np.uint8)
    datasets = []
    study_uid, series_uid, for_uid = _uid(token, "ct-study"), _uid(token, "ct-series"), _uid(token, "ct-for")
    day = _dt.date(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 700)))
    when = _dt.datetime.combine(day, _dt.time(int(rng.integers(0, 24)), int(rng.integers(0, 60))))
    institution = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
    accession = f"PHC{int(rng.integers(0, 10**8)):08d}"
    for k, z in enumerate(zs):
        outer = _ellipsoid(X, Y, z, (0, 0, 0), skull)
        inner_bone = _ellipsoid(X, Y, z, (0, 0, 0), tuple(s - bone for s in skull))
        brain_q = _ellipsoid(X, Y, z, (0, 0, 0), brain)
        scalp = _ellipsoid(X, Y, z, (0, 0, 0), tuple(s + 4 for s in skull))
        hu = np.full((size, size), -1000.0, np.float32)
        hu[scalp < 1] = 40.0
        in_bone = (outer < 1) & (inner_bone >= 1)
        surface = np.abs(np.sqrt(np.clip(outer, 0, None)) - 0.97) * 30
        hu[in_bone] = (1500 - 500 * np.clip(1 - surface, 0, 1))[in_bone]
        hu[(inner_bone < 1) & (brain_q >= 1)] = 6.0
        inside = brain_q < 1
        mix = np.clip(0.5 + 0.9 * (gw[0] * math.cos(0.03 * z) + gw[1] * math.sin(0.03 * z)), 0, 1)
        hu[inside] = (white + (grey - white) * mix)[inside]
        for c, r in (((9, -8, 18), (6, 24, 11)), ((-9, -8, 18), (6, 24, 11)), ((0, 5, 8), (2, 10, 8))):
            hu[_ellipsoid(X, Y, z, c, r) < 1] = 5.0                               # ventricles
        if pineal:
            hu[_ellipsoid(X, Y, z, (0, 22, 14), (2.5, 3, 2.5)) < 1] = 250.0
        hu[_ellipsoid(X, Y, z, (10, 5, 20), (1.5, 2, 1.5)) < 1] = 180.0          # choroid plexus calcification
        if vessel:
            hu[((X - vessel_x) ** 2 + (z - 2) ** 2 < 2.0 ** 2) & inside] = 65.0
        if bleed is not None:
            m = _bleed_mask(bleed, X, Y, z, head, inside, brain_q)
            hu[m] = bleed["hu"] + 3 * gw[2][m]
            mask[k] = m
        # acquisition: cupping, streaks near the skull base, noise
        hu[R2 < 1] -= 6 * (1 - R2[R2 < 1]) * (outer[R2 < 1] < 1)
        if z < 0:
            ang = rng.uniform(0, math.pi)
            streak = np.abs((X * math.sin(ang) - Y * math.cos(ang))) < 1.5
            hu[streak & inside] -= float(rng.uniform(10, 30)) * (-z / skull[2])
        hu += rng.normal(0, noise, hu.shape).astype(np.float32)
        datasets.append(_ct_slice(hu, index=index, k=k, z=float(z), n=n, spacing=spacing, thickness=thickness,
                                  unsigned=unsigned, study_uid=study_uid, series_uid=series_uid, for_uid=for_uid,
                                  token=token, when=when, institution=institution, accession=accession))
    volume = float(mask.sum()) * spacing * spacing * thickness / 1000.0
    details = {"fov_mm": round(fov, 1), "noise_hu": round(noise, 1), "unsigned": unsigned}
    if bleed is not None:
        details.update(bleed_hu=round(bleed["hu"], 1), target_ml=round(bleed["target_ml"], 3))
    return HeadCT(datasets, mask, finding if volume > 0 else "none", round(volume, 3), study_uid, series_uid,
                  thickness, spacing, details)


def _ct_slice(hu: np.ndarray, *, index, k, z, n, spacing, thickness, unsigned, study_uid, series_uid, for_uid,
              token, when, institution, accession) -> Dataset:
    sop_uid = _uid(token, "ct-image", k)
    ds = Dataset()
    ds.file_meta = file_meta(CT_SOP_CLASS, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = CT_SOP_CLASS, sop_uid
    for what in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{what}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{what}Time", when.strftime("%H%M%S"))
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.Manufacturer = "Phantom CT Systems"
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST"
    ds.SeriesDescription = f"Head {thickness:g}mm brain"
    ds.ManufacturerModelName = "Helix 64"
    ds.PatientName = f"PHANTOM^CT{index:04d}"
    ds.PatientID = f"PHANTOM-CT{index:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(thickness)
    ds.KVP = "120"
    ds.ConvolutionKernel = "H30s"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID = accession[-6:]
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(-(hu.shape[1] - 1) / 2 * spacing), _ds(-(hu.shape[0] - 1) / 2 * spacing), _ds(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(z)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.BitsAllocated = 16
    if unsigned:
        stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, "-1024"
        ds.PixelData = stored.astype("<u2").tobytes()
    else:
        stored = np.clip(np.rint(hu), -2048, 32767).astype(np.int16)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 16, 15, 1, "0"
        ds.PixelData = stored.astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = ["40", "600"], ["80", "2800"]
    ds.WindowCenterWidthExplanation = ["BRAIN", "BONE"]
    ds.LossyImageCompression = "00"
    return ds


def generate_ct(out_dir, n: int, seed: int, *, size: int = 512, progress: Callable[[int], None] | None = None
                ) -> list[dict]:
    """Write ``n`` head CT studies under ``out_dir`` (``studyNNNN/series02/sliceNNN.dcm`` and
    ``studyNNNN/mask.npy``) and ``labels.csv``; returns its rows. ``progress(1)`` after each study."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise UsageError(f"phantom: the number of studies must be a non-negative integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 1024:
        raise UsageError(f"phantom: a CT slice size must be an integer from 64 to 1024, got {size!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"phantom: {out} exists and is not an empty folder; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(int(n)):
        ct = make_head_ct(np.random.default_rng([int(seed), 0xC7, i]), index=i + 1, size=int(size))
        folder = f"study{i + 1:04d}"
        for k, ds in enumerate(ct.datasets):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            atomic_write(out / folder / "series02" / f"slice{k + 1:03d}.dcm", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, ct.mask)
        atomic_write(out / folder / "mask.npy", buf.getvalue())
        rows.append({"study_uid": ct.study_uid, "series_uid": ct.series_uid, "folder": folder,
                     "label": "urgent" if ct.finding != "none" else "normal", "finding": ct.finding,
                     "volume_ml": ct.volume_ml, "slices": len(ct.datasets), "slice_thickness": ct.thickness,
                     "pixel_spacing": round(ct.spacing, 4), "mask": f"{folder}/mask.npy"})
        if progress is not None:
            progress(1)
    write_labels(out / "labels.csv", CT_LABELS_COLUMNS, rows)
    return rows


#: the awkward series a real study brings, each with the outcome the runtime must reach (tests/edgeinfer/test_volume.py)
AWKWARD = {
    "scout": "a localizer series beside the axial one: passed over (its Image Type says LOCALIZER)",
    "bone": "a bone-kernel reconstruction of the same slices: passed over for the brain one",
    "missing": "a slice missing: the volume is made and the gap is said",
    "duplicate": "a slice sent twice under two SOP Instance UIDs: one kept, the other listed",
    "tilt": "a gantry tilt (positions drift in-plane): refused with a reason, never resampled",
    "mixed": "one slice of another orientation: refused with a reason",
    "shuffled": "slices in random order (as over two associations): sorted along the normal",
}


def awkward_series(ct: HeadCT, kind: str, rng: np.random.Generator) -> list[Dataset]:
    """Datasets for ``kind`` (a key of :data:`AWKWARD`) made from ``ct``'s series: a new series (scout, bone)
    or the series altered (copies: ``ct`` is not changed)."""
    import copy

    token = f"{int(rng.integers(0, 2**62)):x}"
    slices = [copy.deepcopy(d) for d in ct.datasets]

    def renumber(dss, series_number, description, **extra):
        series_uid = _uid(token, kind, "series")
        for k, ds in enumerate(dss):
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(token, kind, "image", k)
            for key, value in extra.items():
                setattr(ds, key, value)
        return dss

    if kind == "scout":
        ds = renumber(slices[len(slices) // 2:len(slices) // 2 + 1], 1, "Topogram 0.6 T20f",
                      ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])[0]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        return [ds]
    if kind == "bone":
        return renumber(slices, 3, f"Head {ct.thickness:g}mm bone", ConvolutionKernel="H70s")
    if kind == "missing":
        del slices[len(slices) // 2]
        return slices
    if kind == "duplicate":
        extra = copy.deepcopy(slices[len(slices) // 3])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = _uid(token, kind, "copy")
        return slices + [extra]
    if kind == "tilt":
        angle = float(rng.uniform(10, 25))
        for ds in slices:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [_ds(x), _ds(y + z * math.tan(math.radians(angle))), _ds(z)]
            ds.GantryDetectorTilt = _ds(angle)
        return slices
    if kind == "mixed":
        slices[len(slices) // 2].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        return slices
    if kind == "shuffled":
        order = rng.permutation(len(slices))
        return [slices[i] for i in order]
    raise ValueError(f"awkward series {kind!r}: one of {', '.join(AWKWARD)}")
