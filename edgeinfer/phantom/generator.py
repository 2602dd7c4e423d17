"""The generator: study planning, the strata of a set, :func:`make_case`, :func:`generate`
and ``labels.csv``.

Every random draw comes from ``numpy.random.Generator`` objects derived from the seed (one
stream per concern: finding, patient and study, device, anatomy, finding geometry, each
image), so changing one choice does not shift the draws of the others.
"""
from __future__ import annotations

import csv
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

from .. import phantom as _package  # the knobs DIFFICULTY and FINDING_CONTRAST, read at call time
from .._io import atomic_write
from ..errors import UsageError
from .anatomy import _Anatomy
from .detector import _to_stored
from .dicom import _INSTITUTIONS, _PROFILES, _VOI_STYLES, _dataset, _Profile, _uid
from .findings import FINDINGS, _Finding
from .geometry import _WORK_LONG, _Frame
from .render import _render

#: columns of ``labels.csv``, in order
LABELS_COLUMNS = (
    "path", "study_uid", "series_uid", "sop_instance_uid", "label", "finding", "modality",
    "photometric", "bits_stored", "rows", "columns", "transfer_syntax", "finding_box",
)


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic image and its ground truth.

    ``dataset`` is complete (file meta included) and can be written with
    ``pydicom.dcmwrite(path, case.dataset, enforce_file_format=True)``. ``details`` holds the
    finding's geometry and strength (centre in output pixel coordinates, size in mm, the
    strength in [0, 1) and the contrast actually applied); it is not part of ``labels.csv``.
    """

    dataset: Dataset
    label: str
    finding: str
    study_uid: str
    relpath: str
    details: dict = field(default_factory=dict, compare=False, repr=False)



# generate() stratifies these over studies so that every moderately sized set contains the mix
_STRATA = {
    "finding": (("none", "pneumothorax", "mass"), (0.5, 0.25, 0.25)),
    "modality": (("DX", "CR"), (0.6, 0.4)),
    "photometric": (("MONOCHROME2", "MONOCHROME1"), (0.62, 0.38)),
    "bits": ((12, 14, 16), (0.36, 0.34, 0.30)),
    "compress": ((False, True), (0.75, 0.25)),
    "voi": (_VOI_STYLES, (0.2, 0.2, 0.15, 0.15, 0.15, 0.15)),
    "view": (("PA", "AP"), (0.7, 0.3)),
}


def _pick(u: float, values, weights):
    c = np.cumsum(np.asarray(weights, dtype=float))
    return values[int(np.searchsorted(c / c[-1], u, side="right").clip(0, len(values) - 1))]


def _stream(seeds, k: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seeds[k]), *extra])


def _device(r: np.random.Generator, plan: dict) -> dict:
    u = r.random(24)
    modality = plan.get("modality") or _pick(u[0], *_STRATA["modality"])
    profs = [p for p in _PROFILES if p.modality == modality]
    prof = _pick(u[1], profs, [p.weight for p in profs])
    bits = plan.get("bits") or _pick(u[2], *_STRATA["bits"])
    photometric = plan.get("photometric") or _pick(u[3], *_STRATA["photometric"])
    compress = plan.get("compress")
    if compress is None:
        compress = bool(_pick(u[4], *_STRATA["compress"]))
    voi = plan.get("voi") or _pick(u[5], *_STRATA["voi"])
    view = plan.get("view") or _pick(u[6], *_STRATA["view"])
    maxv = (1 << bits) - 1
    lo = maxv * (0.005 + 0.05 * u[7])
    hi = maxv * (0.80 + 0.195 * u[8])
    if "rescale" in voi:
        slope = _pick(u[9], (1.0, 0.5, 2.0), (0.5, 0.25, 0.25))
        intercept = _pick(u[10], (0.0, -1024.0, 100.0, -512.0, 1000.0), (0.2, 0.3, 0.15, 0.2, 0.15))
        rescale = (slope, intercept)
    else:
        rescale = None
    return dict(profile=prof, modality=modality, bits=bits, photometric=photometric, compress=compress,
                voi=voi, view=view, lo=lo, hi=hi, rescale=rescale, u=u)


def _image_params(r: np.random.Generator, view: str) -> dict:
    u = r.random(32)
    n = r.standard_normal(8)
    return dict(
        angle=math.radians(2.5 * n[0]), ox=8 * n[1], oy=8 * n[2], top_margin=25 + 40 * u[0],
        heel=(0.05 * n[3], 0.03 * n[4]), lowfreq_amp=4.0 * u[1],
        tone_a=1.6 + 0.8 * u[2], tone_g=1.7 + 0.6 * u[27],
        usm=0.3 + 0.7 * u[3], usm_mm=4 + 8 * u[4], drc=0.1 + 0.3 * u[5],
        gamma=0.8 + 0.45 * u[6], gain=0.92 + 0.12 * u[7], offset=0.03 * u[8],
        noise_work=0.004 + 0.010 * u[9], noise_full=0.006 + 0.014 * u[10],
        marker=("R" if u[11] < 0.5 else "L") if u[12] < 0.6 else "",
        marker_pos=((0.04 if u[11] < 0.5 else 0.88) + 0.04 * u[13], 0.06 + 0.04 * u[14]),
        collimate=(tuple(0.01 + 0.05 * u[15:19])) if u[19] < 0.3 else None,
        shutter_value=0.95 + 0.05 * u[20] if u[21] < 0.7 else 0.02 * u[20],
        kvp=(110 + 15 * u[22]) if view == "PA" else (80 + 20 * u[22]),
        mas=1.0 + 4.0 * u[23], minutes=1 + int(3 * u[24]),
        ww_jitter=(0.92 + 0.16 * u[25], 0.96 + 0.08 * u[26]),
    )


def _out_size(prof: _Profile, size, max_size) -> tuple[int, int, float]:
    fov = max(prof.rows, prof.cols) * prof.spacing
    if size is None:
        rows, cols = prof.rows, prof.cols
    elif isinstance(size, (int, np.integer)):
        rows = cols = int(size)
    else:
        rows, cols = (int(v) for v in size)
    if rows < 16 or cols < 16 or max(rows, cols) > 8192:
        raise ValueError(f"phantom size must be between 16 and 8192 pixels, got {rows}x{cols}")
    if max_size is not None and max(rows, cols) > max_size:
        s = max_size / max(rows, cols)
        rows, cols = max(16, round(rows * s)), max(16, round(cols * s))
    spacing = fov / max(rows, cols)
    return rows, cols, spacing


def _make_study(rng: np.random.Generator, *, index: int, n_images: int, plan: dict, size=None,
                max_size: int | None = None, difficulty: float | None = None,
                debug: list | None = None) -> list[PhantomCase]:
    """One study of ``n_images`` images of the same patient. ``plan`` fixes some choices
    (keys of ``_STRATA``; private extras: ``strength``). ``debug``, if a list, receives the
    anatomical masks of each image at output size (for tests)."""
    diff = _package.DIFFICULTY if difficulty is None else float(difficulty)
    if not diff > 0 or not math.isfinite(diff):
        raise ValueError(f"difficulty must be a positive number, got {diff!r}")
    seeds = rng.integers(0, 2**62, size=8)
    token = f"{int(seeds[0]):x}"

    # what is wrong with this patient
    rk = _stream(seeds, 1)
    uk = rk.random()
    finding = plan.get("finding")
    if finding is None:
        finding = _pick(uk, *_STRATA["finding"])
    if finding not in ("none", *FINDINGS):
        raise ValueError(f"finding must be None, 'none' or one of {FINDINGS}, got {finding!r}")

    # patient and study
    rh = _stream(seeds, 2)
    uh = rh.random(16)
    sex = "F" if uh[0] < 0.5 else "M"
    age = int(20 + 70 * uh[1])
    study_date = _dt.date(2023, 1, 2) + _dt.timedelta(days=int(900 * uh[2]))
    study_time = _dt.time(7 + int(12 * uh[3]), int(60 * uh[4]), int(60 * uh[5]))
    birth = study_date - _dt.timedelta(days=int(365.25 * age + 360 * uh[6]))
    accession = f"PHA{int(uh[7] * 1e8):08d}"
    same_series = uh[8] < 0.5
    body_part = uh[9] >= 0.12
    institution = _INSTITUTIONS[int(uh[10] * len(_INSTITUTIONS))]
    both_spacings = uh[11] < 0.5
    study_uid = _uid(token, "study")

    dev = _device(_stream(seeds, 3), plan)
    an = _Anatomy(_stream(seeds, 4), sex, dev["view"], age)

    rf = _stream(seeds, 5)
    uf = rf.random(16)
    # most findings are plainly there, with a continuous tail down to invisible:
    # P(strength < 0.1) ~ 4 %, P(< 0.3) ~ 13 %, median 0.82
    strength = float(1.0 - rf.random() ** 2.5)
    if plan.get("strength") is not None:  # private: previews and tests
        strength = float(plan["strength"])
    fd = None
    if finding != "none":
        contrast = strength * float(_package.FINDING_CONTRAST.get(finding, 1.0)) / diff
        fd = _Finding(finding, strength, contrast, uf, 0 if uf[15] < 0.5 else 1)

    prof = dev["profile"]
    rows, cols, spacing = _out_size(prof, size, max_size)
    cases = []
    for k in range(n_images):
        ri = _stream(seeds, 6, k)
        img = _image_params(ri, dev["view"])
        fov_h, fov_w = rows * spacing, cols * spacing
        # place the chest: apices top_margin below the top edge, costophrenic angles inside
        want = -fov_h / 2 + img["top_margin"]
        lowest = fov_h / 2 - 20 - 1.05 * an.H
        oy = min(want, lowest) if lowest > -fov_h / 2 else -fov_h / 2 + 10
        scale = min(1.0, _WORK_LONG / max(rows, cols))
        wh, ww = max(16, round(rows * scale)), max(16, round(cols * scale))
        fr = _Frame(wh, ww, fov_h, fov_w, img["angle"], img["ox"], oy + img["oy"] * 0.5)
        work, truth, masks = _render(an, fd, img, fr, ri)
        if debug is not None:
            debug.append({k: cv2.resize(v.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST) > 0
                          for k, v in masks.items()})
        pixels = _to_stored(work, rows, cols, spacing, dev, img, ri)
        if dev["photometric"] == "MONOCHROME1":
            mirrored = int(round(dev["lo"] + dev["hi"])) - pixels.astype(np.int32)
            pixels = mirrored.clip(0, (1 << dev["bits"]) - 1).astype(np.uint16)

        details = {"strength": round(strength, 4) if fd else 0.0,
                   "contrast": round(fd.contrast, 4) if fd else 0.0, "difficulty": diff}
        if "center_mm" in truth:
            cpx = fr.px([truth.pop("center_mm")])[0]
            truth["center_rc"] = (round(float(cpx[1]) * rows / wh, 1), round(float(cpx[0]) * cols / ww, 1))
        if "center_px_work" in truth:
            cx, cy = truth.pop("center_px_work")
            truth["center_rc"] = (round(cy * rows / wh, 1), round(cx * cols / ww, 1))
            truth["area_fraction"] = round(truth.pop("area_px_work") / float(wh * ww), 5)
        box = truth.pop("box_px_work", None)
        if box is not None:   # in output pixels, as center_rc
            truth["box_rc"] = (round(box[0] * rows / wh, 1), round(box[1] * cols / ww, 1),
                               round(box[2] * rows / wh, 1), round(box[3] * cols / ww, 1))
        details.update(truth)

        series_number = 1 if (k == 0 or same_series) else k + 1
        instance = k + 1 if same_series else 1
        series_uid = _uid(token, "series", series_number)
        sop_uid = _uid(token, "image", k)
        when = (_dt.datetime.combine(study_date, study_time) + _dt.timedelta(minutes=2 + k * img["minutes"]))
        ds = _dataset(
            dev=dev, img=img, pixels=pixels, rows=rows, cols=cols, spacing=spacing, sex=sex, age=age,
            birth=birth, index=index, study_date=study_date, study_time=study_time, when=when,
            accession=accession, body_part=body_part, institution=institution, both_spacings=both_spacings,
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, series_number=series_number,
            instance=instance, repeat=k > 0 and not same_series, series_when=when if not same_series else
            (_dt.datetime.combine(study_date, study_time) + _dt.timedelta(minutes=2)), token=token)
        relpath = f"study{index:04d}/series{series_number:02d}/img{k + 1:03d}.dcm"
        cases.append(PhantomCase(ds, "normal" if finding == "none" else "urgent", finding, study_uid, relpath,
                                 details))
    return cases


def make_case(rng: np.random.Generator, *, index: int, finding: str | None = None,
              size: int | tuple[int, int] | None = None, compress: bool | None = None,
              max_size: int | None = None, difficulty: float | None = None) -> PhantomCase:
    """One synthetic chest radiograph as a complete DICOM dataset (a single-image study).

    ``finding``: None draws it (half normal, a quarter each finding), or "none", "mass",
    "pneumothorax". ``size``: output (rows, columns) or a square side; default: the drawn
    detector's size. ``compress``: RLE Lossless or not; default drawn (~25 % RLE).
    ``max_size`` caps the larger dimension (after ``size``), as in :func:`generate`.
    ``difficulty``: see :data:`edgeinfer.phantom.DIFFICULTY`.

    The anatomy, header and noise draws do not depend on ``finding``, so the same generator
    state with ``finding="mass"`` and ``finding="none"`` gives the same patient, with and
    without the mass.
    """
    plan = {"finding": finding, "compress": compress}
    return _make_study(rng, index=index, n_images=1, plan=plan, size=size, max_size=max_size,
                       difficulty=difficulty)[0]


def _stratified(rng: np.random.Generator, n: int, values, weights) -> list:
    w = np.asarray(weights, dtype=float)
    w = w / w.sum() * n
    counts = np.floor(w).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(w - counts), kind="stable")
    counts[order[:rest]] += 1
    out = [v for v, c in zip(values, counts) for _ in range(c)]
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


def _study_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes = []
    left = n
    while left > 0:
        k = 2 if (left >= 2 and rng.random() < 0.18) else 1
        sizes.append(k)
        left -= k
    if n >= 3 and 2 not in sizes:  # every set of three or more images holds a two-image study
        sizes = [2] + sizes[2:]
    return sizes


def generate(out_dir, n: int, seed: int, *, max_size: int | None = None,
             progress: Callable[[int], None] | None = None, difficulty: float | None = None) -> list[dict]:
    """Write ``n`` phantom images under ``out_dir`` and ``labels.csv`` at its root.

    Images are grouped into studies (most of one image, some of two: the first image and a
    repeat of the same patient, same finding). The finding kind, modality, photometric
    interpretation, bits stored, compression, VOI/rescale style and view are stratified over
    studies, so every set of a dozen or more studies contains the whole mix; every set of three
    or more images holds a two-image study. ``max_size`` caps the larger image dimension (the
    pixel spacing grows accordingly). ``progress(1)`` is called after each file is written (an
    increment, like a progress bar's ``advance``). Returns the rows of ``labels.csv`` as dicts (``bits_stored``,
    ``rows`` and ``columns`` as int). ``finding_box`` is where the finding lies, ``top left bottom right``
    in pixels of the stored image (bottom and right exclusive; empty for a normal image or a finding too
    faint to have an extent). The same ``(n, seed, max_size, difficulty)`` writes
    byte-identical files.

    ``out_dir`` must be empty or absent: a stale file would make ``labels.csv`` incomplete.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise UsageError(f"phantom: the number of images must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"phantom: the seed must be a non-negative integer, got {seed!r}")
    if max_size is not None and (not isinstance(max_size, (int, np.integer)) or max_size < 64):
        raise UsageError(f"phantom: max_size must be an integer >= 64, got {max_size!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"phantom: {out} exists and is not an empty folder; "
                         "give a new or empty folder, so that labels.csv lists every file in it")
    out.mkdir(parents=True, exist_ok=True)

    master = np.random.default_rng([int(seed), 0x9E3779B9])
    sizes = _study_sizes(master, int(n))
    plans = [dict() for _ in sizes]
    for key, (values, weights) in _STRATA.items():
        for p, v in zip(plans, _stratified(master, len(sizes), values, weights)):
            p[key] = v

    rows_out: list[dict] = []
    for i, (k, plan) in enumerate(zip(sizes, plans)):
        rng = np.random.default_rng([int(seed), i + 1])
        for case in _make_study(rng, index=i + 1, n_images=k, plan=plan, max_size=max_size,
                                difficulty=difficulty):
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, case.dataset, enforce_file_format=True)
            atomic_write(out / case.relpath, buf.getvalue())
            ds = case.dataset
            rows_out.append({
                "path": case.relpath, "study_uid": case.study_uid, "series_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID), "label": case.label, "finding": case.finding,
                "modality": str(ds.Modality), "photometric": str(ds.PhotometricInterpretation),
                "bits_stored": int(ds.BitsStored), "rows": int(ds.Rows), "columns": int(ds.Columns),
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
                "finding_box": " ".join(f"{v:g}" for v in case.details.get("box_rc") or ()),
            })
            if progress is not None:
                progress(1)
    write_labels(out / "labels.csv", LABELS_COLUMNS, rows_out)
    return rows_out


def write_labels(path: Path, columns, rows: list[dict]) -> None:
    """A phantom set's ``labels.csv``: ``columns`` in order, one row per dict, written atomically."""
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, text.getvalue())
